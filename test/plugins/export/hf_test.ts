import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert";
import { join } from "node:path";
import hf, { exportCheckpoint, ExportError } from "../../../plugins/export/hf.ts";
import { initModel } from "../../../plugins/export/hf_random.ts";
import { WeightError, writeSafetensors } from "../../../core/ir/safetensors.ts";
import { readGraphWeights } from "../../../core/ir/weights.ts";
import { verifyGraph } from "../../../core/ir/graph.ts";
import { f32 } from "../../../core/ir/tensor.ts";
import { interpret } from "../../../core/runtime/interpreter.ts";
import { generateGreedy, logitsOf } from "../../../core/runtime/generate.ts";
import type { Engine } from "../../../core/runtime/engine.ts";
import type { ExportedModel, StageContext } from "../../../core/pipeline/plugin.ts";
import { FIXTURES, oracleOf } from "../../oracle.ts";

/** The reference interpreter behind the Engine interface that the generation loop speaks. */
function referenceEngine(model: ExportedModel): Engine {
  const weights = readGraphWeights(model.graph, model.weights);
  return {
    backend: "reference",
    backendVersion: "test",
    inputs: model.graph.inputs,
    outputs: model.graph.outputs.map((name) => ({ name, type: model.graph.types.get(name)! })),
    run: (inputs) => Promise.resolve(interpret(model.graph, weights, inputs)),
    serialize: () => new Uint8Array(),
    [Symbol.dispose]() {},
  };
}

function context(baseDir: string): StageContext {
  return { baseDir, rank: 0, worldSize: 1, log: () => {} };
}

async function exportFixture(name: string): Promise<ExportedModel> {
  return await hf.export(hf.options.parse({ path: name, dtype: "f32" }), context(FIXTURES));
}

for (const name of ["tiny-llama", "tiny-qwen2", "tiny-gpt2"]) {
  Deno.test(`hf export of ${name}: logits and 16 greedy ids match transformers`, async () => {
    using model = await exportFixture(name);
    verifyGraph(model.graph);
    deepStrictEqual(model.graph.outputs.slice(0, 3), ["logits", "present_k.0", "present_v.0"]);
    const oracle = oracleOf(name);
    const engine = referenceEngine(model);
    const logits = await logitsOf(engine, oracle.logit_ids);
    let maxError = 0;
    logits.forEach((row, i) =>
      row.forEach((v, j) => (maxError = Math.max(maxError, Math.abs(v - oracle.logits[i][j]))))
    );
    ok(maxError <= 1e-4, `${name}: max abs logit error ${maxError}`);
    const [greedy] = await generateGreedy(engine, [oracle.prompt_ids], { maxTokens: 16 });
    deepStrictEqual(greedy, oracle.greedy_ids.slice(0, 16));
  });

  Deno.test(`hf export of ${name}: all 32 greedy ids match transformers`, async () => {
    using model = await exportFixture(name);
    const oracle = oracleOf(name);
    const [greedy] = await generateGreedy(referenceEngine(model), [oracle.prompt_ids], { maxTokens: 32 });
    deepStrictEqual(greedy, oracle.greedy_ids);
  });
}

Deno.test("hf export: model info and a bf16 compute graph", async () => {
  using model = await hf.export(hf.options.parse({ path: "tiny-qwen2", dtype: "bf16" }), context(FIXTURES));
  deepStrictEqual(model.model, {
    architecture: "Qwen2ForCausalLM",
    vocabSize: 288,
    layers: 2,
    heads: 8,
    kvHeads: 4,
    headDim: 8,
    hidden: 64,
    maxPositions: 128,
  });
  deepStrictEqual(model.graph.types.get("logits"), { dtype: "bf16", shape: ["batch", "seq", 288] });
  deepStrictEqual(model.graph.types.get("past_k.1"), { dtype: "bf16", shape: ["batch", 4, "past", 8] });
  const [greedy] = await generateGreedy(referenceEngine(model), [[1, 2, 3]], { maxTokens: 2 });
  strictEqual(greedy.length, 2);
});

/** A copy of a fixture, changed by `edit`, in a fresh temporary folder. */
function copyFixture(name: string, edit: (dir: string) => void = () => {}): string {
  const dir = Deno.makeTempDirSync();
  for (const entry of Deno.readDirSync(join(FIXTURES, name))) {
    Deno.copyFileSync(join(FIXTURES, name, entry.name), join(dir, entry.name));
  }
  edit(dir);
  return dir;
}

function editConfig(dir: string, change: (config: Record<string, unknown>) => void): void {
  const config = JSON.parse(Deno.readTextFileSync(join(dir, "config.json")));
  change(config);
  Deno.writeTextFileSync(join(dir, "config.json"), JSON.stringify(config));
}

/** Asserts that exporting `dir` throws `kind` with a message that holds every one of `parts`. */
function exportFails(dir: string, kind: new (...args: never[]) => Error, ...parts: string[]): void {
  throws(() => exportCheckpoint(dir), (error: Error) => {
    ok(error instanceof kind, `expected ${kind.name}, got ${error.name}: ${error.message}`);
    for (const part of parts) ok(error.message.includes(part), `"${error.message}" should name ${part}`);
    return true;
  });
}

Deno.test("hf export: clear errors for checkpoints it cannot read", () => {
  const mistral = copyFixture(
    "tiny-llama",
    (dir) => editConfig(dir, (c) => (c.architectures = ["MistralForCausalLM"])),
  );
  exportFails(mistral, ExportError, "MistralForCausalLM", join(mistral, "config.json"), "LlamaForCausalLM");

  const empty = Deno.makeTempDirSync();
  exportFails(empty, ExportError, join(empty, "config.json"), "not found");

  const noShard = copyFixture(
    "tiny-llama",
    (dir) => Deno.removeSync(join(dir, "model-00003-of-00003.safetensors")),
  );
  exportFails(noShard, WeightError, join(noShard, "model-00003-of-00003.safetensors"));

  const lying = copyFixture("tiny-gpt2", (dir) => {
    const path = join(dir, "model.safetensors");
    const bytes = Deno.readFileSync(path);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(bytes.length), true);
    Deno.writeFileSync(path, bytes);
  });
  exportFails(lying, WeightError, join(lying, "model.safetensors"), "header claims");

  const scaled = copyFixture(
    "tiny-llama",
    (dir) =>
      editConfig(dir, (c) => (c.rope_parameters = { rope_type: "llama3", rope_theta: 500000, factor: 8 })),
  );
  exportFails(scaled, ExportError, "llama3", "rope");

  const wider = copyFixture("tiny-llama", (dir) => editConfig(dir, (c) => (c.intermediate_size = 256)));
  exportFails(wider, ExportError, "model.layers.0.mlp.gate_proj.weight", "[128,64]", "[256,64]");

  const missing = copyFixture("tiny-gpt2", (dir) => {
    const weights = new Map([["transformer.wte.weight", f32([256, 64])]]);
    writeSafetensors(join(dir, "model.safetensors"), weights);
  });
  exportFails(missing, ExportError, "transformer.wpe.weight", "missing");
});

Deno.test("hf export with init: a random checkpoint is written once, then generates varied text", async () => {
  const base = Deno.makeTempDirSync();
  const options = hf.options.parse({ path: "random", init: { preset: "tiny-llama", seed: 7 } });
  {
    using model = await hf.export(options, context(base));
    deepStrictEqual([...Deno.readDirSync(base)].map((entry) => entry.name), ["random"]);
    deepStrictEqual(model.model.layers, 2);
    ok(model.tokenizer, "the random checkpoint has a tokenizer");
    const prompt = model.tokenizer.encode("Once upon a time");
    const [greedy] = await generateGreedy(referenceEngine(model), [prompt], { maxTokens: 24 });
    ok(new Set(greedy).size >= 8, `greedy output ${greedy} should wander over many tokens`);
    strictEqual(typeof model.tokenizer.decode(greedy), "string");
  }
  const weights = Deno.readFileSync(join(base, "random", "model.safetensors"));
  using again = await hf.export(options, context(base));
  deepStrictEqual(Deno.readFileSync(join(base, "random", "model.safetensors")), weights);
  strictEqual(again.model.architecture, "LlamaForCausalLM");
});

Deno.test("initModel: same seed gives the same checkpoint; a non-empty folder is left alone", async () => {
  const base = Deno.makeTempDirSync();
  await initModel(join(base, "a"), { preset: "tiny-llama", seed: 3 });
  await initModel(join(base, "b"), { preset: "tiny-llama", seed: 3 });
  deepStrictEqual(
    Deno.readFileSync(join(base, "a", "model.safetensors")),
    Deno.readFileSync(join(base, "b", "model.safetensors")),
  );
  Deno.mkdirSync(join(base, "c"));
  Deno.writeTextFileSync(join(base, "c", "notes.txt"), "mine");
  await rejects(() => initModel(join(base, "c"), { preset: "tiny-llama", seed: 3 }), /not empty/);
  deepStrictEqual([...Deno.readDirSync(join(base, "c"))].map((entry) => entry.name), ["notes.txt"]);
  deepStrictEqual([...Deno.readDirSync(base)].map((entry) => entry.name).sort(), ["a", "b", "c"]);
});

Deno.test("hf options: unknown presets and dtypes are refused by the schema", async () => {
  strictEqual(hf.options.safeParse({ path: "x", dtype: "f64" }).success, false);
  strictEqual(hf.options.safeParse({ path: "x", init: { preset: "huge" } }).success, false);
  await rejects(
    () => hf.export(hf.options.parse({ path: "absent" }), context(Deno.makeTempDirSync())),
    ExportError,
  );
});
