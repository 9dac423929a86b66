// Saves this rank's engine as an engine file plus the set's manifest.

import { join, resolve } from "node:path";
import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import {
  FORMAT_VERSION,
  sha256Hex,
  writeEngineFile,
  writeFileAtomic,
} from "../../core/runtime/engine_file.ts";
import { rankFileName, writeManifest } from "../../core/runtime/manifest.ts";

export const options = z.object({
  dir: z.string().describe("folder for the engine files and manifest.json, relative to the pipeline file"),
}).strict();

export default definePlugin({
  kind: "save",
  name: "engine-file",
  description: "one engine file per rank and a manifest, written atomically",
  options,
  async save(engine, opts: z.infer<typeof options>, ctx) {
    const dir = resolve(ctx.baseDir, opts.dir);
    const payload = engine.serialize();
    const sha256 = await sha256Hex(payload);
    const file = rankFileName(ctx.rank);
    await writeEngineFile(join(dir, file), {
      format: FORMAT_VERSION,
      backend: engine.backend,
      backendVersion: engine.backendVersion,
      rank: ctx.rank,
      worldSize: ctx.worldSize,
      inputs: engine.inputs,
      outputs: engine.outputs,
      payloadBytes: payload.length,
      payloadSha256: sha256,
      createdBy: "rankflow",
    }, payload);
    // The set's manifest lists every rank's checksum; with one rank this rank knows them all.
    // TODO(issue 4): with several ranks the controller gathers the checksums and writes it.
    if (ctx.worldSize === 1) {
      const files = Array.from({ length: ctx.worldSize }, (_, rank) => ({
        rank,
        file: rankFileName(rank),
        sha256,
      }));
      for (const [name, text] of Object.entries(ctx.tokenizer?.files ?? {})) {
        await writeFileAtomic(join(dir, name), new TextEncoder().encode(text));
      }
      await writeManifest(dir, {
        format: FORMAT_VERSION,
        backend: engine.backend,
        worldSize: ctx.worldSize,
        model: ctx.model,
        files,
      });
    }
    return join(dir, file);
  },
});
