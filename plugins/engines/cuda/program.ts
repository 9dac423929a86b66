// Binding lowered steps to device memory and enqueueing them. A walk over the steps lays every
// value out in one arena (sizes at the program's capacity, so that a smaller run reuses the same
// addresses, which is what lets CUDA graphs replay) and returns one closure per launch. The
// launches of each kind of step are made in steps/; this file holds the arena and the views.
// A kernel that needs other rows than a view has gets a contiguous copy.

import type { Step } from "./lower.ts";
import type { DeviceCommunicator } from "./communicator.ts";
import type { View } from "./views.ts";
import { check as checkKernel, kernels } from "../../../ffi/kernels.ts";
import { check as checkCuda, cudart, MEMCPY } from "../../../ffi/cuda.ts";
import type { Gemm } from "../../../ffi/cublaslt.ts";
import { evalDim } from "../../../core/ir/dims.ts";
import { BYTES_PER_ELEMENT, type DType, numel, type TensorType } from "../../../core/ir/tensor.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import { bindProduct } from "./steps/products.ts";
import { bindAttention } from "./steps/attention.ts";
import { bindCollective } from "./steps/collectives.ts";
import { bindPointwise } from "./steps/pointwise.ts";
import { bindMovement } from "./steps/movement.ts";

export interface Caches {
  k: bigint[];
  v: bigint[];
  /**
   * Per layer: the decode-attention kernel's merge state and partial softmaxes (zeroed once; layers of
   * one shape share them).
   */
  merge: { counters: bigint; partials: bigint }[];
  maxLength: number;
}

export interface BindContext {
  mode: "functional" | "sequence";
  /** Sizes of this run's symbolic dims, and the largest sizes the arena is laid out for. */
  dims: Map<string, number>;
  capacity: Map<string, number>;
  /** Arena start; 0n while only measuring. */
  base: bigint;
  types: Map<string, TensorType>;
  weights: Map<string, View>;
  /** Views of inputs that live outside the arena (sequence mode: ids and pos in the step buffer). */
  external: Map<string, View>;
  /** Per-token slot and cache position (i32), and for sequence mode the rows to keep for logits. */
  meta: { slots: bigint; cachePos: bigint; lastRows?: bigint; entries?: number; span: number };
  caches?: Caches;
  stream: bigint;
  workspace: bigint;
  gemm(step: number, ldx: number, ldOut: number, m: number): { gemm: Gemm; w: bigint; bias?: bigint };
  communicator(group: string): DeviceCommunicator | undefined;
  outputs: Set<string>;
  /** Products of at most this many rows (≤ 8) go to rankflow's weight-streaming kernel; 0 sends all to cuBLASLt. */
  kernelRows: number;
}

export interface Bound {
  launches: (() => void)[];
  /** What each launch does ("rmsnorm x3", "attention of layer 2", …), for profiles. */
  labels: string[];
  views: Map<string, View>;
  /** Arena bytes the walk used. */
  bytes: number;
}

const ALIGN = 256;

/** Lays the steps out and returns their launches; with base 0n, only the arena size matters. */
export function bind(steps: Step[], ctx: BindContext): Bound {
  return new Binder(steps, ctx).walk();
}

export class Binder {
  readonly views = new Map<string, View>();
  readonly launches: (() => void)[] = [];
  readonly labels: string[] = [];
  /**
   * Sequence mode: the values whose rows become logits, of which only each entry's last row is
   * computed: `logits`, and under tensor parallelism the vocabulary shard that is gathered into it.
   */
  readonly logitRows = new Set<string>();
  #offset = 0;

  constructor(readonly steps: Step[], readonly ctx: BindContext) {
    for (const [name, view] of ctx.weights) this.views.set(name, view);
    for (const [name, view] of ctx.external) this.views.set(name, view);
    if (ctx.mode === "sequence") {
      this.logitRows.add("logits");
      for (const step of steps) {
        if (step.kind === "collective" && step.op === "all_gather" && step.out === "logits") {
          this.logitRows.add(step.x);
        }
      }
    }
  }

  walk(): Bound {
    this.steps.forEach((step, index) => this.step(step, index));
    if (this.ctx.mode === "functional") {
      for (const name of this.ctx.outputs) this.views.set(name, this.contiguous(this.view(name)));
    }
    return { launches: this.launches, labels: this.labels, views: this.views, bytes: this.#offset };
  }

  step(step: Step, index: number): void {
    switch (step.kind) {
      case "gemm":
        return bindProduct(this, step, index);
      case "attention":
        return bindAttention(this, step);
      case "collective":
        return bindCollective(this, step);
      case "transpose":
      case "reshape":
      case "concat":
      case "slice":
        return bindMovement(this, step);
      default:
        return bindPointwise(this, step);
    }
  }

  /** Arena space for `elements` of `dtype` at capacity. */
  allocate(dtype: DType, capacityElements: number): bigint {
    const bytes = Math.ceil((capacityElements * BYTES_PER_ELEMENT[dtype]) / ALIGN) * ALIGN;
    const ptr = this.ctx.base + BigInt(this.#offset);
    this.#offset += Math.max(bytes, ALIGN);
    return ptr;
  }

  shapeOf(name: string, dims = this.ctx.dims): number[] {
    const type = this.ctx.types.get(name);
    if (!type) throw new EngineError(`value %${name} has no type`);
    return type.shape.map((d) => evalDim(d, dims));
  }

  /** A fresh contiguous value for graph value `name`. */
  define(name: string, shape = this.shapeOf(name), capacity?: number): View {
    const type = this.ctx.types.get(name)!;
    const cap = capacity ?? numel(this.shapeOf(name, this.ctx.capacity));
    const view = this.scratch(type.dtype, shape, cap);
    this.views.set(name, view);
    return view;
  }

  scratch(dtype: DType, shape: number[], capacity: number): View {
    const width = shape.length ? shape[shape.length - 1] : 1;
    return { ptr: this.allocate(dtype, capacity), dtype, shape, ld: width, width, capacity };
  }

  /** Input values (functional mode) are arena buffers the caller fills. */
  view(name: string): View {
    const known = this.views.get(name);
    if (known) return known;
    if (this.ctx.types.has(name) && this.ctx.mode === "functional") return this.define(name);
    throw new EngineError(`value %${name} is used before the cuda engine computed it`);
  }

  push(label: string, launch: () => void): void {
    this.labels.push(label);
    this.launches.push(launch);
  }

  launch(what: string, call: () => number): void {
    this.push(what, () => checkKernel(call(), what));
  }

  /** The row stride at which `view` reads as rows of `width`, or a contiguous copy's. */
  rows(view: View, width: number): View & { rowStride: number } {
    if (view.ld === view.width) return { ...view, rowStride: width };
    if (view.width === width) return { ...view, rowStride: view.ld };
    const copy = this.contiguous(view);
    return { ...copy, rowStride: width };
  }

  contiguous(view: View): View {
    if (view.ld === view.width) return view;
    const copy = this.scratch(view.dtype, view.shape, view.capacity);
    const bytes = BYTES_PER_ELEMENT[view.dtype];
    const rows = numel(view.shape) / view.width;
    this.copy2d(copy.ptr, view.width * bytes, view.ptr, view.ld * bytes, view.width * bytes, rows);
    return copy;
  }

  copy2d(dst: bigint, dpitch: number, src: bigint, spitch: number, width: number, height: number): void {
    if (width === 0 || height === 0) return;
    const stream = this.ctx.stream;
    this.push("copy", () =>
      checkCuda(
        cudart().cudaMemcpy2DAsync(
          dst,
          BigInt(dpitch),
          src,
          BigInt(spitch),
          BigInt(width),
          BigInt(height),
          MEMCPY.deviceToDevice,
          stream,
        ),
        "cudaMemcpy2DAsync",
      ));
  }

  /** out = x with its axes permuted (up to 4). */
  permute(x: View, out: View, perm: number[], what: string): void {
    if (perm.length > 4) throw new EngineError(`${what}: more than 4 axes`);
    const pad = 4 - perm.length;
    const shape = BigInt64Array.from([...Array(pad).fill(1), ...x.shape].map(BigInt));
    const full = BigInt64Array.from(
      [...Array.from({ length: pad }, (_, i) => i), ...perm.map((p) => p + pad)].map(BigInt),
    );
    const k = kernels();
    const s = this.ctx.stream;
    const bytes = BYTES_PER_ELEMENT[x.dtype];
    this.launch(
      what,
      () => k.rf_permute(bytes, x.ptr, out.ptr, new Uint8Array(shape.buffer), new Uint8Array(full.buffer), s),
    );
  }
}
