// Loads this rank's engine from a saved set, checking the manifest and the file first.

import { resolve } from "node:path";
import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import { loadRankEngine } from "../../core/runtime/manifest.ts";

export const options = z.object({
  dir: z.string().describe(
    "folder holding manifest.json and the engine files, relative to the pipeline file",
  ),
}).strict();

export default definePlugin({
  kind: "load",
  name: "engine-file",
  description: "loads and verifies this rank's engine file",
  options,
  async load(opts: z.infer<typeof options>, ctx) {
    const { engine } = await loadRankEngine(
      resolve(ctx.baseDir, opts.dir),
      ctx.rank,
      ctx.worldSize,
      ctx.backends,
    );
    return engine;
  },
});
