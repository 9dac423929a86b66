// Process groups: the world and the subgroups of a dp × tp mesh, and the collective operations
// a backend provides over each. Backends are swappable (tcp on CPUs, nccl on GPUs, in-memory
// for simulated ranks in tests).

import type { Reduction } from "../ir/ops/collective.ts";
import type { Tensor } from "../ir/tensor.ts";

export class DistError extends Error {
  override name = "DistError";
}

export interface ProcessGroup {
  /** "world", "tp" or "dp". */
  readonly name: string;
  /** This process's rank inside the group. */
  readonly rank: number;
  readonly size: number;
  /** The global ranks of the group's members, in group-rank order. */
  readonly ranks: number[];
  allReduce(t: Tensor, reduce: Reduction): Promise<Tensor>;
  /** Concatenates every member's tensor along `axis`, in group-rank order. */
  allGather(t: Tensor, axis: number): Promise<Tensor>;
  /** Reduces, then keeps this member's equal share of `axis`. */
  reduceScatter(t: Tensor, axis: number, reduce: Reduction): Promise<Tensor>;
  /** Every member gets the tensor of group rank `root`. */
  broadcast(t: Tensor, root: number): Promise<Tensor>;
  barrier(): Promise<void>;
}

export interface CollectiveBackend extends AsyncDisposable {
  readonly name: string;
  /** The group of this name; every rank holds the groups it is a member of. */
  group(name: string): ProcessGroup;
}

/** The shape of the job: data-parallel replicas of tensor-parallel ranks. */
export interface Mesh {
  dp: number;
  tp: number;
}

/** The global ranks of each group a rank belongs to in a dp × tp mesh (tp ranks are adjacent). */
export function meshGroups(mesh: Mesh, rank: number): Record<"world" | "tp" | "dp", number[]> {
  const world = mesh.dp * mesh.tp;
  if (!Number.isInteger(rank) || rank < 0 || rank >= world) {
    throw new DistError(`rank ${rank} is outside a world of ${world}`);
  }
  const replica = Math.floor(rank / mesh.tp);
  const shard = rank % mesh.tp;
  return {
    world: Array.from({ length: world }, (_, i) => i),
    tp: Array.from({ length: mesh.tp }, (_, i) => replica * mesh.tp + i),
    dp: Array.from({ length: mesh.dp }, (_, i) => i * mesh.tp + shard),
  };
}
