// Collectives inside the engine: NCCL calls on the engine's stream through the device
// communicator bound to the step's group; a group of one rank is a view of its input.

import type { Binder } from "../program.ts";
import type { Step } from "../lower.ts";
import { numel } from "../../../../core/ir/tensor.ts";
import { EngineError } from "../../../../core/runtime/engine.ts";

export function bindCollective(binder: Binder, step: Extract<Step, { kind: "collective" }>): void {
  const x = binder.view(step.x);
  if (step.size === 1) {
    binder.views.set(step.out, x);
    return;
  }
  const communicator = binder.ctx.communicator(step.group);
  if (!communicator) {
    throw new EngineError(
      `${step.op} over group ${step.group} (${step.size} ranks) runs inside the cuda engine and needs a device ` +
        "communicator: bind the engine to the nccl collective backend",
    );
  }
  if (communicator.size !== step.size) {
    throw new EngineError(
      `${step.op} expects group ${step.group} of ${step.size} ranks, its communicator has ${communicator.size}`,
    );
  }
  const input = binder.contiguous(x);
  // The axis counts from the end: in sequence mode logits rows are [entries, vocab], not [1, seq, vocab].
  const rank = binder.ctx.types.get(step.x)!.shape.length;
  const axis = input.shape.length - rank + (step.axis < 0 ? step.axis + rank : step.axis);
  const shape = [...input.shape];
  if (step.op === "all_gather") shape[axis] *= step.size;
  if (step.op === "reduce_scatter") shape[axis] /= step.size;
  const out = binder.define(step.out, shape);
  const count = numel(input.shape);
  const stream = binder.ctx.stream;
  const dtype = input.dtype;
  const lead = numel(input.shape.slice(0, axis));
  switch (step.op) {
    case "all_reduce":
      binder.push(
        step.op,
        () => communicator.allReduce(input.ptr, out.ptr, count, dtype, step.reduce, stream),
      );
      return;
    case "broadcast":
      binder.push(step.op, () => communicator.broadcast(input.ptr, out.ptr, count, dtype, step.root, stream));
      return;
    case "reduce_scatter":
      if (lead !== 1) {
        throw new EngineError(`reduce_scatter ${step.out}: only along the first non-unit axis`);
      }
      binder.push(
        step.op,
        () => communicator.reduceScatter(input.ptr, out.ptr, numel(out.shape), dtype, step.reduce, stream),
      );
      return;
    case "all_gather": {
      if (lead === 1) {
        binder.push(step.op, () => communicator.allGather(input.ptr, out.ptr, count, dtype, stream));
        return;
      }
      // NCCL gathers rank-major; [size, lead, rest] → [lead, size, rest].
      const gathered = binder.scratch(dtype, [step.size * count], out.capacity);
      binder.push(step.op, () => communicator.allGather(input.ptr, gathered.ptr, count, dtype, stream));
      const rest = count / lead;
      binder.permute(
        { ...gathered, shape: [step.size, lead, rest] },
        out,
        [1, 0, 2],
        `all_gather ${step.out}`,
      );
      return;
    }
  }
}
