// Launches of the steps that work row by row or element by element: embedding lookup, RMSNorm and
// LayerNorm, activations and silu·mul, broadcasting add/mul, rotary embedding, softmax, casts and
// argmax.

import type { Binder } from "../program.ts";
import type { Step } from "../lower.ts";
import { floatDtype, type View } from "../views.ts";
import { BINARY, KERNEL_DTYPE, kernels, UNARY } from "../../../../ffi/kernels.ts";
import { BYTES_PER_ELEMENT, numel } from "../../../../core/ir/tensor.ts";
import { EngineError } from "../../../../core/runtime/engine.ts";

type PointwiseStep = Extract<
  Step,
  {
    kind:
      | "embedding"
      | "rmsnorm"
      | "layernorm"
      | "unary"
      | "silu_mul"
      | "binary"
      | "rope"
      | "softmax"
      | "cast"
      | "argmax";
  }
>;

export function bindPointwise(binder: Binder, step: PointwiseStep): void {
  const k = kernels();
  const s = binder.ctx.stream;
  switch (step.kind) {
    case "embedding": {
      const table = binder.contiguous(binder.view(step.table));
      const ids = binder.contiguous(binder.view(step.ids));
      if (ids.dtype !== "i32") {
        throw new EngineError(`embedding ${step.out}: ids must be i32, got ${ids.dtype}`);
      }
      const out = binder.define(step.out);
      const rows = numel(ids.shape);
      const width = table.shape[1];
      const bytes = BYTES_PER_ELEMENT[table.dtype];
      return binder.launch(
        `embedding ${step.out}`,
        () => k.rf_gather_rows(bytes, table.ptr, width, width, ids.ptr, rows, out.ptr, s),
      );
    }
    case "rmsnorm": {
      const w = binder.contiguous(binder.view(step.w));
      return bindRmsnorm(binder, binder.view(step.x), w, step.eps, step.out);
    }
    case "layernorm": {
      const x = binder.view(step.x);
      const width = x.shape[x.shape.length - 1];
      const rx = binder.rows(x, width);
      const w = binder.contiguous(binder.view(step.w));
      const b = binder.contiguous(binder.view(step.b));
      const out = binder.define(step.out);
      const rows = numel(x.shape) / width;
      const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
      return binder.launch(
        `layernorm ${step.out}`,
        () => k.rf_layernorm(dtype, rx.ptr, rx.rowStride, w.ptr, b.ptr, out.ptr, rows, width, step.eps, s),
      );
    }
    case "unary": {
      const x = binder.view(step.x);
      const width = x.shape[x.shape.length - 1];
      const rx = binder.rows(x, width);
      const out = binder.define(step.out);
      const op = step.op === "silu" ? UNARY.silu : step.op === "gelu_tanh" ? UNARY.geluTanh : UNARY.geluErf;
      const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
      const rows = numel(x.shape) / width;
      return binder.launch(
        `${step.op} ${step.out}`,
        () => k.rf_unary(dtype, op, rx.ptr, rx.rowStride, out.ptr, rows, width, s),
      );
    }
    case "silu_mul":
      return bindSiluMul(binder, binder.view(step.gate), binder.view(step.up), step.out);
    case "binary":
      return bindBinary(binder, step);
    case "rope": {
      const x = binder.view(step.x);
      const [, , heads, headDim] = x.shape;
      const rx = binder.rows(x, heads * headDim);
      const pos = binder.contiguous(binder.view(step.pos));
      const out = binder.define(step.out);
      const tokens = numel(x.shape) / (heads * headDim);
      const period = numel(pos.shape);
      const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
      return binder.launch(
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
    case "softmax": {
      const x = binder.contiguous(binder.view(step.x));
      const out = binder.define(step.out);
      const width = x.shape[x.shape.length - 1];
      const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
      return binder.launch(
        `softmax ${step.out}`,
        () => k.rf_softmax(dtype, x.ptr, out.ptr, numel(x.shape) / width, width, s),
      );
    }
    case "cast": {
      const x = binder.contiguous(binder.view(step.x));
      const out = binder.define(step.out);
      if (x.dtype === step.dtype) {
        binder.copy2d(out.ptr, 0, x.ptr, 0, numel(x.shape) * BYTES_PER_ELEMENT[x.dtype], 1);
        return;
      }
      const from = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
      const to = KERNEL_DTYPE[floatDtype(step.dtype, step.out)];
      return binder.launch(`cast ${step.out}`, () => k.rf_cast(from, to, x.ptr, out.ptr, numel(x.shape), s));
    }
    case "argmax": {
      const x = binder.view(step.x);
      const width = x.shape[x.shape.length - 1];
      const rx = binder.rows(x, width);
      const out = binder.define(step.out);
      const dtype = KERNEL_DTYPE[floatDtype(x.dtype, step.out)];
      return binder.launch(
        `argmax ${step.out}`,
        () => k.rf_argmax(dtype, rx.ptr, rx.rowStride, out.ptr, numel(x.shape) / width, width, s),
      );
    }
  }
}

/** Value `out` = rmsnorm(x) with weight w. */
function bindRmsnorm(binder: Binder, x: View, w: View, eps: number, out: string): void {
  const width = x.shape[x.shape.length - 1];
  const rx = binder.rows(x, width);
  const target = binder.define(out);
  const rows = numel(x.shape) / width;
  const dtype = KERNEL_DTYPE[floatDtype(x.dtype, out)];
  const k = kernels();
  const s = binder.ctx.stream;
  binder.launch(
    `rmsnorm ${out}`,
    () => k.rf_rmsnorm(dtype, rx.ptr, rx.rowStride, w.ptr, target.ptr, rows, width, eps, s),
  );
}

/** Value `out` = silu(gate) · up. */
export function bindSiluMul(binder: Binder, gate: View, up: View, out: string): void {
  const width = gate.shape[gate.shape.length - 1];
  const a = binder.rows(gate, width);
  const b = binder.rows(up, width);
  const target = binder.define(out);
  const rows = numel(gate.shape) / width;
  const dtype = KERNEL_DTYPE[floatDtype(gate.dtype, out)];
  const k = kernels();
  const s = binder.ctx.stream;
  binder.launch(
    `silu·mul ${out}`,
    () => k.rf_silu_mul(dtype, a.ptr, a.rowStride, b.ptr, b.rowStride, target.ptr, rows, width, s),
  );
}

function bindBinary(binder: Binder, step: Extract<Step, { kind: "binary" }>): void {
  const a = binder.contiguous(binder.view(step.a));
  const b = binder.contiguous(binder.view(step.b));
  const out = binder.define(step.out);
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
  const aStrides = new Uint8Array(strides(a).buffer);
  const bStrides = new Uint8Array(strides(b).buffer);
  const shapeBytes = new Uint8Array(BigInt64Array.from(shape.map(BigInt)).buffer);
  const dtype = KERNEL_DTYPE[floatDtype(out.dtype, step.out)];
  const op = step.op === "add" ? BINARY.add : BINARY.mul;
  const k = kernels();
  const s = binder.ctx.stream;
  binder.launch(
    `${step.op} ${step.out}`,
    () => k.rf_binary(dtype, op, a.ptr, aStrides, b.ptr, bStrides, out.ptr, shapeBytes, s),
  );
}
