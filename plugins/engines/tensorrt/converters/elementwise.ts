// Elementwise ops, activations, softmax, cast, and the norms, as TensorRT layers.

import type { Node } from "../../../../core/ir/graph.ts";
import { always, type ConversionScope, inF32, normalizedAxis, registerConverter } from "./registry.ts";
import type { ElementwiseOp, TensorId } from "../network.ts";

/** a op b; the lower-rank side gets leading 1s, as TensorRT wants equal ranks. */
function binary(op: ElementwiseOp) {
  return (node: Node, scope: ConversionScope): TensorId[] => {
    const [a, b] = node.inputs;
    const rank = Math.max(scope.rank(a), scope.rank(b));
    return [scope.net.elementwise(op, scope.value(a, rank), scope.value(b, rank))];
  };
}

// add, mul: one elementwise layer with broadcasting.
registerConverter("add", { check: always, convert: binary("add") });
registerConverter("mul", { check: always, convert: binary("mul") });

// silu(x) = x * sigmoid(x).
registerConverter("silu", {
  check: always,
  convert(node, scope) {
    const x = scope.value(node.inputs[0]);
    return [scope.net.elementwise("mul", x, scope.net.activation("sigmoid", x))];
  },
});

// gelu: TensorRT's erf or tanh form, as the attribute says (tanh unless "none").
registerConverter("gelu", {
  check: always,
  convert(node, scope) {
    const kind = node.attrs.approximate === "none" ? "gelu_erf" : "gelu_tanh";
    return [scope.net.activation(kind, scope.value(node.inputs[0]))];
  },
});

registerConverter("softmax", {
  check: always,
  convert(node, scope) {
    const x = node.inputs[0];
    return [
      scope.net.softmax(scope.value(x), normalizedAxis((node.attrs.axis ?? -1) as number, scope.rank(x))),
    ];
  },
});

registerConverter("cast", {
  check(node) {
    return node.attrs.dtype === "f32" || node.attrs.dtype === "f16" || node.attrs.dtype === "bf16" ||
      node.attrs.dtype === "i32" || node.attrs.dtype === "i64" || `cast to ${node.attrs.dtype}`;
  },
  convert(node, scope) {
    return [scope.net.cast(scope.value(node.inputs[0]), node.attrs.dtype as "f32")];
  },
});

// rmsnorm: x / sqrt(mean(x²) + eps) in f32, rounded to x's dtype, times w (as the reference does).
registerConverter("rmsnorm", {
  check: always,
  convert(node, scope) {
    const [x, w] = node.inputs;
    const { net } = scope;
    const rank = scope.rank(x);
    const dtype = scope.type(x).dtype;
    const wide = inF32(scope, x);
    const mean = net.reduce("avg", net.elementwise("mul", wide, wide), rank - 1, true);
    const eps = scope.scalar((node.attrs.eps ?? 1e-6) as number, "f32", rank);
    const inverse = net.unary("recip", net.unary("sqrt", net.elementwise("add", mean, eps)));
    let normed = net.elementwise("mul", wide, inverse);
    if (dtype !== "f32") normed = net.cast(normed, dtype);
    return [net.elementwise("mul", normed, scope.value(w, rank))];
  },
});

// layernorm: TensorRT's normalization layer over the last axis, computed in f32.
registerConverter("layernorm", {
  check(node, types) {
    return types.get(node.inputs[0])!.shape.length >= 2 || "layernorm of a rank-1 tensor";
  },
  convert(node, scope) {
    const [x, w, b] = node.inputs;
    const { net } = scope;
    const rank = scope.rank(x);
    const dtype = scope.type(x).dtype;
    const asF32 = (name: string) =>
      scope.graph.weights.some((weight) => weight.name === name)
        ? scope.weightAt(name, rank, "f32")
        : net.cast(scope.value(name, rank), "f32");
    const normed = net.layernorm(inF32(scope, x), asF32(w), asF32(b), (node.attrs.eps ?? 1e-5) as number);
    return [dtype === "f32" ? normed : net.cast(normed, dtype)];
  },
});
