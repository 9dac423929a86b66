// Attention: rotary position embedding and causal scaled-dot-product attention over a KV cache.

import { OpError, registerOp } from "../registry.ts";
import { toF32, toIndices } from "../tensor.ts";
import { addDims, checkDim, checkRank } from "../dims.ts";
import { floatResult, numberAttr, requireFloat } from "./common.ts";

registerOp({
  name: "rope",
  doc:
    "rotary embedding of x[B, S, H, D] at positions pos[S], rotating halves (Llama style); attribute theta",
  arity: [2, 2],
  infer([x, pos]) {
    requireFloat(x, "rope");
    checkRank(x, 4, "rope input [batch, seq, heads, head_dim]");
    checkRank(pos, 1, "rope positions");
    checkDim(x.shape[1], pos.shape[0], "rope: sequence vs positions");
    if (typeof x.shape[3] === "number" && x.shape[3] % 2 !== 0) {
      throw new OpError("rope: head_dim must be even");
    }
    return [x];
  },
  run([x, pos], attrs) {
    const theta = numberAttr(attrs, "theta", "rope", 10000);
    const [batch, seq, heads, dim] = x.shape;
    const half = dim / 2;
    const positions = toIndices(pos);
    // Frequencies rounded to f32 at the same steps as the PyTorch reference computes them.
    const inverse = Float32Array.from(
      { length: half },
      (_, i) => 1 / Math.fround(theta ** Math.fround((2 * i) / dim)),
    );
    const xs = toF32(x);
    const out = new Float32Array(xs.length);
    for (let s = 0; s < seq; s++) {
      const cos = new Float32Array(half);
      const sin = new Float32Array(half);
      for (let i = 0; i < half; i++) {
        const angle = Math.fround(positions[s] * inverse[i]);
        cos[i] = Math.cos(angle);
        sin[i] = Math.sin(angle);
      }
      for (let b = 0; b < batch; b++) {
        for (let h = 0; h < heads; h++) {
          const base = ((b * seq + s) * heads + h) * dim;
          for (let i = 0; i < half; i++) {
            const a = xs[base + i];
            const c = xs[base + i + half];
            out[base + i] = a * cos[i] - c * sin[i];
            out[base + i + half] = c * cos[i] + a * sin[i];
          }
        }
      }
    }
    return [floatResult(x.dtype, x.shape, out)];
  },
});

registerOp({
  name: "sdpa",
  doc: "causal attention of q[B, H, S, D] over past_k/past_v[B, KV, P, D] followed by k/v[B, KV, S, D]; " +
    "gives out[B, H, S, D] and the caches present_k/present_v[B, KV, P+S, D]",
  arity: [5, 5],
  infer([q, k, v, pastK, pastV]) {
    for (const [t, what] of [[q, "q"], [k, "k"], [v, "v"], [pastK, "past_k"], [pastV, "past_v"]] as const) {
      requireFloat(t, "sdpa");
      checkRank(t, 4, `sdpa ${what}`);
    }
    checkDim(q.shape[0], k.shape[0], "sdpa: batch of q vs k");
    checkDim(q.shape[2], k.shape[2], "sdpa: sequence of q vs k");
    checkDim(q.shape[3], k.shape[3], "sdpa: head_dim of q vs k");
    for (const t of [v, pastK, pastV]) {
      checkDim(k.shape[1], t.shape[1], "sdpa: kv heads");
      checkDim(k.shape[3], t.shape[3], "sdpa: head_dim");
    }
    checkDim(k.shape[2], v.shape[2], "sdpa: sequence of k vs v");
    checkDim(pastK.shape[2], pastV.shape[2], "sdpa: past length of k vs v");
    const [heads, kvHeads] = [q.shape[1], k.shape[1]];
    if (typeof heads === "number" && typeof kvHeads === "number" && heads % kvHeads !== 0) {
      throw new OpError(`sdpa: ${heads} query heads do not group over ${kvHeads} kv heads`);
    }
    const present = {
      dtype: k.dtype,
      shape: [k.shape[0], k.shape[1], addDims(pastK.shape[2], k.shape[2]), k.shape[3]],
    };
    return [q, present, present];
  },
  run([q, k, v, pastK, pastV], attrs) {
    const [batch, heads, seq, dim] = q.shape;
    const kvHeads = k.shape[1];
    const past = pastK.shape[2];
    const total = past + seq;
    const scale = numberAttr(attrs, "scale", "sdpa", 1 / Math.sqrt(dim));
    const group = heads / kvHeads;
    const presentK = concatSeq(toF32(pastK), toF32(k), batch * kvHeads, past, seq, dim);
    const presentV = concatSeq(toF32(pastV), toF32(v), batch * kvHeads, past, seq, dim);
    const qs = toF32(q);
    const out = new Float32Array(qs.length);
    const scores = new Float64Array(total);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        const kvBase = (b * kvHeads + Math.floor(h / group)) * total * dim;
        for (let i = 0; i < seq; i++) {
          const qBase = ((b * heads + h) * seq + i) * dim;
          const visible = past + i + 1;
          let max = -Infinity;
          for (let j = 0; j < visible; j++) {
            let dot = 0;
            for (let d = 0; d < dim; d++) dot += qs[qBase + d] * presentK[kvBase + j * dim + d];
            scores[j] = dot * scale;
            max = Math.max(max, scores[j]);
          }
          let sum = 0;
          for (let j = 0; j < visible; j++) {
            scores[j] = Math.exp(scores[j] - max);
            sum += scores[j];
          }
          for (let d = 0; d < dim; d++) {
            let acc = 0;
            for (let j = 0; j < visible; j++) acc += scores[j] * presentV[kvBase + j * dim + d];
            out[qBase + d] = acc / sum;
          }
        }
      }
    }
    const presentShape = [batch, kvHeads, total, dim];
    return [
      floatResult(q.dtype, q.shape, out),
      floatResult(k.dtype, presentShape, presentK),
      floatResult(k.dtype, presentShape, presentV),
    ];
  },
});

function concatSeq(
  past: Float32Array,
  next: Float32Array,
  rows: number,
  pastLength: number,
  length: number,
  dim: number,
): Float32Array {
  const total = pastLength + length;
  const out = new Float32Array(rows * total * dim);
  for (let r = 0; r < rows; r++) {
    out.set(past.subarray(r * pastLength * dim, (r + 1) * pastLength * dim), r * total * dim);
    out.set(next.subarray(r * length * dim, (r + 1) * length * dim), (r * total + pastLength) * dim);
  }
  return out;
}
