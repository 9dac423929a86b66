// Steps that only move data: transposes, reshapes (views where the rows allow), concatenation
// and slices (2-D copies).

import type { Binder } from "../program.ts";
import type { Step } from "../lower.ts";
import { reshaped } from "../views.ts";
import { BYTES_PER_ELEMENT, numel } from "../../../../core/ir/tensor.ts";

type MovementStep = Extract<Step, { kind: "transpose" | "reshape" | "concat" | "slice" }>;

export function bindMovement(binder: Binder, step: MovementStep): void {
  switch (step.kind) {
    case "transpose": {
      const x = binder.contiguous(binder.view(step.x));
      const out = binder.define(step.out);
      return binder.permute(x, out, step.perm, `transpose ${step.out}`);
    }
    case "reshape": {
      const x = binder.view(step.x);
      const shape = binder.shapeOf(step.out);
      const alias = reshaped(x, shape);
      if (alias) {
        binder.views.set(step.out, alias);
        return;
      }
      const copy = binder.contiguous(x);
      binder.views.set(step.out, { ...copy, shape, width: shape.at(-1) ?? 1, ld: shape.at(-1) ?? 1 });
      return;
    }
    case "concat": {
      const inputs = step.inputs.map((name) => binder.contiguous(binder.view(name)));
      const out = binder.define(step.out);
      const axis = step.axis < 0 ? step.axis + out.shape.length : step.axis;
      const bytes = BYTES_PER_ELEMENT[out.dtype];
      const outer = numel(out.shape.slice(0, axis));
      const inner = numel(out.shape.slice(axis + 1));
      let offset = 0;
      for (const input of inputs) {
        const chunk = input.shape[axis] * inner * bytes;
        binder.copy2d(
          out.ptr + BigInt(offset),
          out.shape[axis] * inner * bytes,
          input.ptr,
          chunk,
          chunk,
          outer,
        );
        offset += chunk;
      }
      return;
    }
    case "slice": {
      const x = binder.contiguous(binder.view(step.x));
      const out = binder.define(step.out);
      const axis = step.axis < 0 ? step.axis + x.shape.length : step.axis;
      const bytes = BYTES_PER_ELEMENT[x.dtype];
      const outer = numel(x.shape.slice(0, axis));
      const inner = numel(x.shape.slice(axis + 1));
      const width = (step.end - step.start) * inner * bytes;
      const source = x.ptr + BigInt(step.start * inner * bytes);
      return binder.copy2d(out.ptr, width, source, x.shape[axis] * inner * bytes, width, outer);
    }
  }
}
