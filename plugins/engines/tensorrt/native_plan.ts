// TensorRT segments through the shim: plan building with the optimization profile, and a plan
// engine that runs with host tensors on its own CUDA stream.

import type { Graph, GraphInput } from "../../../core/ir/graph.ts";
import { allocate, numel, type Tensor, tensor } from "../../../core/ir/tensor.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import type { TensorRtLibrary } from "../../../ffi/tensorrt.ts";
import { cText } from "../../../ffi/errors.ts";
import { capabilitiesOf, formatVersion } from "./capabilities.ts";
import { bytesOf, NativeNetwork } from "./native_network.ts";
import {
  layerCollectiveGroup,
  type PlanEngine,
  type PlanSettings,
  type PlanSignature,
  profileOf,
  type SegmentPlanner,
  writeNetwork,
} from "./plan.ts";

/** One deserialized plan with one execution context. */
class NativePlanEngine implements PlanEngine {
  readonly backend = "tensorrt";
  readonly #engine: Deno.PointerValue;
  readonly #context: Deno.PointerValue;

  constructor(
    readonly library: TensorRtLibrary,
    readonly plan: Uint8Array<ArrayBuffer>,
    readonly backendVersion: string,
    readonly signature: PlanSignature,
  ) {
    const s = library.symbols;
    this.#engine = s.rf_trt_engine_deserialize(plan, BigInt(plan.length));
    if (!this.#engine) throw new EngineError(`TensorRT plan: ${library.lastError()}`);
    this.#context = s.rf_trt_context_create(this.#engine);
    if (!this.#context) {
      const message = library.lastError();
      s.rf_trt_engine_destroy(this.#engine);
      throw new EngineError(`TensorRT context: ${message}`);
    }
  }

  get inputs(): GraphInput[] {
    return this.signature.inputs;
  }
  get outputs(): GraphInput[] {
    return this.signature.outputs;
  }
  get communicatorGroup(): string | undefined {
    return this.signature.communicatorGroup;
  }

  setCommunicator(communicator: Deno.PointerValue): void {
    this.library.check(
      this.library.symbols.rf_trt_context_set_communicator(this.#context, communicator),
      "communicator",
    );
  }

  async run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    const s = this.library.symbols;
    for (const input of this.inputs) {
      const given = inputs[input.name];
      if (!given) throw new EngineError(`input ${input.name} is missing`);
      if (given.dtype !== input.type.dtype) {
        throw new EngineError(`input ${input.name} is ${given.dtype}, the plan takes ${input.type.dtype}`);
      }
      const name = cText(input.name);
      const dims = BigInt64Array.from(given.shape, BigInt);
      this.library.check(
        s.rf_trt_context_set_input_shape(this.#context, name, given.shape.length, dims),
        input.name,
      );
      const bytes = bytesOf(given);
      this.library.check(
        s.rf_trt_context_set_input_host(this.#context, name, bytes, BigInt(bytes.length)),
        input.name,
      );
    }
    this.library.check(s.rf_trt_context_allocate_outputs(this.#context), "outputs");
    this.library.check(s.rf_trt_context_enqueue(this.#context, null), "enqueue");
    this.library.check(await s.rf_trt_context_synchronize(this.#context), "synchronize");
    const results: Record<string, Tensor> = {};
    const rank = new Int32Array(1);
    const dims = new BigInt64Array(8);
    for (const output of this.outputs) {
      const name = cText(output.name);
      this.library.check(s.rf_trt_context_tensor_shape(this.#context, name, rank, dims), output.name);
      const shape = Array.from(dims.subarray(0, rank[0]), Number);
      const data = allocate(output.type.dtype, numel(shape));
      const host = new Uint8Array(data.buffer as ArrayBuffer);
      this.library.check(
        s.rf_trt_context_get_output_host(this.#context, name, host, BigInt(host.length)),
        output.name,
      );
      results[output.name] = tensor(output.type.dtype, shape, data);
    }
    return results;
  }

  serialize(): Uint8Array {
    return this.plan;
  }

  [Symbol.dispose](): void {
    this.library.symbols.rf_trt_context_destroy(this.#context);
    this.library.symbols.rf_trt_engine_destroy(this.#engine);
  }
}

/** Segments built and loaded through the shim. */
export function nativePlanner(library: TensorRtLibrary): SegmentPlanner {
  const capabilities = capabilitiesOf(library);
  const version = formatVersion(capabilities.libraryVersion);
  const s = library.symbols;
  return {
    capabilities,
    version,
    async build(segment: Graph, weights: Map<string, Tensor>, settings: PlanSettings) {
      const builder = s.rf_trt_builder_create();
      if (!builder) throw new EngineError(`TensorRT builder: ${library.lastError()}`);
      try {
        library.check(s.rf_trt_builder_set_flag(builder, 0, settings.tf32 ? 1 : 0), "tf32");
        if (settings.workspaceBytes) {
          library.check(
            s.rf_trt_builder_set_workspace(builder, BigInt(settings.workspaceBytes)),
            "workspace",
          );
        }
        const communicatorGroup = layerCollectiveGroup(segment);
        if (communicatorGroup) library.check(s.rf_trt_builder_enable_multi_device(builder), "multi-device");
        for (const input of segment.inputs) {
          if (input.type.shape.every((dim) => typeof dim === "number")) continue;
          const { min, opt, max } = profileOf(input.type, settings);
          const as64 = (dims: number[]) => BigInt64Array.from(dims, BigInt);
          const rc = s.rf_trt_profile_set(
            builder,
            cText(input.name),
            min.length,
            as64(min),
            as64(opt),
            as64(max),
          );
          library.check(rc, `profile of ${input.name}`);
        }
        writeNetwork(new NativeNetwork(library, builder), segment, weights);
        const plan = new BigUint64Array(1);
        const bytes = new BigUint64Array(1);
        library.check(await s.rf_trt_builder_build(builder, plan, bytes), `building ${segment.name}`);
        const pointer = Deno.UnsafePointer.create(plan[0]);
        const copy = new Uint8Array(Number(bytes[0]));
        copy.set(new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(pointer!, copy.length)));
        s.rf_trt_free(pointer);
        const outputs = segment.outputs.map((name) => ({ name, type: segment.types.get(name)! }));
        return new NativePlanEngine(library, copy, version, {
          inputs: segment.inputs,
          outputs,
          communicatorGroup,
        });
      } finally {
        s.rf_trt_builder_destroy(builder);
      }
    },
    load(plan, signature) {
      return Promise.resolve(new NativePlanEngine(library, new Uint8Array(plan), version, signature));
    },
  };
}
