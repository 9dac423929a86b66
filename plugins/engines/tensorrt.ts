// The tensorrt engine: each rank's graph compiled by TensorRT through the native shim (native/trt).
// Ops without a converter run in a fallback engine (cuda by default) between TensorRT segments;
// collectives are DistCollective layers where TensorRT has them, else run between segments.

import { z } from "zod";
import { type Graph, withFloatDtype } from "../../core/ir/graph.ts";
import { getOp } from "../../core/ir/registry.ts";
import type { Tensor } from "../../core/ir/tensor.ts";
import { definePlugin, type EnginePlugin } from "../../core/pipeline/plugin.ts";
import { builtinUrl } from "../../core/pipeline/resolve.ts";
import { type EngineBackend, EngineError } from "../../core/runtime/engine.ts";
import { openTensorRt } from "../../ffi/tensorrt.ts";
import {
  chooseCollectivePath,
  type CollectiveEnvironment,
  trtllmPluginsFromEnv,
} from "./tensorrt/capabilities.ts";
import { converterFor, type ConvertTarget } from "./tensorrt/converters/all.ts";
import { deserializeTensorRt, type EngineStep, TensorRtEngine } from "./tensorrt/engine.ts";
import { nativePlanner } from "./tensorrt/native_plan.ts";
import { partitionForTensorRt } from "./tensorrt/partition.ts";
import { layerCollectiveGroup, type PlanSettings, type SegmentPlanner } from "./tensorrt/plan.ts";

const dimRange = z.object({
  min: z.number().int().min(0).describe("smallest size the engine accepts"),
  opt: z.number().int().min(0).describe("size TensorRT tunes for"),
  max: z.number().int().min(1).describe("largest size the engine accepts"),
}).strict().refine((r) => r.min <= r.opt && r.opt <= r.max, "needs min <= opt <= max");

export const options = z.object({
  precision: z.enum(["f32", "f16", "bf16"]).optional().describe(
    "dtype of the network's float tensors (networks are strongly typed; default: the graph's own)",
  ),
  tf32: z.boolean().default(true).describe("let f32 matrix products use TF32 tensor cores"),
  min_block_size: z.number().int().min(1).default(3).describe(
    "fewest nodes a TensorRT segment may have; shorter runs between fallback ops join the fallback engine",
  ),
  fallback: z.string().default("cuda").describe("engine plugin that runs the ops TensorRT does not convert"),
  workspace_mb: z.number().int().positive().optional().describe("TensorRT's workspace pool limit in MiB"),
  dims: z.record(z.string(), dimRange).default({ past: { min: 0, opt: 128, max: 4096 } }).describe(
    "optimization profile range of each symbolic dim by name (batch, seq, past, …)",
  ),
  default_dim: dimRange.default({ min: 1, opt: 1, max: 4096 }).describe("range of dims not listed in dims"),
}).strict();

export type Options = z.infer<typeof options>;

/** What the backend is made of; tests pass stand-ins, the shipped path leaves every field unset. */
export interface TensorRtDeps {
  /** Builds and loads TensorRT segments (default: over the shim, opened on first use). */
  planner?: SegmentPlanner;
  /** The engine for ops TensorRT does not convert (default: the `fallback` option's plugin). */
  fallback?: EngineBackend;
  /** The collective environment besides TensorRT itself (default: TRTLLM_PLUGINS_PATH as set). */
  collectives?: (worldSize: number) => Omit<CollectiveEnvironment, "tensorrt">;
}

/** The collective group size of a graph: its biggest collective's, 1 when it has none. */
export function graphWorldSize(graph: Graph): number {
  return Math.max(1, ...graph.nodes.filter((n) => getOp(n.op).collective).map((n) => n.attrs.size as number));
}

export function tensorrtBackend(opts: Options, deps: TensorRtDeps = {}): EngineBackend {
  let planner = deps.planner;
  const plans = (): SegmentPlanner => (planner ??= nativePlanner(openTensorRt()));
  const environment = (worldSize: number) =>
    deps.collectives?.(worldSize) ?? { worldSize, trtllmPlugins: trtllmPluginsFromEnv() };
  const fallbacks = new Map<string, EngineBackend>();
  const fallbackBackend = async (name: string): Promise<EngineBackend> => {
    if (deps.fallback && deps.fallback.name === name) return deps.fallback;
    const known = fallbacks.get(name);
    if (known) return known;
    const plugin = (await import(builtinUrl("compile", name).href)).default as EnginePlugin;
    if (plugin?.kind !== "engine") throw new EngineError(`fallback ${name} is not an engine plugin`);
    const backend = plugin.backend(plugin.options.parse({}));
    fallbacks.set(name, backend);
    return backend;
  };
  const fallbackName = deps.fallback?.name ?? opts.fallback;

  /** What converts here: the planner's TensorRT and the collective path for this graph's ranks. */
  const targetFor = (graph: Graph): ConvertTarget => {
    const tensorrt = plans().capabilities;
    const collectives = chooseCollectivePath({ ...environment(graphWorldSize(graph)), tensorrt });
    // One communicator per engine: in-engine collectives run over the group of the first one.
    const first = graph.nodes.find((n) => getOp(n.op).collective && (n.attrs.size as number) > 1);
    return { tensorrt, collectives, communicatorGroup: first?.attrs.group as string | undefined };
  };

  return {
    name: "tensorrt",
    get version() {
      return plans().version;
    },
    capabilities: {
      // Whether a converter exists; whether a given node converts depends on its types and TensorRT.
      supports: (op) => converterFor(op) !== undefined,
      get collectivesInEngine() {
        return chooseCollectivePath({ ...environment(2), tensorrt: plans().capabilities }).inEngine;
      },
    },
    async build(original: Graph, weights: Map<string, Tensor>) {
      const graph = opts.precision ? withFloatDtype(original, opts.precision) : original;
      const target = targetFor(graph);
      const settings: PlanSettings = {
        target,
        dims: opts.dims,
        defaultDim: opts.default_dim,
        tf32: opts.tf32,
        workspaceBytes: opts.workspace_mb ? opts.workspace_mb * 2 ** 20 : undefined,
      };
      const split = (fallbackSupports: (op: string) => boolean) =>
        partitionForTensorRt(graph, { target, minBlockSize: opts.min_block_size, fallbackSupports });
      // The fallback engine is loaded only when some op needs it; then the split is redone with its abilities.
      let partitioned = split(() => true);
      let fallback: EngineBackend | undefined;
      if (partitioned.some((step) => step.kind === "fallback")) {
        fallback = await fallbackBackend(fallbackName).catch((error) => {
          throw new EngineError(`fallback engine ${fallbackName} is not available: ${error.message}`, {
            cause: error,
          });
        });
        partitioned = split((op) => fallback!.capabilities.supports(op));
      }
      const steps: EngineStep[] = [];
      for (const step of partitioned) {
        if (step.kind === "collective") steps.push(step);
        else if (step.kind === "fallback") {
          steps.push({ kind: "fallback", engine: await fallback!.build(step.graph, weights) });
        } else {
          if (layerCollectiveGroup(step.graph) && target.collectives.path !== "dist-collective") {
            throw new EngineError(
              `segment ${step.graph.name} has collectives but the path is ${target.collectives.path}`,
            );
          }
          steps.push({ kind: "tensorrt", engine: await plans().build(step.graph, weights, settings) });
        }
      }
      const outputs = graph.outputs.map((name) => ({ name, type: graph.types.get(name)! }));
      return new TensorRtEngine(plans().version, steps, graph.inputs, outputs);
    },
    deserialize(payload: Uint8Array) {
      return deserializeTensorRt(payload, plans, fallbackBackend);
    },
  };
}

export default definePlugin({
  kind: "engine",
  name: "tensorrt",
  description: "TensorRT through the native shim, ops without a converter in a fallback engine",
  options,
  backend: (opts: Options) => tensorrtBackend(opts),
});
