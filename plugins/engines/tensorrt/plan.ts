// One TensorRT segment: its graph written into a network through the converters, the
// optimization profile of its dynamic inputs, and the contract of a built plan.

import type { Graph } from "../../../core/ir/graph.ts";
import { evalDim } from "../../../core/ir/dims.ts";
import { getOp } from "../../../core/ir/registry.ts";
import type { Tensor, TensorType } from "../../../core/ir/tensor.ts";
import type { Engine } from "../../../core/runtime/engine.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import { ConversionScope, converterFor, type ConvertTarget } from "./converters/all.ts";
import type { TensorRtCapabilities } from "./capabilities.ts";
import type { NetworkWriter, TensorId } from "./network.ts";

export interface DimRange {
  min: number;
  opt: number;
  max: number;
}

export interface PlanSettings {
  target: ConvertTarget;
  /** Profile range of each symbolic dim by name; names not listed get `defaultDim`. */
  dims: Record<string, DimRange>;
  defaultDim: DimRange;
  tf32: boolean;
  workspaceBytes?: number;
}

/** A built TensorRT segment. */
export interface PlanEngine extends Engine {
  /** The group whose NCCL communicator the plan's DistCollective layers need, if any. */
  readonly communicatorGroup?: string;
  /** Hands the plan an ncclComm_t (as a pointer) for its DistCollective layers. */
  setCommunicator(communicator: Deno.PointerValue): void;
}

/** Builds and loads TensorRT segments; native_plan.ts is the one over the shim. */
export interface SegmentPlanner {
  readonly capabilities: TensorRtCapabilities;
  /** The TensorRT version plans are made with; an engine file records it. */
  readonly version: string;
  build(segment: Graph, weights: Map<string, Tensor>, settings: PlanSettings): Promise<PlanEngine>;
  load(plan: Uint8Array, segment: PlanSignature): Promise<PlanEngine>;
}

/** What a saved plan needs beside its bytes to be an Engine again. */
export type PlanSignature = Pick<Graph, "inputs"> & {
  outputs: { name: string; type: TensorType }[];
  communicatorGroup?: string;
};

/** The group of the collectives the segment runs as layers (over more than one rank), if any. */
export function layerCollectiveGroup(segment: Graph): string | undefined {
  const node = segment.nodes.find((n) => getOp(n.op).collective && (n.attrs.size as number) > 1);
  return node?.attrs.group as string | undefined;
}

/** The [min, opt, max] shapes of an input; symbolic sizes (sums and products too) from the ranges. */
export function profileOf(
  type: TensorType,
  settings: PlanSettings,
): { min: number[]; opt: number[]; max: number[] } {
  const at = (pick: keyof DimRange) => {
    const bound = new Map<string, number>();
    for (const dim of type.shape) {
      if (typeof dim !== "string") continue;
      for (const name of dim.split(/[+*]/).map((part) => part.trim())) {
        if (/^\d+$/.test(name)) continue;
        bound.set(name, (settings.dims[name] ?? settings.defaultDim)[pick]);
      }
    }
    return type.shape.map((dim) => evalDim(dim, bound));
  };
  return { min: at("min"), opt: at("opt"), max: at("max") };
}

/** Writes the segment into `net`: inputs, every node through its converter, named outputs. */
export function writeNetwork(net: NetworkWriter, segment: Graph, weights: Map<string, Tensor>): void {
  const scope = new ConversionScope(net, segment, weights);
  const inputs = new Set<TensorId>();
  for (const input of segment.inputs) {
    const dims = input.type.shape.map((dim) => (typeof dim === "number" ? dim : -1));
    const tensor = net.input(input.name, input.type.dtype, dims);
    inputs.add(tensor);
    scope.define(input.name, tensor);
  }
  const named = new Set<TensorId>(inputs);
  for (const [index, node] of segment.nodes.entries()) {
    const converter = converterFor(node.op);
    if (!converter) throw new EngineError(`node ${index}: no TensorRT converter for ${node.op}`);
    const outputs = converter.convert(node, scope);
    outputs.forEach((tensor, i) => {
      scope.define(node.outputs[i], tensor);
      if (named.has(tensor)) return; // an identity: the layer is someone else's
      named.add(tensor);
      net.nameLayer(tensor, `${node.op} %${node.outputs[i]}`);
    });
  }
  // TensorRT names a tensor once: an output that is an input or another output gets a copy.
  const marked = new Set<TensorId>();
  for (const name of segment.outputs) {
    let tensor = scope.value(name);
    if (inputs.has(tensor) || marked.has(tensor)) tensor = net.cast(tensor, scope.type(name).dtype);
    marked.add(tensor);
    net.output(tensor, name);
  }
}
