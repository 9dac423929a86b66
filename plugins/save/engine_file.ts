// Saves this rank's engine into a new engine set; rank 0 writes the set's manifest once every
// rank's file is in place (see core/runtime/manifest.ts).

import { resolve } from "node:path";
import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import { saveRankEngine } from "../../core/runtime/manifest.ts";

export const options = z.object({
  dir: z.string().describe("folder for the engine files and manifest.json, relative to the pipeline file"),
}).strict();

export default definePlugin({
  kind: "save",
  name: "engine-file",
  description: "one engine file per rank and a manifest, written atomically",
  options,
  save(engine, opts: z.infer<typeof options>, ctx) {
    return saveRankEngine(resolve(ctx.baseDir, opts.dir), engine, {
      rank: ctx.rank,
      worldSize: ctx.worldSize,
      mesh: ctx.mesh,
      model: ctx.model,
      tokenizer: ctx.tokenizer,
      job: ctx.job,
    });
  },
});
