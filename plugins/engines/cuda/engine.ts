// The cuda engine: a lowered graph bound to one GPU. run() follows the functional convention of
// core/runtime/generate.ts (caches in, grown caches out); sequences() keeps the KV caches on the
// device and replays captured CUDA graphs for decode steps. Collectives run inside, on the
// engine's stream, through the device communicators of the groups it is bound to.

import type { Graph, GraphInput } from "../../../core/ir/graph.ts";
import { bindDims } from "../../../core/ir/dims.ts";
import {
  BYTES_PER_ELEMENT,
  castTensor,
  numel,
  type Tensor,
  tensor,
  viewOf,
} from "../../../core/ir/tensor.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import { encodeGraphPayload } from "../../../core/runtime/graph_payload.ts";
import type { SequenceEngine, SequenceOptions } from "../../../core/runtime/sequences.ts";
import type { ProcessGroup } from "../../../core/dist/group.ts";
import { Gemm } from "../../../ffi/cublaslt.ts";
import { check as checkCuda, cudart, MEMCPY } from "../../../ffi/cuda.ts";
import { check as checkKernel, KERNEL_DTYPE, kernels } from "../../../ffi/kernels.ts";
import { DeviceContext } from "./device.ts";
import { lower, type Lowered } from "./lower.ts";
import { bind, type BindContext, type Caches } from "./program.ts";
import { floatDtype } from "./views.ts";
import { type DeviceWeights, uploadWeights } from "./weights.ts";
import { type DeviceCommunicator, isDeviceGroup } from "./communicator.ts";
import { type CudaSequenceOptions, CudaSequences } from "./sequences.ts";

export const VERSION = "1";

export interface CudaEngineOptions {
  device: number;
  /** Capture decode steps into CUDA graphs (per batch-size bucket) and replay them. */
  graphs: boolean;
  /** The most tokens one eager run of a sequence pool processes; longer prompts go in chunks. */
  prefillChunk: number;
  /** The most rows (0 to 8) a product may have to stream its weight through rankflow's kernel. */
  kernelRows: number;
  /** Launch rankflow's kernels with programmatic stream serialization where the GPU has it. */
  programmaticLaunch: boolean;
}

interface Arena {
  key: string;
  base: bigint;
  meta: bigint;
  bytes: number;
}

export class CudaEngine implements SequenceEngine {
  readonly backend = "cuda";
  readonly backendVersion = VERSION;
  readonly inputs: GraphInput[];
  readonly outputs: GraphInput[];
  readonly ctx: DeviceContext;
  readonly lowered: Lowered;
  readonly weights: DeviceWeights;
  #gemms = new Map<string, Gemm>();
  #groups: ((name: string) => ProcessGroup) | undefined;
  #arena: Arena | undefined;
  #disposed = false;

  constructor(
    readonly graph: Graph,
    /** Kept for serialize(); the device holds its own copy. */
    readonly hostWeights: Map<string, Tensor>,
    readonly options: CudaEngineOptions,
  ) {
    this.inputs = graph.inputs;
    this.outputs = graph.outputs.map((name) => ({ name, type: graph.types.get(name)! }));
    this.lowered = lower(graph);
    this.ctx = new DeviceContext(options.device);
    // A switch of the kernel library, so one for the process: the last engine built sets it.
    const programmatic = kernels().rf_set_programmatic_launch(options.programmaticLaunch ? 1 : 0);
    if (programmatic < 0) checkKernel(-programmatic, "rf_set_programmatic_launch");
    try {
      // Likewise: the one-row products leave room for this graph's decode attention.
      const attention = this.lowered.steps.find((step) => step.kind === "attention");
      const room = attention
        ? kernels().rf_set_attention_room(
          KERNEL_DTYPE[floatDtype(this.lowered.types.get(attention.q.value)!.dtype, attention.out)],
          attention.heads,
          attention.kvHeads,
          attention.headDim,
        )
        : kernels().rf_set_attention_room(0, 0, 0, 0);
      if (room < 0) checkKernel(-room, "rf_set_attention_room");
      this.weights = uploadWeights(this.ctx, graph, this.lowered, hostWeights);
    } catch (error) {
      this.ctx[Symbol.dispose]();
      throw error;
    }
  }

  /** Binds the engine's collectives to process groups (each by the name its graph gives). */
  bind(groups: (name: string) => ProcessGroup): void {
    this.#groups = groups;
  }

  communicator(name: string): DeviceCommunicator | undefined {
    if (!this.#groups) return undefined;
    const group = this.#groups(name);
    return isDeviceGroup(group) ? group.communicator : undefined;
  }

  /** The context a walk over the steps needs; the caller fills mode, dims, meta and caches. */
  bindContext(
    fields: Pick<BindContext, "mode" | "dims" | "capacity" | "base" | "external" | "meta"> & {
      caches?: Caches;
    },
  ): BindContext {
    return {
      ...fields,
      types: this.lowered.types,
      weights: this.weights.views,
      stream: this.ctx.stream,
      workspace: this.ctx.workspace,
      gemm: (step, ldx, ldOut) => this.#gemm(step, ldx, ldOut),
      communicator: (name) => this.communicator(name),
      outputs: new Set(this.graph.outputs),
      kernelRows: this.options.kernelRows,
    };
  }

  #gemm(index: number, ldx: number, ldOut: number): { gemm: Gemm; w: bigint; bias?: bigint } {
    const step = this.lowered.steps[index];
    if (step.kind !== "gemm") throw new EngineError(`step ${index} is not a product`);
    const key = `${index}:${ldx}:${ldOut}`;
    let gemm = this.#gemms.get(key);
    if (!gemm) {
      const dtype = this.lowered.types.get(step.parts[0].output)!.dtype;
      if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") {
        throw new EngineError(`product ${step.parts[0].output}: ${dtype} is not a float dtype`);
      }
      gemm = new Gemm(this.ctx.lt, {
        dtype,
        n: ldOut,
        k: step.k,
        ldx,
        ldOut,
        bias: !!this.weights.products.get(index)!.bias,
        residual: !!step.residual,
      }, this.ctx.workspaceBytes);
      this.#gemms.set(key, gemm);
    }
    return { gemm, ...this.weights.products.get(index)! };
  }

  async run(given: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    const inputs: Record<string, Tensor> = {};
    for (const input of this.inputs) {
      const value = given[input.name];
      if (!value) throw new EngineError(`input ${input.name} is missing`);
      inputs[input.name] = value.dtype === input.type.dtype ? value : castTensor(value, input.type.dtype);
    }
    const dims = bindDims(this.inputs, inputs);
    const batch = dims.get("batch") ?? 1;
    const seq = dims.get("seq") ?? 1;
    const past = dims.get("past") ?? 0;
    const tokens = batch * seq;
    const arena = this.#arenaFor(dims, tokens);
    const bound = bind(
      this.lowered.steps,
      this.bindContext({
        mode: "functional",
        dims,
        capacity: dims,
        base: arena.base,
        external: new Map(),
        meta: { slots: arena.meta, cachePos: arena.meta + BigInt(4 * tokens), span: past + seq },
      }),
    );
    // Token t of batch row b = t / seq sits at cache position past + t % seq.
    const meta = new Int32Array(2 * tokens);
    for (let t = 0; t < tokens; t++) {
      meta[t] = Math.floor(t / seq);
      meta[tokens + t] = past + (t % seq);
    }
    const stream = this.ctx.stream;
    copyIn(arena.meta, meta, stream);
    for (const input of this.inputs) {
      const view = bound.views.get(input.name);
      if (view && numel(view.shape) > 0) copyIn(view.ptr, inputs[input.name].data, stream);
    }
    for (const launch of bound.launches) launch();
    const outputs: Record<string, Tensor> = {};
    for (const name of this.graph.outputs) {
      const view = bound.views.get(name)!;
      const bytes = new Uint8Array(numel(view.shape) * BYTES_PER_ELEMENT[view.dtype]);
      copyOut(bytes, view.ptr, stream);
      outputs[name] = tensor(view.dtype, view.shape, viewOf(view.dtype, bytes.buffer));
    }
    this.ctx.synchronize();
    return await Promise.resolve(outputs);
  }

  #arenaFor(dims: Map<string, number>, tokens: number): Arena {
    const key = [...dims].map(([k, v]) => `${k}=${v}`).join(",");
    if (this.#arena?.key === key) return this.#arena;
    const measure = bind(
      this.lowered.steps,
      this.bindContext({
        mode: "functional",
        dims,
        capacity: dims,
        base: 0n,
        external: new Map(),
        meta: { slots: 0n, cachePos: 0n, span: 1 },
      }),
    );
    if (this.#arena) {
      this.ctx.synchronize();
      this.ctx.free(this.#arena.base);
      this.ctx.free(this.#arena.meta);
    }
    this.#arena = {
      key,
      base: this.ctx.alloc(measure.bytes),
      meta: this.ctx.alloc(8 * tokens),
      bytes: measure.bytes,
    };
    return this.#arena;
  }

  sequences(options: SequenceOptions & Partial<CudaSequenceOptions>): CudaSequences {
    return new CudaSequences(this, {
      slots: options.slots,
      maxLength: options.maxLength,
      graphs: options.graphs ?? this.options.graphs,
      prefillChunk: options.prefillChunk ?? this.options.prefillChunk,
    });
  }

  serialize(): Uint8Array {
    return encodeGraphPayload(this.graph, this.hostWeights);
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const gemm of this.#gemms.values()) gemm[Symbol.dispose]();
    this.#gemms.clear();
    this.ctx[Symbol.dispose]();
  }
}

export function copyIn(destination: bigint, source: ArrayBufferView, stream: bigint): void {
  const bytes = new Uint8Array(source.buffer as ArrayBuffer, source.byteOffset, source.byteLength);
  checkCuda(
    cudart().cudaMemcpyAsyncToDevice(
      destination,
      bytes,
      BigInt(bytes.byteLength),
      MEMCPY.hostToDevice,
      stream,
    ),
    "copy to the device",
  );
}

export function copyOut(destination: Uint8Array, source: bigint, stream: bigint): void {
  checkCuda(
    cudart().cudaMemcpyAsyncToHost(
      destination,
      source,
      BigInt(destination.byteLength),
      MEMCPY.deviceToHost,
      stream,
    ),
    "copy from the device",
  );
  checkCuda(cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}
