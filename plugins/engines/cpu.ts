// The reference engine: runs the graph on the CPU with the op registry's reference kernels.
// It cannot run collectives inside itself over more than one rank; those graphs are cut into
// segments and the runtime runs the collectives between them.

import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import { type Graph, type GraphInput, withFloatDtype } from "../../core/ir/graph.ts";
import { getOp, hasOp } from "../../core/ir/registry.ts";
import { castTensor, type Tensor } from "../../core/ir/tensor.ts";
import { interpret } from "../../core/runtime/interpreter.ts";
import { decodeGraphPayload, encodeGraphPayload } from "../../core/runtime/graph_payload.ts";
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
    return encodeGraphPayload(this.graph, this.weights);
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
      const { graph, weights } = decodeGraphPayload(payload);
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
