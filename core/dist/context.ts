// A rank's membership in a job and the lifetime of what it holds: the rendezvous store connection,
// the collective backend and its groups, and the engines bound to them. `joinJob` connects a rank
// started by any launcher; `distributedContext` binds engines to a backend or to one pinned group.
// Disposing either releases everything it holds, so a rank ends by returning, not by exiting.

import { type Environment, type RankPlace, readRankEnv } from "./env.ts";
import { type CollectiveBackend, DistError, type Mesh, meshGroups, type ProcessGroup } from "./group.ts";
import { StoreClient, StoreServer } from "./store.ts";
import type { Engine } from "../runtime/engine.ts";

/** What a collective backend is made from: the rank's place and the job's store. */
export interface BackendInit {
  rank: number;
  worldSize: number;
  mesh: Mesh;
  store: StoreClient;
}

export type BackendFactory = (init: BackendInit) => Promise<CollectiveBackend>;

export interface JoinOptions {
  mesh: Mesh;
  backend: BackendFactory;
  /** Default: this process's environment. */
  env?: Environment;
  /** How long to wait for the store and the peers, in ms. Default 60 000. */
  rendezvousTimeoutMs?: number;
  /** Told once when the store runs without a token (ranks started by another launcher). */
  warn?: (message: string) => void;
}

/**
 * The token ranks use when no `rankflow launch` gave them one: torchrun and mpirun pass no secret,
 * so any client that reaches MASTER_ADDR:MASTER_PORT is accepted, as with torchrun's own store.
 */
export const OPEN_TOKEN = "rankflow-open-store";

/** Small values passed between ranks through the store: results to gather, decisions to share. */
export interface JobChannel {
  /** Every member (default: all ranks) calls this once; the first member gets all values in member order. */
  gather<T>(topic: string, value: T, members?: number[]): Promise<T[] | undefined>;
  /** Rank 0 makes the value; every rank gets it. */
  agree<T>(topic: string, make: () => T): Promise<T>;
  /** Returns once every rank has called it. */
  barrier(): Promise<void>;
}

/** One rank's membership: its place, the store and the collective backend. */
export class Job implements AsyncDisposable, JobChannel {
  #disposed = false;
  #calls = new Map<string, number>();

  constructor(
    readonly place: RankPlace,
    readonly mesh: Mesh,
    readonly store: StoreClient,
    readonly backend: CollectiveBackend,
    readonly hostedStore?: StoreServer,
  ) {}

  get rank(): number {
    return this.place.rank;
  }

  get worldSize(): number {
    return this.place.worldSize;
  }

  /** This rank's place in its tensor-parallel group and its replica's place among the replicas. */
  get tp(): { rank: number; size: number } {
    return { rank: this.rank % this.mesh.tp, size: this.mesh.tp };
  }

  get replica(): { rank: number; size: number } {
    return { rank: Math.floor(this.rank / this.mesh.tp), size: this.mesh.dp };
  }

  get name(): string {
    return this.backend.name;
  }

  group(name: string): ProcessGroup {
    return this.backend.group(name);
  }

  async gather<T>(topic: string, value: T, members?: number[]): Promise<T[] | undefined> {
    const ranks = members ?? Array.from({ length: this.worldSize }, (_, rank) => rank);
    if (!ranks.includes(this.rank)) throw new DistError(`gather ${topic}: rank ${this.rank} is not a member`);
    const key = this.#key(`gather/${topic}`);
    await this.store.set(`${key}/${this.rank}`, JSON.stringify(value));
    if (this.rank !== ranks[0]) return undefined;
    return await Promise.all(
      ranks.map(async (rank) => JSON.parse(await this.store.getText(`${key}/${rank}`))),
    );
  }

  async agree<T>(topic: string, make: () => T): Promise<T> {
    const key = this.#key(`agree/${topic}`);
    if (this.rank === 0) {
      const value = make();
      await this.store.set(key, JSON.stringify(value));
      return value;
    }
    return JSON.parse(await this.store.getText(key));
  }

  async barrier(): Promise<void> {
    await this.group("world").barrier();
  }

  /** A store key unique to this call: every rank makes the same calls in the same order. */
  #key(topic: string): string {
    const count = this.#calls.get(topic) ?? 0;
    this.#calls.set(topic, count + 1);
    return `job/${topic}/${count}`;
  }

  /** Waits for every rank, then closes the backend and the store (the hosted store last). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    try {
      // No rank closes its connections (nor the store, where it hosts it) while others still use them.
      if (this.worldSize > 1) await this.group("world").barrier();
    } finally {
      await this.backend[Symbol.asyncDispose]();
      await this.store[Symbol.asyncDispose]();
      await this.hostedStore?.close();
    }
  }
}

/**
 * Joins the job this process is a rank of. With RANKFLOW_TOKEN (set by `rankflow launch`) the
 * controller runs the store; without it (torchrun, mpirun) rank 0 runs it at MASTER_ADDR:MASTER_PORT.
 */
export async function joinJob(options: JoinOptions): Promise<Job> {
  const place = readRankEnv(options.env);
  const { mesh } = options;
  if (mesh.dp * mesh.tp !== place.worldSize) {
    throw new DistError(
      `the pipeline's world is dp ${mesh.dp} × tp ${mesh.tp} = ${mesh.dp * mesh.tp} ranks, ` +
        `but WORLD_SIZE is ${place.worldSize}`,
    );
  }
  meshGroups(mesh, place.rank);
  const timeout = options.rendezvousTimeoutMs ?? 60_000;
  let hosted: StoreServer | undefined;
  if (!place.token && place.rank === 0) {
    options.warn?.(
      `RANKFLOW_TOKEN is not set: rank 0 runs the rendezvous store at ${place.masterAddr}:${place.masterPort} ` +
        "and accepts any client that reaches it",
    );
    hosted = StoreServer.listen({
      token: OPEN_TOKEN,
      hostname: listenHost(place.masterAddr),
      port: place.masterPort,
    });
  }
  let store: StoreClient | undefined;
  try {
    store = await StoreClient.connect({
      hostname: place.masterAddr,
      port: place.masterPort,
      token: place.token ?? OPEN_TOKEN,
      connectTimeoutMs: timeout,
    });
    const backend = await options.backend({ rank: place.rank, worldSize: place.worldSize, mesh, store });
    return new Job(place, mesh, store, backend, hosted);
  } catch (error) {
    await store?.[Symbol.asyncDispose]();
    await hosted?.close();
    throw error;
  }
}

/** Loopback addresses are listened on as given; any other address on every interface. */
function listenHost(address: string): string {
  return address === "localhost" || address.startsWith("127.") ? address : "0.0.0.0";
}

/** An engine that runs collectives over process groups it is bound to. */
export interface BindableEngine extends Engine {
  bind(groups: (name: string) => ProcessGroup): unknown;
}

export function isBindable(engine: Engine): engine is BindableEngine {
  return typeof (engine as Partial<BindableEngine>).bind === "function";
}

export interface DistributedContext extends AsyncDisposable {
  /** The group every collective of the engines runs over, by the name the graph gives it. */
  group(name: string): ProcessGroup;
  readonly engines: Engine[];
}

/**
 * Binds engines to a backend's groups (each collective over the group its graph names), or pins
 * them to one group (every collective over it, e.g. a replica's tensor-parallel group). Disposing
 * disposes the engines, and the backend when one was given.
 */
export function distributedContext(
  target: CollectiveBackend | ProcessGroup,
  engines: Engine | Engine[],
): Promise<DistributedContext> {
  const list = Array.isArray(engines) ? engines : [engines];
  const pinned = isProcessGroup(target);
  const group = (name: string) => pinned ? target : target.group(name);
  for (const engine of list) if (isBindable(engine)) engine.bind(group);
  let disposed = false;
  return Promise.resolve({
    engines: list,
    group,
    async [Symbol.asyncDispose]() {
      if (disposed) return;
      disposed = true;
      for (const engine of list) engine[Symbol.dispose]();
      if (!pinned) await target[Symbol.asyncDispose]();
    },
  });
}

function isProcessGroup(value: CollectiveBackend | ProcessGroup): value is ProcessGroup {
  return typeof (value as Partial<ProcessGroup>).allReduce === "function";
}
