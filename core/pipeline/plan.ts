// The per-rank memory plan `rankflow check` prints before anything is built: each tensor-parallel
// rank's parameter bytes, its KV cache at the largest profile, and an activation estimate (the
// peak of live intermediate values over one prefill of the longest sequence).

import type { Graph } from "../ir/graph.ts";
import { evalDim } from "../ir/dims.ts";
import { BYTES_PER_ELEMENT, type DType, isFloat } from "../ir/tensor.ts";
import { sequenceLimits } from "../runtime/profiles.ts";
import { exportAndLower } from "./runner.ts";
import type { Pipeline } from "./pipeline.ts";

export interface RankPlan {
  /** The rank's place in its replica's tensor-parallel group; every replica has the same plan. */
  tpRank: number;
  parameterBytes: number;
  kvCacheBytes: number;
  activationBytes: number;
}

export interface MemoryPlan {
  batch: number;
  sequence: number;
  ranks: RankPlan[];
}

/** Exports and lowers each tensor-parallel rank's graph (weights are not read) and sizes it. */
export async function planMemory(pipeline: Pipeline): Promise<MemoryPlan | undefined> {
  if (!pipeline.export) return undefined;
  const limits = sequenceLimits(pipeline.build.profiles);
  const batch = limits.slots ?? 1;
  const ranks: RankPlan[] = [];
  let sequence = limits.maxLength ?? 0;
  for (let tpRank = 0; tpRank < pipeline.world.tp; tpRank++) {
    const { exported, graph } = await exportAndLower(pipeline, {
      log: () => {},
      tp: { rank: tpRank, size: pipeline.world.tp },
      dryRun: true,
    });
    using _exported = exported;
    sequence ||= exported.model.maxPositions;
    const compute = computeDtype(pipeline);
    ranks.push({
      tpRank,
      parameterBytes: parameterBytes(graph, compute),
      kvCacheBytes: kvCacheBytes(graph, batch, sequence, compute),
      activationBytes: activationBytes(
        graph,
        new Map([["batch", batch], ["seq", sequence], ["past", 0]]),
        compute,
      ),
    });
  }
  return { batch, sequence, ranks };
}

/** The compile stage's float dtype where its options name one (`dtype: bf16`). */
function computeDtype(pipeline: Pipeline): DType | undefined {
  const dtype = (pipeline.compile?.options as { dtype?: unknown } | undefined)?.dtype;
  return typeof dtype === "string" && dtype in BYTES_PER_ELEMENT ? dtype as DType : undefined;
}

function bytesOf(dtype: DType, compute: DType | undefined): number {
  return BYTES_PER_ELEMENT[compute && isFloat(dtype) ? compute : dtype];
}

export function parameterBytes(graph: Graph, compute?: DType): number {
  return graph.weights.reduce((total, weight) => {
    const count = (weight.type.shape as number[]).reduce((n, dim) => n * dim, 1);
    return total + count * bytesOf(weight.type.dtype, compute);
  }, 0);
}

/** The `past_*` inputs at `batch` sequences of `sequence` tokens. */
export function kvCacheBytes(graph: Graph, batch: number, sequence: number, compute?: DType): number {
  const dims = new Map([["batch", batch], ["past", sequence]]);
  return graph.inputs.filter((input) => input.name.startsWith("past_")).reduce((total, input) => {
    const count = input.type.shape.reduce((n: number, dim) => n * evalDim(dim, dims), 1);
    return total + count * bytesOf(input.type.dtype, compute);
  }, 0);
}

/** The peak bytes of values alive at once when the nodes run in order, inputs and outputs included. */
export function activationBytes(graph: Graph, dims: Map<string, number>, compute?: DType): number {
  const size = (name: string) => {
    const type = graph.types.get(name)!;
    return type.shape.reduce((n: number, dim) => n * evalDim(dim, dims), 1) * bytesOf(type.dtype, compute);
  };
  const lastUse = new Map<string, number>();
  graph.nodes.forEach((node, index) => node.inputs.forEach((input) => lastUse.set(input, index)));
  for (const output of graph.outputs) lastUse.set(output, graph.nodes.length);
  const weights = new Set(graph.weights.map((weight) => weight.name));
  let live = graph.inputs.reduce((total, input) => total + size(input.name), 0);
  let peak = live;
  graph.nodes.forEach((node, index) => {
    for (const output of node.outputs) live += size(output);
    peak = Math.max(peak, live);
    for (const name of new Set([...node.inputs, ...node.outputs])) {
      if (!weights.has(name) && (lastUse.get(name) ?? -1) <= index && !graph.outputs.includes(name)) {
        live -= size(name);
      }
    }
  });
  return peak;
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${
    value < 10 && unit > 0 ? value.toFixed(2) : value < 100 && unit > 0 ? value.toFixed(1) : Math.round(value)
  } ${units[unit]}`;
}

/** The plan as the table `rankflow check` prints. */
export function describePlan(pipeline: Pipeline, plan: MemoryPlan, deviceBytes?: number): string[] {
  const { dp, tp } = pipeline.world;
  const lines = [
    `plan: dp ${dp} × tp ${tp} = ${
      dp * tp
    } ranks; KV cache for ${plan.batch} sequence(s) of ${plan.sequence} tokens`,
    `  ${"rank".padEnd(8)}${"parameters".padStart(12)}${"kv cache".padStart(12)}${
      "activations".padStart(13)
    }${"total".padStart(12)}${deviceBytes ? "  of device" : ""}`,
  ];
  for (const rank of plan.ranks) {
    const total = rank.parameterBytes + rank.kvCacheBytes + rank.activationBytes;
    const ranks = Array.from({ length: dp }, (_, replica) => replica * tp + rank.tpRank).join(",");
    lines.push(
      `  ${ranks.padEnd(8)}${formatBytes(rank.parameterBytes).padStart(12)}${
        formatBytes(rank.kvCacheBytes).padStart(12)
      }${formatBytes(rank.activationBytes).padStart(13)}${formatBytes(total).padStart(12)}${
        deviceBytes ? `  ${(100 * total / deviceBytes).toFixed(1)}%` : ""
      }`,
    );
  }
  if (!deviceBytes) {
    lines.push("  (no GPU found here; activations are an estimate for one prefill of the longest sequence)");
  }
  return lines;
}
