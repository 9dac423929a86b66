import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert";
import { f32 } from "../../../core/ir/tensor.ts";
import type { Sequences, SequenceStep } from "../../../core/runtime/sequences.ts";
import type { ServeError } from "../../../core/serve/errors.ts";
import { MetricsRegistry } from "../../../core/serve/metrics.ts";
import { argmax } from "../../../core/serve/sampling.ts";
import { Scheduler } from "../../../core/serve/scheduler.ts";
import type { TokenStream } from "../../../core/serve/token_stream.ts";

const VOCAB = 50;

/** A pool whose model always predicts (last id + 1) mod VOCAB; it records every step. */
class CountingPool implements Sequences {
  readonly slots: number;
  readonly maxLength = 64;
  steps: SequenceStep[][] = [];
  released: number[] = [];
  onStep?: (index: number) => void;
  failNext = false;

  constructor(slots: number) {
    this.slots = slots;
  }

  step(batch: SequenceStep[]) {
    this.steps.push(batch.map((entry) => ({ ...entry, ids: [...entry.ids] })));
    this.onStep?.(this.steps.length - 1);
    if (this.failNext) {
      this.failNext = false;
      return Promise.reject(new Error("device lost"));
    }
    const logits = f32([batch.length, VOCAB]);
    batch.forEach((entry, row) => {
      (logits.data as Float32Array)[row * VOCAB + (entry.ids[entry.ids.length - 1] + 1) % VOCAB] = 1;
    });
    return Promise.resolve(logits);
  }

  async greedy(batch: SequenceStep[]): Promise<number[]> {
    await this.step(batch);
    return [];
  }

  release(slot: number): void {
    this.released.push(slot);
  }

  [Symbol.dispose](): void {}
}

function scheduler(pool: CountingPool, options: Partial<Scheduler["options"]> = {}) {
  return new Scheduler(
    pool,
    { maxQueue: 8, maxPrefillTokens: 100, timeoutMs: 10_000, ...options },
    new MetricsRegistry(),
  );
}

async function read(stream: TokenStream): Promise<number[]> {
  const tokens: number[] = [];
  for await (const token of stream) tokens.push(token);
  return tokens;
}

Deno.test("scheduler: a request that arrives later joins the running batch between steps", async () => {
  const pool = new CountingPool(4);
  await using batcher = scheduler(pool);
  let late: Promise<number[]> | undefined;
  pool.onStep = (index) => {
    if (index === 0) late = read(batcher.submit({ prompt: [20, 21], maxTokens: 2, sampler: argmax }));
  };
  const early = await read(batcher.submit({ prompt: [1, 2, 3], maxTokens: 4, sampler: argmax }));
  deepStrictEqual(early, [4, 5, 6, 7]);
  deepStrictEqual(await late, [22, 23]);
  // Step 2 runs the early request's second token and the late one's prompt together.
  deepStrictEqual(pool.steps.map((step) => step.map((entry) => [entry.start, entry.ids])), [
    [[0, [1, 2, 3]]],
    [[3, [4]], [0, [20, 21]]],
    [[4, [5]], [2, [22]]],
    [[5, [6]]],
  ]);
  strictEqual(pool.released.length, 2);
  strictEqual(batcher.maxBatch, 2);
});

Deno.test("scheduler: prompts join within the prefill budget, and a stop id ends a sequence unseen", async () => {
  const pool = new CountingPool(4);
  await using batcher = scheduler(pool, { maxPrefillTokens: 5 });
  const streams = [[1, 2, 3], [10, 11, 12], [30]].map((prompt) =>
    batcher.submit({ prompt, maxTokens: 3, sampler: argmax, stopIds: [13] })
  );
  const [a, b, c] = await Promise.all(streams.map(read));
  deepStrictEqual([a, b, c], [[4, 5, 6], [], [31, 32, 33]]);
  strictEqual(streams[1].finishReason, "stop");
  strictEqual(streams[1].completionTokens, 1);
  strictEqual(streams[0].finishReason, "length");
  // 3 + 3 prompt tokens exceed the budget of 5: the second prompt waits one step, the third joins it.
  deepStrictEqual(pool.steps[0].map((entry) => entry.ids), [[1, 2, 3]]);
  deepStrictEqual(pool.steps[1].map((entry) => entry.ids), [[4], [10, 11, 12], [30]]);
});

Deno.test("scheduler: the queue bound, a failed step and shutdown each end requests with a ServeError", async () => {
  const pool = new CountingPool(1);
  const batcher = scheduler(pool, { maxQueue: 1 });
  throws(
    () => batcher.submit({ prompt: [1], maxTokens: 64, sampler: argmax }),
    /need 65 positions; the model has 64/,
  );
  const first = batcher.submit({ prompt: [1], maxTokens: 3, sampler: argmax });
  throws(
    () => batcher.submit({ prompt: [2], maxTokens: 3, sampler: argmax }),
    (error: ServeError) => error.status === 429,
  );
  pool.failNext = true;
  await rejects(
    read(first),
    (error: ServeError) => error.status === 500 && /device lost/.test(error.message),
  );
  deepStrictEqual(pool.released, [0]);
  deepStrictEqual(await read(batcher.submit({ prompt: [7], maxTokens: 2, sampler: argmax })), [8, 9]);
  let open!: () => void;
  const held = new Promise<void>((resolve) => (open = resolve));
  const original = pool.step.bind(pool);
  pool.step = async (batch) => {
    await held;
    return await original(batch);
  };
  const running = batcher.submit({ prompt: [1], maxTokens: 5, sampler: argmax });
  const closing = batcher.close();
  open();
  await closing;
  await rejects(read(running), (error: ServeError) => error.status === 503);
  throws(() => batcher.submit({ prompt: [1], maxTokens: 1, sampler: argmax }), /shutting down/);
});

Deno.test("scheduler: leaving a stream early cancels it and frees its slot", async () => {
  const pool = new CountingPool(1);
  await using batcher = scheduler(pool);
  const stream = batcher.submit({ prompt: [1], maxTokens: 40, sampler: argmax });
  for await (const token of stream) if (token === 3) break;
  deepStrictEqual(await read(batcher.submit({ prompt: [9], maxTokens: 1, sampler: argmax })), [10]);
  strictEqual(stream.finishReason, "cancelled");
  ok(pool.steps.length < 10, `${pool.steps.length} steps: the cancelled sequence did not run to 40 tokens`);
});
