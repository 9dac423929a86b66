// Elementwise ops: binary arithmetic with broadcasting, activations, softmax and casts.

import { registerOp } from "../registry.ts";
import { type DType, DTYPES, numel, toF32 } from "../tensor.ts";
import { castTensor } from "../tensor.ts";
import { OpError } from "../registry.ts";
import {
  broadcastShapes,
  broadcastStrides,
  concreteBroadcast,
  floatResult,
  normalizeAxis,
  numberAttr,
  requireFloat,
  stringAttr,
} from "./common.ts";
import type { Tensor } from "../tensor.ts";

function binary(name: string, doc: string, fn: (x: number, y: number) => number): void {
  registerOp({
    name,
    doc,
    arity: [2, 2],
    infer([a, b]) {
      if (a.dtype !== b.dtype) throw new OpError(`${name}: dtypes ${a.dtype} and ${b.dtype} differ`);
      return [{ dtype: a.dtype, shape: broadcastShapes(a.shape, b.shape, name) }];
    },
    run([a, b]) {
      const shape = concreteBroadcast(a.shape, b.shape, name);
      const x = toF32(a);
      const y = toF32(b);
      const out = new Float32Array(numel(shape));
      if (x.length === out.length && y.length === out.length) {
        for (let i = 0; i < out.length; i++) out[i] = fn(x[i], y[i]);
      } else {
        const sa = broadcastStrides(a.shape, shape);
        const sb = broadcastStrides(b.shape, shape);
        const index = new Array(shape.length).fill(0);
        let ia = 0;
        let ib = 0;
        for (let i = 0; i < out.length; i++) {
          out[i] = fn(x[ia], y[ib]);
          for (let axis = shape.length - 1; axis >= 0; axis--) {
            index[axis]++;
            ia += sa[axis];
            ib += sb[axis];
            if (index[axis] < shape[axis]) break;
            ia -= sa[axis] * shape[axis];
            ib -= sb[axis] * shape[axis];
            index[axis] = 0;
          }
        }
      }
      return [floatResult(a.dtype, shape, out)];
    },
  });
}

binary("add", "a + b, broadcasting", (x, y) => x + y);
binary("mul", "a * b, broadcasting", (x, y) => x * y);

function unary(name: string, doc: string, fn: (x: number, attrs: Record<string, unknown>) => number): void {
  registerOp({
    name,
    doc,
    arity: [1, 1],
    infer([x]) {
      requireFloat(x, name);
      return [x];
    },
    run([x], attrs) {
      const values = toF32(x);
      const out = new Float32Array(values.length);
      for (let i = 0; i < out.length; i++) out[i] = fn(values[i], attrs);
      return [floatResult(x.dtype, x.shape, out)];
    },
  });
}

unary("silu", "x * sigmoid(x)", (x) => x / (1 + Math.exp(-x)));

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
unary("gelu", "GELU; attribute approximate: tanh (GPT-2's gelu_new) or none (erf)", (x, attrs) => {
  if (attrs.approximate === "none") return 0.5 * x * (1 + erf(x / Math.SQRT2));
  return 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
});

/** Abramowitz–Stegun 7.1.26 is too coarse for a reference; this series/continued form is exact to ~1e-15. */
function erf(x: number): number {
  const t = Math.abs(x);
  if (t < 2) {
    let sum = t;
    let term = t;
    for (let n = 1; n < 60; n++) {
      term *= -t * t / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // Continued fraction for erfc at larger |x|.
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (t + f);
  const erfc = Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f);
  return Math.sign(x) * (1 - erfc);
}

registerOp({
  name: "softmax",
  doc: "softmax along attribute axis",
  arity: [1, 1],
  infer([x], attrs) {
    requireFloat(x, "softmax");
    normalizeAxis(numberAttr(attrs, "axis", "softmax", -1), x.shape.length, "softmax");
    return [x];
  },
  run([x], attrs) {
    const axis = normalizeAxis(numberAttr(attrs, "axis", "softmax", -1), x.shape.length, "softmax");
    const values = toF32(x);
    const out = new Float32Array(values.length);
    const size = x.shape[axis];
    const inner = numel(x.shape.slice(axis + 1));
    const outer = numel(x.shape.slice(0, axis));
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) {
        const base = o * size * inner + i;
        let max = -Infinity;
        for (let k = 0; k < size; k++) max = Math.max(max, values[base + k * inner]);
        let sum = 0;
        for (let k = 0; k < size; k++) sum += Math.exp(values[base + k * inner] - max);
        for (let k = 0; k < size; k++) out[base + k * inner] = Math.exp(values[base + k * inner] - max) / sum;
      }
    }
    return [floatResult(x.dtype, x.shape, out)];
  },
});

registerOp({
  name: "cast",
  doc: "converts to attribute dtype",
  arity: [1, 1],
  infer([x], attrs) {
    const dtype = stringAttr(attrs, "dtype", "cast") as DType;
    if (!DTYPES.includes(dtype)) throw new OpError(`cast: unknown dtype ${dtype}`);
    return [{ dtype, shape: x.shape }];
  },
  run([x], attrs): Tensor[] {
    return [castTensor(x, attrs.dtype as DType)];
  },
});
