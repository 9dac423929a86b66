// Stand-ins for TensorRT in CI tests: a capability table per version, a network that records the
// layers converters write, and a planner whose "plans" are cpu engines (after the segment was
// written through the converters into a recording network, so conversion failures still fail).

import type { Graph } from "../../../../core/ir/graph.ts";
import type { Tensor } from "../../../../core/ir/tensor.ts";
import { cpuBackend } from "../../../../plugins/engines/cpu.ts";
import type { TensorRtCapabilities } from "../../../../plugins/engines/tensorrt/capabilities.ts";
import type { NetworkWriter, TensorId } from "../../../../plugins/engines/tensorrt/network.ts";
import {
  layerCollectiveGroup,
  type PlanEngine,
  type PlanSettings,
  type SegmentPlanner,
  writeNetwork,
} from "../../../../plugins/engines/tensorrt/plan.ts";

/** What the shim reports when compiled against (and running) TensorRT `major.minor`. */
export function fakeCapabilities(major: number, minor: number): TensorRtCapabilities {
  const version = major * 10000 + minor * 100;
  return {
    headerVersion: version,
    libraryVersion: version,
    distCollective: version >= 101600,
    multiDevicePreview: major === 10 && minor >= 16,
    attentionLowerRight: major >= 11,
  };
}

export interface RecordedLayer {
  layer: string;
  args: unknown[];
  out: TensorId;
}

/** Records every call; tensor ids count up from 0 as the shim's do. */
export class RecordingNetwork implements NetworkWriter {
  readonly layers: RecordedLayer[] = [];
  readonly outputs: { tensor: TensorId; name: string }[] = [];
  #next = 0;

  #add(layer: string, ...args: unknown[]): TensorId {
    const out = this.#next++;
    this.layers.push({ layer, args, out });
    return out;
  }
  /** The layer kinds in order, constants and inputs left out. */
  kinds(): string[] {
    return this.layers.map((l) => l.layer).filter((kind) => kind !== "constant" && kind !== "input");
  }

  input(name: string, dtype: string, dims: number[]) {
    return this.#add("input", name, dtype, dims);
  }
  constant(value: Tensor, dims = value.shape) {
    return this.#add("constant", value.dtype, dims);
  }
  output(tensor: TensorId, name: string) {
    this.outputs.push({ tensor, name });
  }
  nameLayer() {}
  elementwise(op: string, a: TensorId, b: TensorId) {
    return this.#add(`elementwise:${op}`, a, b);
  }
  unary(op: string, x: TensorId) {
    return this.#add(`unary:${op}`, x);
  }
  activation(kind: string, x: TensorId) {
    return this.#add(`activation:${kind}`, x);
  }
  matmul(a: TensorId, transposeA: boolean, b: TensorId, transposeB: boolean) {
    return this.#add("matmul", a, transposeA, b, transposeB);
  }
  softmax(x: TensorId, axis: number) {
    return this.#add("softmax", x, axis);
  }
  cast(x: TensorId, dtype: string) {
    return this.#add("cast", x, dtype);
  }
  reduce(op: string, x: TensorId, axis: number, keepDims: boolean) {
    return this.#add(`reduce:${op}`, x, axis, keepDims);
  }
  gather(data: TensorId, indices: TensorId, axis: number) {
    return this.#add("gather", data, indices, axis);
  }
  argmax(x: TensorId, axis: number) {
    return this.#add("argmax", x, axis);
  }
  reshape(x: TensorId, target: unknown[]) {
    return this.#add("reshape", x, target);
  }
  transpose(x: TensorId, perm: number[]) {
    return this.#add("transpose", x, perm);
  }
  concat(inputs: TensorId[], axis: number) {
    return this.#add("concat", inputs, axis);
  }
  slice(x: TensorId, axis: number, start: number, end: number) {
    return this.#add("slice", x, axis, start, end);
  }
  layernorm(x: TensorId, scale: TensorId, bias: TensorId, eps: number) {
    return this.#add("layernorm", x, scale, bias, eps);
  }
  attention(q: TensorId, k: TensorId, v: TensorId) {
    return this.#add("attention", q, k, v);
  }
  distCollective(x: TensorId, kind: string, reduce: string | undefined, root: number, ranks: number) {
    return this.#add(`collective:${kind}`, x, reduce, root, ranks);
  }
}

/** A planner that writes each segment through the converters, then runs it with the cpu engine. */
export function cpuPlanner(
  capabilities: TensorRtCapabilities,
): SegmentPlanner & { networks: RecordingNetwork[] } {
  const cpu = cpuBackend();
  const networks: RecordingNetwork[] = [];
  const wrap = (engine: Awaited<ReturnType<typeof cpu.build>>, communicatorGroup?: string): PlanEngine =>
    Object.assign(engine, { communicatorGroup, setCommunicator() {} });
  return {
    capabilities,
    version: "fake",
    networks,
    async build(segment: Graph, weights: Map<string, Tensor>, _settings: PlanSettings) {
      const net = new RecordingNetwork();
      writeNetwork(net, segment, weights);
      networks.push(net);
      return wrap(await cpu.build(segment, weights), layerCollectiveGroup(segment));
    },
    async load(plan, signature) {
      return wrap(await cpu.deserialize(plan), signature.communicatorGroup);
    },
  };
}
