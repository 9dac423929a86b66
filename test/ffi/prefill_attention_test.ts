// rf_qkv_prepare then rf_attention on a prefill run against attention computed here: several
// prompts in one run (tiles of query rows that hold more than one slot), one of them continuing a
// slot whose earlier keys are already in the cache, at head sizes 16 to 128. f16 and bf16 go to
// the tensor-core kernel (prefill_attention.cu), f32 to the chunked one; the fixture models only
// reach head sizes 8 and 16.

import { ok } from "node:assert";
import { gpu } from "./gpu.ts";
import { check, cudart, deviceAlloc, deviceFree, download } from "../../ffi/cuda.ts";
import { check as checkKernel, KERNEL_DTYPE, kernels } from "../../ffi/kernels.ts";
import { type DType, tensor, toF32 } from "../../core/ir/tensor.ts";
import { attentionValues, noise, uploadAttention } from "./values.ts";

Deno.test({
  name: "gpu: rf_attention of a prefill run equals attention over the caches, for head sizes 16 to 128",
  ignore: !gpu,
  fn() {
    check(cudart().cudaSetDevice(0), "cudaSetDevice");
    const heads = 4, kvHeads = 2, group = heads / kvHeads, maxLen = 160;
    // [slot, first position, tokens]: the run's rows in this order; slot 3 continues after 37
    // positions already cached, and the second tile of 64 rows holds three slots
    const prompts = [[1, 0, 70], [0, 0, 10], [3, 37, 100]];
    const slots: number[] = [], positions: number[] = [];
    for (const [slot, first, count] of prompts) {
      for (let i = 0; i < count; i++) slots.push(slot), positions.push(first + i);
    }
    const tokens = slots.length;
    const cacheSlots = 4;
    for (const dtype of ["f32", "f16", "bf16"] as DType[]) {
      for (const headDim of [16, 32, 64, 128]) {
        const draw = noise(headDim * 17 + dtype.length);
        const scale = 1 / Math.sqrt(headDim);
        const shape = { tokens, heads, kvHeads, headDim, cacheSlots, maxLen };
        const values = attentionValues(draw, dtype, shape);
        const { qRow, kvRow, cacheSize, q, k, v, kCache, vCache, at } = values;

        // The caches as the run leaves them: each token's k and v at its slot and position.
        const kWant = Float32Array.from(kCache.seen), vWant = Float32Array.from(vCache.seen);
        for (let t = 0; t < tokens; t++) {
          for (let kvh = 0; kvh < kvHeads; kvh++) {
            const from = t * kvRow + kvh * headDim;
            kWant.set(k.seen.subarray(from, from + headDim), at(slots[t], kvh, positions[t]));
            vWant.set(v.seen.subarray(from, from + headDim), at(slots[t], kvh, positions[t]));
          }
        }
        const want = new Float64Array(tokens * qRow);
        for (let t = 0; t < tokens; t++) {
          for (let h = 0; h < heads; h++) {
            const kvh = Math.floor(h / group);
            const qh = q.seen.subarray(t * qRow + h * headDim, t * qRow + (h + 1) * headDim);
            const scores = Array.from({ length: positions[t] + 1 }, (_, j) => {
              const key = at(slots[t], kvh, j);
              let dot = 0;
              for (let d = 0; d < headDim; d++) dot += qh[d] * scale * kWant[key + d];
              return dot;
            });
            const top = Math.max(...scores);
            const weights = scores.map((s) => Math.exp(s - top));
            const total = weights.reduce((a, b) => a + b, 0);
            weights.forEach((w, j) => {
              const value = at(slots[t], kvh, j);
              for (let d = 0; d < headDim; d++) {
                want[t * qRow + h * headDim + d] += (w / total) * vWant[value + d];
              }
            });
          }
        }

        const k_ = kernels();
        const elem = dtype === "f32" ? 4 : 2;
        const scratchBytes = Number(k_.rf_attention_scratch_bytes(tokens, heads, headDim, maxLen));
        const buffers = {
          ...uploadAttention(values, slots, positions),
          qOut: deviceAlloc(tokens * qRow * elem),
          scratch: deviceAlloc(Math.max(scratchBytes, 4)),
          out: deviceAlloc(tokens * qRow * elem),
        };
        try {
          const kd = KERNEL_DTYPE[dtype as "f32" | "f16" | "bf16"];
          const { q: bq, k: bk, v: bv, kCache: kc, vCache: vc } = buffers;
          const sizes = [tokens, heads, kvHeads, headDim, maxLen] as const;
          checkKernel(
            k_.rf_qkv_prepare(
              kd,
              bq,
              qRow,
              bk,
              kvRow,
              bv,
              kvRow,
              buffers.qOut,
              kc,
              vc,
              buffers.slots,
              buffers.positions,
              0n,
              0,
              0,
              0,
              0,
              ...sizes,
              0n,
            ),
            "rf_qkv_prepare",
          );
          checkKernel(
            k_.rf_attention(
              kd,
              buffers.qOut,
              buffers.out,
              kc,
              vc,
              buffers.slots,
              buffers.positions,
              ...sizes,
              maxLen,
              scale,
              buffers.scratch,
              0n,
            ),
            "rf_attention",
          );
          check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
          const read = (pointer: bigint, length: number) => {
            const raw = dtype === "f32" ? new Float32Array(length) : new Uint16Array(length);
            download(raw, pointer);
            return toF32(tensor(dtype, [length], raw));
          };
          const kAfter = read(kc, cacheSize), vAfter = read(vc, cacheSize);
          ok(kAfter.every((x, i) => x === kWant[i]), `${dtype} head ${headDim}: the key cache`);
          ok(vAfter.every((x, i) => x === vWant[i]), `${dtype} head ${headDim}: the value cache`);
          const got = read(buffers.out, tokens * qRow);
          let worst = 0, largest = 0;
          for (let i = 0; i < want.length; i++) {
            worst = Math.max(worst, Math.abs(got[i] - want[i]));
            largest = Math.max(largest, Math.abs(want[i]));
          }
          const tolerance = { f32: 1e-4, f16: 2e-3, bf16: 1.6e-2 }[dtype as "f32" | "f16" | "bf16"];
          ok(worst <= tolerance * largest, `${dtype} head ${headDim}: error ${worst} of ${largest}`);
          console.log(
            `${dtype} head ${headDim}: error ${(worst / largest).toExponential(2)} of the largest output`,
          );
        } finally {
          for (const pointer of Object.values(buffers)) deviceFree(pointer);
        }
      }
    }
  },
});
