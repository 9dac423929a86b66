// The reference engine: runs the graph on the CPU with the op registry's reference kernels.
// It cannot run collectives inside itself over more than one rank; those graphs are cut into
// segments and the runtime runs the collectives between them.

import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import { type Graph, type GraphInput, withFloatDtype } from "../../core/ir/graph.ts";
import { getOp, hasOp } from "../../core/ir/registry.ts";
import {
  BYTES_PER_ELEMENT,
  castTensor,
  type DType,
  numel,
  type Tensor,
  tensor,
  viewOf,
} from "../../core/ir/tensor.ts";
import { parseGraph, printGraph } from "../../core/ir/text.ts";
import { interpret } from "../../core/runtime/interpreter.ts";
import { type Engine, type EngineBackend, EngineError } from "../../core/runtime/engine.ts";

export const options = z.object({
  dtype: z.enum(["f32", "f16", "bf16"]).optional().describe(
    "compute dtype; values are rounded to it after every op (default: the graph's own)",
  ),
}).strict();

export type Options = z.infer<typeof options>;

export const VERSION = "1";

export class CpuEngine implements Engine {
  readonly backend = "cpu";
  readonly backendVersion = VERSION;
  readonly inputs: GraphInput[];
  readonly outputs: GraphInput[];

  constructor(readonly graph: Graph, readonly weights: Map<string, Tensor>) {
    this.inputs = graph.inputs;
    this.outputs = graph.outputs.map((name) => ({ name, type: graph.types.get(name)! }));
  }

  run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    for (const input of this.inputs) {
      const given = inputs[input.name];
      if (!given) throw new EngineError(`input ${input.name} is missing`);
      if (given.dtype !== input.type.dtype) {
        inputs = { ...inputs, [input.name]: castTensor(given, input.type.dtype) };
      }
    }
    return Promise.resolve(interpret(this.graph, this.weights, inputs));
  }

  serialize(): Uint8Array {
    return encodePayload(this.graph, this.weights);
  }

  [Symbol.dispose](): void {
    this.weights.clear();
  }
}

export function cpuBackend(opts: Options = {}): EngineBackend {
  return {
    name: "cpu",
    version: VERSION,
    capabilities: {
      supports: (op) => hasOp(op) && !getOp(op).collective,
      collectivesInEngine: false,
    },
    build(graph, weights) {
      const dtype = opts.dtype;
      const target = dtype ? withFloatDtype(graph, dtype) : graph;
      const converted = new Map<string, Tensor>();
      for (const weight of target.weights) {
        const value = weights.get(weight.name);
        if (!value) throw new EngineError(`weight ${weight.name} (${weight.key}) was not provided`);
        converted.set(weight.name, castTensor(value, weight.type.dtype));
      }
      return Promise.resolve(new CpuEngine(target, converted));
    },
    deserialize(payload) {
      const { graph, weights } = decodePayload(payload);
      return Promise.resolve(new CpuEngine(graph, weights));
    },
  };
}

export default definePlugin({
  kind: "engine",
  name: "cpu",
  description: "reference engine: every op's reference kernel, on the CPU",
  options,
  backend: (opts: Options) => cpuBackend(opts),
});

// Payload: u32 length + graph text, u32 length + JSON index of weights, then each weight's bytes
// at an 8-byte aligned offset.
interface WeightEntry {
  name: string;
  dtype: DType;
  shape: number[];
  offset: number;
}

function encodePayload(graph: Graph, weights: Map<string, Tensor>): Uint8Array {
  const text = new TextEncoder().encode(printGraph(graph));
  const entries: WeightEntry[] = [];
  let offset = 0;
  for (const [name, t] of weights) {
    entries.push({ name, dtype: t.dtype, shape: t.shape, offset });
    offset += Math.ceil(t.data.byteLength / 8) * 8;
  }
  const index = new TextEncoder().encode(JSON.stringify(entries));
  const head = 8 + text.length + index.length;
  const start = Math.ceil(head / 8) * 8;
  const out = new Uint8Array(start + offset);
  const view = new DataView(out.buffer);
  view.setUint32(0, text.length, true);
  out.set(text, 4);
  view.setUint32(4 + text.length, index.length, true);
  out.set(index, 8 + text.length);
  entries.forEach((entry) => {
    const t = weights.get(entry.name)!;
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), start + entry.offset);
  });
  return out;
}

function decodePayload(payload: Uint8Array): { graph: Graph; weights: Map<string, Tensor> } {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const textLength = view.getUint32(0, true);
  const graph = parseGraph(new TextDecoder().decode(payload.subarray(4, 4 + textLength)));
  const indexLength = view.getUint32(4 + textLength, true);
  const head = 8 + textLength + indexLength;
  const entries: WeightEntry[] = JSON.parse(new TextDecoder().decode(payload.subarray(8 + textLength, head)));
  const start = Math.ceil(head / 8) * 8;
  const weights = new Map<string, Tensor>();
  for (const entry of entries) {
    const bytes = numel(entry.shape) * BYTES_PER_ELEMENT[entry.dtype];
    const copy = payload.slice(start + entry.offset, start + entry.offset + bytes);
    weights.set(entry.name, tensor(entry.dtype, entry.shape, viewOf(entry.dtype, copy.buffer)));
  }
  return { graph, weights };
}
