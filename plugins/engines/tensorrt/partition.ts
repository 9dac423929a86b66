// Partitioning for TensorRT: runs of nodes with a converter become TensorRT segments, the rest run
// in the fallback engine between them, and collectives that cannot be layers are cut out and run
// between segments. A TensorRT run shorter than min_block_size is not worth an engine of its own
// and joins the fallback (as Torch-TensorRT does). The cut generalizes core/runtime/segments.ts
// from single nodes to runs of nodes.

import type { Graph, GraphInput, Node } from "../../../core/ir/graph.ts";
import { getOp } from "../../../core/ir/registry.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import { checkNode, type ConvertTarget } from "./converters/all.ts";

export type Placement = "tensorrt" | "fallback" | "collective";

export type PartitionStep =
  | { kind: "tensorrt"; graph: Graph }
  | { kind: "fallback"; graph: Graph; reasons: string[] }
  | { kind: "collective"; node: Node };

export interface PartitionOptions {
  target: ConvertTarget;
  /** Fewest nodes a TensorRT segment may have; shorter runs go to the fallback engine. */
  minBlockSize: number;
  /** Whether the fallback engine can run an op (non-collective ops only are asked). */
  fallbackSupports: (op: string) => boolean;
}

interface Run {
  kind: Placement;
  nodes: Node[];
  reasons: string[];
}

/** Where each node runs, and for nodes outside TensorRT, why. */
export function placeNodes(graph: Graph, target: ConvertTarget): { kind: Placement; reason?: string }[] {
  return graph.nodes.map((node) => {
    const verdict = checkNode(node, graph.types, target);
    if (verdict === true) return { kind: "tensorrt" };
    return { kind: getOp(node.op).collective ? "collective" : "fallback", reason: `${node.op}: ${verdict}` };
  });
}

export function partitionForTensorRt(graph: Graph, options: PartitionOptions): PartitionStep[] {
  const placements = placeNodes(graph, options.target);
  const runs: Run[] = [];
  graph.nodes.forEach((node, index) => {
    const { kind, reason } = placements[index];
    if (kind === "fallback" && !options.fallbackSupports(node.op)) {
      throw new EngineError(
        `${node.op} (node ${index}) runs neither in TensorRT (${reason}) nor in the fallback engine`,
      );
    }
    const last = runs.at(-1);
    if (last && last.kind === kind && kind !== "collective") {
      last.nodes.push(node);
      if (reason) last.reasons.push(reason);
    } else {
      runs.push({ kind, nodes: [node], reasons: reason ? [reason] : [] });
    }
  });
  for (const run of runs) {
    const small = run.kind === "tensorrt" && run.nodes.length < options.minBlockSize;
    if (small && run.nodes.every((node) => fallbackCanRun(node, options))) {
      run.kind = "fallback";
      run.reasons.push(
        `${run.nodes.length} node(s) between fallback ops, fewer than min_block_size ${options.minBlockSize}`,
      );
    }
  }
  return cut(graph, mergeFallbacks(runs));
}

function fallbackCanRun(node: Node, options: PartitionOptions): boolean {
  // A collective over one rank is the identity, which the reference kernels run anywhere.
  if (getOp(node.op).collective) return node.attrs.size === 1;
  return options.fallbackSupports(node.op);
}

function mergeFallbacks(runs: Run[]): Run[] {
  const merged: Run[] = [];
  for (const run of runs) {
    const last = merged.at(-1);
    if (last && last.kind === "fallback" && run.kind === "fallback") {
      last.nodes.push(...run.nodes);
      last.reasons.push(...run.reasons);
    } else {
      merged.push({ ...run, nodes: [...run.nodes], reasons: [...run.reasons] });
    }
  }
  return merged;
}

/** Each run as a graph of its own: inputs it reads from before it, outputs needed after it. */
function cut(graph: Graph, runs: Run[]): PartitionStep[] {
  const neededAfter: Set<string>[] = new Array(runs.length);
  const needed = new Set(graph.outputs);
  for (let i = runs.length - 1; i >= 0; i--) {
    neededAfter[i] = new Set(needed);
    for (const node of runs[i].nodes) for (const input of node.inputs) needed.add(input);
  }
  const weightNames = new Set(graph.weights.map((w) => w.name));
  return runs.map((run, index): PartitionStep => {
    if (run.kind === "collective") return { kind: "collective", node: run.nodes[0] };
    const defined = new Set(run.nodes.flatMap((node) => node.outputs));
    const used = new Set(run.nodes.flatMap((node) => node.inputs));
    const inputs: GraphInput[] = [...used]
      .filter((name) => !defined.has(name) && !weightNames.has(name))
      .map((name) => ({ name, type: graph.types.get(name)! }));
    const weights = graph.weights.filter((w) => used.has(w.name));
    const outputs = [...defined].filter((name) => neededAfter[index].has(name));
    const names = [...inputs.map((i) => i.name), ...weights.map((w) => w.name), ...defined];
    const segment: Graph = {
      name: `${graph.name}.${run.kind}${index}`,
      inputs,
      weights,
      nodes: run.nodes,
      outputs,
      types: new Map(names.map((name) => [name, graph.types.get(name)!])),
    };
    return run.kind === "tensorrt"
      ? { kind: "tensorrt", graph: segment }
      : { kind: "fallback", graph: segment, reasons: run.reasons };
  });
}
