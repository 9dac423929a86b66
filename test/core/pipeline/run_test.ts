// runPipeline end to end on the tiny Llama fixture, and the errors that only running finds.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { join } from "node:path";
import { printGraph } from "../../../core/ir/text.ts";
import { builtinNames, builtinUrl, isModulePath } from "../../../core/pipeline/resolve.ts";
import { exportAndLower, progressLines, runPipeline } from "../../../core/pipeline/runner.ts";
import { loadPipeline } from "../../../core/pipeline/pipeline.ts";
import { fixture, modelFixture, pipelineErrorOf, writePipeline } from "./helpers.ts";

const MODEL = modelFixture("tiny-llama");
const ORACLE = JSON.parse(await Deno.readTextFile(join(MODEL, "oracle.json")));

Deno.test("a pipeline runs export, lower, compile, save, load and serve, one timed line each", async () => {
  const path = await writePipeline(
    [
      `name: tiny`,
      `export: { use: hf, path: ${MODEL} }`,
      `lower:`,
      `  - use: ${fixture("identity_pass.ts")}`,
      `  - use: fuse-distributed-ops`,
      `compile: { use: cpu, dtype: f32 }`,
      `save: { use: engine-file, dir: ./engines }`,
      `load: { use: engine-file, dir: ./engines }`,
      `serve: { use: generate, ids: ${JSON.stringify(ORACLE.prompt_ids)}, max_tokens: 8 }`,
    ].join("\n"),
  );
  const lines: string[] = [];
  await runPipeline(await loadPipeline(path), { log: (line) => lines.push(line) });

  const timed = lines.filter((line) => / ms$/.test(line)).map((line) =>
    line.trim().split(/\s+/).slice(0, 2).join(" ")
  );
  deepStrictEqual(timed.slice(0, -1), [
    "export hf",
    "lower identity",
    "lower fuse-distributed-ops",
    "compile cpu",
    "save engine-file",
    "load engine-file",
    "serve generate",
  ]);
  ok(/^ {2}total +\d+(\.\d)? ms$/.test(lines.at(-1)!), lines.at(-1));
  ok(/^ {2}export {3}hf +\d+(\.\d)? ms$/.test(lines.find((line) => line.includes("export"))!));
  ok(lines.includes(`ids: ${JSON.stringify(ORACLE.greedy_ids.slice(0, 8))}`), lines.join("\n"));
  ok(lines.some((line) => /^8 tokens in [\d.]+ s \([\d.]+ tokens\/s\)$/.test(line)));
  const engines = join(path, "..", "engines");
  const saved = [...Deno.readDirSync(engines)].map((entry) => entry.name).sort();
  deepStrictEqual(saved.length, 2);
  deepStrictEqual(saved[0], "manifest.json");
  ok(/^set-[0-9a-f]{8}$/.test(saved[1]), saved[1]);
  deepStrictEqual([...Deno.readDirSync(join(engines, saved[1]))].map((entry) => entry.name).sort(), [
    "rank-0.engine",
  ]);
});

Deno.test("a pipeline may start at load: a saved set serves a prompt without the checkpoint", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-load-first-" });
  const model = join(dir, "model");
  const saving = await writePipeline([
    `export: { use: hf, path: ${model}, init: { preset: tiny-llama, seed: 3 } }`,
    `compile: { use: cpu }`,
    `save: { use: engine-file, dir: ${join(dir, "engines")} }`,
    `serve: { use: generate, prompt: "hello", max_tokens: 6 }`,
  ].join("\n"));
  const first: string[] = [];
  await runPipeline(await loadPipeline(saving), { log: (line) => first.push(line) });
  await Deno.remove(model, { recursive: true });
  const loading = await writePipeline([
    `load: { use: engine-file, dir: ${join(dir, "engines")} }`,
    `serve: { use: generate, prompt: "hello", max_tokens: 6 }`,
  ].join("\n"));
  const second: string[] = [];
  await runPipeline(await loadPipeline(loading), { log: (line) => second.push(line) });
  const ids = (lines: string[]) => lines.find((line) => line.startsWith("ids: "));
  ok(ids(first), first.join("\n"));
  strictEqual(ids(second), ids(first));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a pass that breaks the graph is named, at its use: line", async () => {
  const path = await writePipeline(
    [
      `export: { use: hf, path: ${MODEL} }`,
      `lower:`,
      `  - use: ${fixture("identity_pass.ts")}`,
      `  - use: ${fixture("broken_pass.ts")}`,
      `compile: { use: cpu }`,
      `serve: { use: generate, ids: [1] }`,
    ].join("\n"),
  );
  const pipeline = await loadPipeline(path);
  const error = await pipelineErrorOf(() => runPipeline(pipeline, { log: () => {} }));
  ok(error.message.startsWith(`${path}:4:10: lower.1 (drop-first-node) broke the graph: `), error.message);
});

Deno.test("a tensor-parallel plan that does not fit the model fails before any rank starts", async () => {
  const path = await writePipeline(
    [
      `world: { tp: 3 }`,
      `export: { use: hf, path: ${MODEL} }`,
      `lower: [{ use: tensor-parallel, plan: auto }]`,
      `compile: { use: cpu }`,
      `serve: { use: generate, ids: [1] }`,
    ].join("\n"),
  );
  const pipeline = await loadPipeline(path);
  const started = performance.now();
  const error = await pipelineErrorOf(() => runPipeline(pipeline, { log: () => {} }));
  ok(error.message.startsWith(`${path}:3:16: lower.0 (tensor-parallel) failed:`), error.message);
  ok(error.message.endsWith("has 4 heads, which do not split over 3 ranks"), error.message);
  ok(performance.now() - started < 5000);
});

Deno.test("a stage that runs past its timeout fails with the stage and the setting named", async () => {
  const path = await writePipeline(
    [
      `timeouts: { serve: 0.2 }`,
      `export: { use: hf, path: ${MODEL} }`,
      `compile: { use: cpu }`,
      `serve: { use: ${fixture("wait_forever.ts")} }`,
    ].join("\n"),
  );
  const error = await pipelineErrorOf(async () => runPipeline(await loadPipeline(path), { log: () => {} }));
  strictEqual(error.message, "stage serve ran past its timeout of 0.2 s (timeouts.serve)");
});

Deno.test("exportAndLower gives the graph after the passes, or before them", async () => {
  const path = await writePipeline(
    [
      `export: { use: hf, path: ${MODEL} }`,
      `lower:`,
      `  - use: ${fixture("identity_pass.ts")}`,
      `compile: { use: cpu }`,
      `serve: { use: generate, ids: [1] }`,
    ].join("\n"),
  );
  const pipeline = await loadPipeline(path);
  const after = await exportAndLower(pipeline);
  using _after = after.exported;
  const before = await exportAndLower(pipeline, { lower: false });
  using _before = before.exported;
  strictEqual(before.graph, before.exported.graph);
  ok(after.graph !== after.exported.graph);
  strictEqual(printGraph(after.graph), printGraph(before.graph));
});

Deno.test("built-in names come from the plugin folders; `-` in a name is `_` in the file", async () => {
  ok((await builtinNames("compile"))?.includes("cpu"));
  ok((await builtinNames("save"))?.includes("engine-file"));
  ok(
    builtinUrl("lower", "fuse-distributed-ops").pathname.endsWith("/plugins/passes/fuse_distributed_ops.ts"),
  );
  deepStrictEqual(
    ["./x.ts", "../x", "/abs/x", "x.ts", "cpu", "engine-file"].map(isModulePath),
    [true, true, true, true, false, false],
  );
});

Deno.test("progress lines: quiet in a stage's first second, then at most one a second", () => {
  let now = 0;
  const lines: string[] = [];
  const report = progressLines((line) => lines.push(line), "  load     engine-file", () => now);
  for (const [at, done] of [[200, 1], [900, 2], [1100, 3], [1500, 4], [2200, 5], [2300, 6]]) {
    now = at;
    report("reading set-1/rank-0.engine, MiB", done, 8);
  }
  deepStrictEqual(lines, [
    "  load     engine-file: reading set-1/rank-0.engine, MiB 3/8 (38%)",
    "  load     engine-file: reading set-1/rank-0.engine, MiB 5/8 (63%)",
  ]);
});
