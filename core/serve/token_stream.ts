// The tokens of one generation as they come: the scheduler pushes, the route reads them with
// `for await`. Leaving the loop early (a stop string found, a client gone) cancels the generation,
// which frees its sequence slot at the next step.

import type { ServeError } from "./errors.ts";

/** Why a generation ended: max_tokens reached, a stop token or string, or the reader went away. */
export type FinishReason = "length" | "stop" | "cancelled";

export class TokenStream implements AsyncIterable<number> {
  #buffer: number[] = [];
  #finished?: FinishReason;
  #error?: ServeError;
  #wake?: () => void;
  #onCancel: () => void;
  /** Every token the model made, those read and those not yet read, stop tokens included. */
  completionTokens = 0;

  constructor(readonly promptTokens: number, onCancel: () => void) {
    this.#onCancel = onCancel;
  }

  /** Why it ended, once it has; undefined while it runs. */
  get finishReason(): FinishReason | undefined {
    return this.#finished;
  }

  get ended(): boolean {
    return this.#finished !== undefined || this.#error !== undefined;
  }

  /** Cancels the generation; tokens already pushed stay readable. */
  cancel(): void {
    if (this.ended) return;
    this.#onCancel();
  }

  push(token: number): void {
    if (this.ended) return;
    this.#buffer.push(token);
    this.#notify();
  }

  finish(reason: FinishReason): void {
    if (this.ended) return;
    this.#finished = reason;
    this.#notify();
  }

  fail(error: ServeError): void {
    if (this.ended) return;
    this.#error = error;
    this.#notify();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<number> {
    try {
      while (true) {
        if (this.#buffer.length > 0) {
          yield this.#buffer.shift()!;
          continue;
        }
        if (this.#error) throw this.#error;
        if (this.#finished) return;
        await new Promise<void>((resolve) => (this.#wake = resolve));
      }
    } finally {
      // Reached with the generation still running only when the reader left the loop early.
      this.cancel();
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
