import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { loadPipeline } from "../../../core/pipeline/pipeline.ts";
import { describePlan, formatBytes, planMemory } from "../../../core/pipeline/plan.ts";
import { modelFixture, writePipeline } from "./helpers.ts";

const MODEL = modelFixture("tiny-llama");
// tiny-llama: hidden 64, 2 layers, 4 heads and 2 KV heads of 16, intermediate 128, vocab 256, f32.
const PARAMETERS = 4 * (256 * 64 * 2 + 64 + 2 * (2 * 64 + 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3));

async function pipeline(world: string, compile = "{ use: cpu }") {
  return await loadPipeline(
    await writePipeline(
      [
        `world: ${world}`,
        `export: { use: hf, path: ${MODEL} }`,
        `lower: [{ use: tensor-parallel, plan: auto }]`,
        `compile: ${compile}`,
        `serve: { use: generate, ids: [1] }`,
      ].join("\n"),
    ),
  );
}

Deno.test("plan: parameters and KV cache per rank follow the model's shapes and the profiles", async () => {
  const one = (await planMemory(await pipeline("{ tp: 1 }")))!;
  deepStrictEqual([one.batch, one.sequence], [1, 128]);
  strictEqual(one.ranks[0].parameterBytes, PARAMETERS);
  // 2 layers × (k + v) × 2 KV heads × 16 × 4 bytes per token, 128 tokens.
  strictEqual(one.ranks[0].kvCacheBytes, 2 * 2 * 2 * 16 * 4 * 128);
  ok(one.ranks[0].activationBytes > 128 * 256 * 4, "the logits of a full prefill are alive at the end");

  const two = (await planMemory(
    await pipeline(
      "{ tp: 2, dp: 2 }",
      "{ use: cpu, dtype: bf16, profiles: { batch: [1, 2, 4], seq: [1, 8, 64] } }",
    ),
  ))!;
  deepStrictEqual([two.batch, two.sequence, two.ranks.length], [4, 64, 2]);
  // Each rank keeps one KV head per layer, in bf16, for 4 sequences of 64 tokens.
  strictEqual(two.ranks[0].kvCacheBytes, 2 * 2 * 1 * 16 * 2 * 64 * 4);
  ok(two.ranks[0].parameterBytes < PARAMETERS / 2, "half the layers' weights, in half the bytes each");
  const lines = describePlan(await pipeline("{ tp: 2, dp: 2 }"), two);
  ok(lines[0].startsWith("plan: dp 2 × tp 2 = 4 ranks"), lines[0]);
  ok(lines[2].startsWith("  0,2 "), lines[2]);
  ok(lines[3].startsWith("  1,3 "), lines[3]);
});

Deno.test("plan: bytes read as people write them", () => {
  deepStrictEqual([0, 1023, 1024, 1536, 10 * 2 ** 20, 3 * 2 ** 30].map(formatBytes), [
    "0 B",
    "1023 B",
    "1.00 KiB",
    "1.50 KiB",
    "10.0 MiB",
    "3.00 GiB",
  ]);
});
