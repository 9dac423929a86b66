import { deepStrictEqual, strictEqual, throws } from "node:assert";
import { parsePipelineText } from "../../../core/pipeline/load.ts";
import { applyOverrides, parseOverride } from "../../../core/pipeline/overrides.ts";
import { loadPipeline } from "../../../core/pipeline/pipeline.ts";
import { fixture, modelFixture, pipelineErrorOf, writePipeline } from "./helpers.ts";

const TEXT = `name: demo
lower:
  - use: ./a.ts
    factor: 1.0
  - use: ./b.ts
compile: { use: cpu, dtype: f32 }
serve:
`;

function overridden(...sets: string[]): unknown {
  const source = parsePipelineText(TEXT, "p.yaml", "/base");
  applyOverrides(source, sets);
  return source.toJS();
}

Deno.test("values are read as YAML scalars", () => {
  deepStrictEqual(parseOverride("lower.0.factor=2").value, 2);
  deepStrictEqual(parseOverride("a=1.5e-3").value, 0.0015);
  deepStrictEqual(parseOverride("a=true").value, true);
  deepStrictEqual(parseOverride("a=f16").value, "f16");
  deepStrictEqual(parseOverride('a="7"').value, "7");
  deepStrictEqual(parseOverride("serve.prompt=Once upon: a time").value, "Once upon: a time");
  deepStrictEqual(parseOverride("a=").value, "");
  deepStrictEqual(parseOverride("a.b=x=y"), { segments: ["a", "b"], value: "x=y", text: "a.b=x=y" });
});

Deno.test("an override sets list items, adds keys and fills empty entries", () => {
  const data = overridden(
    "lower.0.factor=2",
    "lower.1.eps=1e-5",
    "compile.dtype=f16",
    "serve.use=generate",
    "world.tp=1",
  );
  deepStrictEqual(data, {
    name: "demo",
    lower: [{ use: "./a.ts", factor: 2 }, { use: "./b.ts", eps: 1e-5 }],
    compile: { use: "cpu", dtype: "f16" },
    serve: { use: "generate" },
    world: { tp: 1 },
  });
});

Deno.test("an override that does not fit the file says why", () => {
  const source = () => parsePipelineText(TEXT, "p.yaml");
  throws(() => applyOverrides(source(), ["lower.5.factor=2"]), {
    name: "PipelineError",
    message: "p.yaml:3:3: --set lower.5.factor=2: lower has 2 items; index 5 is out of range",
  });
  throws(() => applyOverrides(source(), ["lower.first.factor=2"]), {
    message: "p.yaml:3:3: --set lower.first.factor=2: lower is a list; 'first' is not an index",
  });
  throws(() => applyOverrides(source(), ["name.x=2"]), {
    message: `p.yaml:1:7: --set name.x=2: name is the value "demo", so it has no 'x'`,
  });
  throws(() => applyOverrides(source(), ["compile.dtype.bits=2"]), {
    message: `p.yaml:6:29: --set compile.dtype.bits=2: compile.dtype is the value "f32", so it has no 'bits'`,
  });
  throws(() => parseOverride("compile.dtype"), {
    message: "--set compile.dtype: expected key.path=value, e.g. --set compile.dtype=f16",
  });
  throws(() => parseOverride("compile..dtype=f16"), {
    message: "--set compile..dtype=f16: 'compile..dtype' has an empty segment",
  });
});

Deno.test("an overridden value is validated like any other, and the error says it was set", async () => {
  const path = await writePipeline(
    [
      `export: { use: hf, path: ${modelFixture("tiny-llama")} }`,
      `lower:`,
      `  - use: ${fixture("identity_pass.ts")}`,
      `compile: { use: cpu }`,
      `serve: { use: generate, ids: [1] }`,
    ].join("\n"),
  );
  const pipeline = await loadPipeline(path, ["lower.0.factor=3", "serve.max_tokens=5", "compile.dtype=bf16"]);
  deepStrictEqual(pipeline.lower[0].options, { factor: 3 });
  deepStrictEqual(pipeline.serve?.options, { ids: [1], max_tokens: 5 });
  deepStrictEqual(pipeline.compile?.options, { dtype: "bf16" });

  const error = await pipelineErrorOf(() =>
    loadPipeline(path, ["serve.max_tokens=many", "compile.dtpye=f16"])
  );
  deepStrictEqual(error.message.split("\n"), [
    `${path}:4:10: compile: unknown option 'dtpye' (did you mean 'dtype'?) (set by --set compile.dtpye=f16)`,
    `${path}:5:8: serve.max_tokens: expected a number, got "many" (set by --set serve.max_tokens=many)`,
  ]);
  strictEqual(error.issues.length, 2);
});
