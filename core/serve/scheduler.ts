// Continuous batching. Requests wait in a bounded queue; between engine steps, waiting requests take
// free sequence slots and leave when done. Each step runs the prompts of the requests that just
// joined together with one new token of every running request, so a long generation never holds
// the others back and a short one leaves at once. Timeouts, cancellations (a client gone) and
// engine failures end a request between steps and free its slot. Tokens are drawn where the pool
// can (on the device), else from the step's logits here, by one rule and the same draws. While
// every running request decodes greedily and none waits for a slot, a pool that chains greedy
// steps on its device (decodeGreedy) runs up to DECODE_RUN of them in one call; a request that
// stops within them leaves after the run, its later tokens unsent.

import type { Tensor } from "../ir/tensor.ts";
import type { SampleChoice, Sequences, SequenceStep } from "../runtime/sequences.ts";
import { ServeError } from "./errors.ts";
import type { MetricsRegistry } from "./metrics.ts";
import { argmax, sampleLogits, type Sampler } from "./sampling.ts";
import { type FinishReason, TokenStream } from "./token_stream.ts";

export interface SchedulerOptions {
  /** How many requests wait for a slot before more are refused with 429. */
  maxQueue: number;
  /** The most prompt tokens that join in one step (a longer prompt still joins, alone). */
  maxPrefillTokens: number;
  /** Milliseconds from arrival to the last token; past it a request fails with 504. */
  timeoutMs: number;
  /** Called after a failed engine step has failed its requests; the server may stop here. */
  onEngineError?: (error: ServeError) => void;
}

export interface GenerationRequest {
  prompt: number[];
  maxTokens: number;
  sampler: Sampler;
  /** Ids that end the generation (not passed on as text, but counted as completion tokens). */
  stopIds?: readonly number[];
}

interface Sequence {
  request: GenerationRequest;
  stream: TokenStream;
  deadline: number;
  slot?: number;
  /** The ids of the next step: the prompt, then each new token. */
  next: number[];
  /** How many tokens the slot holds before `next`. */
  start: number;
  cancelled: boolean;
}

/** The most greedy steps one chained call runs (each request's remaining tokens bound it too). */
export const DECODE_RUN = 8;

const STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256];

export class Scheduler implements AsyncDisposable {
  #waiting: Sequence[] = [];
  #running: Sequence[] = [];
  #freeSlots: number[];
  #loop?: Promise<void>;
  #closed = false;
  readonly #metrics;

  constructor(readonly pool: Sequences, readonly options: SchedulerOptions, registry: MetricsRegistry) {
    this.#freeSlots = Array.from({ length: pool.slots }, (_, slot) => pool.slots - 1 - slot);
    this.#metrics = {
      queue: registry.gauge("rankflow_queue_depth", "requests waiting for a sequence slot"),
      running: registry.gauge("rankflow_running_sequences", "sequences in the engine's batch"),
      promptTokens: registry.counter("rankflow_prompt_tokens_total", "prompt tokens prefilled"),
      generatedTokens: registry.counter("rankflow_generated_tokens_total", "tokens generated"),
      finished: registry.counter("rankflow_sequences_finished_total", "generations ended, by reason"),
      stepSeconds: registry.histogram("rankflow_step_seconds", "wall time of one engine step", STEP_BUCKETS),
      stepBatch: registry.histogram(
        "rankflow_step_batch_size",
        "sequences run together in one engine step",
        BATCH_BUCKETS,
      ),
    };
  }

  /** The largest batch one step has run so far. */
  get maxBatch(): number {
    return Math.max(0, this.#metrics.stepBatch.max);
  }

  /** Queues a generation; throws a ServeError at once when the server is full or closing. */
  submit(request: GenerationRequest): TokenStream {
    if (this.#closed) throw new ServeError(503, "the server is shutting down", "shutting_down");
    const needed = request.prompt.length + request.maxTokens;
    if (request.prompt.length === 0) throw new ServeError(400, "the prompt has no tokens", "empty_prompt");
    if (needed > this.pool.maxLength) {
      throw new ServeError(
        400,
        `the prompt's ${request.prompt.length} tokens and max_tokens ${request.maxTokens} need ${needed} ` +
          `positions; the model has ${this.pool.maxLength}`,
        "context_length_exceeded",
      );
    }
    if (this.#waiting.length >= this.options.maxQueue) {
      throw new ServeError(
        429,
        `the server is busy: ${this.#waiting.length} requests are already waiting; try again later`,
        "queue_full",
      );
    }
    const sequence: Sequence = {
      request,
      stream: new TokenStream(request.prompt.length, () => {
        sequence.cancelled = true;
        this.#wake();
      }),
      deadline: performance.now() + this.options.timeoutMs,
      next: request.prompt,
      start: 0,
      cancelled: false,
    };
    this.#waiting.push(sequence);
    this.#metrics.queue.set(this.#waiting.length);
    this.#wake();
    return sequence.stream;
  }

  /** Ends every request (503 to those still running) and waits for the step in flight. */
  async close(): Promise<void> {
    this.#closed = true;
    const error = new ServeError(503, "the server is shutting down", "shutting_down");
    for (const sequence of [...this.#waiting, ...this.#running]) sequence.stream.fail(error);
    this.#wake();
    await this.#loop;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #wake(): void {
    this.#loop ??= this.#run().finally(() => (this.#loop = undefined));
  }

  async #run(): Promise<void> {
    while (this.#waiting.length > 0 || this.#running.length > 0) {
      // A macrotask between steps lets requests arrive and responses go out while the engine,
      // which may compute on this thread, is not running.
      await new Promise((resolve) => setTimeout(resolve, 0));
      this.#dropEnded();
      this.#admit();
      if (this.#running.length === 0) continue;
      await this.#step();
    }
  }

  /** Removes what was cancelled, timed out or failed, freeing its slot. */
  #dropEnded(): void {
    const now = performance.now();
    const keep = (sequence: Sequence) => {
      if (!sequence.stream.ended && now > sequence.deadline) {
        const seconds = (this.options.timeoutMs / 1000).toFixed(1);
        sequence.stream.fail(new ServeError(504, `the request timed out after ${seconds} s`, "timeout"));
      }
      if (sequence.cancelled && !sequence.stream.ended) sequence.stream.finish("cancelled");
      if (!sequence.stream.ended) return true;
      this.#leave(sequence, sequence.stream.finishReason ?? "failed");
      return false;
    };
    this.#waiting = this.#waiting.filter(keep);
    this.#running = this.#running.filter(keep);
    this.#metrics.queue.set(this.#waiting.length);
    this.#metrics.running.set(this.#running.length);
  }

  #admit(): void {
    let tokens = 0;
    while (this.#waiting.length > 0 && this.#freeSlots.length > 0) {
      const length = this.#waiting[0].next.length;
      if (tokens > 0 && tokens + length > this.options.maxPrefillTokens) break;
      const sequence = this.#waiting.shift()!;
      sequence.slot = this.#freeSlots.pop()!;
      this.#running.push(sequence);
      tokens += length;
    }
    this.#metrics.queue.set(this.#waiting.length);
    this.#metrics.running.set(this.#running.length);
  }

  async #step(): Promise<void> {
    const batch = [...this.#running];
    const entries: SequenceStep[] = batch.map((s) => ({ slot: s.slot!, ids: s.next, start: s.start }));
    const samplers = batch.map((sequence) => sequence.request.sampler);
    const began = performance.now();
    let results: (number[] | Tensor)[];
    try {
      const run = this.#decodeRun(batch);
      results = run > 1
        ? await this.pool.decodeGreedy!(entries, run)
        : [await this.#stepPool(entries, samplers)];
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const failure = new ServeError(500, `the engine step failed: ${message}`, "engine_error", undefined, {
        cause: error,
      });
      for (const sequence of batch) sequence.stream.fail(failure);
      this.#dropEnded();
      this.options.onEngineError?.(failure);
      return;
    }
    const seconds = (performance.now() - began) / 1000 / results.length;
    for (const result of results) {
      this.#metrics.stepSeconds.observe(seconds);
      this.#metrics.stepBatch.observe(batch.length);
      const tokens = Array.isArray(result) ? result : sampleRows(result, samplers);
      batch.forEach((sequence, row) => {
        if (sequence.stream.ended) return; // stopped earlier in a chained run
        if (sequence.start === 0) this.#metrics.promptTokens.inc({}, sequence.next.length);
        const token = tokens[row];
        this.#metrics.generatedTokens.inc();
        sequence.stream.completionTokens++;
        sequence.start += sequence.next.length;
        sequence.next = [token];
        if (sequence.request.stopIds?.includes(token)) return sequence.stream.finish("stop");
        sequence.stream.push(token);
        if (sequence.stream.completionTokens >= sequence.request.maxTokens) sequence.stream.finish("length");
      });
    }
    this.#dropEnded();
  }

  /**
   * How many greedy steps to chain now: 1 unless the pool chains them, every running request
   * decodes greedily (one id, past its prompt) and no request waits for a slot; then at most
   * DECODE_RUN and no more than any request has tokens left.
   */
  #decodeRun(batch: Sequence[]): number {
    if (!this.pool.decodeGreedy || this.#waiting.length > 0) return 1;
    let run = DECODE_RUN;
    for (const sequence of batch) {
      if (sequence.start === 0 || sequence.next.length !== 1 || !isGreedy(sequence.request.sampler)) return 1;
      run = Math.min(run, sequence.request.maxTokens - sequence.stream.completionTokens);
    }
    return Math.max(1, run);
  }

  /**
   * Runs one step: the next ids where the pool samples on its device, else the logits to sample on
   * the host. Either way each sampled (not greedy) row takes one draw of its request's generator.
   */
  #stepPool(entries: SequenceStep[], samplers: Sampler[]): Promise<number[] | Tensor> {
    if (!this.pool.sample) return this.pool.step(entries);
    if (samplers.every(isGreedy)) return this.pool.greedy(entries);
    const choices = samplers.map((sampler): SampleChoice => {
      if (isGreedy(sampler)) return TOP_ONE;
      const { temperature, topK, topP } = sampler.params;
      return { temperature, topK, topP, uniform: sampler.draw() };
    });
    return this.pool.sample(entries, choices);
  }

  #leave(sequence: Sequence, reason: FinishReason | "failed"): void {
    this.#metrics.finished.inc({ reason });
    if (sequence.slot === undefined) return;
    this.pool.release(sequence.slot);
    this.#freeSlots.push(sequence.slot);
    sequence.slot = undefined;
  }
}

/**
 * A greedy row among sampled ones: a choice must have a temperature above 0, and the top 1 of the
 * ranking is the argmax (the first of equals) whatever the draw.
 */
const TOP_ONE: SampleChoice = { temperature: 1, topK: 1, topP: 1, uniform: 0 };

function isGreedy(sampler: Sampler): boolean {
  return sampler.params.temperature === 0;
}

/** Each row's next token from f32 [rows, vocab] logits, by its request's sampler. */
function sampleRows(logits: Tensor, samplers: Sampler[]): number[] {
  const values = logits.data as Float32Array;
  const vocab = logits.shape[1];
  return samplers.map((sampler, row) => {
    const rowLogits = values.subarray(row * vocab, (row + 1) * vocab);
    return isGreedy(sampler) ? argmax(rowLogits) : sampleLogits(rowLogits, sampler.params, sampler.draw());
  });
}
