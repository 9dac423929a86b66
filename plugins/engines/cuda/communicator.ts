// What the cuda engine needs from a collective backend to run collectives inside itself: calls
// that enqueue on the engine's own stream, over device memory. The nccl backend's groups provide it.

import type { ProcessGroup } from "../../../core/dist/group.ts";
import type { Reduction } from "../../../core/ir/ops/collective.ts";
import type { DType } from "../../../core/ir/tensor.ts";

export interface DeviceCommunicator {
  readonly rank: number;
  readonly size: number;
  /** recv[count] = reduction of every rank's send[count]. */
  allReduce(send: bigint, recv: bigint, count: number, dtype: DType, reduce: Reduction, stream: bigint): void;
  /** recv[size × count] = every rank's send[count], in rank order. */
  allGather(send: bigint, recv: bigint, count: number, dtype: DType, stream: bigint): void;
  /** recv[count] = this rank's share of the reduction of every rank's send[size × count]. */
  reduceScatter(
    send: bigint,
    recv: bigint,
    count: number,
    dtype: DType,
    reduce: Reduction,
    stream: bigint,
  ): void;
  /** recv[count] = send[count] of rank `root`. */
  broadcast(send: bigint, recv: bigint, count: number, dtype: DType, root: number, stream: bigint): void;
}

/** A process group whose collectives can also run on device memory, on a caller's stream. */
export interface DeviceGroup extends ProcessGroup {
  readonly communicator: DeviceCommunicator;
}

export function isDeviceGroup(group: ProcessGroup): group is DeviceGroup {
  return typeof (group as Partial<DeviceGroup>).communicator === "object";
}
