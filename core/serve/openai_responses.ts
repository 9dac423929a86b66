// The pieces of OpenAI answers shared by completions and chat: a conversation as prompt text, the
// server-sent event stream of a request's choices, waiting for unstreamed choices, and usage.

import type { ChatMessage, Tokenizer } from "../runtime/tokenizer.ts";
import { asServeError, openAIErrorType } from "./errors.ts";
import type { Choice } from "./generation.ts";
import type { GenerationParams } from "./openai_protocol.ts";
import { merge, sseResponse } from "./sse.ts";

/** The prompt text of a conversation: the checkpoint's template, or plain lines where it has none. */
export function renderChat(tokenizer: Tokenizer, messages: ChatMessage[]): string {
  if (tokenizer.renderChat) return tokenizer.renderChat(messages);
  return messages.map((m) => `${m.role}: ${m.content}\n`).join("") + "assistant:";
}

/** A choice's chunk: its opening (no text; undefined where the protocol has none), a delta, or its end. */
export type Chunk = (
  choice: Choice,
  text: string | undefined,
  done: boolean,
) => Record<string, unknown> | undefined;

/** SSE: an opening chunk per choice, one per text delta, one with the finish reason, then usage. */
export function streamChoices(
  choices: Choice[],
  params: GenerationParams,
  head: Record<string, unknown>,
  signal: AbortSignal,
  chunk: Chunk,
): Response {
  const cancel = () => choices.forEach((choice) => choice.cancel());
  signal.addEventListener("abort", cancel, { once: true });
  async function* perChoice(choice: Choice) {
    const opening = chunk(choice, undefined, false);
    if (opening) yield { ...head, choices: [opening] };
    for await (const text of choice.deltas()) yield { ...head, choices: [chunk(choice, text, false)] };
    yield { ...head, choices: [chunk(choice, undefined, true)] };
  }
  async function* events() {
    try {
      yield* merge(choices.map(perChoice));
      if (params.includeUsage) yield { ...head, choices: [], usage: usage(choices, params.n) };
    } catch (thrown) {
      const error = asServeError(thrown);
      yield {
        error: { message: error.message, type: openAIErrorType(error.status), code: error.code ?? null },
      };
    } finally {
      signal.removeEventListener("abort", cancel);
      cancel();
    }
  }
  return sseResponse(events(), cancel);
}

/** Waits for every choice; a client that goes away cancels them. */
export async function completeAll(choices: Choice[], signal: AbortSignal): Promise<void> {
  const cancel = () => choices.forEach((choice) => choice.cancel());
  signal.addEventListener("abort", cancel, { once: true });
  try {
    await Promise.all(choices.map((choice) => choice.complete()));
  } catch (error) {
    cancel();
    throw error;
  } finally {
    signal.removeEventListener("abort", cancel);
  }
}

/** Prompt tokens count once per prompt, not once per sample of it. */
export function usage(choices: Choice[], n: number) {
  const prompt = choices.filter((_, index) => index % n === 0).reduce((sum, c) => sum + c.promptTokens, 0);
  const completion = choices.reduce((sum, c) => sum + c.completionTokens, 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

export function now(): number {
  return Math.floor(Date.now() / 1000);
}
