// The compile stage: the build cache, just-in-time engines and dynamic-shape profiles.

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert";
import { join } from "node:path";
import { runPipeline } from "../../../core/pipeline/runner.ts";
import { loadPipeline } from "../../../core/pipeline/pipeline.ts";
import { compileEngine } from "../../../core/pipeline/build.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import hf from "../../../plugins/export/hf.ts";
import { logitsOf } from "../../../core/runtime/generate.ts";
import { openSequences } from "../../../core/runtime/sequences.ts";
import { modelFixture, pipelineErrorOf, writePipeline } from "./helpers.ts";

const MODEL = modelFixture("tiny-llama");
const ORACLE = JSON.parse(await Deno.readTextFile(join(MODEL, "oracle.json")));

async function run(path: string, rebuild = false): Promise<string[]> {
  const lines: string[] = [];
  await runPipeline(await loadPipeline(path), { log: (line) => lines.push(line), rebuild });
  return lines;
}

const compileLine = (lines: string[]) => lines.find((line) => line.startsWith("  compile"))!;

Deno.test("build cache: a second run takes the engine from the cache; a changed option or --rebuild builds", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-cache-" });
  try {
    const text = (dtype: string) =>
      [
        `cache: ${dir}`,
        `export: { use: hf, path: ${MODEL} }`,
        `compile: { use: cpu, dtype: ${dtype} }`,
        `serve: { use: generate, ids: [${ORACLE.prompt_ids}], max_tokens: 6 }`,
      ].join("\n");
    const path = await writePipeline(text("f32"));
    const first = await run(path);
    ok(!compileLine(first).endsWith("(cached)"), compileLine(first));
    const second = await run(path);
    ok(compileLine(second).endsWith("(cached)"), compileLine(second));
    const ids = (lines: string[]) => lines.find((line) => line.startsWith("ids: "));
    strictEqual(ids(second), `ids: ${JSON.stringify(ORACLE.greedy_ids.slice(0, 6))}`);
    strictEqual(ids(first), ids(second));
    ok(!compileLine(await run(path, true)).endsWith("(cached)"), "--rebuild builds");
    const other = await writePipeline(text("bf16"));
    ok(!compileLine(await run(other)).endsWith("(cached)"), "another compute dtype is another engine");
    strictEqual([...Deno.readDirSync(dir)].filter((entry) => entry.name.endsWith(".engine")).length, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("jit: the engine is built at the first request; it cannot be saved", async () => {
  const path = await writePipeline(
    [
      `export: { use: hf, path: ${MODEL} }`,
      `compile: { use: cpu, jit: true }`,
      `serve: { use: generate, ids: [${ORACLE.prompt_ids}], max_tokens: 4 }`,
    ].join("\n"),
  );
  const lines = await run(path);
  ok(compileLine(lines).endsWith("(at the first request)"), compileLine(lines));
  ok(lines.includes(`ids: ${JSON.stringify(ORACLE.greedy_ids.slice(0, 4))}`), lines.join("\n"));
  const saving = await writePipeline(
    [
      `export: { use: hf, path: ${MODEL} }`,
      `compile: { use: cpu, jit: true }`,
      `save: { use: engine-file, dir: ./engines }`,
      `serve: { use: generate, ids: [1] }`,
    ].join("\n"),
  );
  const error = await pipelineErrorOf(() => loadPipeline(saving));
  ok(
    error.message.includes("compile.jit: a just-in-time engine is built at the first request"),
    error.message,
  );
});

Deno.test("profiles: one engine answers seq 1, 7, 300 and its max; longer is a clear error", async () => {
  using model = await hf.export(hf.options.parse({ path: MODEL, dtype: "f32" }), {
    baseDir: "/",
    rank: 0,
    worldSize: 1,
    log: () => {},
  });
  const { engine } = await compileEngine({
    backend: cpuBackend(),
    options: {},
    settings: { jit: false, profiles: { seq: [1, 64, 512], batch: [1, 1, 2] } },
    graph: model.graph,
    weights: model.weights,
  });
  using _engine = engine;
  const ids = (n: number) => Array.from({ length: n }, (_, i) => (i * 7 + 3) % 256);
  for (const length of [1, 7, 300, 512]) strictEqual((await logitsOf(engine, ids(length))).length, length);
  deepStrictEqual(
    (await logitsOf(engine, ORACLE.logit_ids))[0].slice(0, 3).map((v) => v.toFixed(4)),
    ORACLE.logits[0].slice(0, 3).map((v: number) => v.toFixed(4)),
  );
  await rejects(
    logitsOf(engine, ids(513)),
    /seq = 513 is outside the range this engine was compiled for, 1\.\.512 \(compile\.profiles\.seq\)/,
  );
  ok(/compiled for batches up to 2/.test(String((() => {
    try {
      openSequences(engine, { slots: 3, maxLength: 16 });
    } catch (error) {
      return error;
    }
  })())));
  using pool = openSequences(engine, { slots: 2, maxLength: 512 });
  await pool.greedy([{ slot: 0, ids: ids(510), start: 0 }]);
  await pool.greedy([{ slot: 0, ids: [1, 2], start: 510 }]);
  await rejects(pool.greedy([{ slot: 0, ids: [1], start: 512 }]), /513 tokens exceed the maximum length 512/);
});

Deno.test("profiles for a dim the graph does not have are refused at the compile stage", async () => {
  const path = await writePipeline(
    [
      `export: { use: hf, path: ${MODEL} }`,
      `compile: { use: cpu, profiles: { sequence: [1, 8, 64] } }`,
      `serve: { use: generate, ids: [1] }`,
    ].join("\n"),
  );
  const error = await pipelineErrorOf(() => run(path));
  ok(
    error.message.endsWith(
      "compile.profiles.sequence: the engine's inputs have no dim sequence; they have batch, seq, past",
    ),
    error.message,
  );
  const bad = await writePipeline(
    [
      `export: { use: hf, path: ${MODEL} }`,
      `compile: { use: cpu, profiles: { seq: [8, 4, 64] } }`,
      `serve: { use: generate, ids: [1] }`,
    ].join("\n"),
  );
  const invalid = await pipelineErrorOf(() => loadPipeline(bad));
  ok(
    invalid.message.includes("compile.profiles.seq: a profile is [min, opt, max] with min ≤ opt ≤ max"),
    invalid.message,
  );
});
