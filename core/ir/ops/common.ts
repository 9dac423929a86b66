// Helpers shared by the reference kernels: float results in the input's dtype, broadcasting,
// and attribute reading with errors that name the op.

import type { Attrs, AttrValue } from "../graph.ts";
import { castTensor, type Dim, type DType, type Tensor, tensor, type TensorType } from "../tensor.ts";
import { OpError } from "../registry.ts";

/** A float result computed in f32, stored in the dtype the op's inputs had. */
export function floatResult(dtype: DType, shape: number[], values: Float32Array): Tensor {
  return castTensor(tensor("f32", shape, values), dtype);
}

export function numberAttr(attrs: Attrs, key: string, op: string, fallback?: number): number {
  const value = attrs[key] ?? fallback;
  if (typeof value !== "number") {
    throw new OpError(`${op}: attribute ${key} must be a number, got ${show(value)}`);
  }
  return value;
}

export function stringAttr(attrs: Attrs, key: string, op: string, fallback?: string): string {
  const value = attrs[key] ?? fallback;
  if (typeof value !== "string") {
    throw new OpError(`${op}: attribute ${key} must be a string, got ${show(value)}`);
  }
  return value;
}

export function listAttr(attrs: Attrs, key: string, op: string): Array<number | string> {
  const value = attrs[key];
  if (!Array.isArray(value)) throw new OpError(`${op}: attribute ${key} must be a list, got ${show(value)}`);
  return value;
}

function show(value: AttrValue | undefined): string {
  return value === undefined ? "nothing" : JSON.stringify(value);
}

export function normalizeAxis(axis: number, rank: number, op: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new OpError(`${op}: axis ${axis} is out of range for rank ${rank}`);
  return a;
}

export function requireFloat(type: TensorType, op: string): void {
  if (type.dtype !== "f32" && type.dtype !== "f16" && type.dtype !== "bf16") {
    throw new OpError(`${op}: expected a float tensor, got ${type.dtype}`);
  }
}

/** Numpy-style broadcasting of two shapes, symbolic dims matching only themselves or 1. */
export function broadcastShapes(a: Dim[], b: Dim[], op: string): Dim[] {
  const rank = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    const x = a[a.length - rank + i] ?? 1;
    const y = b[b.length - rank + i] ?? 1;
    if (x === y || y === 1) out.push(x);
    else if (x === 1) out.push(y);
    else throw new OpError(`${op}: shapes [${a}] and [${b}] do not broadcast`);
  }
  return out;
}

/** Strides of `shape` as seen from a broadcast result of rank `rank` (0 where broadcast). */
export function broadcastStrides(shape: number[], out: number[]): number[] {
  const strides = new Array(out.length).fill(0);
  let stride = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const axis = out.length - shape.length + i;
    strides[axis] = shape[i] === 1 && out[axis] !== 1 ? 0 : stride;
    stride *= shape[i];
  }
  return strides;
}

export function concreteBroadcast(a: number[], b: number[], op: string): number[] {
  return broadcastShapes(a, b, op) as number[];
}
