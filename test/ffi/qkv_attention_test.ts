// rf_qkv_attention (the qkv product and decode attention of one token in one launch) against the two
// launches it replaces, rf_gemv then rf_decode_attention, on the same inputs: the attention output,
// q, k and v, and both caches must be the same bits. Spans past 512 take the one launch (its
// tagged words then hold values), shorter ones the two launches (the words stay zero); several
// launches in a row check that each finds its own words and not the last one's.

import { deepStrictEqual, notDeepStrictEqual } from "node:assert";
import { gpu } from "./gpu.ts";
import { check, cudart, deviceAlloc, deviceFree, download, upload } from "../../ffi/cuda.ts";
import { check as checkKernel, KERNEL_DTYPE, kernels } from "../../ffi/kernels.ts";
import type { DType } from "../../core/ir/tensor.ts";
import { noise, stored } from "./values.ts";

Deno.test({
  name:
    "gpu: rf_qkv_attention gives the bits of rf_gemv then rf_decode_attention, in one launch past 512 positions",
  ignore: !gpu,
  fn() {
    check(cudart().cudaSetDevice(0), "cudaSetDevice");
    const k_ = kernels();
    const theta = 10000, eps = 1e-5;
    // k 2048 takes the one-row kernel at 2 warps a row, 4096 at 4; spans of 300 and 512 take 64-key
    // chunks (two launches), 600 and 1100 128-key chunks (one)
    const layouts = [
      { heads: 32, kvHeads: 8, headDim: 64, width: 2048 },
      { heads: 16, kvHeads: 4, headDim: 128, width: 4096 },
    ];
    const spans = [300, 512, 600, 1100];
    for (const { heads, kvHeads, headDim, width } of layouts) {
      for (const dtype of ["bf16", "f16"] as DType[]) {
        const n = (heads + 2 * kvHeads) * headDim;
        const draw = noise(width + headDim + dtype.length);
        const values = (length: number, scale = 1) =>
          stored(Float32Array.from({ length }, () => draw() * scale), dtype).bytes;
        const maxLen = Math.max(...spans);
        const cacheBytes = kvHeads * maxLen * headDim * 2;
        const cache = values(cacheBytes / 2);
        const put = (data: ArrayBufferView) => {
          const pointer = deviceAlloc(data.byteLength);
          upload(pointer, data);
          return pointer;
        };
        const zeros = (bytes: number) => put(new Uint8Array(bytes));
        const shared = {
          x: put(values(width)),
          norm: put(values(width, 2)),
          w: put(values(n * width, 1 / Math.sqrt(width))),
          slots: put(Int32Array.of(0)),
        };
        // each way its own caches, state and outputs
        const scratchBytes = Number(k_.rf_decode_attention_scratch_bytes(1, heads, headDim, maxLen));
        const way = () => ({
          kCache: put(cache),
          vCache: put(cache),
          position: zeros(4),
          qkv: zeros(n * 2),
          scratch: zeros(scratchBytes),
          counters: zeros(16 * kvHeads),
          words: zeros(n * 4),
          out: zeros(heads * headDim * 2),
        });
        const one = way(), two = way();
        const code = KERNEL_DTYPE[dtype as "f16" | "bf16"];
        const scale = 1 / Math.sqrt(headDim);
        const read = (pointer: bigint, bytes: number) => {
          const data = new Uint16Array(bytes / 2);
          download(data, pointer);
          return data;
        };
        try {
          for (const span of spans) {
            for (const position of [span - 3, span - 2, span - 1]) {
              const label =
                `${dtype} ${heads}/${kvHeads} heads, head ${headDim}, span ${span}, position ${position}`;
              upload(shared.x, values(width)); // new q, k and v each launch
              upload(one.position, Int32Array.of(position));
              upload(two.position, Int32Array.of(position));
              checkKernel(
                k_.rf_qkv_attention(
                  code,
                  shared.x,
                  shared.norm,
                  eps,
                  shared.w,
                  0n,
                  one.qkv,
                  width,
                  one.kCache,
                  one.vCache,
                  shared.slots,
                  one.position,
                  one.position,
                  1,
                  1,
                  1,
                  theta,
                  heads,
                  kvHeads,
                  headDim,
                  maxLen,
                  span,
                  scale,
                  one.scratch,
                  one.counters,
                  one.words,
                  one.out,
                  0n,
                ),
                "rf_qkv_attention",
              );
              checkKernel(
                k_.rf_gemv(
                  code,
                  1,
                  shared.x,
                  width,
                  shared.norm,
                  eps,
                  shared.w,
                  0n,
                  0n,
                  two.qkv,
                  n,
                  n,
                  width,
                  0,
                  0n,
                ),
                "rf_gemv",
              );
              const kAt = two.qkv + BigInt(heads * headDim * 2);
              const vAt = kAt + BigInt(kvHeads * headDim * 2);
              checkKernel(
                k_.rf_decode_attention(
                  code,
                  two.qkv,
                  n,
                  kAt,
                  n,
                  vAt,
                  n,
                  two.kCache,
                  two.vCache,
                  shared.slots,
                  two.position,
                  two.position,
                  1,
                  1,
                  1,
                  theta,
                  1,
                  heads,
                  kvHeads,
                  headDim,
                  maxLen,
                  span,
                  scale,
                  two.scratch,
                  two.counters,
                  two.out,
                  0n,
                ),
                "rf_decode_attention",
              );
              check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
              deepStrictEqual(
                read(one.out, heads * headDim * 2),
                read(two.out, heads * headDim * 2),
                `${label}: out`,
              );
              deepStrictEqual(read(one.qkv, n * 2), read(two.qkv, n * 2), `${label}: q, k and v`);
              deepStrictEqual(
                read(one.kCache, cacheBytes),
                read(two.kCache, cacheBytes),
                `${label}: k cache`,
              );
              deepStrictEqual(
                read(one.vCache, cacheBytes),
                read(two.vCache, cacheBytes),
                `${label}: v cache`,
              );
              const words = read(one.words, n * 4);
              if (span > 512) {
                notDeepStrictEqual(words, new Uint16Array(n * 2), `${label}: one launch, its words`);
              } else deepStrictEqual(words, new Uint16Array(n * 2), `${label}: two launches, no words`);
            }
          }
        } finally {
          for (const pointer of [...Object.values(shared), ...Object.values(one), ...Object.values(two)]) {
            deviceFree(pointer);
          }
        }
      }
    }
  },
});
