import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert";
import { f32 } from "../../../core/ir/tensor.ts";
import {
  argmaxRows,
  type SampleChoice,
  type Sequences,
  type SequenceStep,
} from "../../../core/runtime/sequences.ts";
import type { ServeError } from "../../../core/serve/errors.ts";
import { MetricsRegistry } from "../../../core/serve/metrics.ts";
import {
  makeSampler,
  sampleLogits,
  type Sampler,
  type SamplingOptions,
} from "../../../core/serve/sampling.ts";
import { DECODE_RUN, Scheduler } from "../../../core/serve/scheduler.ts";
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

/** The counting model on a pool that also picks tokens itself, by `pick` (the host's rule by default). */
class SamplingPool extends CountingPool {
  choices: SampleChoice[][] = [];
  greedySteps = 0;

  constructor(
    slots: number,
    readonly pick = (row: Float32Array, choice: SampleChoice) => sampleLogits(row, choice, choice.uniform),
  ) {
    super(slots);
  }

  override async greedy(batch: SequenceStep[]): Promise<number[]> {
    this.greedySteps++;
    return argmaxRows(await this.step(batch));
  }

  async sample(batch: SequenceStep[], choices: SampleChoice[]): Promise<number[]> {
    this.choices.push(choices);
    const logits = (await this.step(batch)).data as Float32Array;
    return choices.map((choice, row) => this.pick(logits.subarray(row * VOCAB, (row + 1) * VOCAB), choice));
  }
}

/** The sampling pool that also chains greedy steps, recording each chained run's length. */
class ChainingPool extends SamplingPool {
  runs: number[] = [];

  async decodeGreedy(batch: SequenceStep[], steps: number): Promise<number[][]> {
    this.runs.push(steps);
    const out: number[][] = [];
    let entries = batch;
    for (let n = 0; n < steps; n++) {
      const ids = argmaxRows(await this.step(entries));
      out.push(ids);
      entries = entries.map((entry, row) => ({ slot: entry.slot, ids: [ids[row]], start: entry.start + 1 }));
    }
    return out;
  }
}

const greedy = makeSampler({ temperature: 0, topP: 1 });

/** A seeded sampler that counts its draws. */
function counted(options: SamplingOptions): Sampler & { draws: number } {
  const sampler = makeSampler(options);
  const out = {
    params: sampler.params,
    draws: 0,
    draw() {
      out.draws++;
      return sampler.draw();
    },
  };
  return out;
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
    if (index === 0) late = read(batcher.submit({ prompt: [20, 21], maxTokens: 2, sampler: greedy }));
  };
  const early = await read(batcher.submit({ prompt: [1, 2, 3], maxTokens: 4, sampler: greedy }));
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
    batcher.submit({ prompt, maxTokens: 3, sampler: greedy, stopIds: [13] })
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
    () => batcher.submit({ prompt: [1], maxTokens: 64, sampler: greedy }),
    /need 65 positions; the model has 64/,
  );
  const first = batcher.submit({ prompt: [1], maxTokens: 3, sampler: greedy });
  throws(
    () => batcher.submit({ prompt: [2], maxTokens: 3, sampler: greedy }),
    (error: ServeError) => error.status === 429,
  );
  pool.failNext = true;
  await rejects(
    read(first),
    (error: ServeError) => error.status === 500 && /device lost/.test(error.message),
  );
  deepStrictEqual(pool.released, [0]);
  deepStrictEqual(await read(batcher.submit({ prompt: [7], maxTokens: 2, sampler: greedy })), [8, 9]);
  let open!: () => void;
  const held = new Promise<void>((resolve) => (open = resolve));
  const original = pool.step.bind(pool);
  pool.step = async (batch) => {
    await held;
    return await original(batch);
  };
  const running = batcher.submit({ prompt: [1], maxTokens: 5, sampler: greedy });
  const closing = batcher.close();
  open();
  await closing;
  await rejects(read(running), (error: ServeError) => error.status === 503);
  throws(() => batcher.submit({ prompt: [1], maxTokens: 1, sampler: greedy }), /shutting down/);
});

Deno.test("scheduler: leaving a stream early cancels it and frees its slot", async () => {
  const pool = new CountingPool(1);
  await using batcher = scheduler(pool);
  const stream = batcher.submit({ prompt: [1], maxTokens: 40, sampler: greedy });
  for await (const token of stream) if (token === 3) break;
  deepStrictEqual(await read(batcher.submit({ prompt: [9], maxTokens: 1, sampler: greedy })), [10]);
  strictEqual(stream.finishReason, "cancelled");
  ok(pool.steps.length < 10, `${pool.steps.length} steps: the cancelled sequence did not run to 40 tokens`);
});

Deno.test("scheduler: a pool that samples gets each row's choice and its ids are the tokens", async () => {
  const pool = new SamplingPool(4, (_, choice) => (choice.topK === 1 ? 40 : 7));
  await using batcher = scheduler(pool);
  const options = { temperature: 0.8, topK: 5, topP: 0.9, seed: 11 };
  const sampled = counted(options);
  const [a, b] = await Promise.all([
    read(batcher.submit({ prompt: [1, 2], maxTokens: 3, sampler: greedy })),
    read(batcher.submit({ prompt: [5], maxTokens: 3, sampler: sampled })),
  ]);
  deepStrictEqual([a, b], [[40, 40, 40], [7, 7, 7]]);
  strictEqual(sampled.draws, 3, "one draw a sampled token");
  const expected = makeSampler(options);
  const top = { temperature: 1, topK: 1, topP: 1, uniform: 0 };
  deepStrictEqual(
    pool.choices,
    [0, 1, 2].map(() => [top, { temperature: 0.8, topK: 5, topP: 0.9, uniform: expected.draw() }]),
  );
  strictEqual(pool.greedySteps, 0);
  // A batch of greedy rows only takes the device's argmax.
  deepStrictEqual(await read(batcher.submit({ prompt: [9], maxTokens: 2, sampler: greedy })), [10, 11]);
  strictEqual(pool.greedySteps, 2);
  strictEqual(pool.choices.length, 3);
});

Deno.test("scheduler: seeded requests give the same tokens whether the engine or the host samples", async () => {
  const requests = [
    { prompt: [1, 2, 3], options: { temperature: 0.4, topP: 1, seed: 3 } },
    { prompt: [30], options: { temperature: 0.3, topK: 4, topP: 0.8, seed: 99 } },
    { prompt: [12, 13], options: { temperature: 0, topP: 1 } },
    { prompt: [7], options: { temperature: 1, topK: 0, topP: 0.6, seed: 2 ** 40 + 5 } },
  ];
  const run = async (pool: CountingPool) => {
    await using batcher = scheduler(pool);
    const samplers = requests.map((request) => counted(request.options));
    const tokens = await Promise.all(
      requests.map((request, i) =>
        read(batcher.submit({ prompt: request.prompt, maxTokens: 12, sampler: samplers[i] }))
      ),
    );
    return { tokens, draws: samplers.map((sampler) => sampler.draws) };
  };
  const device = new SamplingPool(4);
  const onDevice = await run(device);
  const onHost = await run(new CountingPool(4));
  deepStrictEqual(onDevice, onHost);
  deepStrictEqual(onHost.draws, [12, 12, 0, 12]);
  strictEqual(device.choices.length, 12, "every step sampled on the device");
  deepStrictEqual(
    onHost.tokens[2],
    [14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25],
    "the greedy row is argmax",
  );
  ok(
    onHost.tokens.some((tokens, i) =>
      tokens.some((token, n) => token !== (requests[i].prompt.at(-1)! + n + 1) % VOCAB)
    ),
    "the sampled rows leave the argmax somewhere",
  );
});

Deno.test("scheduler: greedy decode runs chained on a pool that chains, with the tokens of step-by-step", async () => {
  const requests = [
    { prompt: [1, 2], maxTokens: 20 },
    { prompt: [30], maxTokens: 13, stopIds: [40] }, // stops at its 10th token, within a run
    { prompt: [5], maxTokens: 3 },
  ];
  const serve = async (pool: SamplingPool) => {
    await using batcher = scheduler(pool);
    const streams = requests.map((request) => batcher.submit({ ...request, sampler: greedy }));
    const tokens = await Promise.all(streams.map(read));
    return { tokens, reasons: streams.map((stream) => stream.finishReason) };
  };
  const stepwise = await serve(new SamplingPool(4));
  const pool = new ChainingPool(4);
  deepStrictEqual(await serve(pool), stepwise);
  deepStrictEqual(stepwise.reasons, ["length", "stop", "length"]);
  // after the prompts' step: 2 (the third request's tokens left), 8, 8, then the last token alone
  deepStrictEqual(pool.runs, [2, DECODE_RUN, DECODE_RUN]);
  const rows = pool.steps.slice(1).map((step) => step.length);
  deepStrictEqual(rows, [3, 3, ...Array(8).fill(2), ...Array(8).fill(1), 1]);
});

Deno.test("scheduler: a sampled request or one waiting for a slot keeps decode step by step", async () => {
  const pool = new ChainingPool(1);
  await using batcher = scheduler(pool);
  const first = read(batcher.submit({ prompt: [1], maxTokens: 4, sampler: greedy }));
  const second = read(batcher.submit({ prompt: [9], maxTokens: 4, sampler: greedy })); // waits for the slot
  deepStrictEqual(await first, [2, 3, 4, 5]);
  deepStrictEqual(pool.runs, [], "the first ran step by step while the second waited");
  deepStrictEqual(await second, [10, 11, 12, 13]);
  deepStrictEqual(pool.runs, [3], "the second, alone, chained its last three steps");
  const sampled = counted({ temperature: 0.8, topK: 5, topP: 0.9, seed: 3 });
  await read(batcher.submit({ prompt: [7], maxTokens: 4, sampler: sampled }));
  deepStrictEqual(pool.runs, [3], "a sampled request never chains");
});
