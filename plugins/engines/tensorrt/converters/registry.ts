// The converter registry: for each IR op, a capability check (can this node, with these types, on
// this TensorRT, become layers?) and a conversion that writes those layers. Ops without a
// converter, or whose check fails, run in the fallback engine between TensorRT segments.

import type { Graph, Node } from "../../../../core/ir/graph.ts";
import { castTensor, type DType, f32, type Tensor, type TensorType } from "../../../../core/ir/tensor.ts";
import type { CollectiveChoice, TensorRtCapabilities } from "../capabilities.ts";
import type { NetworkWriter, ReshapeDim, TensorId } from "../network.ts";

/** What a capability check may consult besides the node. */
export interface ConvertTarget {
  tensorrt: TensorRtCapabilities;
  collectives: CollectiveChoice;
  /** The group whose communicator the engine is bound to: in-engine collectives run over it only. */
  communicatorGroup?: string;
}

export interface Converter {
  /** true, or in a few words why this node stays out of TensorRT. */
  check(node: Node, types: Map<string, TensorType>, target: ConvertTarget): true | string;
  /** Writes the node's layers and gives its outputs in order. */
  convert(node: Node, scope: ConversionScope): TensorId[];
}

const converters = new Map<string, Converter>();

export function registerConverter(op: string, converter: Converter): void {
  if (converters.has(op)) throw new Error(`a TensorRT converter for ${op} is registered twice`);
  converters.set(op, converter);
}

export function converterFor(op: string): Converter | undefined {
  return converters.get(op);
}

export function convertibleOps(): string[] {
  return [...converters.keys()].sort();
}

/** Whether the node converts, or why not. */
export function checkNode(node: Node, types: Map<string, TensorType>, target: ConvertTarget): true | string {
  const converter = converters.get(node.op);
  if (!converter) return `no TensorRT converter for ${node.op}`;
  return converter.check(node, types, target);
}

/** Always converts. */
export const always = (): true => true;

/** The values of one graph as network tensors; weights become constants on first use. */
export class ConversionScope {
  readonly #values = new Map<string, TensorId>();
  readonly #constants = new Map<string, TensorId>();
  readonly #weights: Set<string>;

  constructor(
    readonly net: NetworkWriter,
    readonly graph: Graph,
    readonly weights: Map<string, Tensor>,
  ) {
    this.#weights = new Set(graph.weights.map((w) => w.name));
  }

  type(name: string): TensorType {
    const type = this.graph.types.get(name);
    if (!type) throw new Error(`value %${name} has no type`);
    return type;
  }

  rank(name: string): number {
    return this.type(name).shape.length;
  }

  define(name: string, tensor: TensorId): void {
    this.#values.set(name, tensor);
  }

  /** The tensor of a value; a weight is a constant, seen at `rank` (leading 1s) when asked. */
  value(name: string, rank?: number): TensorId {
    if (this.#weights.has(name)) return this.weightAt(name, rank ?? this.rank(name));
    const tensor = this.#values.get(name);
    if (tensor === undefined) throw new Error(`value %${name} is used before the network defines it`);
    return rank === undefined || rank <= this.rank(name) ? tensor : this.lift(tensor, this.type(name), rank);
  }

  /** A weight as a constant in `dtype` (default its own), with leading 1s up to `rank`. */
  weightAt(name: string, rank: number, dtype?: DType): TensorId {
    const key = `${name}@${rank}:${dtype ?? ""}`;
    const known = this.#constants.get(key);
    if (known !== undefined) return known;
    const stored = this.weights.get(name);
    if (!stored) throw new Error(`weight ${name} was not provided`);
    const weight = castTensor(stored, dtype ?? this.type(name).dtype);
    const tensor = this.net.constant(weight, [
      ...new Array(rank - weight.shape.length).fill(1),
      ...weight.shape,
    ]);
    this.#constants.set(key, tensor);
    return tensor;
  }

  /** A [1, …, 1] constant holding `value` in `dtype`. */
  scalar(value: number, dtype: DType, rank: number): TensorId {
    const one = castTensor(f32(new Array(rank).fill(1), [value]), dtype);
    return this.net.constant(one);
  }

  /** The tensor of `type` reshaped to `rank` with leading 1s, dynamic sizes copied. */
  lift(tensor: TensorId, type: TensorType, rank: number): TensorId {
    const target: ReshapeDim[] = new Array(rank - type.shape.length).fill(1);
    type.shape.forEach((dim, axis) => target.push(typeof dim === "number" ? dim : { axis }));
    return this.net.reshape(tensor, target);
  }
}

/** A float value's compute in f32: the reference kernels compute there and round once. */
export function inF32(scope: ConversionScope, name: string): TensorId {
  const tensor = scope.value(name);
  return scope.type(name).dtype === "f32" ? tensor : scope.net.cast(tensor, "f32");
}

export function normalizedAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}
