// Data movement: reshape, transpose, concat, slice, and wait (the identity a started collective ends in).

import type { Dim } from "../../../../core/ir/tensor.ts";
import type { ReshapeDim } from "../network.ts";
import { always, normalizedAxis, registerConverter } from "./registry.ts";

/**
 * The reshape target in TensorRT's terms: fixed sizes stay, a symbolic size is copied from the
 * input axis of the same name, and one symbolic size the input does not have becomes -1.
 */
export function reshapeTarget(input: Dim[], target: Dim[]): ReshapeDim[] | string {
  let wildcard = target.includes(-1);
  const out: ReshapeDim[] = [];
  for (const dim of target) {
    if (typeof dim === "number") {
      out.push(dim);
      continue;
    }
    const axis = input.indexOf(dim);
    if (axis >= 0) {
      out.push({ axis });
      continue;
    }
    if (wildcard) return `reshape to [${target}]: more than one size (${dim}) is not an input axis`;
    wildcard = true;
    out.push(-1);
  }
  return out;
}

registerConverter("reshape", {
  check(node, types) {
    const target = reshapeTarget(types.get(node.inputs[0])!.shape, node.attrs.shape as Dim[]);
    return typeof target === "string" ? target : true;
  },
  convert(node, scope) {
    const x = node.inputs[0];
    const target = reshapeTarget(scope.type(x).shape, node.attrs.shape as Dim[]) as ReshapeDim[];
    return [scope.net.reshape(scope.value(x), target)];
  },
});

registerConverter("transpose", {
  check: always,
  convert(node, scope) {
    return [scope.net.transpose(scope.value(node.inputs[0]), node.attrs.perm as number[])];
  },
});

registerConverter("concat", {
  check: always,
  convert(node, scope) {
    const axis = normalizedAxis(node.attrs.axis as number, scope.rank(node.inputs[0]));
    return [scope.net.concat(node.inputs.map((input) => scope.value(input)), axis)];
  },
});

registerConverter("slice", {
  check: always,
  convert(node, scope) {
    const x = node.inputs[0];
    const axis = normalizedAxis(node.attrs.axis as number, scope.rank(x));
    return [scope.net.slice(scope.value(x), axis, node.attrs.start as number, node.attrs.end as number)];
  },
});

// wait: no layer, the started collective's tensor is the result.
registerConverter("wait", {
  check: always,
  convert(node, scope) {
    return [scope.value(node.inputs[0])];
  },
});
