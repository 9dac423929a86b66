// A pipeline over several ranks. The controller (the process the user started) checks the plan and
// starts one process per rank through the launcher; each rank joins the job, builds its shard's
// engine, binds its collectives to the job's groups, and serves: the front rank of each replica
// takes the work, the other ranks of its tensor-parallel group follow in lockstep.

import { fileURLToPath } from "node:url";
import { launch } from "../dist/launcher.ts";
import { isBindable, type Job, joinJob } from "../dist/context.ts";
import { followLockstep, LockstepEngine } from "../dist/lockstep.ts";
import type { Graph } from "../ir/graph.ts";
import { getOp } from "../ir/registry.ts";
import type { Tensor } from "../ir/tensor.ts";
import type { Engine, EngineBackend } from "../runtime/engine.ts";
import { buildSegmented } from "../runtime/segments.ts";
import type { Replicas } from "./plugin.ts";
import { resolvePlugin } from "./resolve.ts";
import type { Pipeline, PipelineStage } from "./pipeline.ts";

const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));

/** How many rank processes the pipeline's world asks for. */
export function worldSizeOf(pipeline: Pipeline): number {
  return pipeline.world.tp * pipeline.world.dp;
}

/** Starts every rank of the pipeline (each runs `rankflow run` again) and waits for them all. */
export async function launchPipeline(
  pipeline: Pipeline,
  log: (message: string) => void,
  rebuild = false,
): Promise<void> {
  const size = worldSizeOf(pipeline);
  log(`starting ${size} ranks: dp ${pipeline.world.dp} × tp ${pipeline.world.tp}`);
  const sets = pipeline.overrides.flatMap((set) => ["--set", set]);
  await launch({
    entry: ["run", "-A", MAIN, "run", pipeline.file, ...sets, ...(rebuild ? ["--rebuild"] : [])],
    nprocPerNode: size,
  });
}

/** Joins the job this rank belongs to, through the pipeline's collective backend (tcp by default). */
export async function joinPipelineJob(pipeline: Pipeline, log: (message: string) => void): Promise<Job> {
  const collectives = pipeline.collectives ?? await defaultCollectives(pipeline);
  return await joinJob({
    mesh: { dp: pipeline.world.dp, tp: pipeline.world.tp },
    backend: (init) => collectives.plugin.create(collectives.options, init),
    rendezvousTimeoutMs: (pipeline.timeouts.rendezvous ?? 120) * 1000,
    warn: log,
  });
}

async function defaultCollectives(pipeline: Pipeline): Promise<PipelineStage<"collectives">> {
  const plugin = await resolvePlugin("collectives", "tcp", { baseDir: pipeline.baseDir });
  return {
    stage: "collectives",
    use: "tcp",
    plugin,
    options: plugin.options.parse({}),
    at: pipeline.world.at,
  };
}

/** Whether any node of the graph is a collective. */
export function hasCollectives(graph: Graph): boolean {
  return graph.nodes.some((node) => getOp(node.op).collective);
}

/** Builds the engine; a backend that cannot run collectives inside gets the graph cut at them. */
export async function buildEngine(
  backend: EngineBackend,
  graph: Graph,
  weights: Map<string, Tensor>,
): Promise<Engine> {
  if (hasCollectives(graph) && !backend.capabilities.collectivesInEngine) {
    return await buildSegmented(backend, graph, weights);
  }
  return await backend.build(graph, weights);
}

/** Binds an engine's collectives to the job's groups, by the group names its graph uses. */
export function bindToJob(engine: Engine, job: Job | undefined): Engine {
  if (job && isBindable(engine)) engine.bind((name) => job.group(name));
  return engine;
}

/**
 * Runs `work` on the front rank of each replica, through an engine that keeps its tensor-parallel
 * followers in lockstep; the followers run what their front sends. Without a job, runs it here.
 */
export async function onFrontRanks(
  engine: Engine,
  job: Job | undefined,
  work: (front: Engine, replicas: Replicas | undefined) => Promise<void>,
): Promise<void> {
  if (!job) return await work(engine, undefined);
  const tp = job.group("tp");
  if (job.tp.rank !== 0) return await followLockstep(engine, tp);
  const front = job.tp.size > 1 ? new LockstepEngine(engine, tp) : engine;
  const fronts = Array.from({ length: job.mesh.dp }, (_, replica) => replica * job.mesh.tp);
  const replicas: Replicas | undefined = job.mesh.dp > 1
    ? { ...job.replica, gather: (value) => job.gather("replicas", value, fronts) }
    : undefined;
  try {
    await work(front, replicas);
  } finally {
    if (front instanceof LockstepEngine) await front.stop();
  }
}
