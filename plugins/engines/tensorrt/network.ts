// What converters write into: a TensorRT network definition seen as typed calls that give tensor
// ids. The shipped implementation is native_network.ts over the shim; tests record the calls.

import type { CollectiveKind, Reduction } from "../../../core/ir/ops/collective.ts";
import type { DType, Tensor } from "../../../core/ir/tensor.ts";

/** A tensor inside the network being written. */
export type TensorId = number;

export type ElementwiseOp = "add" | "sub" | "mul" | "div" | "max" | "min" | "pow";
export type UnaryOp = "exp" | "log" | "sqrt" | "recip" | "neg" | "sin" | "cos";
export type ActivationKind = "sigmoid" | "gelu_erf" | "gelu_tanh" | "relu" | "tanh";
export type ReduceOp = "sum" | "avg" | "max" | "min";

/** One entry of a reshape target: a size, -1 (inferred), or the size of an input axis. */
export type ReshapeDim = number | { axis: number };

export interface NetworkWriter {
  /** dims: -1 where the size is dynamic. */
  input(name: string, dtype: DType, dims: number[]): TensorId;
  /** A constant with the tensor's data, seen with `dims` (same element count; default its shape). */
  constant(value: Tensor, dims?: number[]): TensorId;
  output(tensor: TensorId, name: string): void;
  /** Names the layer that made `tensor`, so TensorRT's messages point at the IR node. */
  nameLayer(tensor: TensorId, name: string): void;
  elementwise(op: ElementwiseOp, a: TensorId, b: TensorId): TensorId;
  unary(op: UnaryOp, x: TensorId): TensorId;
  activation(kind: ActivationKind, x: TensorId): TensorId;
  matmul(a: TensorId, transposeA: boolean, b: TensorId, transposeB: boolean): TensorId;
  softmax(x: TensorId, axis: number): TensorId;
  cast(x: TensorId, dtype: DType): TensorId;
  reduce(op: ReduceOp, x: TensorId, axis: number, keepDims: boolean): TensorId;
  gather(data: TensorId, indices: TensorId, axis: number): TensorId;
  argmax(x: TensorId, axis: number): TensorId;
  reshape(x: TensorId, target: ReshapeDim[]): TensorId;
  transpose(x: TensorId, perm: number[]): TensorId;
  concat(inputs: TensorId[], axis: number): TensorId;
  slice(x: TensorId, axis: number, start: number, end: number): TensorId;
  layernorm(x: TensorId, scale: TensorId, bias: TensorId, eps: number): TensorId;
  /** Causal attention whose diagonal sits at the lower right (queries are the last keys). */
  attention(q: TensorId, k: TensorId, v: TensorId): TensorId;
  /** A DistCollective layer over every rank of the bound communicator, `ranks` of them. */
  distCollective(
    x: TensorId,
    kind: CollectiveKind,
    reduce: Reduction | undefined,
    root: number,
    ranks: number,
  ): TensorId;
}
