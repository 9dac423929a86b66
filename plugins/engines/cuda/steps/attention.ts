// Attention over KV caches: one launch writes this run's k and v into the caches (rotating q and
// k on the way), a second attends. A decode run (one new token for each sequence) does both in
// one launch. Functional runs lay the caches out in the arena (past copied in front); sequence
// runs use the pool's caches.

import type { Binder } from "../program.ts";
import type { Step } from "../lower.ts";
import { floatDtype } from "../views.ts";
import { KERNEL_DTYPE, kernels } from "../../../../ffi/kernels.ts";
import { BYTES_PER_ELEMENT, numel } from "../../../../core/ir/tensor.ts";

/** The most tokens a decode run attends in one launch (rf_decode_attention). */
export const DECODE_TOKENS = 64;

export function bindAttention(binder: Binder, step: Extract<Step, { kind: "attention" }>): void {
  const { heads, kvHeads, headDim } = step;
  const q = binder.view(step.q.value);
  const kv = binder.view(step.k.value);
  const vv = binder.view(step.v.value);
  const rq = binder.rows(q, heads * headDim);
  const rk = binder.rows(kv, kvHeads * headDim);
  const rv = binder.rows(vv, kvHeads * headDim);
  const tokens = numel(q.shape) / (heads * headDim);
  const capacityTokens = q.capacity / (heads * headDim);
  const dtype = KERNEL_DTYPE[floatDtype(q.dtype, step.out)];
  const bytes = BYTES_PER_ELEMENT[q.dtype];
  let kCache: bigint;
  let vCache: bigint;
  let maxLength: number;
  let span: number;
  if (binder.ctx.mode === "functional") {
    const past = binder.view(step.pastK);
    const pastV = binder.view(step.pastV);
    const presentK = binder.define(step.presentK);
    const presentV = binder.define(step.presentV);
    const [batch, , length] = presentK.shape;
    const pastLength = past.shape[2];
    if (pastLength > 0) {
      const rowsOfPast = batch * kvHeads;
      const dst = length * headDim * bytes;
      const src = pastLength * headDim * bytes;
      binder.copy2d(presentK.ptr, dst, past.ptr, src, src, rowsOfPast);
      binder.copy2d(presentV.ptr, dst, pastV.ptr, src, src, rowsOfPast);
    }
    kCache = presentK.ptr;
    vCache = presentV.ptr;
    maxLength = length;
    span = length;
  } else {
    const caches = binder.ctx.caches!;
    kCache = caches.k[step.layer];
    vCache = caches.v[step.layer];
    maxLength = caches.maxLength;
    span = binder.ctx.meta.span;
  }
  const rope = step.q.rope ?? step.k.rope;
  const ropePos = rope ? binder.contiguous(binder.view(rope.pos)) : undefined;
  const period = ropePos ? numel(ropePos.shape) : 0;
  const theta = rope?.theta ?? 0;
  const { slots, cachePos } = binder.ctx.meta;
  const k = kernels();
  const s = binder.ctx.stream;
  // What the decode kernel and the cache write both take: the rows of q, k and v; the caches, where
  // this run's tokens go in them and how they are rotated; the sizes.
  const rows = [rq.ptr, rq.rowStride, rk.ptr, rk.rowStride, rv.ptr, rv.rowStride] as const;
  const ropeQ = step.q.rope ? 1 : 0, ropeK = step.k.rope ? 1 : 0;
  const cacheWrite = [
    kCache,
    vCache,
    slots,
    cachePos,
    ropePos?.ptr ?? 0n,
    period,
    ropeQ,
    ropeK,
    theta,
  ] as const;
  const sizes = [tokens, heads, kvHeads, headDim, maxLength] as const;
  // Every entry of a sequence run one token: each token is another slot's next one.
  const decode = binder.ctx.mode === "sequence" && binder.ctx.meta.entries === tokens &&
    tokens <= DECODE_TOKENS &&
    heads / kvHeads <= 8 && step.outTokenMajor && !step.v.rope;
  if (decode) {
    const { partials, counters } = binder.ctx.caches!.merge[step.layer];
    const target = binder.define(step.out);
    binder.launch(
      `attention of layer ${step.layer}`,
      () =>
        k.rf_decode_attention(
          dtype,
          ...rows,
          ...cacheWrite,
          ...sizes,
          span,
          step.scale,
          partials,
          counters,
          target.ptr,
          s,
        ),
    );
    return;
  }
  const qTokens = binder.scratch(q.dtype, [tokens, heads, headDim], capacityTokens * heads * headDim);
  binder.launch(
    `kv cache write of layer ${step.layer}`,
    () => k.rf_qkv_prepare(dtype, ...rows, qTokens.ptr, ...cacheWrite, ...sizes, s),
  );
  const capacitySpan = binder.ctx.mode === "functional" ? span : binder.ctx.caches!.maxLength;
  const scratchBytes = Number(k.rf_attention_scratch_bytes(capacityTokens, heads, headDim, capacitySpan));
  const scratch = binder.allocate("f32", scratchBytes / 4);
  const target = step.outTokenMajor
    ? binder.define(step.out)
    : binder.scratch(q.dtype, [tokens, heads, headDim], capacityTokens * heads * headDim);
  binder.launch(`attention of layer ${step.layer}`, () =>
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
    const out = binder.define(step.out);
    const [batch, , seq] = out.shape;
    binder.permute(
      { ...target, shape: [batch, seq, heads, headDim] },
      out,
      [0, 2, 1, 3],
      `attention ${step.out}`,
    );
  }
}
