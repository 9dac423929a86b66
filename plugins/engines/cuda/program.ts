// Binding lowered steps to device memory and enqueueing them. A walk over the steps lays every
// value out in one arena (sizes at the program's capacity, so that a smaller run reuses the same
// addresses, which is what lets CUDA graphs replay) and returns one closure per launch.
// Values are views: rows of `width` elements, `ld` apart, so that one product's output can feed
// several consumers in place; a kernel that needs other rows gets a contiguous copy.

import type { Step } from "./lower.ts";
import type { DeviceCommunicator } from "./communicator.ts";
import { BINARY, check as checkKernel, KERNEL_DTYPE, kernels, UNARY } from "../../../ffi/kernels.ts";
import { check as checkCuda, cudart, MEMCPY } from "../../../ffi/cuda.ts";
import type { Gemm } from "../../../ffi/cublaslt.ts";
import { evalDim } from "../../../core/ir/dims.ts";
import { BYTES_PER_ELEMENT, type DType, numel, type TensorType } from "../../../core/ir/tensor.ts";
import { EngineError } from "../../../core/runtime/engine.ts";

export interface View {
  ptr: bigint;
  dtype: DType;
  shape: number[];
  /** Elements from one row to the next; rows are `width` elements long. */
  ld: number;
  width: number;
  /** Elements the view may cover at the program's capacity. */
  capacity: number;
}

export interface Caches {
  k: bigint[];
  v: bigint[];
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

class Binder {
  readonly views = new Map<string, View>();
  readonly launches: (() => void)[] = [];
  readonly labels: string[] = [];
  #offset = 0;

  constructor(readonly steps: Step[], readonly ctx: BindContext) {
    for (const [name, view] of ctx.weights) this.views.set(name, view);
    for (const [name, view] of ctx.external) this.views.set(name, view);
  }

  walk(): Bound {
    this.steps.forEach((step, index) => this.step(step, index));
    if (this.ctx.mode === "functional") {
      for (const name of this.ctx.outputs) this.views.set(name, this.contiguous(this.view(name)));
    }
    return { launches: this.launches, labels: this.labels, views: this.views, bytes: this.#offset };
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

  step(step: Step, index: number): void {
    const k = kernels();
    const s = this.ctx.stream;
    switch (step.kind) {
      case "gemm":
        return this.gemm(step, index);
      case "embedding": {
        const table = this.contiguous(this.view(step.table));
        const ids = this.contiguous(this.view(step.ids));
        if (ids.dtype !== "i32") {
          throw new EngineError(`embedding ${step.out}: ids must be i32, got ${ids.dtype}`);
        }
        const out = this.define(step.out);
        const rows = numel(ids.shape);
        const width = table.shape[1];
        return this.launch(
          `embedding ${step.out}`,
          () =>
            k.rf_gather_rows(
              BYTES_PER_ELEMENT[table.dtype],
              table.ptr,
              width,
              width,
              ids.ptr,
              rows,
              out.ptr,
              s,
            ),
        );
      }
      case "rmsnorm":
      case "layernorm": {
        const x = this.view(step.x);
        const width = x.shape[x.shape.length - 1];
        const rx = this.rows(x, width);
        const w = this.contiguous(this.view(step.w));
        const out = this.define(step.out);
        const rows = numel(x.shape) / width;
        const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
        if (step.kind === "rmsnorm") {
          return this.launch(
            `rmsnorm ${step.out}`,
            () => k.rf_rmsnorm(dtype, rx.ptr, rx.rowStride, w.ptr, out.ptr, rows, width, step.eps, s),
          );
        }
        const b = this.contiguous(this.view(step.b));
        return this.launch(
          `layernorm ${step.out}`,
          () => k.rf_layernorm(dtype, rx.ptr, rx.rowStride, w.ptr, b.ptr, out.ptr, rows, width, step.eps, s),
        );
      }
      case "unary": {
        const x = this.view(step.x);
        const width = x.shape[x.shape.length - 1];
        const rx = this.rows(x, width);
        const out = this.define(step.out);
        const op = step.op === "silu" ? UNARY.silu : step.op === "gelu_tanh" ? UNARY.geluTanh : UNARY.geluErf;
        const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
        const rows = numel(x.shape) / width;
        return this.launch(
          `${step.op} ${step.out}`,
          () => k.rf_unary(dtype, op, rx.ptr, rx.rowStride, out.ptr, rows, width, s),
        );
      }
      case "silu_mul": {
        const gate = this.view(step.gate);
        const width = gate.shape[gate.shape.length - 1];
        const a = this.rows(gate, width);
        const b = this.rows(this.view(step.up), width);
        const out = this.define(step.out);
        const rows = numel(gate.shape) / width;
        const dtype = KERNEL_DTYPE[floatDtype(gate.dtype, step.out)];
        return this.launch(
          `silu·mul ${step.out}`,
          () => k.rf_silu_mul(dtype, a.ptr, a.rowStride, b.ptr, b.rowStride, out.ptr, rows, width, s),
        );
      }
      case "binary":
        return this.binary(step);
      case "rope": {
        const x = this.view(step.x);
        const [, , heads, headDim] = x.shape;
        const rx = this.rows(x, heads * headDim);
        const pos = this.contiguous(this.view(step.pos));
        const out = this.define(step.out);
        const tokens = numel(x.shape) / (heads * headDim);
        const period = numel(pos.shape);
        const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
        return this.launch(
          `rope ${step.out}`,
          () =>
            k.rf_rope(
              dtype,
              rx.ptr,
              rx.rowStride,
              out.ptr,
              pos.ptr,
              period,
              tokens,
              heads,
              headDim,
              step.theta,
              s,
            ),
        );
      }
      case "attention":
        return this.attention(step);
      case "transpose": {
        const x = this.contiguous(this.view(step.x));
        const out = this.define(step.out);
        return this.permute(x, out, step.perm, `transpose ${step.out}`);
      }
      case "reshape": {
        const x = this.view(step.x);
        const shape = this.shapeOf(step.out);
        const alias = reshaped(x, shape);
        if (alias) {
          this.views.set(step.out, alias);
          return;
        }
        const copy = this.contiguous(x);
        this.views.set(step.out, { ...copy, shape, width: shape.at(-1) ?? 1, ld: shape.at(-1) ?? 1 });
        return;
      }
      case "softmax": {
        const x = this.contiguous(this.view(step.x));
        const out = this.define(step.out);
        const width = x.shape[x.shape.length - 1];
        const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
        return this.launch(
          `softmax ${step.out}`,
          () => k.rf_softmax(dtype, x.ptr, out.ptr, numel(x.shape) / width, width, s),
        );
      }
      case "cast": {
        const x = this.contiguous(this.view(step.x));
        const out = this.define(step.out);
        if (x.dtype === step.dtype) {
          this.copy2d(out.ptr, 0, x.ptr, 0, numel(x.shape) * BYTES_PER_ELEMENT[x.dtype], 1);
          return;
        }
        const from = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
        const to = KERNEL_DTYPE[floatDtype(step.dtype, step.out)];
        return this.launch(`cast ${step.out}`, () => k.rf_cast(from, to, x.ptr, out.ptr, numel(x.shape), s));
      }
      case "argmax": {
        const x = this.view(step.x);
        const width = x.shape[x.shape.length - 1];
        const rx = this.rows(x, width);
        const out = this.define(step.out);
        const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
        return this.launch(
          `argmax ${step.out}`,
          () => k.rf_argmax(dtype, rx.ptr, rx.rowStride, out.ptr, numel(x.shape) / width, width, s),
        );
      }
      case "concat": {
        const inputs = step.inputs.map((name) => this.contiguous(this.view(name)));
        const out = this.define(step.out);
        const axis = step.axis < 0 ? step.axis + out.shape.length : step.axis;
        const bytes = BYTES_PER_ELEMENT[out.dtype];
        const outer = numel(out.shape.slice(0, axis));
        const inner = numel(out.shape.slice(axis + 1));
        let offset = 0;
        for (const input of inputs) {
          const chunk = input.shape[axis] * inner * bytes;
          this.copy2d(
            out.ptr + BigInt(offset),
            out.shape[axis] * inner * bytes,
            input.ptr,
            chunk,
            chunk,
            outer,
          );
          offset += chunk;
        }
        return;
      }
      case "slice": {
        const x = this.contiguous(this.view(step.x));
        const out = this.define(step.out);
        const axis = step.axis < 0 ? step.axis + x.shape.length : step.axis;
        const bytes = BYTES_PER_ELEMENT[x.dtype];
        const outer = numel(x.shape.slice(0, axis));
        const inner = numel(x.shape.slice(axis + 1));
        const width = (step.end - step.start) * inner * bytes;
        const source = x.ptr + BigInt(step.start * inner * bytes);
        return this.copy2d(out.ptr, width, source, x.shape[axis] * inner * bytes, width, outer);
      }
      case "collective":
        return this.collective(step);
    }
  }

  gemm(step: Extract<Step, { kind: "gemm" }>, index: number): void {
    let x = this.view(step.x);
    let rx = this.rows(x, step.k);
    let m = numel(x.shape) / step.k;
    const logits = this.ctx.mode === "sequence" && step.parts.some((part) => part.output === "logits");
    if (logits) {
      // Only each sequence's last row becomes logits: gather those rows first.
      const entries = this.ctx.meta.entries!;
      const gathered = this.scratch(x.dtype, [entries, step.k], this.ctx.capacity.get("__entries")! * step.k);
      const k = kernels();
      const s = this.ctx.stream;
      const lastRows = this.ctx.meta.lastRows!;
      const source = rx;
      this.launch(
        "gather of last rows",
        () =>
          k.rf_gather_rows(
            BYTES_PER_ELEMENT[x.dtype],
            source.ptr,
            step.k,
            source.rowStride,
            lastRows,
            entries,
            gathered.ptr,
            s,
          ),
      );
      x = gathered;
      rx = { ...gathered, rowStride: step.k };
      m = entries;
    }
    const total = step.parts.reduce((sum, part) => sum + part.width, 0);
    const rowsCapacity = logits ? this.ctx.capacity.get("__entries")! : x.capacity / step.k;
    const outDtype = x.dtype;
    const buffer = this.allocate(outDtype, rowsCapacity * total);
    let offset = 0;
    for (const part of step.parts) {
      const shape = logits ? [m, part.width] : this.shapeOf(part.output);
      this.views.set(part.output, {
        ptr: buffer + BigInt(offset * BYTES_PER_ELEMENT[outDtype]),
        dtype: outDtype,
        shape,
        ld: total,
        width: part.width,
        capacity: rowsCapacity * part.width,
      });
      offset += part.width;
    }
    let residual: bigint | undefined;
    if (step.residual) {
      const r = this.contiguous(this.view(step.residual));
      if (total !== r.width) throw new EngineError(`residual ${step.residual} does not match its product`);
      residual = r.ptr;
    }
    const { gemm, w, bias } = this.ctx.gemm(index, rx.rowStride, total, m);
    const { stream, workspace } = this.ctx;
    // A few rows (decode) stream the weight through rankflow's own kernel; more go to cuBLASLt.
    const vector = 16 / BYTES_PER_ELEMENT[outDtype];
    const aligned = rx.ptr % 16n === 0n && rx.rowStride % vector === 0 && step.k % vector === 0;
    if (m <= this.ctx.kernelRows && aligned) {
      const k = kernels();
      const dtype = KERNEL_DTYPE[floatDtype(outDtype, step.parts[0].output)];
      const x = rx.ptr;
      this.launch(
        `product ${step.parts.map((part) => part.output).join(", ")}`,
        () =>
          k.rf_gemv(
            dtype,
            m,
            x,
            rx.rowStride,
            w,
            bias ?? 0n,
            residual ?? 0n,
            buffer,
            total,
            total,
            step.k,
            stream,
          ),
      );
      return;
    }
    const pointers = { x: rx.ptr, w, out: buffer, bias, residual };
    this.push("product (cuBLASLt)", () => gemm.run(m, pointers, workspace, stream));
  }

  binary(step: Extract<Step, { kind: "binary" }>): void {
    const a = this.contiguous(this.view(step.a));
    const b = this.contiguous(this.view(step.b));
    const out = this.define(step.out);
    if (out.shape.length > 4) throw new EngineError(`${step.op} ${step.out}: more than 4 axes`);
    const shape = [...Array(4 - out.shape.length).fill(1), ...out.shape];
    const strides = (view: View) => {
      const padded = [...Array(4 - view.shape.length).fill(1), ...view.shape];
      const result = new BigInt64Array(4);
      let stride = 1;
      for (let axis = 3; axis >= 0; axis--) {
        result[axis] = BigInt(padded[axis] === 1 && shape[axis] !== 1 ? 0 : stride);
        stride *= padded[axis];
      }
      return result;
    };
    const aStrides = strides(a);
    const bStrides = strides(b);
    const shapeArray = BigInt64Array.from(shape.map(BigInt));
    const dtype = KERNEL_DTYPE[floatDtype(out.dtype, step.out)];
    const op = step.op === "add" ? BINARY.add : BINARY.mul;
    const k = kernels();
    const s = this.ctx.stream;
    this.launch(
      `${step.op} ${step.out}`,
      () =>
        k.rf_binary(
          dtype,
          op,
          a.ptr,
          new Uint8Array(aStrides.buffer),
          b.ptr,
          new Uint8Array(bStrides.buffer),
          out.ptr,
          new Uint8Array(shapeArray.buffer),
          s,
        ),
    );
  }

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

  attention(step: Extract<Step, { kind: "attention" }>): void {
    const { heads, kvHeads, headDim } = step;
    const q = this.view(step.q.value);
    const kv = this.view(step.k.value);
    const vv = this.view(step.v.value);
    const rq = this.rows(q, heads * headDim);
    const rk = this.rows(kv, kvHeads * headDim);
    const rv = this.rows(vv, kvHeads * headDim);
    const tokens = numel(q.shape) / (heads * headDim);
    const capacityTokens = q.capacity / (heads * headDim);
    const dtype = KERNEL_DTYPE[floatDtype(q.dtype, step.out)];
    const bytes = BYTES_PER_ELEMENT[q.dtype];
    let kCache: bigint;
    let vCache: bigint;
    let maxLength: number;
    let span: number;
    if (this.ctx.mode === "functional") {
      const past = this.view(step.pastK);
      const pastV = this.view(step.pastV);
      const presentK = this.define(step.presentK);
      const presentV = this.define(step.presentV);
      const [batch, , length] = presentK.shape;
      const pastLength = past.shape[2];
      if (pastLength > 0) {
        const rowsOfPast = batch * kvHeads;
        const dst = length * headDim * bytes;
        const src = pastLength * headDim * bytes;
        this.copy2d(presentK.ptr, dst, past.ptr, src, src, rowsOfPast);
        this.copy2d(presentV.ptr, dst, pastV.ptr, src, src, rowsOfPast);
      }
      kCache = presentK.ptr;
      vCache = presentV.ptr;
      maxLength = length;
      span = length;
    } else {
      const caches = this.ctx.caches!;
      kCache = caches.k[step.layer];
      vCache = caches.v[step.layer];
      maxLength = caches.maxLength;
      span = this.ctx.meta.span;
    }
    const qTokens = this.scratch(q.dtype, [tokens, heads, headDim], capacityTokens * heads * headDim);
    const rope = step.q.rope ?? step.k.rope;
    const ropePos = rope ? this.contiguous(this.view(rope.pos)) : undefined;
    const period = ropePos ? numel(ropePos.shape) : 0;
    const theta = rope?.theta ?? 0;
    const { slots, cachePos } = this.ctx.meta;
    const k = kernels();
    const s = this.ctx.stream;
    this.launch(`kv cache write of layer ${step.layer}`, () =>
      k.rf_qkv_prepare(
        dtype,
        rq.ptr,
        rq.rowStride,
        rk.ptr,
        rk.rowStride,
        rv.ptr,
        rv.rowStride,
        qTokens.ptr,
        kCache,
        vCache,
        slots,
        cachePos,
        ropePos?.ptr ?? 0n,
        period,
        step.q.rope ? 1 : 0,
        step.k.rope ? 1 : 0,
        theta,
        tokens,
        heads,
        kvHeads,
        headDim,
        maxLength,
        s,
      ));
    const capacitySpan = this.ctx.mode === "functional" ? span : this.ctx.caches!.maxLength;
    const scratchBytes = Number(k.rf_attention_scratch_bytes(capacityTokens, heads, headDim, capacitySpan));
    const scratch = this.allocate("f32", scratchBytes / 4);
    const target = step.outTokenMajor
      ? this.define(step.out)
      : this.scratch(q.dtype, [tokens, heads, headDim], capacityTokens * heads * headDim);
    this.launch(`attention of layer ${step.layer}`, () =>
      k.rf_attention(
        dtype,
        qTokens.ptr,
        target.ptr,
        kCache,
        vCache,
        slots,
        cachePos,
        tokens,
        heads,
        kvHeads,
        headDim,
        maxLength,
        span,
        step.scale,
        scratch,
        s,
      ));
    if (!step.outTokenMajor) {
      const out = this.define(step.out);
      const [batch, , seq] = out.shape;
      this.permute(
        { ...target, shape: [batch, seq, heads, headDim] },
        out,
        [0, 2, 1, 3],
        `attention ${step.out}`,
      );
    }
  }

  collective(step: Extract<Step, { kind: "collective" }>): void {
    const x = this.view(step.x);
    if (step.size === 1) {
      this.views.set(step.out, { ...x, shape: this.shapeOf(step.out) });
      return;
    }
    const communicator = this.ctx.communicator(step.group);
    if (!communicator) {
      throw new EngineError(
        `${step.op} over group ${step.group} (${step.size} ranks) runs inside the cuda engine and needs a device ` +
          "communicator: bind the engine to the nccl collective backend",
      );
    }
    if (communicator.size !== step.size) {
      throw new EngineError(
        `${step.op} expects group ${step.group} of ${step.size} ranks, its communicator has ${communicator.size}`,
      );
    }
    const input = this.contiguous(x);
    const out = this.define(step.out);
    const count = numel(input.shape);
    const stream = this.ctx.stream;
    const dtype = input.dtype;
    const axis = step.axis < 0 ? step.axis + input.shape.length : step.axis;
    const lead = numel(input.shape.slice(0, axis));
    switch (step.op) {
      case "all_reduce":
        this.push(
          step.op,
          () => communicator.allReduce(input.ptr, out.ptr, count, dtype, step.reduce, stream),
        );
        return;
      case "broadcast":
        this.push(step.op, () => communicator.broadcast(input.ptr, out.ptr, count, dtype, step.root, stream));
        return;
      case "reduce_scatter":
        if (lead !== 1) {
          throw new EngineError(`reduce_scatter ${step.out}: only along the first non-unit axis`);
        }
        this.push(
          step.op,
          () => communicator.reduceScatter(input.ptr, out.ptr, numel(out.shape), dtype, step.reduce, stream),
        );
        return;
      case "all_gather": {
        if (lead === 1) {
          this.push(step.op, () => communicator.allGather(input.ptr, out.ptr, count, dtype, stream));
          return;
        }
        // NCCL gathers rank-major; [size, lead, rest] → [lead, size, rest].
        const gathered = this.scratch(dtype, [step.size * count], out.capacity);
        this.push(step.op, () => communicator.allGather(input.ptr, gathered.ptr, count, dtype, stream));
        const rest = count / lead;
        this.permute(
          { ...gathered, shape: [step.size, lead, rest] },
          out,
          [1, 0, 2],
          `all_gather ${step.out}`,
        );
        return;
      }
    }
  }
}

/** The same elements under a new shape, without copying, where the rows allow it. */
function reshaped(view: View, shape: number[]): View | undefined {
  if (view.ld === view.width) {
    const width = shape.at(-1) ?? 1;
    return { ...view, shape, width, ld: width };
  }
  // A strided view keeps its rows: the new shape must end in axes that multiply to the row width.
  let product = 1;
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    product *= shape[axis];
    if (product === view.width) return { ...view, shape };
    if (product > view.width) return undefined;
  }
  return undefined;
}

function floatDtype(dtype: DType, where: string): "f32" | "f16" | "bf16" {
  if (dtype === "f32" || dtype === "f16" || dtype === "bf16") return dtype;
  throw new EngineError(`${where}: the cuda engine computes in f32, f16 or bf16, not ${dtype}`);
}
