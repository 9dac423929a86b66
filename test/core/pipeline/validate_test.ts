// loadPipeline's validation: every problem is reported, each at its file:line:col.

import { deepStrictEqual, strictEqual } from "node:assert";
import { loadPipeline, pipelineStages } from "../../../core/pipeline/pipeline.ts";
import { fixture, modelFixture, pipelineErrorOf, writePipeline } from "./helpers.ts";

const MODEL = modelFixture("tiny-llama");

/** A valid pipeline with one line swapped for another. */
function pipelineText(replace: Record<string, string> = {}): string {
  const lines = [
    `name: demo`,
    `export: { use: hf, path: ${MODEL} }`,
    `lower:`,
    `  - use: ${fixture("identity_pass.ts")}`,
    `    factor: 2`,
    `compile: { use: cpu, dtype: f32 }`,
    `serve: { use: generate, ids: [1, 2, 3], max_tokens: 4 }`,
  ];
  return lines.map((line) => {
    const key = Object.keys(replace).find((prefix) => line.startsWith(prefix));
    return key === undefined ? line : replace[key];
  }).join("\n") + "\n";
}

Deno.test("a valid pipeline loads with every plugin resolved and its options parsed", async () => {
  const path = await writePipeline(pipelineText());
  const pipeline = await loadPipeline(path);
  deepStrictEqual(pipelineStages(pipeline).map((stage) => `${stage.stage}:${stage.plugin.name}`), [
    "export:hf",
    "lower:identity",
    "compile:cpu",
    "serve:generate",
  ]);
  deepStrictEqual(pipeline.lower[0].options, { factor: 2 });
  deepStrictEqual(pipeline.serve?.options, { ids: [1, 2, 3], max_tokens: 4 });
  deepStrictEqual(pipeline.export?.options, { path: MODEL, dtype: "f32" });
  deepStrictEqual({ tp: pipeline.world.tp, dp: pipeline.world.dp }, { tp: 1, dp: 1 });
  strictEqual(pipeline.name, "demo");
});

Deno.test("a wrong type names the option, what was expected and what was found", async () => {
  const path = await writePipeline(
    pipelineText({ "serve:": `serve: { use: generate, ids: [1], max_tokens: "x" }` }),
  );
  const error = await pipelineErrorOf(() => loadPipeline(path));
  strictEqual(error.message, `${path}:7:47: serve.max_tokens: expected a number, got "x"`);
});

Deno.test("an enum option lists its values", async () => {
  const path = await writePipeline(pipelineText({ "compile:": `compile:\n  use: cpu\n  dtype: f8` }));
  const error = await pipelineErrorOf(() => loadPipeline(path));
  strictEqual(error.message, `${path}:8:10: compile.dtype: expected one of f32|f16|bf16, got "f8"`);
});

Deno.test("an unknown stage is refused with a did-you-mean", async () => {
  const path = await writePipeline(pipelineText({ "compile:": `complie: { use: cpu }` }));
  const error = await pipelineErrorOf(() => loadPipeline(path));
  strictEqual(error.message, `${path}:6:1: unknown stage or key 'complie' (did you mean 'compile'?)`);
  const far = await writePipeline(pipelineText({ "name:": `name: demo\nbenchmark: { runs: 3 }` }));
  strictEqual(
    (await pipelineErrorOf(() => loadPipeline(far))).message,
    `${far}:2:1: unknown stage or key 'benchmark'; expected one of name, world, timeouts, collectives, cache, export, lower, compile, save, load, serve`,
  );
});

Deno.test("an unknown option of a plugin is refused with a did-you-mean, nested ones too", async () => {
  const path = await writePipeline(pipelineText({
    "export:": `export: { use: hf, path: ${MODEL}, dtpye: f16, init: { preset: quickstart, sed: 7 } }`,
  }));
  const error = await pipelineErrorOf(() => loadPipeline(path));
  const column = `export: { use: hf, path: ${MODEL}, `.length + 1;
  strictEqual(
    error.message,
    [
      `${path}:2:${column}: export: unknown option 'dtpye' (did you mean 'dtype'?)`,
      `${path}:2:${
        column + "dtpye: f16, init: { preset: quickstart, ".length
      }: export.init: unknown option 'sed' (did you mean 'seed'?)`,
    ].join("\n"),
  );
});

Deno.test("an unknown built-in plugin names the closest one", async () => {
  const path = await writePipeline(pipelineText({ "compile:": `compile: { use: cpux }` }));
  const error = await pipelineErrorOf(() => loadPipeline(path));
  strictEqual(error.message, `${path}:6:17: compile: unknown engine plugin 'cpux' (did you mean 'cpu'?)`);
});

Deno.test("a module path that does not exist is refused at its use: line", async () => {
  const path = await writePipeline(pipelineText({ "  - use:": `  - use: ./missing_pass.ts` }));
  const error = await pipelineErrorOf(() => loadPipeline(path));
  const missing = path.replace(/pipeline\.yaml$/, "missing_pass.ts");
  strictEqual(
    error.message,
    `${path}:4:10: lower: module ./missing_pass.ts does not exist (looked for ${missing})`,
  );
});

Deno.test("a user plugin of the wrong kind, and modules that are not plugins, are refused", async () => {
  const path = await writePipeline(pipelineText({
    "compile:": `compile: { use: ${fixture("identity_pass.ts")} }`,
    "serve:": `serve: { use: ${fixture("not_a_plugin.ts")} }`,
    "  - use:": `  - use: ${fixture("no_default.ts")}`,
  }));
  const error = await pipelineErrorOf(() => loadPipeline(path));
  strictEqual(
    error.message,
    [
      `${path}:4:10: lower: ${fixture("no_default.ts")} has no default export; ` +
      "a plugin module ends with `export default definePlugin({…})`",
      `${path}:6:17: compile: ${fixture("identity_pass.ts")} is a pass plugin ('identity'), ` +
      "but compile takes an engine plugin",
      `${path}:7:15: serve: ${
        fixture("not_a_plugin.ts")
      } exports by default something that is not a plugin: ` +
      "it needs kind, name and a zod options schema",
    ].join("\n"),
  );
});

Deno.test("every problem of a file is reported at once, in file order", async () => {
  const path = await writePipeline(
    [
      `name: demo`,
      `world: { tp: 0 }`,
      `export: { use: hf, path: ${MODEL}, dtype: f8 }`,
      `lower:`,
      `  - use: ${fixture("identity_pass.ts")}`,
      `    factor: "two"`,
      `compile: { use: cpux }`,
      `serve: { use: generate, ids: [1], max_tokens: "x" }`,
      `servr: {}`,
    ].join("\n"),
  );
  const error = await pipelineErrorOf(() => loadPipeline(path));
  const dtypeColumn = `export: { use: hf, path: ${MODEL}, dtype: `.length + 1;
  deepStrictEqual(error.message.split("\n"), [
    `${path}:2:14: world.tp: expected a number > 0, got 0`,
    `${path}:3:${dtypeColumn}: export.dtype: expected one of f32|f16|bf16, got "f8"`,
    `${path}:6:13: lower.0.factor: expected a number, got "two"`,
    `${path}:7:17: compile: unknown engine plugin 'cpux' (did you mean 'cpu'?)`,
    `${path}:8:47: serve.max_tokens: expected a number, got "x"`,
    `${path}:9:1: unknown stage or key 'servr' (did you mean 'serve'?)`,
  ]);
  strictEqual(error.issues.length, 6);
  deepStrictEqual([error.line, error.column], [2, 14]);
});

Deno.test("serve options: prompt or ids, not both, not neither", async () => {
  const both = await writePipeline(
    pipelineText({ "serve:": `serve: { use: generate, prompt: hi, ids: [1] }` }),
  );
  strictEqual(
    (await pipelineErrorOf(() => loadPipeline(both))).message,
    `${both}:7:8: serve: give one of prompt, prompts or ids`,
  );
  const neither = await writePipeline(pipelineText({ "serve:": `serve: { use: generate }` }));
  strictEqual(
    (await pipelineErrorOf(() => loadPipeline(neither))).message,
    `${neither}:7:8: serve: give a prompt, prompts or ids to start from`,
  );
});

Deno.test("a pipeline may start at load; stages that need others say so", async () => {
  const fromLoad = await writePipeline(
    "load: { use: engine-file, dir: ./engines }\nserve: { use: generate, ids: [1] }\n",
  );
  deepStrictEqual(pipelineStages(await loadPipeline(fromLoad)).map((stage) => stage.stage), [
    "load",
    "serve",
  ]);
  const orphan = await writePipeline(
    "load: { use: engine-file, dir: ./engines }\ncompile: { use: cpu }\nsave: { use: engine-file, dir: ./e }\n",
  );
  deepStrictEqual((await pipelineErrorOf(() => loadPipeline(orphan))).message.split("\n"), [
    `${orphan}:2:1: stage 'compile' needs 'export' to make the graph it compiles`,
  ]);
  const noServe = await writePipeline(`export: { use: hf, path: ${MODEL} }\ncompile: { use: cpu }\n`);
  strictEqual(
    (await pipelineErrorOf(() => loadPipeline(noServe))).message,
    `${noServe}:1:1: missing stage 'serve': a pipeline needs export, compile and serve unless it starts at load`,
  );
});

Deno.test("an empty lower: is no passes", async () => {
  const path = await writePipeline(pipelineText({ "lower:": "lower:", "  - use:": "", "    factor:": "" }));
  deepStrictEqual((await loadPipeline(path)).lower, []);
});
