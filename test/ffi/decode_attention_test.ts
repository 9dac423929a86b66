// rf_decode_attention on the GPU against attention computed here from the same stored values: the
// fixture models' heads (8 and 16 dimensions) leave the head sizes of real models untested, so this
// covers 64, 80, 96 and 128 in f32, f16 and bf16, chunks of 64 and of 128 keys, tokens whose keys
// fit one chunk and tokens whose chunks are merged (up to 17; by the first chunk's block, or by the
// last block where the merging blocks would fill half the GPU), the cache writes, the merge state
// each launch leaves, and the partials a shorter launch clears.

import { deepStrictEqual, ok } from "node:assert";
import { gpu } from "./gpu.ts";
import { check, cudart, deviceAlloc, deviceFree, download, upload } from "../../ffi/cuda.ts";
import { check as checkKernel, KERNEL_DTYPE, kernels } from "../../ffi/kernels.ts";
import { type DType, tensor, toF32 } from "../../core/ir/tensor.ts";
import { attentionValues, noise, stored, uploadAttention } from "./values.ts";

const round = (values: number[], dtype: DType) => Array.from(stored(Float32Array.from(values), dtype).seen);

Deno.test({
  name:
    "gpu: rf_decode_attention equals attention over the cache, for head sizes 64 to 128, groups of 4 and 8, chunks of 64 and 128 keys, merged",
  ignore: !gpu,
  fn() {
    check(cudart().cudaSetDevice(0), "cudaSetDevice");
    const theta = 10000;
    // Positions on both sides of chunk edges, in caches of maxLen positions, the span each launch
    // covers. The span picks the chunks: up to 512 positions, 64 keys where tokens × kv heads are
    // under 32 (up to 8 chunks, more than the 3 partials a thread of the merge loads at a time);
    // past it 128 keys (up to 17 chunks).
    // 8 q heads over 2 kv heads, head size 72 taking the scalar path in f16/bf16 (tensor cores need
    // multiples of 16); 32 over 4: groups of 8, 128-key chunks at both spans
    const layouts = [
      { heads: 8, kvHeads: 2, headDims: [64, 72, 80, 96, 128] },
      { heads: 32, kvHeads: 4, headDims: [64, 128] },
    ];
    const cases = [
      { positions: [0, 63, 64, 127, 200, 255, 256, 400, 511], maxLen: 512, layouts },
      { positions: [0, 63, 64, 255, 256, 599, 2047, 2048, 2099], maxLen: 2100, layouts },
      // 64 tokens × 8 kv heads: 512 merging blocks, more than half of what a GPU of 132
      // multiprocessors holds, so the last block of each token and kv head merges
      {
        positions: Array.from({ length: 64 }, (_, i) => (i * 37) % 300),
        maxLen: 300,
        layouts: [{ heads: 32, kvHeads: 8, headDims: [64] }],
      },
    ];
    for (const { positions, maxLen, layouts } of cases) {
      const span = maxLen;
      const tokens = positions.length;
      // distinct (3 and tokens + 1 have no common factor), not in order
      const slots = positions.map((_, i) => (i * 3 + 2) % (tokens + 1));
      const cacheSlots = tokens + 1;
      for (const { heads, kvHeads, headDims } of layouts) {
        for (const dtype of ["f32", "f16", "bf16"] as DType[]) {
          const group = heads / kvHeads;
          for (const headDim of headDims) {
            const label = `${dtype} ${heads}/${kvHeads} heads, head ${headDim}, span ${span}`;
            const draw = noise(headDim * 31 + dtype.length);
            const half = headDim / 2;
            const scale = 1 / Math.sqrt(headDim);
            const shape = { tokens, heads, kvHeads, headDim, cacheSlots, maxLen };
            const values = attentionValues(draw, dtype, shape);
            const { qRow, kvRow, cacheSize, q, k, v, kCache, vCache, at } = values;

            // The reference: rotate q and the new k (f64 angles, then rounded as the kernel rounds),
            // attend over the cached keys before the position and the new one.
            const want = new Float64Array(tokens * qRow);
            const newK: number[][] = []; // [token * kvHeads + kvh] rotated, rounded
            for (let t = 0; t < tokens; t++) {
              const pos = positions[t];
              const angle = (d: number) => pos / Math.pow(theta, (2 * d) / headDim);
              const rotate = (row: Float32Array) => {
                const out = new Array<number>(headDim);
                for (let d = 0; d < half; d++) {
                  const [c, s] = [Math.cos(angle(d)), Math.sin(angle(d))];
                  out[d] = row[d] * c - row[d + half] * s;
                  out[d + half] = row[d + half] * c + row[d] * s;
                }
                return round(out, dtype);
              };
              for (let kvh = 0; kvh < kvHeads; kvh++) {
                newK[t * kvHeads + kvh] = rotate(
                  k.seen.subarray(t * kvRow + kvh * headDim, t * kvRow + (kvh + 1) * headDim),
                );
              }
              for (let h = 0; h < heads; h++) {
                const kvh = Math.floor(h / group);
                const qh = rotate(q.seen.subarray(t * qRow + h * headDim, t * qRow + (h + 1) * headDim));
                const keyOf = (j: number) =>
                  j === pos
                    ? newK[t * kvHeads + kvh]
                    : kCache.seen.subarray(at(slots[t], kvh, j), at(slots[t], kvh, j) + headDim);
                const valueOf = (j: number) =>
                  j === pos
                    ? v.seen.subarray(t * kvRow + kvh * headDim, t * kvRow + (kvh + 1) * headDim)
                    : vCache.seen.subarray(at(slots[t], kvh, j), at(slots[t], kvh, j) + headDim);
                const scores = Array.from({ length: pos + 1 }, (_, j) => {
                  const key = keyOf(j);
                  let dot = 0;
                  for (let d = 0; d < headDim; d++) dot += qh[d] * scale * key[d];
                  return dot;
                });
                const top = Math.max(...scores);
                const weights = scores.map((s) => Math.exp(s - top));
                const total = weights.reduce((a, b) => a + b, 0);
                for (let j = 0; j <= pos; j++) {
                  const value = valueOf(j);
                  for (let d = 0; d < headDim; d++) {
                    want[t * qRow + h * headDim + d] += (weights[j] / total) * value[d];
                  }
                }
              }
            }

            const k_ = kernels();
            const scratchBytes = Number(k_.rf_decode_attention_scratch_bytes(tokens, heads, headDim, maxLen));
            const buffers = {
              ...uploadAttention(values, slots, positions),
              scratch: deviceAlloc(scratchBytes),
              counters: deviceAlloc(16 * tokens * kvHeads),
              out: deviceAlloc(tokens * qRow * (dtype === "f32" ? 4 : 2)),
            };
            try {
              upload(buffers.counters, new Int32Array(4 * tokens * kvHeads));
              upload(buffers.scratch, new Uint8Array(scratchBytes));
              const outs: Float32Array[] = [];
              const launch = () => {
                checkKernel(
                  k_.rf_decode_attention(
                    KERNEL_DTYPE[dtype as "f32" | "f16" | "bf16"],
                    buffers.q,
                    qRow,
                    buffers.k,
                    kvRow,
                    buffers.v,
                    kvRow,
                    buffers.kCache,
                    buffers.vCache,
                    buffers.slots,
                    buffers.positions,
                    buffers.positions,
                    tokens,
                    1,
                    1,
                    theta,
                    tokens,
                    heads,
                    kvHeads,
                    headDim,
                    maxLen,
                    span,
                    scale,
                    buffers.scratch,
                    buffers.counters,
                    buffers.out,
                    0n,
                  ),
                  "rf_decode_attention",
                );
                check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
                const raw = dtype === "f32"
                  ? new Float32Array(tokens * qRow)
                  : new Uint16Array(tokens * qRow);
                download(raw, buffers.out);
                outs.push(toF32(tensor(dtype, [tokens * qRow], raw)));
              };
              // Each launch leaves, per token and kv head, its tag (the generation), the chunks it
              // used and no arrivals counted; its words carry the tag, and past its chunks the
              // words are 0.
              const keysPerChunk = tokens * kvHeads >= 32 || span > 512 ? 128 : 64;
              const places = Math.ceil(maxLen / 64);
              const checkState = (generation: number, at: number[], what: string) => {
                const state = new Int32Array(4 * tokens * kvHeads);
                download(state, buffers.counters);
                const used = at.map((p) => Math.floor(p / keysPerChunk) + 1);
                deepStrictEqual(
                  [...state],
                  Array.from(
                    { length: tokens * kvHeads },
                    (_, i) => [generation, used[Math.floor(i / kvHeads)], 0, 0],
                  )
                    .flat(),
                  `${label}: ${what}: the merge state`,
                );
                const halves = new Uint32Array(scratchBytes / 4); // a word's tag is its upper half
                download(halves, buffers.scratch);
                let wrong = 0;
                for (let w = 0; w < halves.length / 2; w++) {
                  const c = Math.floor(w / (headDim + 2)) % places;
                  const t = Math.floor(w / ((headDim + 2) * places * heads));
                  if (halves[2 * w + 1] !== (c < used[t] ? generation : 0)) wrong++;
                }
                deepStrictEqual(wrong, 0, `${label}: ${what}: words with a wrong tag`);
              };
              launch();
              checkState(1, positions, "first launch");
              launch(); // finds the first launch's words, with the tag before its own
              deepStrictEqual(
                outs[1],
                outs[0],
                `${label}: a second launch gives the same output`,
              );
              checkState(2, positions, "second launch");

              let worst = 0, largest = 0;
              for (let i = 0; i < want.length; i++) {
                worst = Math.max(worst, Math.abs(outs[0][i] - want[i]));
                largest = Math.max(largest, Math.abs(want[i]));
              }
              const tolerance = { f32: 1e-4, f16: 2e-3, bf16: 1.6e-2 }[dtype as "f32" | "f16" | "bf16"];
              ok(worst <= tolerance * largest, `${label}: error ${worst} of ${largest}`);

              // the new k (rotated) and v at each token's position of its slot, other rows untouched
              const cached = dtype === "f32" ? new Float32Array(cacheSize) : new Uint16Array(cacheSize);
              download(cached, buffers.kCache);
              const kAfter = toF32(tensor(dtype, [cacheSize], cached));
              let mismatched = 0;
              for (let t = 0; t < tokens; t++) {
                for (let kvh = 0; kvh < kvHeads; kvh++) {
                  const row = at(slots[t], kvh, positions[t]);
                  for (let d = 0; d < headDim; d++) {
                    const expected = newK[t * kvHeads + kvh][d];
                    // the device's f32 angle may round the last bit differently
                    if (Math.abs(kAfter[row + d] - expected) > 1e-2 * Math.max(1, Math.abs(expected))) {
                      mismatched++;
                    }
                    kAfter[row + d] = kCache.seen[row + d];
                  }
                }
              }
              deepStrictEqual(mismatched, 0, `${label}: new keys in the cache`);
              ok(
                kAfter.every((x, i) => x === kCache.seen[i]),
                `${label}: no other key row changed`,
              );
              download(cached, buffers.vCache);
              const vAfter = toF32(tensor(dtype, [cacheSize], cached));
              const vWant = Float32Array.from(vCache.seen);
              positions.forEach((pos, t) => {
                for (let kvh = 0; kvh < kvHeads; kvh++) {
                  vWant.set(
                    v.seen.subarray(t * kvRow + kvh * headDim, t * kvRow + (kvh + 1) * headDim),
                    at(slots[t], kvh, pos),
                  );
                }
              });
              ok(
                vAfter.every((x, i) => x === vWant[i]),
                `${label}: the value cache holds the new values`,
              );
              // tokens at the cache's first chunk: the words past it are cleared, and nothing with
              // the tag of the launch before is left
              const early = positions.map((p) => p % 64);
              upload(buffers.positions, Int32Array.from(early));
              launch();
              checkState(3, early, "a third launch at earlier positions");
              console.log(
                `${label}: error ${(worst / largest).toExponential(2)} of the largest output`,
              );
            } finally {
              for (const pointer of Object.values(buffers)) deviceFree(pointer);
            }
          }
        }
      }
    }
  },
});
