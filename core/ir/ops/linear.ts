// Ops that index or contract over a weight: embedding lookup, linear layers, matmul, argmax.

import { OpError, registerOp } from "../registry.ts";
import { numel, tensor, toF32, toIndices } from "../tensor.ts";
import { checkDim, checkRank } from "../dims.ts";
import { floatResult, normalizeAxis, numberAttr, requireFloat } from "./common.ts";

registerOp({
  name: "embedding",
  doc: "rows of table[V, D] picked by integer ids[...]: gives [..., D]",
  arity: [2, 2],
  infer([table, ids]) {
    checkRank(table, 2, "embedding table");
    if (ids.dtype !== "i32" && ids.dtype !== "i64") {
      throw new OpError(`embedding: ids must be integers, got ${ids.dtype}`);
    }
    return [{ dtype: table.dtype, shape: [...ids.shape, table.shape[1]] }];
  },
  run([table, ids]) {
    const [vocab, width] = table.shape;
    const rows = toIndices(ids);
    const values = toF32(table);
    const out = new Float32Array(rows.length * width);
    rows.forEach((row, i) => {
      if (row < 0 || row >= vocab) {
        throw new OpError(`embedding: id ${row} is outside the table of ${vocab} rows`);
      }
      out.set(values.subarray(row * width, (row + 1) * width), i * width);
    });
    return [floatResult(table.dtype, [...ids.shape, width], out)];
  },
});

registerOp({
  name: "linear",
  doc: "x[..., K] times w[N, K] transposed, plus optional bias b[N]: gives [..., N]",
  arity: [2, 3],
  infer([x, w, b]) {
    requireFloat(x, "linear");
    checkRank(w, 2, "linear weight");
    checkDim(x.shape[x.shape.length - 1], w.shape[1], "linear: input width vs weight columns");
    if (b) {
      checkRank(b, 1, "linear bias");
      checkDim(b.shape[0], w.shape[0], "linear: bias vs weight rows");
    }
    return [{ dtype: x.dtype, shape: [...x.shape.slice(0, -1), w.shape[0]] }];
  },
  run([x, w, b]) {
    const [n, k] = w.shape;
    const rows = numel(x.shape) / k;
    const xs = toF32(x);
    const ws = toF32(w);
    const bias = b ? toF32(b) : undefined;
    const out = new Float32Array(rows * n);
    for (let r = 0; r < rows; r++) {
      const xo = r * k;
      for (let j = 0; j < n; j++) {
        const wo = j * k;
        let sum = 0;
        for (let i = 0; i < k; i++) sum += xs[xo + i] * ws[wo + i];
        out[r * n + j] = bias ? sum + bias[j] : sum;
      }
    }
    return [floatResult(x.dtype, [...x.shape.slice(0, -1), n], out)];
  },
});

registerOp({
  name: "matmul",
  doc: "x[..., K] times w[K, N]: gives [..., N]",
  arity: [2, 2],
  infer([x, w]) {
    requireFloat(x, "matmul");
    checkRank(w, 2, "matmul right side");
    checkDim(x.shape[x.shape.length - 1], w.shape[0], "matmul: inner sizes");
    return [{ dtype: x.dtype, shape: [...x.shape.slice(0, -1), w.shape[1]] }];
  },
  run([x, w]) {
    const [k, n] = w.shape;
    const rows = numel(x.shape) / k;
    const xs = toF32(x);
    const ws = toF32(w);
    const out = new Float32Array(rows * n);
    const acc = new Float64Array(n);
    for (let r = 0; r < rows; r++) {
      acc.fill(0);
      for (let i = 0; i < k; i++) {
        const xv = xs[r * k + i];
        const wo = i * n;
        for (let j = 0; j < n; j++) acc[j] += xv * ws[wo + j];
      }
      out.set(acc, r * n);
    }
    return [floatResult(x.dtype, [...x.shape.slice(0, -1), n], out)];
  },
});

registerOp({
  name: "argmax",
  doc: "index of the largest value along attribute axis (first on ties): i32, axis removed",
  arity: [1, 1],
  infer([x], attrs) {
    const axis = normalizeAxis(numberAttr(attrs, "axis", "argmax", -1), x.shape.length, "argmax");
    return [{ dtype: "i32", shape: x.shape.filter((_, i) => i !== axis) }];
  },
  run([x], attrs) {
    const axis = normalizeAxis(numberAttr(attrs, "axis", "argmax", -1), x.shape.length, "argmax");
    const values = toF32(x);
    const size = x.shape[axis];
    const inner = numel(x.shape.slice(axis + 1));
    const outer = numel(x.shape.slice(0, axis));
    const out = new Int32Array(outer * inner);
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) {
        let best = 0;
        for (let k = 1; k < size; k++) {
          if (values[(o * size + k) * inner + i] > values[(o * size + best) * inner + i]) best = k;
        }
        out[o * inner + i] = best;
      }
    }
    return [tensor("i32", x.shape.filter((_, i) => i !== axis), out)];
  },
});
