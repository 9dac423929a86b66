// The compile stage: builds this rank's engine from its lowered graph, or takes it from the build
// cache when nothing it depends on changed (graph, weights, backend and version, options,
// profiles), or defers the build to the first request (just in time).

import { join } from "node:path";
import { z } from "zod";
import type { Graph } from "../ir/graph.ts";
import type { Tensor } from "../ir/tensor.ts";
import { printGraph } from "../ir/text.ts";
import { readGraphWeights, type WeightStore } from "../ir/weights.ts";
import { CompiledEngine, LazyEngine, type Provenance } from "../runtime/compiled.ts";
import type { EngineBackend } from "../runtime/engine.ts";
import { readEngineFile, sha256Hex, writeEngineFile } from "../runtime/engine_file.ts";
import { isFile } from "../runtime/files.ts";
import { engineFromFile, engineHeader } from "../runtime/manifest.ts";
import { type Profiles, profilesSchema } from "../runtime/profiles.ts";
import { buildEngine } from "./ranks.ts";

/** Keys of the compile stage the runner reads itself; the rest are the engine plugin's options. */
export const buildSettingsSchema = z.object({
  jit: z.boolean().default(false).describe(
    "build the engine when the first request comes instead of at the compile stage (cannot be saved)",
  ),
  profiles: profilesSchema.default({}),
});
export type BuildSettings = z.infer<typeof buildSettingsSchema>;
export const BUILD_SETTING_KEYS = ["jit", "profiles"] as const;

export interface CompileRequest {
  backend: EngineBackend;
  /** The engine plugin's options, part of the cache key. */
  options: unknown;
  settings: BuildSettings;
  graph: Graph;
  weights: WeightStore;
  /** Where built engines are kept, keyed by what they were built from; none: no cache. */
  cacheDir?: string;
  /** Build even when the cache has the engine (the new one replaces it). */
  rebuild?: boolean;
  pipeline?: string;
  /** Called as weights are read, for progress lines. */
  progress?: (done: number, total: number) => void;
}

export interface CompileResult {
  engine: CompiledEngine;
  /** Whether it came from the cache. */
  cached: boolean;
}

export async function compileEngine(request: CompileRequest): Promise<CompileResult> {
  const { backend, graph, settings } = request;
  const profiles: Profiles = settings.profiles;
  if (settings.jit) {
    const outputs = graph.outputs.map((name) => ({ name, type: graph.types.get(name)! }));
    const lazy = new LazyEngine(backend.name, backend.version, graph.inputs, outputs, async () => {
      const weights = readGraphWeights(graph, request.weights);
      return await buildEngine(backend, graph, weights);
    });
    return { engine: new CompiledEngine(lazy, profiles, { pipeline: request.pipeline }), cached: false };
  }
  let weights: Map<string, Tensor> | undefined;
  const graphSha256 = await sha256Hex(new TextEncoder().encode(printGraph(graph)));
  const fingerprint = weightsFingerprint(graph, request.weights);
  if (fingerprint === undefined) weights = readGraphWeights(graph, request.weights, request.progress);
  const weightsSha256 = await sha256Hex(fingerprint ?? weightBytes(graph, weights!));
  const provenance: Provenance = { graphSha256, weightsSha256, pipeline: request.pipeline };
  const key = await sha256Hex(new TextEncoder().encode(JSON.stringify({
    graphSha256,
    weightsSha256,
    backend: backend.name,
    version: backend.version,
    options: request.options,
    profiles,
  })));
  const cached = request.cacheDir ? join(request.cacheDir, `${key.slice(0, 32)}.engine`) : undefined;
  if (cached && !request.rebuild && isFile(cached)) {
    const { header, payload } = await readEngineFile(cached);
    const engine = await engineFromFile(header, payload, backend);
    return { engine: new CompiledEngine(engine.engine, profiles, provenance), cached: true };
  }
  weights ??= readGraphWeights(graph, request.weights, request.progress);
  const engine = new CompiledEngine(await buildEngine(backend, graph, weights), profiles, provenance);
  if (cached) {
    const payload = engine.serialize();
    const header = engineHeader(engine, payload.length, await sha256Hex(payload), { rank: 0, worldSize: 1 });
    await writeEngineFile(cached, header, payload);
  }
  return { engine, cached: false };
}

/** The weights' identities from their store (file, size, time), where every one has one. */
function weightsFingerprint(graph: Graph, store: WeightStore): Uint8Array | undefined {
  if (!store.fingerprint) return undefined;
  const parts = graph.weights.map((weight) => [
    weight.name,
    weight.key,
    weight.slices ?? [],
    weight.type.dtype,
    store.fingerprint!(weight.key),
  ]);
  return new TextEncoder().encode(JSON.stringify(parts));
}

function weightBytes(graph: Graph, weights: Map<string, Tensor>): Uint8Array {
  const parts = graph.weights.map((weight) => {
    const t = weights.get(weight.name)!;
    return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  });
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
