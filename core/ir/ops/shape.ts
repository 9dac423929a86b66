// Data movement: reshape, transpose, concat and slice, for tensors of any dtype.

import { OpError, registerOp } from "../registry.ts";
import { allocate, type Dim, numel, type Tensor, tensor } from "../tensor.ts";
import { addDims, evalDim, mulDim } from "../dims.ts";
import { listAttr, normalizeAxis, numberAttr } from "./common.ts";

registerOp({
  name: "reshape",
  doc: "same elements in attribute shape (fixed sizes, symbolic names, at most one -1)",
  arity: [1, 1],
  infer([x], attrs) {
    const target = listAttr(attrs, "shape", "reshape") as Dim[];
    if (target.filter((d) => d === -1).length > 1) throw new OpError("reshape: at most one -1");
    if (!target.includes(-1)) return [{ dtype: x.dtype, shape: target }];
    // The -1 takes what is left: the input's symbolic sizes the target does not name, times the
    // input's fixed sizes divided by the target's.
    const symbolic = x.shape.filter((d) => typeof d === "string") as string[];
    let factor = x.shape.reduce<number>((p, d) => (typeof d === "number" ? p * d : p), 1);
    for (const dim of target) {
      if (dim === -1) continue;
      if (typeof dim === "number") factor /= dim;
      else if (symbolic.includes(dim)) symbolic.splice(symbolic.indexOf(dim), 1);
      else throw new OpError(`reshape: symbolic size ${dim} is not in [${x.shape}]`);
    }
    if (!Number.isInteger(factor)) throw new OpError(`reshape: [${x.shape}] does not fit [${target}]`);
    if (symbolic.length > 1) throw new OpError(`reshape: cannot merge symbolic sizes ${symbolic}`);
    const inferred: Dim = symbolic.length ? mulDim(symbolic[0], factor) : factor;
    return [{ dtype: x.dtype, shape: target.map((d) => (d === -1 ? inferred : d)) }];
  },
  run([x], attrs, env) {
    const target = (attrs.shape as Dim[]).map((d) => (d === -1 ? -1 : evalDim(d, env.dims)));
    const known = target.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
    const shape = target.map((d) => (d === -1 ? numel(x.shape) / known : d));
    if (numel(shape) !== numel(x.shape)) throw new OpError(`reshape: [${x.shape}] cannot become [${shape}]`);
    return [tensor(x.dtype, shape, x.data)];
  },
});

registerOp({
  name: "transpose",
  doc: "permutes axes by attribute perm",
  arity: [1, 1],
  infer([x], attrs) {
    const perm = permOf(attrs.perm, x.shape.length);
    return [{ dtype: x.dtype, shape: perm.map((p) => x.shape[p]) }];
  },
  run([x], attrs) {
    const perm = permOf(attrs.perm, x.shape.length);
    const shape = perm.map((p) => x.shape[p]);
    const inStrides = strides(x.shape);
    const permStrides = perm.map((p) => inStrides[p]);
    const out = allocate(x.dtype, x.data.length);
    const index = new Array(shape.length).fill(0);
    let source = 0;
    for (let i = 0; i < out.length; i++) {
      out[i] = x.data[source];
      for (let axis = shape.length - 1; axis >= 0; axis--) {
        index[axis]++;
        source += permStrides[axis];
        if (index[axis] < shape[axis]) break;
        source -= permStrides[axis] * shape[axis];
        index[axis] = 0;
      }
    }
    return [tensor(x.dtype, shape, out)];
  },
});

function permOf(value: unknown, rank: number): number[] {
  const perm = value as number[];
  if (!Array.isArray(perm) || perm.length !== rank || [...perm].sort().some((p, i) => p !== i)) {
    throw new OpError(`transpose: perm ${JSON.stringify(value)} is not a permutation of ${rank} axes`);
  }
  return perm;
}

function strides(shape: number[]): number[] {
  const out = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) out[i] = out[i + 1] * shape[i + 1];
  return out;
}

registerOp({
  name: "concat",
  doc: "joins inputs along attribute axis",
  arity: [1, 64],
  infer(inputs, attrs) {
    const rank = inputs[0].shape.length;
    const axis = normalizeAxis(numberAttr(attrs, "axis", "concat"), rank, "concat");
    let size: Dim = 0;
    for (const t of inputs) {
      if (t.dtype !== inputs[0].dtype) throw new OpError("concat: inputs differ in dtype");
      if (t.shape.length !== rank || t.shape.some((d, i) => i !== axis && d !== inputs[0].shape[i])) {
        throw new OpError(`concat: [${t.shape}] does not fit [${inputs[0].shape}] off axis ${axis}`);
      }
      size = addDims(size, t.shape[axis]);
    }
    return [{ dtype: inputs[0].dtype, shape: inputs[0].shape.map((d, i) => (i === axis ? size : d)) }];
  },
  run(inputs, attrs) {
    return [concatTensors(inputs, normalizeAxis(attrs.axis as number, inputs[0].shape.length, "concat"))];
  },
});

/** Joins tensors along one axis; also used by collectives that gather. */
export function concatTensors(inputs: Tensor[], axis: number): Tensor {
  const first = inputs[0];
  const outer = numel(first.shape.slice(0, axis));
  const inner = numel(first.shape.slice(axis + 1));
  const total = inputs.reduce((sum, t) => sum + t.shape[axis], 0);
  const out = allocate(first.dtype, outer * total * inner);
  let offset = 0;
  for (const t of inputs) {
    const chunk = t.shape[axis] * inner;
    for (let o = 0; o < outer; o++) {
      // deno-lint-ignore no-explicit-any -- every TensorData has set() over its own element type
      (out as any).set(t.data.subarray(o * chunk, (o + 1) * chunk), o * total * inner + offset);
    }
    offset += chunk;
  }
  return tensor(first.dtype, first.shape.map((d, i) => (i === axis ? total : d)), out);
}

registerOp({
  name: "slice",
  doc: "elements start ≤ i < end along attribute axis (a fixed-size axis)",
  arity: [1, 1],
  infer([x], attrs) {
    const axis = normalizeAxis(numberAttr(attrs, "axis", "slice"), x.shape.length, "slice");
    const size = x.shape[axis];
    if (typeof size !== "number") throw new OpError(`slice: axis ${axis} has symbolic size ${size}`);
    const [start, end] = sliceRange(attrs, size);
    return [{ dtype: x.dtype, shape: x.shape.map((d, i) => (i === axis ? end - start : d)) }];
  },
  run([x], attrs) {
    const axis = normalizeAxis(attrs.axis as number, x.shape.length, "slice");
    const [start, end] = sliceRange(attrs, x.shape[axis]);
    return [sliceTensor(x, axis, start, end)];
  },
});

function sliceRange(attrs: Record<string, unknown>, size: number): [number, number] {
  const start = attrs.start as number;
  const end = attrs.end as number;
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > size || start >= end) {
    throw new OpError(`slice: range ${start}..${end} is not inside 0..${size}`);
  }
  return [start, end];
}

/** Cuts start ≤ i < end out of one axis; also used by collectives that scatter. */
export function sliceTensor(x: Tensor, axis: number, start: number, end: number): Tensor {
  const outer = numel(x.shape.slice(0, axis));
  const inner = numel(x.shape.slice(axis + 1));
  const size = x.shape[axis];
  const length = end - start;
  const out = allocate(x.dtype, outer * length * inner);
  for (let o = 0; o < outer; o++) {
    const from = (o * size + start) * inner;
    // deno-lint-ignore no-explicit-any -- every TensorData has set() over its own element type
    (out as any).set(x.data.subarray(from, from + length * inner), o * length * inner);
  }
  return tensor(x.dtype, x.shape.map((d, i) => (i === axis ? length : d)), out);
}
