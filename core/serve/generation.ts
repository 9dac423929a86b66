// One request's generations ("choices"): each prompt, n times, submitted to the scheduler with its
// own sampler (seed + choice index, so n samples differ yet repeat with the seed), and read back as
// text deltas that end at max_tokens, a stop token or a stop string.

import type { Tokenizer } from "../runtime/tokenizer.ts";
import { ServeError } from "./errors.ts";
import { makeSampler } from "./sampling.ts";
import type { Scheduler } from "./scheduler.ts";
import { TextStream } from "./text_stream.ts";
import type { TokenStream } from "./token_stream.ts";

export interface ChoiceParams {
  /** Undefined: `defaultMaxTokens`, cut to what the context leaves. */
  maxTokens?: number;
  temperature: number;
  /** 0 keeps every token. */
  topK: number;
  topP: number;
  n: number;
  seed?: number;
  stop: string[];
}

export class Choice {
  #tokens: TokenStream;
  #text: TextStream;

  constructor(readonly index: number, tokens: TokenStream, tokenizer: Tokenizer, stop: string[]) {
    this.#tokens = tokens;
    this.#text = new TextStream(tokenizer, stop);
  }

  get promptTokens(): number {
    return this.#tokens.promptTokens;
  }

  get completionTokens(): number {
    return this.#tokens.completionTokens;
  }

  /** All text so far; all of it once `deltas` is done. */
  get text(): string {
    return this.#text.text;
  }

  /** "stop" for a stop token or string, "length" for max_tokens; defined once `deltas` is done. */
  get finishReason(): "stop" | "length" {
    return this.#text.stopped || this.#tokens.finishReason === "stop" ? "stop" : "length";
  }

  /** Ends the generation now (the client went away); its slot is freed at the next step. */
  cancel(): void {
    this.#tokens.cancel();
  }

  /** The text as it becomes final; throws the ServeError of a timeout or a failed step. */
  async *deltas(): AsyncGenerator<string> {
    for await (const token of this.#tokens) {
      const delta = this.#text.push(token);
      if (delta) yield delta;
      if (this.#text.stopped) return;
    }
    const rest = this.#text.end();
    if (rest) yield rest;
  }

  /** Reads the whole generation; returns its text. */
  async complete(): Promise<string> {
    for await (const _ of this.deltas());
    return this.text;
  }
}

export interface GenerationLimits {
  /** The model's positions: prompt and generated tokens together. */
  maxLength: number;
  /** max_tokens where a request gives none. */
  defaultMaxTokens: number;
}

/** Submits n choices per prompt, index by index; if one is refused, those already queued are cancelled. */
export function startChoices(
  scheduler: Scheduler,
  tokenizer: Tokenizer,
  prompts: number[][],
  params: ChoiceParams,
  limits: GenerationLimits,
): Choice[] {
  const choices: Choice[] = [];
  try {
    for (const prompt of prompts) {
      if (prompt.length >= limits.maxLength) {
        throw new ServeError(
          400,
          `the prompt has ${prompt.length} tokens; the model has ${limits.maxLength} positions, ` +
            "so at most " + (limits.maxLength - 1) + " prompt tokens leave room for a reply",
          "context_length_exceeded",
          "prompt",
        );
      }
      const maxTokens = params.maxTokens ??
        Math.min(limits.defaultMaxTokens, limits.maxLength - prompt.length);
      for (let sample = 0; sample < params.n; sample++) {
        const index = choices.length;
        const sampler = makeSampler({
          temperature: params.temperature,
          topK: params.topK,
          topP: params.topP,
          seed: params.seed === undefined ? undefined : params.seed + index,
        });
        const tokens = scheduler.submit({ prompt, maxTokens, sampler, stopIds: tokenizer.stopIds });
        choices.push(new Choice(index, tokens, tokenizer, params.stop));
      }
    }
  } catch (error) {
    for (const choice of choices) choice.cancel();
    throw error;
  }
  return choices;
}
