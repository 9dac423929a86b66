// Products by weights. Few rows (decode) stream the weight through rankflow's own kernel, which
// also applies a folded RMSNorm to its input and a gated (silu·mul) epilogue; more rows go to
// cuBLASLt (bias and residual in its epilogue), with the norm and the silu·mul as launches of
// their own. The parts of one product share an output buffer: each part is a view of its
// columns. For logits in sequence mode only each entry's last row is computed.

import type { Binder } from "../program.ts";
import type { Step } from "../lower.ts";
import { floatDtype, type View } from "../views.ts";
import { bindSiluMul } from "./pointwise.ts";
import { KERNEL_DTYPE, kernels } from "../../../../ffi/kernels.ts";
import { BYTES_PER_ELEMENT, numel } from "../../../../core/ir/tensor.ts";
import { EngineError } from "../../../../core/runtime/engine.ts";

type ProductStep = Extract<Step, { kind: "gemm" }>;
type Rows = View & { rowStride: number };

export function bindProduct(binder: Binder, step: ProductStep, index: number): void {
  const ctx = binder.ctx;
  const label = `product ${step.gated?.out ?? step.parts.map((part) => part.output).join(", ")}`;
  const logits = step.parts.some((part) => binder.logitRows.has(part.output));
  // With a folded norm the product reads the norm's input and normalizes it on the way.
  const x = binder.view(step.norm?.x ?? step.x);
  const m = logits ? ctx.meta.entries! : numel(x.shape) / step.k;
  let rx = binder.rows(x, step.k);
  const dtype = x.dtype;
  const kernelDtype = KERNEL_DTYPE[floatDtype(dtype, label)];
  const k = kernels();
  // The kernel reads 16-byte vectors of every row it is given.
  const vector = 16 / BYTES_PER_ELEMENT[dtype];
  // Logits need each entry's last row, gathered, unless every entry has one (decode).
  const gather = logits && numel(x.shape) / step.k !== m;
  const streamed = m <= ctx.kernelRows && step.k % vector === 0 &&
    (gather || (rx.ptr % 16n === 0n && rx.rowStride % vector === 0));
  if (gather) rx = gatherLastRows(binder, rx, step.k);
  const rowsCapacity = logits ? ctx.capacity.get("__entries")! : rx.capacity / step.k;
  let norm: { w: bigint; eps: number } | undefined;
  if (step.norm) {
    const w = binder.view(step.norm.w).ptr;
    if (streamed && k.rf_gemv_stages(kernelDtype, m, step.k) === 1) norm = { w, eps: step.norm.eps };
    else rx = normalize(binder, rx, m, rowsCapacity, w, step.norm.eps, label);
  }

  const total = step.parts.reduce((sum, part) => sum + part.width, 0);
  let residual: bigint | undefined;
  if (step.residual) {
    const r = binder.contiguous(binder.view(step.residual));
    if (total !== r.width) throw new EngineError(`residual ${step.residual} does not match its product`);
    residual = r.ptr;
  }
  const { gemm, w, bias } = ctx.gemm(index, rx.rowStride, total, m);
  const [b, r, source] = [bias ?? 0n, residual ?? 0n, rx];
  const [normW, eps] = [norm?.w ?? 0n, norm?.eps ?? 0];
  const { stream, workspace } = ctx;
  /** The product through rankflow's weight-streaming kernel into `out` (rows `ldOut` apart). */
  const streamInto = (out: bigint, ldOut: number, gated: boolean) =>
    binder.launch(
      label,
      () =>
        k.rf_gemv(
          kernelDtype,
          m,
          source.ptr,
          source.rowStride,
          normW,
          eps,
          w,
          b,
          r,
          out,
          ldOut,
          total,
          step.k,
          gated ? 1 : 0,
          stream,
        ),
    );

  if (step.gated && streamed) {
    const width = total / 2;
    const out = binder.scratch(dtype, binder.shapeOf(step.gated.out), rowsCapacity * width);
    binder.views.set(step.gated.out, out);
    streamInto(out.ptr, width, true);
    return;
  }
  const buffer = binder.allocate(dtype, rowsCapacity * total);
  let offset = 0;
  for (const part of step.parts) {
    binder.views.set(part.output, {
      ptr: buffer + BigInt(offset * BYTES_PER_ELEMENT[dtype]),
      dtype,
      shape: logits ? [m, part.width] : binder.shapeOf(part.output),
      ld: total,
      width: part.width,
      capacity: rowsCapacity * part.width,
    });
    offset += part.width;
  }
  if (streamed) {
    streamInto(buffer, total, false);
  } else {
    const pointers = { x: source.ptr, w, out: buffer, bias, residual };
    binder.push("product (cuBLASLt)", () => gemm.run(m, pointers, workspace, stream));
  }
  if (step.gated) {
    const [gate, up] = step.parts.map((part) => binder.views.get(part.output)!);
    bindSiluMul(binder, gate, up, step.gated.out);
  }
}

/** The rows RMS-normalized into a scratch buffer, for a product that cannot normalize them itself. */
function normalize(
  binder: Binder,
  rx: Rows,
  rows: number,
  rowsCapacity: number,
  w: bigint,
  eps: number,
  label: string,
): Rows {
  const width = rx.width;
  const out = binder.scratch(rx.dtype, [rows, width], rowsCapacity * width);
  const dtype = KERNEL_DTYPE[floatDtype(rx.dtype, label)];
  const k = kernels();
  const s = binder.ctx.stream;
  binder.launch(
    `rmsnorm for ${label}`,
    () => k.rf_rmsnorm(dtype, rx.ptr, rx.rowStride, w, out.ptr, rows, width, eps, s),
  );
  return { ...out, rowStride: width };
}

/** Each sequence's last row of x (the rows that become logits), gathered into a scratch buffer. */
function gatherLastRows(binder: Binder, rx: Rows, width: number): Rows {
  const ctx = binder.ctx;
  const entries = ctx.meta.entries!;
  const gathered = binder.scratch(rx.dtype, [entries, width], ctx.capacity.get("__entries")! * width);
  const k = kernels();
  const s = ctx.stream;
  const lastRows = ctx.meta.lastRows!;
  const bytes = BYTES_PER_ELEMENT[rx.dtype];
  binder.launch(
    "gather of last rows",
    () => k.rf_gather_rows(bytes, rx.ptr, width, rx.rowStride, lastRows, entries, gathered.ptr, s),
  );
  return { ...gathered, rowStride: width };
}
