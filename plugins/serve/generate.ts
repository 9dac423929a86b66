// The serve plugin "generate": greedy generation from one prompt, streamed to the terminal.
// It is the smallest way to see an engine work end to end; HTTP serving is a separate plugin.

import { z } from "zod";
import { definePlugin, type ServeContext } from "../../core/pipeline/plugin.ts";
import { PipelineError } from "../../core/pipeline/errors.ts";
import type { Engine } from "../../core/runtime/engine.ts";
import { generateGreedy } from "../../core/runtime/generate.ts";
import type { Tokenizer } from "../../core/runtime/tokenizer.ts";

export const options = z.object({
  prompt: z.string().min(1).optional().describe("text to continue; needs the model's tokenizer"),
  ids: z.array(z.number().int().nonnegative()).min(1).optional()
    .describe("token ids to continue, where there is no tokenizer"),
  max_tokens: z.number().int().positive().default(16).describe("how many tokens to generate"),
}).refine((value) => value.prompt === undefined || value.ids === undefined, {
  message: "give prompt or ids, not both",
}).refine((value) => value.prompt !== undefined || value.ids !== undefined, {
  message: "give a prompt or ids to start from",
});
export type Options = z.infer<typeof options>;

export default definePlugin({
  kind: "serve",
  name: "generate",
  description: "greedy generation from one prompt, printed as it comes",
  options,
  serve: serveGenerate,
});

async function serveGenerate(engine: Engine, opts: Options, ctx: ServeContext): Promise<void> {
  const tokenizer = ctx.tokenizer;
  const prompt = promptIds(opts, tokenizer);
  const stream = streamTo(Deno.stdout, tokenizer);
  const start = performance.now();
  const [generated] = await generateGreedy(engine, [prompt], {
    maxTokens: opts.max_tokens,
    onToken: ([token]) => stream.push(token),
  });
  const seconds = (performance.now() - start) / 1000;
  stream.end();
  ctx.log(`ids: ${JSON.stringify(generated)}`);
  if (tokenizer) ctx.log(`text: ${JSON.stringify(tokenizer.decode([...prompt, ...generated]))}`);
  const rate = generated.length / seconds;
  ctx.log(`${generated.length} tokens in ${seconds.toFixed(2)} s (${rate.toFixed(1)} tokens/s)`);
}

function promptIds(opts: Options, tokenizer: Tokenizer | undefined): number[] {
  if (opts.ids) return opts.ids;
  if (!tokenizer) {
    throw new PipelineError(
      "serve: the model has no tokenizer, so a prompt cannot be encoded; give ids instead",
    );
  }
  const ids = tokenizer.encode(opts.prompt!);
  if (ids.length === 0) {
    throw new PipelineError(`serve: the prompt ${JSON.stringify(opts.prompt)} encodes to no tokens`);
  }
  return ids;
}

/**
 * Writes tokens as they come: decoded text where there is a tokenizer (the whole continuation is
 * decoded each time and only what is new is written, so characters split across tokens come
 * out whole), else the ids.
 */
function streamTo(out: { writeSync(bytes: Uint8Array): number }, tokenizer: Tokenizer | undefined) {
  const encoder = new TextEncoder();
  const write = (text: string) => {
    const bytes = encoder.encode(text);
    let written = 0;
    while (written < bytes.length) written += out.writeSync(bytes.subarray(written));
  };
  const tokens: number[] = [];
  let shown = "";
  return {
    push(token: number): void {
      tokens.push(token);
      if (!tokenizer) return write(`${token} `);
      const text = tokenizer.decode(tokens);
      // A trailing U+FFFD is half a character; it is written once the rest arrives.
      const stable = text.endsWith("\uFFFD") ? text.slice(0, -1) : text;
      if (stable.startsWith(shown)) {
        write(stable.slice(shown.length));
        shown = stable;
      }
    },
    end(): void {
      if (tokenizer) {
        const text = tokenizer.decode(tokens);
        if (text.startsWith(shown)) write(text.slice(shown.length));
      }
      write("\n");
    },
  };
}
