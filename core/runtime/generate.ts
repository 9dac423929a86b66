// The generation loop: prefill the prompt, then one step per new token, feeding each step's
// present KV caches back as the next step's past. It speaks to any engine through the graph
// convention every exporter follows:
//   inputs  ids: i32[batch, seq], pos: i32[seq], past_k.<layer>, past_v.<layer>: [batch, kv, past, head_dim]
//   outputs logits: [batch, seq, vocab], present_k.<layer>, present_v.<layer>: [batch, kv, past+seq, head_dim]

import { i32, type Tensor, toF32 } from "../ir/tensor.ts";
import { type Engine, EngineError } from "./engine.ts";
import { emptyCaches, openSequences } from "./sequences.ts";

export { emptyCaches };

/** Runs ids[batch][seq] at positions start… and returns the logits and the grown caches. */
export async function step(
  engine: Engine,
  ids: number[][],
  start: number,
  caches: Record<string, Tensor>,
): Promise<{ logits: Tensor; caches: Record<string, Tensor> }> {
  const seq = ids[0].length;
  if (ids.some((row) => row.length !== seq)) {
    throw new EngineError("every sequence in a batch needs the same length");
  }
  const outputs = await engine.run({
    ids: i32([ids.length, seq], ids.flat()),
    pos: i32([seq], Array.from({ length: seq }, (_, i) => start + i)),
    ...caches,
  });
  const next: Record<string, Tensor> = {};
  for (const [name, value] of Object.entries(outputs)) {
    if (name.startsWith("present_")) next[`past_${name.slice("present_".length)}`] = value;
  }
  return { logits: outputs.logits, caches: next };
}

/** The logits of every position of one sequence, as rows of numbers. */
export async function logitsOf(engine: Engine, ids: number[]): Promise<number[][]> {
  const { logits } = await step(engine, [ids], 0, emptyCaches(engine, 1));
  const vocab = logits.shape[2];
  const values = toF32(logits);
  return ids.map((_, i) => Array.from(values.subarray(i * vocab, (i + 1) * vocab)));
}

/** The index of the largest logit in each batch row at the last position. */
export function lastArgmax(logits: Tensor): number[] {
  const [batch, seq, vocab] = logits.shape;
  const values = toF32(logits);
  const out: number[] = [];
  for (let b = 0; b < batch; b++) {
    const base = (b * seq + seq - 1) * vocab;
    let best = 0;
    for (let v = 1; v < vocab; v++) if (values[base + v] > values[base + best]) best = v;
    out.push(best);
  }
  return out;
}

export interface GreedyOptions {
  maxTokens: number;
  /** Called with each step's new token per prompt, for streaming output. */
  onToken?: (tokens: number[]) => void;
}

/** Greedy decoding of a batch of prompts (of any lengths); returns the new ids of each. */
export async function generateGreedy(
  engine: Engine,
  prompts: number[][],
  options: GreedyOptions,
): Promise<number[][]> {
  if (prompts.length === 0 || prompts.some((prompt) => prompt.length === 0)) {
    throw new EngineError("generation needs non-empty prompts");
  }
  const longest = Math.max(...prompts.map((prompt) => prompt.length));
  using pool = openSequences(engine, { slots: prompts.length, maxLength: longest + options.maxTokens });
  let tokens = await pool.greedy(prompts.map((ids, slot) => ({ slot, ids, start: 0 })));
  const lengths = prompts.map((prompt) => prompt.length);
  const generated: number[][] = prompts.map(() => []);
  const emit = (step: number[]) => {
    step.forEach((token, row) => generated[row].push(token));
    options.onToken?.(step);
  };
  emit(tokens);
  // the token made last goes in at the position after the ones before it; where the pool chains
  // greedy steps on its device, up to GENERATE_RUN of them go in one call
  for (let done = 1; done < options.maxTokens;) {
    const entries = tokens.map((token, slot) => ({ slot, ids: [token], start: lengths[slot] + done - 1 }));
    const run = Math.min(GENERATE_RUN, options.maxTokens - done);
    const steps = pool.decodeGreedy && run > 1
      ? await pool.decodeGreedy(entries, run)
      : [await pool.greedy(entries)];
    steps.forEach(emit);
    done += steps.length;
    tokens = steps.at(-1)!;
  }
  return generated;
}

/** Greedy steps generateGreedy chains in one call where the pool can (its tokens stream a run at a time). */
const GENERATE_RUN = 16;
