// The nccl backend's path for small all-reduces between GPUs of one machine: one kernel of
// rankflow's (native/src/peer_all_reduce.cu) over device memory each rank maps from the others
// through CUDA IPC. A decode step of a tensor-parallel model makes two all-reduces a layer of a
// few kilobytes each, where NCCL's fixed cost (about 11 µs on two H200s) outweighs the transfer.
// The ranks of a group agree on the path through the store: it is taken only where every rank
// could map every other's memory, so that no rank waits in a kernel its peers never launch.

import type { StoreClient } from "../../core/dist/store.ts";
import type { Reduction } from "../../core/ir/ops/collective.ts";
import { BYTES_PER_ELEMENT, type DType } from "../../core/ir/tensor.ts";
import { check as checkCuda, cudart } from "../../ffi/cuda.ts";
import { check, KERNEL_DTYPE, kernels } from "../../ffi/kernels.ts";

const HANDLE_BYTES = 64;

export class PeerAllReduce {
  #closed = false;

  constructor(
    /** Every rank's region, in rank order (this rank's own at `rank`), as the kernel takes them. */
    readonly regions: BigUint64Array,
    readonly rank: number,
    readonly capacity: number,
  ) {}

  get world(): number {
    return this.regions.length;
  }

  /** Whether an all-reduce of `count` elements can take this path (else it goes to NCCL). */
  fits(send: bigint, recv: bigint, count: number, dtype: DType, reduce: Reduction): boolean {
    const bytes = count * BYTES_PER_ELEMENT[dtype];
    return reduce === "sum" && dtype in KERNEL_DTYPE && bytes > 0 && bytes % 16 === 0 &&
      bytes <= this.capacity && send % 16n === 0n && recv % 16n === 0n;
  }

  allReduce(send: bigint, recv: bigint, count: number, dtype: DType, stream: bigint): void {
    check(
      kernels().rf_peer_all_reduce(
        KERNEL_DTYPE[dtype as keyof typeof KERNEL_DTYPE],
        send,
        recv,
        BigInt(count),
        this.regions,
        this.rank,
        this.world,
        BigInt(this.capacity),
        stream,
      ),
      "peer all-reduce",
    );
  }

  /** Unmaps the peers' regions and frees this rank's; every rank must be done with it. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    release(this.regions, this.rank);
  }
}

function release(regions: BigUint64Array, rank: number): void {
  regions.forEach((pointer, r) => {
    if (pointer === 0n) return;
    if (r === rank) checkCuda(cudart().cudaFree(pointer), "cudaFree of the peer all-reduce region");
    else check(kernels().rf_ipc_close(pointer), "closing a peer's all-reduce region");
  });
}

/**
 * Sets up the peer path for a group: each rank allocates its region, publishes its IPC handle and
 * host name under `key`, and maps the others'. Returns the path, or why it is off, the same on
 * every rank of the group.
 */
export async function connectPeers(
  store: StoreClient,
  key: string,
  rank: number,
  world: number,
  capacity: number,
  timeoutMs: number,
): Promise<PeerAllReduce | { off: string }> {
  const regions = new BigUint64Array(world);
  let reason: string;
  try {
    reason = await mapRegions(store, key, rank, regions, capacity, timeoutMs);
  } catch (error) {
    release(regions, rank);
    throw error;
  }
  if (!reason) return new PeerAllReduce(regions, rank, capacity);
  release(regions, rank);
  return { off: reason };
}

/** Fills `regions` (this rank's allocated, the others' mapped); returns why the path is off, or "". */
async function mapRegions(
  store: StoreClient,
  key: string,
  rank: number,
  regions: BigUint64Array,
  capacity: number,
  timeoutMs: number,
): Promise<string> {
  const k = kernels();
  const world = regions.length;
  let reason = "";
  const handle = new Uint8Array(HANDLE_BYTES);
  const out = new BigUint64Array(1);
  const allocated = k.rf_ipc_alloc(k.rf_peer_region_bytes(BigInt(capacity), world), out, handle);
  if (allocated === 0) regions[rank] = out[0];
  else reason = `rank ${rank} could not allocate an IPC region (cudaError ${allocated})`;
  const host = Deno.hostname();
  await store.set(`${key}/peer/${rank}`, JSON.stringify({ host, handle: Array.from(handle) }));
  for (let r = 0; r < world && !reason; r++) {
    if (r === rank) continue;
    const peer = JSON.parse(await store.getText(`${key}/peer/${r}`, timeoutMs));
    if (peer.host !== host) {
      reason = `rank ${r} runs on ${peer.host}, rank ${rank} on ${host}`;
      break;
    }
    const opened = k.rf_ipc_open(Uint8Array.from(peer.handle), out);
    if (opened !== 0) reason = `rank ${rank} could not map rank ${r}'s memory (cudaError ${opened})`;
    else regions[r] = out[0];
  }
  // A reason any rank had turns the path off on every rank: no rank waits in a kernel the others skip.
  await store.set(`${key}/peer-ok/${rank}`, reason);
  for (let r = 0; r < world; r++) {
    const theirs = r === rank ? reason : await store.getText(`${key}/peer-ok/${r}`, timeoutMs);
    if (theirs && !reason) reason = theirs;
  }
  return reason;
}
