// Products and lookups: linear, matmul, embedding and argmax.

import { always, normalizedAxis, registerConverter } from "./registry.ts";

// linear: x[..., K] · w[N, K]ᵀ (+ b[N]); the weight gets x's rank with leading 1s.
registerConverter("linear", {
  check: always,
  convert(node, scope) {
    const [x, w, b] = node.inputs;
    const rank = scope.rank(x);
    const product = scope.net.matmul(scope.value(x), false, scope.value(w, rank), true);
    return [b ? scope.net.elementwise("add", product, scope.value(b, rank)) : product];
  },
});

// matmul: x[..., K] · w[K, N].
registerConverter("matmul", {
  check: always,
  convert(node, scope) {
    const [x, w] = node.inputs;
    const rank = Math.max(scope.rank(x), scope.rank(w));
    return [scope.net.matmul(scope.value(x, rank), false, scope.value(w, rank), false)];
  },
});

// embedding: rows of the table gathered by the ids.
registerConverter("embedding", {
  check: always,
  convert(node, scope) {
    const [table, ids] = node.inputs;
    return [scope.net.gather(scope.value(table), scope.value(ids), 0)];
  },
});

// argmax: top-1 index along the axis, the axis removed (the shim squeezes it).
registerConverter("argmax", {
  check(node, types) {
    const rank = types.get(node.inputs[0])!.shape.length;
    return rank >= 2 || "argmax of a rank-1 tensor (TensorRT's top-k wants an axis besides the one reduced)";
  },
  convert(node, scope) {
    const x = node.inputs[0];
    return [
      scope.net.argmax(scope.value(x), normalizedAxis((node.attrs.axis ?? -1) as number, scope.rank(x))),
    ];
  },
});
