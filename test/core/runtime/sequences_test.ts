import { deepStrictEqual, ok, rejects } from "node:assert";
import hf from "../../../plugins/export/hf.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { readGraphWeights } from "../../../core/ir/weights.ts";
import { toF32 } from "../../../core/ir/tensor.ts";
import { generateGreedy, logitsOf } from "../../../core/runtime/generate.ts";
import { HostSequences } from "../../../core/runtime/sequences.ts";
import type { Engine } from "../../../core/runtime/engine.ts";

const FIXTURES = new URL("../../fixtures/", import.meta.url).pathname;

async function tinyLlama(): Promise<Engine> {
  const model = await hf.export(hf.options.parse({ path: "tiny-llama", dtype: "f32" }), {
    baseDir: FIXTURES,
    rank: 0,
    worldSize: 1,
    log: () => {},
  });
  return await cpuBackend().build(model.graph, readGraphWeights(model.graph, model.weights));
}

Deno.test("host sequences: prompts of different lengths in one batch give each one's own tokens", async () => {
  using engine = await tinyLlama();
  const prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13]];
  const together = await generateGreedy(engine, prompts, { maxTokens: 6 });
  for (const [index, prompt] of prompts.entries()) {
    deepStrictEqual(together[index], (await generateGreedy(engine, [prompt], { maxTokens: 6 }))[0]);
  }
});

Deno.test("host sequences: a step's logits equal the full forward pass at the last position", async () => {
  using engine = await tinyLlama();
  const ids = [3, 1, 4, 1, 5, 9];
  const full = await logitsOf(engine, ids);
  using pool = new HostSequences(engine, { slots: 2, maxLength: 16 });
  await pool.step([{ slot: 0, ids: ids.slice(0, 4), start: 0 }]);
  const last = toF32(await pool.step([{ slot: 0, ids: ids.slice(4), start: 4 }]));
  const error = Math.max(...full[5].map((value, i) => Math.abs(value - last[i])));
  ok(error < 1e-4, `max error ${error}`);
  // Starting again at 2 drops the rest of the slot's cache.
  const again = toF32(await pool.step([{ slot: 0, ids: ids.slice(2), start: 2 }]));
  ok(Math.max(...full[5].map((value, i) => Math.abs(value - again[i]))) < 1e-4);
});

Deno.test("host sequences: bad steps are refused with the slot named", async () => {
  using engine = await tinyLlama();
  using pool = new HostSequences(engine, { slots: 2, maxLength: 8 });
  await rejects(pool.step([{ slot: 2, ids: [1], start: 0 }]), /slot 2 is outside the pool's 2 slots/);
  await rejects(pool.step([{ slot: 0, ids: [1], start: 3 }]), /slot 0 holds 0 tokens/);
  await rejects(pool.step([{ slot: 1, ids: new Array(9).fill(1), start: 0 }]), /exceed the maximum length 8/);
  await rejects(
    pool.step([{ slot: 0, ids: [1], start: 0 }, { slot: 0, ids: [2], start: 0 }]),
    /appears twice/,
  );
});
