// Partitioning: when an engine cannot run collectives inside itself, the graph is cut at each
// collective into segments, each built by the engine backend, and the runtime runs the
// collectives between them through a process group.

import type { Graph, GraphInput, Node } from "../ir/graph.ts";
import { collectiveKind } from "../ir/ops/collective.ts";
import { getOp } from "../ir/registry.ts";
import type { Tensor } from "../ir/tensor.ts";
import type { ProcessGroup } from "../dist/group.ts";
import { type Engine, type EngineBackend, EngineError } from "./engine.ts";

export type Step = { kind: "segment"; graph: Graph } | { kind: "collective"; node: Node };

/** Cuts the graph before and after every node that `cut` selects (by default, the collectives). */
export function partition(
  graph: Graph,
  cut: (node: Node) => boolean = (node) => !!getOp(node.op).collective,
): Step[] {
  const groups: (Node[] | Node)[] = [];
  for (const node of graph.nodes) {
    if (cut(node)) groups.push(node);
    else if (Array.isArray(groups.at(-1))) (groups.at(-1) as Node[]).push(node);
    else groups.push([node]);
  }
  // Which values each later step (and the graph's outputs) still needs.
  const neededAfter: Set<string>[] = new Array(groups.length);
  const needed = new Set(graph.outputs);
  for (let i = groups.length - 1; i >= 0; i--) {
    neededAfter[i] = new Set(needed);
    const nodes = Array.isArray(groups[i]) ? groups[i] as Node[] : [groups[i] as Node];
    for (const node of nodes) for (const input of node.inputs) needed.add(input);
  }
  const weights = new Map(graph.weights.map((w) => [w.name, w]));
  return groups.map((group, index): Step => {
    if (!Array.isArray(group)) return { kind: "collective", node: group };
    const defined = new Set(group.flatMap((node) => node.outputs));
    const used = new Set(group.flatMap((node) => node.inputs));
    const inputs: GraphInput[] = [...used]
      .filter((name) => !defined.has(name) && !weights.has(name))
      .map((name) => ({ name, type: graph.types.get(name)! }));
    const segmentWeights = graph.weights.filter((w) => used.has(w.name));
    const outputs = [...defined].filter((name) => neededAfter[index].has(name));
    const types = new Map(
      [...inputs.map((i) => i.name), ...segmentWeights.map((w) => w.name), ...defined].map((
        n,
      ) => [n, graph.types.get(n)!]),
    );
    return {
      kind: "segment",
      graph: {
        name: `${graph.name}.segment${index}`,
        inputs,
        weights: segmentWeights,
        nodes: group,
        outputs,
        types,
      },
    };
  });
}

/** Runs one collective node's operation over its group. */
export async function runCollective(node: Node, input: Tensor, group: ProcessGroup): Promise<Tensor> {
  const kind = collectiveKind(node.op);
  if (!kind) throw new EngineError(`${node.op} is not a collective`);
  if (group.size !== node.attrs.size) {
    throw new EngineError(
      `${node.op} expects group ${node.attrs.group} of ${node.attrs.size} ranks, it has ${group.size}`,
    );
  }
  const reduce = (node.attrs.reduce ?? "sum") as "sum" | "max" | "min" | "avg";
  const axis = node.attrs.axis as number;
  const normalized = axis < 0 ? axis + input.shape.length : axis;
  switch (kind) {
    case "all_reduce":
      return await group.allReduce(input, reduce);
    case "all_gather":
      return await group.allGather(input, normalized);
    case "reduce_scatter":
      return await group.reduceScatter(input, normalized, reduce);
    case "broadcast":
      return await group.broadcast(input, (node.attrs.root ?? 0) as number);
  }
}

export type GroupResolver = (name: string) => ProcessGroup;

/** An engine made of segments built by one backend, with collectives run between them. */
export class SegmentedEngine implements Engine {
  readonly backend: string;
  readonly backendVersion: string;
  #groups?: GroupResolver;

  constructor(
    backend: EngineBackend,
    readonly steps: ({ kind: "segment"; engine: Engine } | { kind: "collective"; node: Node })[],
    readonly inputs: GraphInput[],
    readonly outputs: GraphInput[],
  ) {
    this.backend = backend.name;
    this.backendVersion = backend.version;
  }

  /** Binds the process groups the collectives run over; the engine runs only once bound. */
  bind(groups: GroupResolver): this {
    this.#groups = groups;
    return this;
  }

  async run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    const groups = this.#groups;
    if (!groups) throw new EngineError("this engine runs collectives: bind it to its process groups first");
    const values = new Map(Object.entries(inputs));
    for (const step of this.steps) {
      if (step.kind === "collective") {
        const input = values.get(step.node.inputs[0]);
        if (!input) throw new EngineError(`${step.node.op}: input %${step.node.inputs[0]} was not computed`);
        values.set(
          step.node.outputs[0],
          await runCollective(step.node, input, groups(step.node.attrs.group as string)),
        );
        continue;
      }
      const args: Record<string, Tensor> = {};
      for (const input of step.engine.inputs) args[input.name] = values.get(input.name)!;
      for (const [name, value] of Object.entries(await step.engine.run(args))) values.set(name, value);
    }
    return Object.fromEntries(this.outputs.map((o) => [o.name, values.get(o.name)!]));
  }

  serialize(): Uint8Array {
    const parts = this.steps.map((step) => (step.kind === "segment" ? step.engine.serialize() : undefined));
    const header = new TextEncoder().encode(JSON.stringify({
      inputs: this.inputs,
      outputs: this.outputs,
      steps: this.steps.map((step, i) =>
        step.kind === "segment" ? { bytes: parts[i]!.length } : { node: step.node }
      ),
    }));
    const total = 4 + header.length + parts.reduce((n, p) => n + (p?.length ?? 0), 0);
    const out = new Uint8Array(total);
    new DataView(out.buffer).setUint32(0, header.length, true);
    out.set(header, 4);
    let offset = 4 + header.length;
    for (const part of parts) {
      if (!part) continue;
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }

  [Symbol.dispose](): void {
    for (const step of this.steps) if (step.kind === "segment") step.engine[Symbol.dispose]();
  }
}

export async function buildSegmented(
  backend: EngineBackend,
  graph: Graph,
  weights: Map<string, Tensor>,
): Promise<SegmentedEngine> {
  const steps: SegmentedEngine["steps"] = [];
  for (const step of partition(graph)) {
    steps.push(
      step.kind === "collective"
        ? step
        : { kind: "segment", engine: await backend.build(step.graph, weights) },
    );
  }
  const outputs = graph.outputs.map((name) => ({ name, type: graph.types.get(name)! }));
  return new SegmentedEngine(backend, steps, graph.inputs, outputs);
}

export async function deserializeSegmented(
  backend: EngineBackend,
  payload: Uint8Array,
): Promise<SegmentedEngine> {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const length = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(payload.subarray(4, 4 + length)));
  let offset = 4 + length;
  const steps: SegmentedEngine["steps"] = [];
  for (const step of header.steps as ({ bytes: number } | { node: Node })[]) {
    if ("node" in step) {
      steps.push({ kind: "collective", node: step.node });
      continue;
    }
    steps.push({
      kind: "segment",
      engine: await backend.deserialize(payload.subarray(offset, offset + step.bytes)),
    });
    offset += step.bytes;
  }
  return new SegmentedEngine(backend, steps, header.inputs, header.outputs);
}
