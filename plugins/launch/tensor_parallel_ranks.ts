// Running a checkpoint over tensor-parallel rank processes: the controller side starts the ranks
// through the launcher and keeps rank 0's standard output; the rank side joins the job (rendezvous
// store, tcp process groups), takes its shard of the graph and builds a segmented cpu engine.

import { fileURLToPath } from "node:url";
import type { ExportedModel } from "../../core/pipeline/plugin.ts";
import { readRankEnv } from "../../core/dist/env.ts";
import { launch } from "../../core/dist/launcher.ts";
import { StoreClient } from "../../core/dist/store.ts";
import { DistError } from "../../core/dist/group.ts";
import { readGraphWeights } from "../../core/ir/weights.ts";
import type { Engine } from "../../core/runtime/engine.ts";
import { buildSegmented } from "../../core/runtime/segments.ts";
import { cpuBackend } from "../engines/cpu.ts";
import { createTcpBackend } from "../collectives/tcp.ts";
import { shardGraph } from "../passes/tensor_parallel.ts";
import fuse from "../passes/fuse_distributed_ops.ts";

const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));

/** Runs `main.ts args…` as `tp` rank processes; returns what rank 0 printed on stdout. */
export async function runOnRanks(tp: number, args: string[], timeoutSeconds = 600): Promise<string> {
  const lines: string[] = [];
  await launch({
    entry: ["run", "-A", MAIN, ...args],
    nprocPerNode: tp,
    timeoutSeconds,
    output(line) {
      if (line.rank === 0 && line.stream === "stdout") lines.push(line.text);
      else if (line.stream === "stderr") console.error(`[rank ${line.rank}] ${line.text}`);
    },
  });
  return lines.join("\n");
}

/** A rank's engine over its shard, its collectives bound to the job's tcp groups. */
export async function tensorParallelRankEngine(
  exported: ExportedModel,
  tp: number,
): Promise<Engine & AsyncDisposable> {
  const place = readRankEnv();
  if (place.worldSize !== tp) throw new DistError(`--tp ${tp} but WORLD_SIZE is ${place.worldSize}`);
  if (!place.token) throw new DistError("RANKFLOW_TOKEN is not set: start tensor-parallel runs with --tp N");
  const store = await StoreClient.connect({
    hostname: place.masterAddr,
    port: place.masterPort,
    token: place.token,
  });
  const backend = await createTcpBackend({ rank: place.rank, worldSize: tp, mesh: { dp: 1, tp }, store });
  const graph = fuse.run(
    shardGraph(exported.graph, { plan: "auto", group: "tp" }, { rank: place.rank, size: tp }),
  );
  const engine = await buildSegmented(cpuBackend(), graph, readGraphWeights(graph, exported.weights));
  engine.bind((name) => backend.group(name));
  return Object.assign(engine, {
    async [Symbol.asyncDispose]() {
      engine[Symbol.dispose]();
      await backend[Symbol.asyncDispose]();
      await store[Symbol.asyncDispose]();
    },
  });
}
