// Loads this rank's engine from a saved set, checking the manifest and the file first, and the
// tokenizer saved with the set when there is one.

import { dirname, join, resolve } from "node:path";
import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import { loadRankEngine } from "../../core/runtime/manifest.ts";
import { loadTokenizer } from "../export/byte_tokenizer.ts";

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
    const dir = resolve(ctx.baseDir, opts.dir);
    const { engine, manifest } = await loadRankEngine(
      dir,
      ctx.rank,
      ctx.worldSize,
      ctx.backends,
      ctx.progress,
    );
    const tokenizerFile = manifest.tokenizer.find((file) => file.endsWith("tokenizer.json"));
    const tokenizer = tokenizerFile ? loadTokenizer(dirname(join(dir, tokenizerFile))) : undefined;
    return { engine, model: manifest.model, tokenizer };
  },
});
