// The nccl collective backend: one NCCL communicator per process group (world, tp, dp), created
// eagerly when the backend is made, each from a unique id its first member puts in the rendezvous
// store. Its groups are ProcessGroups for host tensors and DeviceGroups for the cuda engine, which
// runs their collectives on its own stream. Between the GPUs of one machine, the engine's small
// all-reduces take a one-kernel path over peer memory instead (peer_all_reduce.ts). Disposing the
// backend destroys the communicators.

import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import {
  type CollectiveBackend,
  DistError,
  type Mesh,
  meshGroups,
  type ProcessGroup,
} from "../../core/dist/group.ts";
import type { StoreClient } from "../../core/dist/store.ts";
import type { Reduction } from "../../core/ir/ops/collective.ts";
import { concatTensors, sliceTensor } from "../../core/ir/ops/shape.ts";
import { BYTES_PER_ELEMENT, type DType, numel, type Tensor, tensor, viewOf } from "../../core/ir/tensor.ts";
import {
  check as checkCuda,
  createStream,
  cudart,
  deviceAlloc,
  deviceFree,
  MEMCPY,
  synchronize,
} from "../../ffi/cuda.ts";
import { check, destroyComm, initRank, nccl, NCCL_DTYPE, NCCL_OP, newUniqueId } from "../../ffi/nccl.ts";
import type { DeviceCommunicator, DeviceGroup } from "../engines/cuda/communicator.ts";
import { connectPeers, PeerAllReduce } from "./peer_all_reduce.ts";

/** The default largest all-reduce that takes the peer path. */
const PEER_BYTES = 1 << 20;

export const options = z.object({
  device: z.number().int().nonnegative().optional().describe(
    "GPU of this rank (default: LOCAL_RANK, else 0)",
  ),
  connect_timeout: z.number().positive().default(120).describe(
    "seconds to wait for the first member of each group to publish its NCCL id",
  ),
  peer_all_reduce_bytes: z.number().int().nonnegative().default(PEER_BYTES).describe(
    "the engine's all-reduces of at most this many bytes between GPUs of one machine run as one " +
      "rankflow kernel over peer memory instead of NCCL (0: always NCCL)",
  ),
}).strict();

export default definePlugin({
  kind: "collective",
  name: "nccl",
  description: "NCCL communicators per process group; collectives run inside the cuda engine's stream",
  options,
  create: (opts: z.infer<typeof options>, init) =>
    createNcclBackend({
      ...init,
      device: opts.device,
      timeoutMs: opts.connect_timeout * 1000,
      peerBytes: opts.peer_all_reduce_bytes,
    }),
});

export interface NcclBackendOptions {
  rank: number;
  worldSize: number;
  mesh?: Mesh;
  store: StoreClient;
  device?: number;
  /** Store keys go under this prefix; backends of one job sharing a store use distinct ones. */
  prefix?: string;
  timeoutMs?: number;
  /** The largest all-reduce, in bytes, that takes the peer path (default 1 MiB; 0: none does). */
  peerBytes?: number;
}

const GROUP_NAMES = ["world", "tp", "dp"] as const;

export async function createNcclBackend(options: NcclBackendOptions): Promise<NcclBackend> {
  const { rank, worldSize, store } = options;
  const mesh = options.mesh ?? { dp: 1, tp: worldSize };
  if (mesh.dp * mesh.tp !== worldSize) {
    throw new DistError(`mesh dp ${mesh.dp} × tp ${mesh.tp} does not make a world of ${worldSize}`);
  }
  const device = options.device ?? Number(Deno.env.get("LOCAL_RANK") ?? 0);
  checkCuda(cudart().cudaSetDevice(device), `cudaSetDevice(${device}) for rank ${rank}`);
  const members = meshGroups(mesh, rank);
  const prefix = options.prefix ?? "nccl";
  const stream = createStream();
  const groups = new Map<string, NcclGroup>();
  try {
    // Every rank makes its groups in the same order, so that no two communicators wait on each other.
    for (const name of GROUP_NAMES) {
      const ranks = members[name];
      const key = `${prefix}/${name}/${ranks.join(",")}`;
      const groupRank = ranks.indexOf(rank);
      if (groupRank === 0) await store.set(key, newUniqueId());
      const id = await store.get(key, options.timeoutMs ?? 120_000);
      const communicator = new NcclCommunicator(
        initRank(id, ranks.length, groupRank),
        groupRank,
        ranks.length,
      );
      groups.set(name, new NcclGroup(name, groupRank, ranks, communicator, stream));
      const peerBytes = options.peerBytes ?? PEER_BYTES;
      if (ranks.length > 1 && peerBytes > 0) {
        const peer = await connectPeers(
          store,
          key,
          groupRank,
          ranks.length,
          peerBytes,
          options.timeoutMs ?? 120_000,
        );
        if (peer instanceof PeerAllReduce) communicator.peer = peer;
        else communicator.peerOff = peer.off;
      }
    }
  } catch (error) {
    for (const group of groups.values()) group.communicator.destroy();
    throw error;
  }
  return new NcclBackend(groups, stream, device);
}

export class NcclBackend implements CollectiveBackend {
  readonly name = "nccl";
  #closed = false;

  constructor(readonly groups: Map<string, NcclGroup>, readonly stream: bigint, readonly device: number) {}

  group(name: string): ProcessGroup {
    const group = this.groups.get(name);
    if (!group) {
      throw new DistError(
        `no process group "${name}": the nccl backend has ${[...this.groups.keys()].join(", ")}`,
      );
    }
    return group;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    synchronize(this.stream);
    for (const group of this.groups.values()) {
      // No rank frees its region while another may still read it.
      if (group.communicator.peer) await group.barrier();
      group.communicator.destroy();
    }
    checkCuda(cudart().cudaStreamDestroy(this.stream), "cudaStreamDestroy");
  }
}

/**
 * One NCCL communicator: collectives over device memory, enqueued on the caller's stream. Small
 * all-reduces go the peer path where the group has one.
 */
export class NcclCommunicator implements DeviceCommunicator {
  #destroyed = false;
  peer?: PeerAllReduce;
  /** Why the group has no peer path, where it was tried. */
  peerOff?: string;

  constructor(readonly comm: bigint, readonly rank: number, readonly size: number) {}

  /** `peer: false` keeps the call on NCCL (host tensors, which run on the backend's own stream). */
  allReduce(
    send: bigint,
    recv: bigint,
    count: number,
    dtype: DType,
    reduce: Reduction,
    stream: bigint,
    peer = true,
  ): void {
    if (peer && this.peer?.fits(send, recv, count, dtype, reduce)) {
      return this.peer.allReduce(send, recv, count, dtype, stream);
    }
    check(
      nccl().ncclAllReduce(send, recv, BigInt(count), ncclType(dtype), NCCL_OP[reduce], this.comm, stream),
      "ncclAllReduce",
    );
  }

  allGather(send: bigint, recv: bigint, count: number, dtype: DType, stream: bigint): void {
    check(
      nccl().ncclAllGather(send, recv, BigInt(count), ncclType(dtype), this.comm, stream),
      "ncclAllGather",
    );
  }

  reduceScatter(
    send: bigint,
    recv: bigint,
    count: number,
    dtype: DType,
    reduce: Reduction,
    stream: bigint,
  ): void {
    check(
      nccl().ncclReduceScatter(
        send,
        recv,
        BigInt(count),
        ncclType(dtype),
        NCCL_OP[reduce],
        this.comm,
        stream,
      ),
      "ncclReduceScatter",
    );
  }

  broadcast(send: bigint, recv: bigint, count: number, dtype: DType, root: number, stream: bigint): void {
    check(
      nccl().ncclBroadcast(send, recv, BigInt(count), ncclType(dtype), root, this.comm, stream),
      "ncclBroadcast",
    );
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.peer?.close();
    destroyComm(this.comm);
  }
}

function ncclType(dtype: DType): number {
  return NCCL_DTYPE[dtype];
}

/** A process group over NCCL: host tensors go through device buffers on the backend's stream. */
export class NcclGroup implements DeviceGroup {
  readonly size: number;

  constructor(
    readonly name: string,
    readonly rank: number,
    readonly ranks: number[],
    readonly communicator: NcclCommunicator,
    readonly stream: bigint,
  ) {
    this.size = ranks.length;
  }

  allReduce(t: Tensor, reduce: Reduction): Promise<Tensor> {
    return this.#collective(
      t,
      t.shape,
      (send, recv) =>
        this.communicator.allReduce(send, recv, numel(t.shape), t.dtype, reduce, this.stream, false),
    );
  }

  allGather(t: Tensor, axis: number): Promise<Tensor> {
    const count = numel(t.shape);
    return this.#collective(
      t,
      [this.size, ...t.shape],
      (send, recv) => this.communicator.allGather(send, recv, count, t.dtype, this.stream),
    ).then((gathered) => {
      const parts = Array.from({ length: this.size }, (_, r) => sliceTensor(gathered, 0, r, r + 1));
      return concatTensors(parts.map((part) => tensor(part.dtype, t.shape, part.data)), axis);
    });
  }

  reduceScatter(t: Tensor, axis: number, reduce: Reduction): Promise<Tensor> {
    const size = t.shape[axis];
    if (size % this.size !== 0) {
      throw new DistError(
        `reduce_scatter: axis ${axis} of size ${size} does not split over ${this.size} ranks`,
      );
    }
    const share = size / this.size;
    // Rank-major: each rank's share contiguous, in rank order.
    const parts = Array.from(
      { length: this.size },
      (_, r) => sliceTensor(t, axis, r * share, (r + 1) * share),
    );
    const ordered = concatTensors(parts.map((p) => tensor(p.dtype, [1, ...p.shape], p.data)), 0);
    const shape = t.shape.map((d, i) => (i === axis ? share : d));
    return this.#collective(
      ordered,
      shape,
      (send, recv) => this.communicator.reduceScatter(send, recv, numel(shape), t.dtype, reduce, this.stream),
    );
  }

  broadcast(t: Tensor, root: number): Promise<Tensor> {
    return this.#collective(
      t,
      t.shape,
      (send, recv) => this.communicator.broadcast(send, recv, numel(t.shape), t.dtype, root, this.stream),
    );
  }

  async barrier(): Promise<void> {
    await this.allReduce(tensor("i32", [1], new Int32Array([1])), "sum");
  }

  /** Uploads `t`, runs `call` into a result of `shape` and brings the result back. */
  #collective(t: Tensor, shape: number[], call: (send: bigint, recv: bigint) => void): Promise<Tensor> {
    const bytes = BYTES_PER_ELEMENT[t.dtype];
    const send = deviceAlloc(t.data.byteLength);
    const recv = deviceAlloc(numel(shape) * bytes);
    try {
      const input = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      checkCuda(
        cudart().cudaMemcpyAsyncToDevice(
          send,
          input,
          BigInt(input.byteLength),
          MEMCPY.hostToDevice,
          this.stream,
        ),
        "copy to the device",
      );
      call(send, recv);
      const out = new Uint8Array(numel(shape) * bytes);
      checkCuda(
        cudart().cudaMemcpyAsyncToHost(out, recv, BigInt(out.byteLength), MEMCPY.deviceToHost, this.stream),
        "copy from the device",
      );
      synchronize(this.stream);
      return Promise.resolve(tensor(t.dtype, shape, viewOf(t.dtype, out.buffer)));
    } finally {
      deviceFree(send);
      deviceFree(recv);
    }
  }
}
