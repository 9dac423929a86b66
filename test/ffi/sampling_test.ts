// rf_sample on the GPU against the host's rule (sampleLogits in core/serve/sampling.ts): for the same
// logits, choices and uniform draws, the device must pick the same token, ties and cuts included.

import { deepStrictEqual, ok } from "node:assert";
import { gpu } from "./gpu.ts";
import { check, cudart, deviceAlloc, deviceFree, download, upload } from "../../ffi/cuda.ts";
import { check as checkKernel, KERNEL_DTYPE, kernels } from "../../ffi/kernels.ts";
import { castTensor, type DType, tensor, toF32 } from "../../core/ir/tensor.ts";
import { sampleLogits } from "../../core/serve/sampling.ts";

/** Deterministic normal-ish draws, so a failure repeats. */
function noise(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const a = state / 4294967296;
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const b = state / 4294967296;
    return Math.sqrt(-2 * Math.log(a + 1e-12)) * Math.cos(2 * Math.PI * b);
  };
}

/** Rows of logits with ties where the cuts fall: a tied maximum, a tied run, -0 beside +0. */
function logitRows(rows: number, vocab: number): Float32Array {
  const out = new Float32Array(rows * vocab);
  const draw = noise(7);
  for (let r = 0; r < rows; r++) {
    const row = out.subarray(r * vocab, (r + 1) * vocab);
    for (let i = 0; i < vocab; i++) row[i] = 2.5 * draw();
    if (r % 3 === 1) { for (const i of [11, 4000, vocab - 1]) row[i] = 9; // three tied maxima
     }
    if (r % 3 === 2) {
      for (let i = 100; i < 160; i++) row[i] = 5.25; // 60 ties, above most of the rest
      row[7] = -0;
      row[8] = 0;
    }
  }
  return out;
}

Deno.test({
  name: "gpu: rf_sample draws the host rule's token (top_k, top_p, temperature, ties) in f32 and bf16",
  ignore: !gpu,
  fn() {
    check(cudart().cudaSetDevice(0), "cudaSetDevice");
    // GPT-2's vocabulary (7 blocks a row) in every combination; Llama 3's (16 blocks) in every 11th
    for (const [vocab, every] of [[50257, 1], [128256, 11]]) {
      const choices: { temperature: number; topK: number; topP: number; uniform: number }[] = [];
      for (const temperature of [0.6, 1, 1.7]) {
        for (const topK of [0, 1, 3, 40, 70, vocab]) {
          for (const topP of [1, 0.9, 0.4, 0.02]) {
            for (const uniform of [0, 0.3141, 0.77, 0.999999]) {
              choices.push({ temperature, topK, topP, uniform });
            }
          }
        }
      }
      const picked = choices.filter((_, i) => i % every === 0);
      choices.splice(0, choices.length, ...picked);
      const rows = choices.length;
      const values = logitRows(rows, vocab);
      for (const dtype of ["f32", "bf16"] as DType[]) {
        const stored = castTensor(tensor("f32", [rows, vocab], values), dtype);
        const seen = toF32(stored); // the values the device reads
        const logits = deviceAlloc(stored.data.byteLength);
        const params = deviceAlloc(32 * rows);
        const scratchBytes = Number(kernels().rf_sample_scratch_bytes(rows, vocab));
        ok(scratchBytes > 0, "this GPU can sample such rows");
        const scratch = deviceAlloc(scratchBytes);
        const ids = deviceAlloc(4 * rows);
        try {
          upload(logits, stored.data);
          upload(scratch, new Uint8Array(scratchBytes)); // zero before the first launch
          upload(
            params,
            Float64Array.from(choices.flatMap((c) => [c.temperature, c.topK, c.topP, c.uniform])),
          );
          const launches: Int32Array[] = [];
          for (let launch = 0; launch < 2; launch++) { // the second finds the scratch as the first left it
            checkKernel(
              kernels().rf_sample(
                KERNEL_DTYPE[dtype as "f32" | "bf16"],
                logits,
                vocab,
                rows,
                vocab,
                params,
                scratch,
                ids,
                0n,
              ),
              "rf_sample",
            );
            check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
            const got = new Int32Array(rows);
            download(got, ids);
            launches.push(got);
          }
          const got = launches[0];
          deepStrictEqual(launches[1], got, `${dtype}: a second launch draws the same tokens`);
          const want = choices.map((choice, r) =>
            sampleLogits(seen.subarray(r * vocab, (r + 1) * vocab), choice, choice.uniform)
          );
          const differ = want.flatMap((
            id,
            r,
          ) => (id === got[r] ? [] : [{ row: r, ...choices[r], want: id, got: got[r] }]));
          deepStrictEqual(differ, [], `${dtype}: ${differ.length} of ${rows} draws differ`);
          ok(new Set(want).size > Math.min(20, rows / 4), "the cases draw many different tokens");
          console.log(`${dtype}, vocabulary ${vocab}: ${rows} draws, all equal to the host's`);
        } finally {
          for (const pointer of [logits, params, scratch, ids]) deviceFree(pointer);
        }
      }
    }
  },
});

/** The host's argmax: the first index of the largest value; 0 where nothing compares larger than -inf. */
function firstMax(row: Float32Array): number {
  let best = -Infinity;
  let index = -1;
  row.forEach((v, i) => {
    if (v > best) [best, index] = [v, i];
  });
  return Math.max(index, 0);
}

Deno.test({
  name: "gpu: rf_argmax picks the first largest value, vector and element paths, NaN and -inf rows",
  ignore: !gpu,
  fn() {
    check(cudart().cudaSetDevice(0), "cudaSetDevice");
    // aligned rows of Llama 3's vocabulary (vectors), padded rows with a tail, odd rows (elements)
    for (const [width, ld] of [[128256, 128256], [1003, 1008], [50257, 50257]]) {
      const rows = 6;
      const values = new Float32Array(rows * ld);
      const draw = noise(width);
      for (let i = 0; i < values.length; i++) values[i] = 4 * draw();
      const row = (r: number) => values.subarray(r * ld, r * ld + width);
      for (const i of [width - 1, 17, 900]) row(1)[i] = 100; // tied maxima: the first wins
      row(2).fill(NaN);
      row(3).fill(-Infinity);
      row(4).fill(1.5); // every value tied
      row(5)[width - 1] = 100; // the largest in the tail
      for (const dtype of ["f32", "f16", "bf16"] as const) {
        const cast = castTensor(tensor("f32", [values.length], values), dtype);
        const seen = toF32(cast);
        const want = Array.from({ length: rows }, (_, r) => firstMax(seen.subarray(r * ld, r * ld + width)));
        const x = deviceAlloc(cast.data.byteLength);
        const ids = deviceAlloc(4 * rows);
        try {
          upload(x, cast.data);
          checkKernel(kernels().rf_argmax(KERNEL_DTYPE[dtype], x, ld, ids, rows, width, 0n), "rf_argmax");
          check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
          const got = new Int32Array(rows);
          download(got, ids);
          deepStrictEqual([...got], want, `${dtype}, width ${width} in rows of ${ld}`);
        } finally {
          deviceFree(x);
          deviceFree(ids);
        }
      }
    }
  },
});
