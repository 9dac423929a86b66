// The cuda engine plugin: the lowered graph as cuBLASLt products and rankflow's own kernels on one
// NVIDIA GPU, KV caches on the device, decode steps replayed from CUDA graphs, collectives inside
// the engine through NCCL. See plugins/engines/cuda/ for the parts.

import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import { withFloatDtype } from "../../core/ir/graph.ts";
import type { EngineBackend } from "../../core/runtime/engine.ts";
import { CUDA_OPS } from "./cuda/lower.ts";
import { CudaEngine, VERSION } from "./cuda/engine.ts";
import { decodeGraphPayload } from "../../core/runtime/graph_payload.ts";

export const options = z.object({
  dtype: z.enum(["f32", "f16", "bf16"]).optional().describe(
    "compute dtype; weights are converted to it on upload (default: the graph's own)",
  ),
  device: z.number().int().nonnegative().optional().describe(
    "GPU index (default: LOCAL_RANK, else 0)",
  ),
  cuda_graphs: z.boolean().default(true).describe(
    "capture each decode batch size into a CUDA graph and replay it (one host call per step)",
  ),
  prefill_chunk: z.number().int().positive().default(2048).describe(
    "most tokens one prefill run takes; longer prompts run in chunks",
  ),
  kernel_rows: z.number().int().min(0).max(8).default(1).describe(
    "products of at most this many rows (decode) stream their weight through rankflow's own kernel; " +
      "larger ones, or all with 0, go to cuBLASLt (a whole batch-8 step measured faster on cuBLASLt on an H200)",
  ),
  programmatic_launch: z.boolean().default(true).describe(
    "let each of rankflow's kernels start while the one before it finishes, loading its weights early " +
      "(programmatic dependent launch; compute capability 9.0 and up, ignored below)",
  ),
}).strict();

export type Options = z.infer<typeof options>;

export function cudaBackend(opts: Partial<Options> = {}): EngineBackend {
  const engineOptions = () => ({
    device: opts.device ?? Number(Deno.env.get("LOCAL_RANK") ?? 0),
    graphs: opts.cuda_graphs ?? true,
    prefillChunk: opts.prefill_chunk ?? 2048,
    kernelRows: opts.kernel_rows ?? 1,
    programmaticLaunch: opts.programmatic_launch ?? true,
  });
  return {
    name: "cuda",
    version: VERSION,
    capabilities: {
      supports: (op) => CUDA_OPS.has(op),
      collectivesInEngine: true,
    },
    build(graph, weights) {
      const target = opts.dtype ? withFloatDtype(graph, opts.dtype) : graph;
      return Promise.resolve(new CudaEngine(target, weights, engineOptions()));
    },
    deserialize(payload) {
      const { graph, weights } = decodeGraphPayload(payload);
      return Promise.resolve(new CudaEngine(graph, weights, engineOptions()));
    },
  };
}

export default definePlugin({
  kind: "engine",
  name: "cuda",
  description: "NVIDIA GPUs: cuBLASLt products, rankflow kernels, device KV caches, CUDA graphs, NCCL inside",
  options,
  backend: (opts: Options) => cudaBackend(opts),
});
