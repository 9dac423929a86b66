// Normalizations over the last axis: RMSNorm (Llama, Qwen2) and LayerNorm (GPT-2).

import { registerOp } from "../registry.ts";
import { toF32 } from "../tensor.ts";
import { checkDim, checkRank } from "../dims.ts";
import { floatResult, numberAttr, requireFloat } from "./common.ts";

registerOp({
  name: "rmsnorm",
  doc: "x / sqrt(mean(x^2) + eps) * w over the last axis",
  arity: [2, 2],
  infer([x, w]) {
    requireFloat(x, "rmsnorm");
    checkRank(w, 1, "rmsnorm weight");
    checkDim(x.shape[x.shape.length - 1], w.shape[0], "rmsnorm: width vs weight");
    return [x];
  },
  run([x, w], attrs) {
    const eps = numberAttr(attrs, "eps", "rmsnorm", 1e-6);
    const width = w.shape[0];
    const xs = toF32(x);
    const ws = toF32(w);
    const out = new Float32Array(xs.length);
    for (let r = 0; r < xs.length / width; r++) {
      const base = r * width;
      let sum = 0;
      for (let i = 0; i < width; i++) sum += xs[base + i] * xs[base + i];
      const scale = 1 / Math.sqrt(sum / width + eps);
      for (let i = 0; i < width; i++) out[base + i] = ws[i] * Math.fround(xs[base + i] * scale);
    }
    return [floatResult(x.dtype, x.shape, out)];
  },
});

registerOp({
  name: "layernorm",
  doc: "(x - mean) / sqrt(var + eps) * w + b over the last axis",
  arity: [3, 3],
  infer([x, w, b]) {
    requireFloat(x, "layernorm");
    checkRank(w, 1, "layernorm weight");
    checkRank(b, 1, "layernorm bias");
    checkDim(x.shape[x.shape.length - 1], w.shape[0], "layernorm: width vs weight");
    checkDim(w.shape[0], b.shape[0], "layernorm: weight vs bias");
    return [x];
  },
  run([x, w, b], attrs) {
    const eps = numberAttr(attrs, "eps", "layernorm", 1e-5);
    const width = w.shape[0];
    const xs = toF32(x);
    const ws = toF32(w);
    const bs = toF32(b);
    const out = new Float32Array(xs.length);
    for (let r = 0; r < xs.length / width; r++) {
      const base = r * width;
      let mean = 0;
      for (let i = 0; i < width; i++) mean += xs[base + i];
      mean /= width;
      let variance = 0;
      for (let i = 0; i < width; i++) variance += (xs[base + i] - mean) ** 2;
      const scale = 1 / Math.sqrt(variance / width + eps);
      for (let i = 0; i < width; i++) out[base + i] = (xs[base + i] - mean) * scale * ws[i] + bs[i];
    }
    return [floatResult(x.dtype, x.shape, out)];
  },
});
