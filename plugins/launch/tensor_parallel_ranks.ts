// Running a checkpoint over rank processes for the CLI's logits and generate: the controller side
// starts the ranks through the launcher and keeps rank 0's standard output; the rank side joins
// the job (from `rankflow launch`, torchrun or mpirun alike), takes its tensor-parallel shard of
// the graph and builds a segmented cpu engine bound to the job's tcp groups.

import { fileURLToPath } from "node:url";
import type { ExportedModel } from "../../core/pipeline/plugin.ts";
import { launch } from "../../core/dist/launcher.ts";
import { type Job, joinJob } from "../../core/dist/context.ts";
import type { Mesh } from "../../core/dist/group.ts";
import { readGraphWeights } from "../../core/ir/weights.ts";
import type { Engine } from "../../core/runtime/engine.ts";
import { buildSegmented } from "../../core/runtime/segments.ts";
import { cpuBackend } from "../engines/cpu.ts";
import { createTcpBackend } from "../collectives/tcp.ts";
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

/** This rank's engine over its tensor-parallel shard, and the job whose groups it is to be bound to. */
export async function rankEngine(exported: ExportedModel, mesh: Mesh): Promise<{ engine: Engine; job: Job }> {
  const job = await joinJob({ mesh, backend: (init) => createTcpBackend(init) });
  try {
    const graph = fuse.run(shardGraph(exported.graph, { plan: "auto", group: "tp" }, job.tp));
    const engine = await buildSegmented(cpuBackend(), graph, readGraphWeights(graph, exported.weights));
    return { engine, job };
  } catch (error) {
    await job[Symbol.asyncDispose]();
    throw error;
  }
}
