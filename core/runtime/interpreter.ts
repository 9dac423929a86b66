// Runs a graph with the registry's reference implementations, node by node in order.

import type { Graph } from "../ir/graph.ts";
import { getOp } from "../ir/registry.ts";
import { bindDims } from "../ir/dims.ts";
import type { Tensor } from "../ir/tensor.ts";
import { EngineError } from "./engine.ts";

export function interpret(
  graph: Graph,
  weights: Map<string, Tensor>,
  inputs: Record<string, Tensor>,
): Record<string, Tensor> {
  const dims = bindDims(graph.inputs, inputs);
  const values = new Map<string, Tensor>(weights);
  for (const input of graph.inputs) {
    const t = inputs[input.name];
    if (t.dtype !== input.type.dtype) {
      throw new EngineError(`input ${input.name}: expected ${input.type.dtype}, got ${t.dtype}`);
    }
    values.set(input.name, t);
  }
  const remainingUses = new Map<string, number>();
  for (const node of graph.nodes) {
    for (const name of node.inputs) remainingUses.set(name, (remainingUses.get(name) ?? 0) + 1);
  }
  const keep = new Set([...graph.outputs, ...weights.keys()]);
  for (const node of graph.nodes) {
    const args = node.inputs.map((name) => {
      const value = values.get(name);
      if (!value) throw new EngineError(`${node.op}: value %${name} has not been computed`);
      return value;
    });
    const results = getOp(node.op).run(args, node.attrs, { dims });
    node.outputs.forEach((name, i) => values.set(name, results[i]));
    // Frees intermediates as soon as their last reader has run.
    for (const name of node.inputs) {
      const left = remainingUses.get(name)! - 1;
      remainingUses.set(name, left);
      if (left === 0 && !keep.has(name)) values.delete(name);
    }
  }
  return Object.fromEntries(graph.outputs.map((name) => [name, values.get(name)!]));
}
