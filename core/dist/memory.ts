// Process groups whose members live in one process: simulated ranks for tests, where every
// sharding plan can be checked without processes, sockets or GPUs.

import type { Reduction } from "../ir/ops/collective.ts";
import { concatTensors, sliceTensor } from "../ir/ops/shape.ts";
import { castTensor, isFloat, type Tensor, tensor, toF32 } from "../ir/tensor.ts";
import { DistError, type ProcessGroup } from "./group.ts";

/** Combines every member's tensor elementwise; floats in f32, the result in the input dtype. */
export function reduceTensors(tensors: Tensor[], reduce: Reduction): Tensor {
  const first = tensors[0];
  for (const t of tensors) {
    if (t.dtype !== first.dtype || t.shape.join() !== first.shape.join()) {
      throw new DistError(
        `collective: members disagree: ${first.dtype}[${first.shape}] vs ${t.dtype}[${t.shape}]`,
      );
    }
  }
  const values = tensors.map((
    t,
  ) => (isFloat(t.dtype) ? toF32(t) : Float64Array.from(t.data as ArrayLike<number>, Number)));
  const out = new Float64Array(values[0].length);
  for (let i = 0; i < out.length; i++) {
    let acc = values[0][i];
    for (let m = 1; m < values.length; m++) {
      const v = values[m][i];
      acc = reduce === "max" ? Math.max(acc, v) : reduce === "min" ? Math.min(acc, v) : acc + v;
    }
    out[i] = reduce === "avg" ? acc / values.length : acc;
  }
  if (isFloat(first.dtype)) {
    return castTensor(tensor("f32", first.shape, Float32Array.from(out)), first.dtype);
  }
  if (first.dtype === "i64") {
    return tensor(
      "i64",
      first.shape,
      BigInt64Array.from(out, (v) => BigInt(Math.trunc(v))),
    );
  }
  return tensor("i32", first.shape, Int32Array.from(out, Math.trunc));
}

/** Makes `size` groups that meet in memory: member i's operations pair with the others' i-th. */
export function memoryGroups(size: number, name = "world", ranks?: number[]): ProcessGroup[] {
  const pending: { inputs: Tensor[]; arrived: number; resolve: ((inputs: Tensor[]) => void)[] }[] = [];
  const calls = new Array(size).fill(0);
  const exchange = (member: number, t: Tensor): Promise<Tensor[]> => {
    const round = calls[member]++;
    pending[round] ??= { inputs: new Array(size), arrived: 0, resolve: [] };
    const slot = pending[round];
    slot.inputs[member] = t;
    slot.arrived++;
    return new Promise((resolve) => {
      slot.resolve.push(resolve);
      if (slot.arrived === size) {
        for (const done of slot.resolve) done(slot.inputs);
        delete pending[round];
      }
    });
  };
  return Array.from({ length: size }, (_, member): ProcessGroup => ({
    name,
    rank: member,
    size,
    ranks: ranks ?? Array.from({ length: size }, (_, i) => i),
    async allReduce(t, reduce) {
      return reduceTensors(await exchange(member, t), reduce);
    },
    async allGather(t, axis) {
      return concatTensors(await exchange(member, t), axis);
    },
    async reduceScatter(t, axis, reduce) {
      const sum = reduceTensors(await exchange(member, t), reduce);
      const share = sum.shape[axis] / size;
      if (!Number.isInteger(share)) {
        throw new DistError(`reduce_scatter: axis ${axis} of [${sum.shape}] does not split ${size} ways`);
      }
      return sliceTensor(sum, axis, member * share, (member + 1) * share);
    },
    async broadcast(t, root) {
      return (await exchange(member, t))[root];
    },
    async barrier() {
      await exchange(member, tensor("i32", [0]));
    },
  }));
}
