// The graph IR: typed values, nodes in execution order, and weights as named references into a
// weight store. A graph is plain data; passes return new graphs and never mutate their input.

import { type Dim, type DType, formatType, type TensorType } from "./tensor.ts";
import { getOp } from "./registry.ts";
import "./ops/all.ts";

export type AttrValue = number | string | boolean | Array<number | string>;
export type Attrs = Record<string, AttrValue>;

export interface Node {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs: Attrs;
}

/** A contiguous range of one axis: how a rank's share of a weight is cut out of the whole. */
export interface WeightSlice {
  axis: number;
  start: number;
  end: number;
}

export interface Weight {
  /** The value name nodes use. */
  name: string;
  /** The key in the weight store (a safetensors tensor name). */
  key: string;
  /** The type after slicing and conversion to the graph's compute dtype. */
  type: TensorType;
  slices: WeightSlice[];
}

export interface GraphInput {
  name: string;
  type: TensorType;
}

export interface Graph {
  name: string;
  inputs: GraphInput[];
  weights: Weight[];
  nodes: Node[];
  outputs: string[];
  /** Every value's type: inputs, weights and node outputs. */
  types: Map<string, TensorType>;
}

export class IrError extends Error {
  override name = "IrError";
}

/** Builds a graph node by node, typing each output with its op's shape rule. */
export class GraphBuilder {
  readonly #graph: Graph;
  #counter = 0;

  constructor(name: string) {
    this.#graph = { name, inputs: [], weights: [], nodes: [], outputs: [], types: new Map() };
  }

  input(name: string, dtype: DType, shape: Dim[]): string {
    this.#define(name, { dtype, shape });
    this.#graph.inputs.push({ name, type: { dtype, shape } });
    return name;
  }

  /** Declares a weight; `shape` is its shape after `slices` are cut out of the stored tensor. */
  weight(key: string, dtype: DType, shape: Dim[], name = key, slices: WeightSlice[] = []): string {
    if (this.#graph.types.has(name)) return name; // tied weights are declared once
    this.#define(name, { dtype, shape });
    this.#graph.weights.push({ name, key, type: { dtype, shape }, slices });
    return name;
  }

  /** Adds a node and returns its output value names. */
  op(op: string, inputs: string[], attrs: Attrs = {}, names?: string[]): string[] {
    const def = getOp(op);
    const types = inputs.map((input) => this.type(input));
    const outTypes = def.infer(types, attrs);
    const outputs = outTypes.map((_, i) => names?.[i] ?? this.fresh(op));
    outputs.forEach((output, i) => this.#define(output, outTypes[i]));
    this.#graph.nodes.push({ op, inputs, outputs, attrs });
    return outputs;
  }

  /** Adds a node with one output and returns its name. */
  op1(op: string, inputs: string[], attrs: Attrs = {}, name?: string): string {
    return this.op(op, inputs, attrs, name ? [name] : undefined)[0];
  }

  output(name: string): void {
    this.type(name);
    this.#graph.outputs.push(name);
  }

  type(name: string): TensorType {
    const type = this.#graph.types.get(name);
    if (!type) throw new IrError(`value %${name} is used before it is defined`);
    return type;
  }

  fresh(hint: string): string {
    let name: string;
    do name = `${hint}${this.#counter++}`; while (this.#graph.types.has(name));
    return name;
  }

  finish(): Graph {
    return this.#graph;
  }

  #define(name: string, type: TensorType): void {
    if (this.#graph.types.has(name)) throw new IrError(`value %${name} is defined twice`);
    this.#graph.types.set(name, type);
  }
}

/** Checks that every value is defined once before use and that stored types match the shape rules. */
export function verifyGraph(graph: Graph): void {
  const defined = new Map<string, TensorType>();
  const define = (name: string, type: TensorType | undefined, where: string) => {
    if (!type) throw new IrError(`${where}: value %${name} has no type`);
    if (defined.has(name)) throw new IrError(`${where}: value %${name} is defined twice`);
    defined.set(name, type);
  };
  for (const input of graph.inputs) define(input.name, input.type, "input");
  for (const weight of graph.weights) define(weight.name, weight.type, "weight");
  for (const [index, node] of graph.nodes.entries()) {
    const where = `node ${index} (${node.op})`;
    const types = node.inputs.map((input) => {
      const type = defined.get(input);
      if (!type) throw new IrError(`${where}: input %${input} is not defined before it`);
      return type;
    });
    const inferred = getOp(node.op).infer(types, node.attrs);
    if (inferred.length !== node.outputs.length) {
      throw new IrError(`${where}: has ${node.outputs.length} outputs, its op makes ${inferred.length}`);
    }
    node.outputs.forEach((output, i) => {
      const stored = graph.types.get(output);
      if (stored && formatType(stored) !== formatType(inferred[i])) {
        throw new IrError(
          `${where}: %${output} is typed ${formatType(stored)} but the op gives ${formatType(inferred[i])}`,
        );
      }
      define(output, inferred[i], where);
    });
  }
  for (const output of graph.outputs) {
    if (!defined.has(output)) throw new IrError(`output %${output} is not defined`);
  }
}

/** A deep copy, so that a pass can edit the copy freely. */
export function cloneGraph(graph: Graph): Graph {
  return {
    name: graph.name,
    inputs: graph.inputs.map((input) => ({ name: input.name, type: cloneType(input.type) })),
    weights: graph.weights.map((w) => ({
      ...w,
      type: cloneType(w.type),
      slices: w.slices.map((s) => ({ ...s })),
    })),
    nodes: graph.nodes.map((node) => ({
      op: node.op,
      inputs: [...node.inputs],
      outputs: [...node.outputs],
      attrs: structuredClone(node.attrs),
    })),
    outputs: [...graph.outputs],
    types: new Map([...graph.types].map(([name, type]) => [name, cloneType(type)])),
  };
}

function cloneType(type: TensorType): TensorType {
  return { dtype: type.dtype, shape: [...type.shape] };
}

/** Recomputes every node output's type from its inputs (after a pass changed weight shapes, say). */
export function retype(graph: Graph): Graph {
  const types = new Map<string, TensorType>();
  for (const input of graph.inputs) types.set(input.name, input.type);
  for (const weight of graph.weights) types.set(weight.name, weight.type);
  for (const node of graph.nodes) {
    const inferred = getOp(node.op).infer(node.inputs.map((input) => types.get(input)!), node.attrs);
    node.outputs.forEach((output, i) => types.set(output, inferred[i]));
  }
  return { ...graph, types };
}

/** The nodes that read each value. */
export function usersOf(graph: Graph): Map<string, Node[]> {
  const users = new Map<string, Node[]>();
  for (const node of graph.nodes) {
    for (const input of node.inputs) {
      const list = users.get(input) ?? [];
      list.push(node);
      users.set(input, list);
    }
  }
  return users;
}

/** The graph with every float input, weight and intermediate in `dtype` (integers stay as they are). */
export function withFloatDtype(graph: Graph, dtype: DType): Graph {
  const convert = (type: TensorType): TensorType =>
    type.dtype === "f32" || type.dtype === "f16" || type.dtype === "bf16"
      ? { dtype, shape: type.shape }
      : type;
  const copy = cloneGraph(graph);
  copy.inputs = copy.inputs.map((input) => ({ name: input.name, type: convert(input.type) }));
  copy.weights = copy.weights.map((weight) => ({ ...weight, type: convert(weight.type) }));
  return retype(copy);
}
