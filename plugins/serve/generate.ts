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
  prompts: z.array(z.string().min(1)).min(1).optional().describe(
    "several texts to continue as one batch; data-parallel replicas each take an equal share",
  ),
  ids: z.array(z.number().int().nonnegative()).min(1).optional()
    .describe("token ids to continue, where there is no tokenizer"),
  max_tokens: z.number().int().positive().default(16).describe("how many tokens to generate"),
}).refine((value) => [value.prompt, value.prompts, value.ids].filter((v) => v !== undefined).length <= 1, {
  message: "give one of prompt, prompts or ids",
}).refine((value) => value.prompt !== undefined || value.prompts !== undefined || value.ids !== undefined, {
  message: "give a prompt, prompts or ids to start from",
});
export type Options = z.infer<typeof options>;

export default definePlugin({
  kind: "serve",
  name: "generate",
  description: "greedy generation from prompts, printed as it comes",
  options,
  serve: serveGenerate,
});

async function serveGenerate(engine: Engine, opts: Options, ctx: ServeContext): Promise<void> {
  const tokenizer = ctx.tokenizer;
  const all = promptIds(opts, tokenizer);
  const replicas = ctx.replicas ?? { rank: 0, size: 1, gather: <T>(value: T) => Promise.resolve([value]) };
  const mine = shareOf(all.length, replicas.rank, replicas.size);
  const prompts = all.slice(mine.start, mine.end);
  // One prompt on one replica streams as it comes; batches print when done.
  const stream = all.length === 1 ? streamTo(Deno.stdout, tokenizer) : undefined;
  const start = performance.now();
  const generated = prompts.length === 0 ? [] : await generateGreedy(engine, prompts, {
    maxTokens: opts.max_tokens,
    onToken: stream ? ([token]) => stream.push(token) : undefined,
  });
  const seconds = (performance.now() - start) / 1000;
  stream?.end();
  if (replicas.size > 1) {
    ctx.log(`replica ${replicas.rank}: prompts ${mine.start}..${mine.end - 1} in ${seconds.toFixed(2)} s`);
  }
  const gathered = await replicas.gather(generated);
  if (!gathered) return;
  const results = gathered.flat();
  results.forEach((ids, index) => {
    const label = results.length > 1 ? `[${index}] ` : "";
    ctx.log(`${label}ids: ${JSON.stringify(ids)}`);
    if (tokenizer) ctx.log(`${label}text: ${JSON.stringify(tokenizer.decode([...all[index], ...ids]))}`);
  });
  const count = results.reduce((n, ids) => n + ids.length, 0);
  ctx.log(`${count} tokens in ${seconds.toFixed(2)} s (${(count / seconds).toFixed(1)} tokens/s)`);
}

/** Replica `rank`'s contiguous share of `count` items; earlier replicas take one more when it does not divide. */
export function shareOf(count: number, rank: number, size: number): { start: number; end: number } {
  const base = Math.floor(count / size);
  const extra = count % size;
  const start = rank * base + Math.min(rank, extra);
  return { start, end: start + base + (rank < extra ? 1 : 0) };
}

function promptIds(opts: Options, tokenizer: Tokenizer | undefined): number[][] {
  if (opts.ids) return [opts.ids];
  const texts = opts.prompts ?? [opts.prompt!];
  if (!tokenizer) {
    throw new PipelineError(
      "serve: the model has no tokenizer, so a prompt cannot be encoded; give ids instead",
    );
  }
  return texts.map((text) => {
    const ids = tokenizer.encode(text);
    if (ids.length === 0) {
      throw new PipelineError(`serve: the prompt ${JSON.stringify(text)} encodes to no tokens`);
    }
    return ids;
  });
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
