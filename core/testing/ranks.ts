// Simulated ranks: N ranks' graphs run in one process, their collectives met in memory, so a
// sharding plan is checked against the unsharded graph in `deno test` without processes or GPUs.

import type { Graph } from "../ir/graph.ts";
import { readGraphWeights, type WeightStore } from "../ir/weights.ts";
import { memoryGroups } from "../dist/memory.ts";
import type { Engine, EngineBackend } from "../runtime/engine.ts";
import { buildSegmented } from "../runtime/segments.ts";

/** One engine per rank graph, each bound to its member of an in-memory group named `group`. */
export async function simulatedEngines(
  graphs: Graph[],
  weights: WeightStore,
  backend: EngineBackend,
  group = "tp",
): Promise<Engine[]> {
  const groups = memoryGroups(graphs.length, group);
  return await Promise.all(graphs.map(async (graph, rank) => {
    const engine = await buildSegmented(backend, graph, readGraphWeights(graph, weights));
    return engine.bind((name) => {
      if (name !== group) throw new Error(`simulated ranks have only the group ${group}, not ${name}`);
      return groups[rank];
    });
  }));
}

/** Runs `work` on every rank's engine at once, as rank processes would. */
export function onEveryRank<T>(
  engines: Engine[],
  work: (engine: Engine, rank: number) => Promise<T>,
): Promise<T[]> {
  return Promise.all(engines.map(work));
}
