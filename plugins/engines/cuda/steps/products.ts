// Products by weights. Few rows (decode) stream the weight through rankflow's own kernel; more go
// to cuBLASLt (bias and residual in its epilogue). The parts of one product share an output
// buffer: each part is a view of its columns. For logits in sequence mode only each entry's last
// row is computed.

import type { Binder } from "../program.ts";
import type { Step } from "../lower.ts";
import { floatDtype, type View } from "../views.ts";
import { KERNEL_DTYPE, kernels } from "../../../../ffi/kernels.ts";
import { BYTES_PER_ELEMENT, numel } from "../../../../core/ir/tensor.ts";
import { EngineError } from "../../../../core/runtime/engine.ts";

type ProductStep = Extract<Step, { kind: "gemm" }>;
type Rows = View & { rowStride: number };

export function bindProduct(binder: Binder, step: ProductStep, index: number): void {
  const ctx = binder.ctx;
  const logits = ctx.mode === "sequence" && step.parts.some((part) => part.output === "logits");
  const x = binder.view(step.x);
  const m = logits ? ctx.meta.entries! : numel(x.shape) / step.k;
  let rx = binder.rows(x, step.k);
  const dtype = x.dtype;
  // The kernel reads 16-byte vectors of every row it is given.
  const vector = 16 / BYTES_PER_ELEMENT[dtype];
  const streamed = m <= ctx.kernelRows && step.k % vector === 0 &&
    (logits || (rx.ptr % 16n === 0n && rx.rowStride % vector === 0));
  if (logits) rx = gatherLastRows(binder, rx, step.k);

  const total = step.parts.reduce((sum, part) => sum + part.width, 0);
  const rowsCapacity = logits ? ctx.capacity.get("__entries")! : rx.capacity / step.k;
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
  let residual: bigint | undefined;
  if (step.residual) {
    const r = binder.contiguous(binder.view(step.residual));
    if (total !== r.width) throw new EngineError(`residual ${step.residual} does not match its product`);
    residual = r.ptr;
  }
  const { gemm, w, bias } = ctx.gemm(index, rx.rowStride, total, m);
  const label = `product ${step.parts.map((part) => part.output).join(", ")}`;
  const { stream, workspace } = ctx;
  if (!streamed) {
    const pointers = { x: rx.ptr, w, out: buffer, bias, residual };
    binder.push("product (cuBLASLt)", () => gemm.run(m, pointers, workspace, stream));
    return;
  }
  const k = kernels();
  const kernelDtype = KERNEL_DTYPE[floatDtype(dtype, step.parts[0].output)];
  const source = rx;
  const [n, depth, b, r] = [total, step.k, bias ?? 0n, residual ?? 0n];
  binder.launch(
    label,
    () => k.rf_gemv(kernelDtype, m, source.ptr, source.rowStride, w, b, r, buffer, n, n, depth, stream),
  );
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
