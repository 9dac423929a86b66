// Values for the kernel tests: repeatable draws, what a dtype stores of them, and attention's
// inputs on the device.

import { castTensor, type DType, tensor, toF32 } from "../../core/ir/tensor.ts";
import { deviceAlloc, upload } from "../../ffi/cuda.ts";

/** Deterministic uniform draws in [-1, 1), so a failure repeats. */
export function noise(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2147483648 - 1;
  };
}

/** The values `dtype` stores for `values`: their bytes, and the values those bytes hold. */
export function stored(values: Float32Array, dtype: DType): { bytes: ArrayBufferView; seen: Float32Array } {
  const cast = castTensor(tensor("f32", [values.length], values), dtype);
  return { bytes: cast.data, seen: toF32(cast) };
}

/** The sizes of an attention test: its tokens and heads, and its caches' slots and positions. */
export interface AttentionShape {
  tokens: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  cacheSlots: number;
  maxLen: number;
}

/**
 * q, k and v of each token and the k and v caches (drawn in that order from `draw`), as `dtype`
 * stores them; `at` is where a slot's kv head's position starts in a cache of `cacheSize` values.
 */
export function attentionValues(draw: () => number, dtype: DType, shape: AttentionShape) {
  const { tokens, heads, kvHeads, headDim, cacheSlots, maxLen } = shape;
  const qRow = heads * headDim, kvRow = kvHeads * headDim;
  const values = (length: number) => stored(Float32Array.from({ length }, draw), dtype);
  const q = values(tokens * qRow);
  const k = values(tokens * kvRow);
  const v = values(tokens * kvRow);
  const cacheSize = cacheSlots * kvHeads * maxLen * headDim;
  const kCache = values(cacheSize);
  const vCache = values(cacheSize);
  const at = (slot: number, kvh: number, j: number) => ((slot * kvHeads + kvh) * maxLen + j) * headDim;
  return { qRow, kvRow, cacheSize, q, k, v, kCache, vCache, at };
}

/** An attention test's inputs in device memory: q, k, v, both caches, each token's slot and position. */
export function uploadAttention(
  values: ReturnType<typeof attentionValues>,
  slots: number[],
  positions: number[],
): Record<"q" | "k" | "v" | "kCache" | "vCache" | "slots" | "positions", bigint> {
  const put = (data: ArrayBufferView) => {
    const pointer = deviceAlloc(data.byteLength);
    upload(pointer, data);
    return pointer;
  };
  return {
    q: put(values.q.bytes),
    k: put(values.k.bytes),
    v: put(values.v.bytes),
    kCache: put(values.kCache.bytes),
    vCache: put(values.vCache.bytes),
    slots: put(Int32Array.from(slots)),
    positions: put(Int32Array.from(positions)),
  };
}
