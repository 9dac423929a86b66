// Values for the kernel tests: repeatable draws, and what a dtype stores of them.

import { castTensor, type DType, tensor, toF32 } from "../../core/ir/tensor.ts";

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
