// Attention: rotary embedding from elementwise layers, and causal attention over the KV cache
// through TensorRT's attention layer where the headers give it a lower-right causal mask.

import { tensor } from "../../../../core/ir/tensor.ts";
import { inF32, registerConverter } from "./registry.ts";

// rope: x[B,S,H,D] at pos[S]; halves rotated by angles pos·θ^(-2i/D), computed in f32 as the reference does.
registerConverter("rope", {
  check(node, types) {
    const dim = types.get(node.inputs[0])!.shape[3];
    return typeof dim === "number" || `rope with a symbolic head size ${dim}`;
  },
  convert(node, scope) {
    const [x, pos] = node.inputs;
    const { net } = scope;
    const dtype = scope.type(x).dtype;
    const dim = scope.type(x).shape[3] as number;
    const half = dim / 2;
    const theta = (node.attrs.theta ?? 10000) as number;
    const inverse = Float32Array.from(
      { length: half },
      (_, i) => 1 / Math.fround(theta ** Math.fround((2 * i) / dim)),
    );
    const positions = net.reshape(net.cast(scope.value(pos), "f32"), [{ axis: 0 }, 1]);
    const angles = net.elementwise("mul", positions, net.constant(tensor("f32", [1, half], inverse)));
    const asRows = (t: number) => net.reshape(t, [1, { axis: 0 }, 1, half]);
    const cos = asRows(net.unary("cos", angles));
    const sin = asRows(net.unary("sin", angles));
    const wide = inF32(scope, x);
    const first = net.slice(wide, 3, 0, half);
    const second = net.slice(wide, 3, half, dim);
    const rotatedFirst = net.elementwise(
      "sub",
      net.elementwise("mul", first, cos),
      net.elementwise("mul", second, sin),
    );
    const rotatedSecond = net.elementwise(
      "add",
      net.elementwise("mul", second, cos),
      net.elementwise("mul", first, sin),
    );
    const out = net.concat([rotatedFirst, rotatedSecond], 3);
    return [dtype === "f32" ? out : net.cast(out, dtype)];
  },
});

// sdpa: present = past ++ new along the sequence; q scaled, then causal attention at the lower right.
registerConverter("sdpa", {
  check(node, types, target) {
    if (!target.tensorrt.attentionLowerRight) {
      return "attention over a KV cache needs a lower-right causal mask (TensorRT 11.0 or newer)";
    }
    const dim = types.get(node.inputs[0])!.shape[3];
    return typeof dim === "number" || `sdpa with a symbolic head size ${dim}`;
  },
  convert(node, scope) {
    const [q, k, v, pastK, pastV] = node.inputs;
    const { net } = scope;
    const type = scope.type(q);
    const scale = (node.attrs.scale ?? 1 / Math.sqrt(type.shape[3] as number)) as number;
    const presentK = net.concat([scope.value(pastK), scope.value(k)], 2);
    const presentV = net.concat([scope.value(pastV), scope.value(v)], 2);
    // The headers describe the attention's first product as Q·Kᵀ with no scale of its own.
    const scaled = net.elementwise("mul", scope.value(q), scope.scalar(scale, type.dtype, 4));
    return [net.attention(scaled, presentK, presentV), presentK, presentV];
  },
});
