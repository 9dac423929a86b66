// A rank's place in the job, read from the environment its launcher set: `rankflow launch` and
// torchrun set RANK, LOCAL_RANK, WORLD_SIZE; mpirun sets OMPI_COMM_WORLD_*. MASTER_ADDR and
// MASTER_PORT say where the rendezvous store listens in both cases.

import { DistError } from "./group.ts";

export interface RankPlace {
  rank: number;
  localRank: number;
  worldSize: number;
  /** Host of the rendezvous store. */
  masterAddr: string;
  masterPort: number;
  /** RANKFLOW_TOKEN, the store's job token; absent when another launcher started the rank. */
  token?: string;
  /** Which launcher's variables named the place. */
  source: "torchrun" | "mpirun";
}

export type Environment = Readonly<Record<string, string | undefined>>;

const TORCHRUN = ["RANK", "LOCAL_RANK", "WORLD_SIZE"] as const;
const MPIRUN = ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"] as const;
const STORE = ["MASTER_ADDR", "MASTER_PORT"] as const;

/** Whether a launcher set any rank variables (a plain single-process run sets none). */
export function hasRankEnv(env: Environment = Deno.env.toObject()): boolean {
  return [...TORCHRUN, ...MPIRUN].some((name) => env[name] !== undefined);
}

/** This process's place; throws a `DistError` naming every missing or malformed variable. */
export function readRankEnv(env: Environment = Deno.env.toObject()): RankPlace {
  const source = env.RANK === undefined && env.OMPI_COMM_WORLD_RANK !== undefined ? "mpirun" : "torchrun";
  const [rankName, localName, sizeName] = source === "mpirun" ? MPIRUN : TORCHRUN;
  const missing = [rankName, localName, sizeName, ...STORE].filter((name) => !env[name]);
  if (missing.length > 0) {
    throw new DistError(
      `missing environment variables ${missing.join(", ")}: a rank needs RANK, LOCAL_RANK, WORLD_SIZE ` +
        "(or mpirun's OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_SIZE) and " +
        "MASTER_ADDR, MASTER_PORT; start ranks with `rankflow launch`",
    );
  }
  const problems: string[] = [];
  const integer = (name: string, min: number, max: number): number => {
    const text = env[name]!;
    const value = Number(text);
    if (!/^\d+$/.test(text.trim()) || value < min || value > max) {
      problems.push(`${name}=${JSON.stringify(text)} is not an integer in ${min}..${max}`);
    }
    return value;
  };
  const worldSize = integer(sizeName, 1, 1 << 20);
  const rank = integer(rankName, 0, Math.max(0, worldSize - 1));
  const localRank = integer(localName, 0, Math.max(0, worldSize - 1));
  const masterPort = integer("MASTER_PORT", 1, 65535);
  if (problems.length > 0) throw new DistError(`bad rank environment: ${problems.join("; ")}`);
  return {
    rank,
    localRank,
    worldSize,
    masterAddr: env.MASTER_ADDR!,
    masterPort,
    token: env.RANKFLOW_TOKEN || undefined,
    source,
  };
}
