// The cpu reference engine on the quickstart model, prefill and decode, beside this machine's
// limits measured in the same run: the byte rate of a plain copy and the multiply-add rate of a
// tight JavaScript loop, whichever bounds each step.   deno task bench   (or: deno task bench cpu)

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

/** Bytes per second read and written by copying a 256 MiB array (best of 5). */
function copyBandwidth(): number {
  const from = new Float32Array(64 * 2 ** 20).fill(1);
  const to = new Float32Array(from.length);
  let best = Infinity;
  for (let repeat = 0; repeat < 5; repeat++) {
    const start = performance.now();
    to.set(from);
    best = Math.min(best, performance.now() - start);
  }
  return (2 * from.byteLength) / (best / 1000);
}

/** FLOP/s of a dot product over a cache-resident f32 array in a tight loop (best of 5). */
function loopFlops(): number {
  const a = new Float32Array(4096).fill(0.5);
  const b = new Float32Array(4096).fill(0.25);
  let best = Infinity;
  let sink = 0;
  for (let repeat = 0; repeat < 5; repeat++) {
    const start = performance.now();
    for (let pass = 0; pass < 2000; pass++) {
      let sum = 0;
      for (let i = 0; i < a.length; i++) sum += a[i] * b[i];
      sink += sum;
    }
    best = Math.min(best, performance.now() - start);
  }
  if (sink === -1) console.log(sink);
  return (2 * 4096 * 2000) / (best / 1000);
}

const bandwidth = copyBandwidth();
const peak = loopFlops();
const weightBytes = parameters * 4;

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
  // A matmul-dominated step does about 2 FLOPs per parameter per token and reads every weight once.
  const gflops = (tokens: number, ms: number) => ((2 * parameters * tokens) / (ms / 1000) / 1e9).toFixed(2);
  const floor = (tokens: number) =>
    1000 * Math.max(weightBytes / bandwidth, (2 * parameters * tokens) / peak);
  const row = (label: string, tokens: number, ms: number) => [
    label,
    ms.toFixed(1),
    gflops(tokens, ms),
    floor(tokens).toFixed(2),
    `${(ms / floor(tokens)).toFixed(1)}×`,
  ];
  rows.push(row(`prefill ${prompt}`, prompt, median(prefill)));
  rows.push(row(`decode @${prompt}`, 1, median(decode)));
}

console.log(
  `cpu engine, quickstart model (${(parameters / 1e6).toFixed(2)}M parameters, f32), median of 3 runs`,
);
console.log(
  `this machine: copy ${(bandwidth / 1e9).toFixed(1)} GB/s (read + write), ` +
    `a tight multiply-add loop ${(peak / 1e9).toFixed(2)} GFLOP/s; floor = the slower of bytes and FLOPs`,
);
console.log("| step | ms | GFLOP/s | floor ms | × floor |\n|---|---:|---:|---:|---:|");
for (const row of rows) console.log(`| ${row.join(" | ")} |`);
await Deno.remove(join(dir, ".."), { recursive: true });
