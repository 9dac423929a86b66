// The cpu reference engine on the quickstart model, prefill and decode, with the arithmetic rate
// it reaches.   deno task bench   (or: deno task bench cpu)

import { join } from "node:path";
import { exportCheckpoint } from "../plugins/export/hf.ts";
import { initModel } from "../plugins/export/hf_random.ts";
import { cpuBackend } from "../plugins/engines/cpu.ts";
import { emptyCaches, lastArgmax, step } from "../core/runtime/generate.ts";
import { readGraphWeights } from "../core/ir/weights.ts";

const dir = join(await Deno.makeTempDir(), "quickstart");
await initModel(dir, { preset: "quickstart", seed: 7 });
using exported = exportCheckpoint(dir);
const engine = await cpuBackend().build(exported.graph, readGraphWeights(exported.graph, exported.weights));
const parameters = exported.graph.weights.reduce(
  (n, w) => n + (w.type.shape as number[]).reduce((a, b) => a * b, 1),
  0,
);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const rows: string[][] = [];
for (const prompt of [16, 64]) {
  const ids = Array.from({ length: prompt }, (_, i) => (i * 37) % 256);
  const prefill: number[] = [];
  const decode: number[] = [];
  for (let repeat = 0; repeat < 3; repeat++) {
    let start = performance.now();
    let { logits, caches } = await step(engine, [ids], 0, emptyCaches(engine, 1));
    prefill.push(performance.now() - start);
    for (let n = 0; n < 8; n++) {
      start = performance.now();
      ({ logits, caches } = await step(engine, lastArgmax(logits).map((t) => [t]), prompt + n, caches));
      decode.push(performance.now() - start);
    }
  }
  // A matmul-dominated step does about 2 FLOPs per parameter per token.
  const gflops = (tokens: number, ms: number) => ((2 * parameters * tokens) / (ms / 1000) / 1e9).toFixed(2);
  rows.push([`prefill ${prompt}`, median(prefill).toFixed(1), gflops(prompt, median(prefill))]);
  rows.push([`decode @${prompt}`, median(decode).toFixed(1), gflops(1, median(decode))]);
}

console.log(
  `cpu engine, quickstart model (${(parameters / 1e6).toFixed(2)}M parameters, f32), median of 3 runs`,
);
console.log("| step | ms | GFLOP/s |\n|---|---:|---:|");
for (const row of rows) console.log(`| ${row.join(" | ")} |`);
await Deno.remove(join(dir, ".."), { recursive: true });
