// Running a checkpoint over rank processes for the CLI's logits and generate: the controller side
// starts the ranks through the launcher and keeps rank 0's standard output; the rank side joins
// the job (from `rankflow launch`, torchrun or mpirun alike), takes its tensor-parallel shard of
// the graph and builds its engine: a segmented cpu engine over tcp groups, or a cuda engine on the
// rank's GPU (LOCAL_RANK) that runs its collectives over nccl on its own stream.

import { fileURLToPath } from "node:url";
import type { ExportedModel } from "../../core/pipeline/plugin.ts";
import { launch } from "../../core/dist/launcher.ts";
import { type Job, joinJob } from "../../core/dist/context.ts";
import type { Mesh } from "../../core/dist/group.ts";
import { readGraphWeights } from "../../core/ir/weights.ts";
import { type Engine, EngineError } from "../../core/runtime/engine.ts";
import { probeDevices } from "../../ffi/cuda.ts";
import { buildEngine } from "../../core/pipeline/ranks.ts";
import { cpuBackend } from "../engines/cpu.ts";
import { cudaBackend } from "../engines/cuda.ts";
import { createTcpBackend } from "../collectives/tcp.ts";
import { createNcclBackend } from "../collectives/nccl.ts";
import { shardGraph } from "../passes/tensor_parallel.ts";
import fuse from "../passes/fuse_distributed_ops.ts";

const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));

/** Runs `main.ts args…` as `ranks` processes; returns what rank 0 printed on stdout. */
export async function runOnRanks(ranks: number, args: string[], timeoutSeconds = 600): Promise<string> {
  const lines: string[] = [];
  await launch({
    entry: ["run", "-A", MAIN, ...args],
    nprocPerNode: ranks,
    timeoutSeconds,
    output(line) {
      if (line.rank === 0 && line.stream === "stdout") lines.push(line.text);
      else if (line.stream === "stderr") console.error(`[rank ${line.rank}] ${line.text}`);
    },
  });
  return lines.join("\n");
}

export const RANK_ENGINES = ["cpu", "cuda"] as const;
export type RankEngineKind = typeof RANK_ENGINES[number];

export function isRankEngineKind(name: string): name is RankEngineKind {
  return (RANK_ENGINES as readonly string[]).includes(name);
}

function engineBackend(kind: RankEngineKind) {
  return kind === "cuda" ? cudaBackend() : cpuBackend();
}

/**
 * Before any rank starts: cuda ranks take one GPU each (LOCAL_RANK), so a job of more ranks than
 * this machine has GPUs is refused here rather than failing in its ranks.
 */
export function checkRankDevices(kind: RankEngineKind, ranks: number): void {
  if (kind !== "cuda") return;
  const probe = probeDevices();
  if (probe.count >= ranks) return;
  throw new EngineError(
    `--engine cuda runs one rank per GPU: ${ranks} ranks need ${ranks} GPUs, this machine has ${probe.count}` +
      (probe.reason ? ` (${probe.reason})` : ""),
  );
}

/** The whole checkpoint on one engine of this process. */
export function singleEngine(exported: ExportedModel, kind: RankEngineKind): Promise<Engine> {
  const { graph, weights } = exported;
  return engineBackend(kind).build(graph, readGraphWeights(graph, weights));
}

/** This rank's engine over its tensor-parallel shard, and the job whose groups it is to be bound to. */
export async function rankEngine(
  exported: ExportedModel,
  mesh: Mesh,
  kind: RankEngineKind = "cpu",
): Promise<{ engine: Engine; job: Job }> {
  const job = await joinJob({
    mesh,
    backend: (init) => kind === "cuda" ? createNcclBackend(init) : createTcpBackend(init),
  });
  try {
    const graph = fuse.run(shardGraph(exported.graph, { plan: "auto", group: "tp" }, job.tp));
    const engine = await buildEngine(engineBackend(kind), graph, readGraphWeights(graph, exported.weights));
    return { engine, job };
  } catch (error) {
    await job[Symbol.asyncDispose]();
    throw error;
  }
}
