// Process groups whose members live in one process: simulated ranks for tests, where every
// sharding plan can be checked without processes, sockets or GPUs.

import { concatTensors, sliceTensor } from "../ir/ops/shape.ts";
import { type Tensor, tensor } from "../ir/tensor.ts";
import { reduceTensors } from "./reduce.ts";
import { DistError, type ProcessGroup } from "./group.ts";

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
      return reduceTensors(checked(await exchange(member, t)), reduce);
    },
    async allGather(t, axis) {
      return concatTensors(await exchange(member, t), axis);
    },
    async reduceScatter(t, axis, reduce) {
      const sum = reduceTensors(checked(await exchange(member, t)), reduce);
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

function checked(tensors: Tensor[]): Tensor[] {
  const first = tensors[0];
  for (const t of tensors) {
    if (t.dtype !== first.dtype || t.shape.join() !== first.shape.join()) {
      throw new DistError(
        `collective: members disagree: ${first.dtype}[${first.shape}] vs ${t.dtype}[${t.shape}]`,
      );
    }
  }
  return tensors;
}
