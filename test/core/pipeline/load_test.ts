import { deepStrictEqual, strictEqual, throws } from "node:assert";
import { parsePipelineText, readPipeline } from "../../../core/pipeline/load.ts";
import { pipelineErrorOf } from "./helpers.ts";

const TEXT = `name: demo
export: { use: hf, path: ./model }
lower:
  - use: fold-constants
  - use: ./my_pass.ts
    eps: 1.0e-5
compile:
  use: cpu
  dtype: f32
`;

Deno.test("locate: a key path points at its value, or at its key", () => {
  const source = parsePipelineText(TEXT, "p.yaml", "/base");
  deepStrictEqual(source.locate(["lower", 1, "eps"]), { file: "p.yaml", line: 6, column: 10 });
  deepStrictEqual(source.locate(["lower", 1, "eps"], "key"), { file: "p.yaml", line: 6, column: 5 });
  deepStrictEqual(source.locate(["export", "path"]), { file: "p.yaml", line: 2, column: 26 });
  deepStrictEqual(source.locate(["compile", "dtype"]), { file: "p.yaml", line: 9, column: 10 });
  deepStrictEqual(source.baseDir, "/base");
});

Deno.test("locate: a path past what the file holds points at the nearest existing parent", () => {
  const source = parsePipelineText(TEXT, "p.yaml");
  deepStrictEqual(source.locate(["lower", 1, "factor"]), { file: "p.yaml", line: 5, column: 5 });
  deepStrictEqual(source.locate(["lower", 7, "eps"]), { file: "p.yaml", line: 4, column: 3 });
  deepStrictEqual(source.locate(["serve"]), { file: "p.yaml", line: 1, column: 1 });
});

Deno.test("malformed YAML is a PipelineError at its line and column", async () => {
  const error = await pipelineErrorOf(() =>
    parsePipelineText("name: demo\ncompile: { use: cpu, dtype: f32\nserve: {}\n", "bad.yaml")
  );
  strictEqual(error.line, 3);
  strictEqual(error.column, 1);
  strictEqual(
    error.message,
    "bad.yaml:3:1: malformed YAML: Flow map in block collection must be sufficiently indented and end with a }",
  );
});

Deno.test("a duplicate key is malformed YAML", async () => {
  const error = await pipelineErrorOf(() => parsePipelineText("serve: {}\nserve: {}\n", "dup.yaml"));
  strictEqual(error.message, "dup.yaml:2:1: malformed YAML: Map keys must be unique");
});

Deno.test("an empty file and a top-level list are refused", () => {
  throws(() => parsePipelineText("# nothing\n", "empty.yaml"), {
    name: "PipelineError",
    message: "empty.yaml:1:1: the pipeline file is empty",
  });
  throws(() => parsePipelineText("- use: hf\n", "list.yaml"), {
    name: "PipelineError",
    message: "list.yaml:1:1: expected a mapping of stages (export:, compile:, …), got a list",
  });
});

Deno.test("a missing file says so", async () => {
  const error = await pipelineErrorOf(() => readPipeline("/nonexistent/pipeline.yaml"));
  strictEqual(error.message, "pipeline file /nonexistent/pipeline.yaml does not exist");
});
