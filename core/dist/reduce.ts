// The reduction every collective backend shares, so that all of them give bit-identical results:
// members combined in group-rank order, floats in f32 (cast back to their dtype), integers exactly.

import type { Reduction } from "../ir/ops/collective.ts";
import { castTensor, isFloat, numel, type Tensor, tensor, toF32 } from "../ir/tensor.ts";

/** Reduces parts in order: floats in f32 (cast back to their dtype), integers exactly (i32 sums wrap). */
export function reduceTensors(parts: Tensor[], reduce: Reduction): Tensor {
  const { dtype, shape } = parts[0];
  const count = numel(shape);
  if (isFloat(dtype)) {
    const acc = Float32Array.from(toF32(parts[0]));
    for (const part of parts.slice(1)) combine(acc, toF32(part), reduce);
    if (reduce === "avg") { for (let i = 0; i < count; i++) acc[i] /= parts.length; }
    return castTensor(tensor("f32", shape, acc), dtype);
  }
  if (dtype === "i32") {
    // Sums of i32 values stay exact in f64 for any realistic group size.
    const acc = Float64Array.from(parts[0].data as Int32Array);
    for (const part of parts.slice(1)) combine(acc, part.data as Int32Array, reduce);
    if (reduce === "avg") { for (let i = 0; i < count; i++) acc[i] = Math.trunc(acc[i] / parts.length); }
    return tensor("i32", shape, Int32Array.from(acc));
  }
  const acc = Array.from(parts[0].data as BigInt64Array);
  for (const part of parts.slice(1)) {
    const values = part.data as BigInt64Array;
    for (let i = 0; i < count; i++) {
      const v = values[i];
      if (reduce === "max") acc[i] = v > acc[i] ? v : acc[i];
      else if (reduce === "min") acc[i] = v < acc[i] ? v : acc[i];
      else acc[i] += v;
    }
  }
  const size = BigInt(parts.length);
  return tensor("i64", shape, BigInt64Array.from(acc, (v) => (reduce === "avg" ? v / size : v)));
}

function combine(acc: Float32Array | Float64Array, values: ArrayLike<number>, reduce: Reduction): void {
  const count = acc.length;
  if (reduce === "max") { for (let i = 0; i < count; i++) acc[i] = Math.max(acc[i], values[i]); }
  else if (reduce === "min") { for (let i = 0; i < count; i++) acc[i] = Math.min(acc[i], values[i]); }
  else for (let i = 0; i < count; i++) acc[i] += values[i];
}
