// Values on the device as the cuda engine's launches see them: rows of `width` elements, `ld`
// apart, so that one product's output can feed several consumers in place.

import type { DType } from "../../../core/ir/tensor.ts";
import { EngineError } from "../../../core/runtime/engine.ts";

export interface View {
  ptr: bigint;
  dtype: DType;
  shape: number[];
  /** Elements from one row to the next; rows are `width` elements long. */
  ld: number;
  width: number;
  /** Elements the view may cover at the program's capacity. */
  capacity: number;
}

/** The same elements under a new shape, without copying, where the rows allow it. */
export function reshaped(view: View, shape: number[]): View | undefined {
  if (view.ld === view.width) {
    const width = shape.at(-1) ?? 1;
    return { ...view, shape, width, ld: width };
  }
  // A strided view keeps its rows: the new shape must end in axes that multiply to the row width.
  let product = 1;
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    product *= shape[axis];
    if (product === view.width) return { ...view, shape };
    if (product > view.width) return undefined;
  }
  return undefined;
}

export function floatDtype(dtype: DType, where: string): "f32" | "f16" | "bf16" {
  if (dtype === "f32" || dtype === "f16" || dtype === "bf16") return dtype;
  throw new EngineError(`${where}: the cuda engine computes in f32, f16 or bf16, not ${dtype}`);
}
