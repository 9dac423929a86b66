// Batching for non-generative graphs. Where every input and output starts with the same symbolic
// size (say "batch"), requests waiting at the same time whose other sizes agree are stacked along
// it into one engine run, up to max_batch rows, and the outputs are cut back apart. Other graphs run
// one request per engine run. The queue is bounded (429 past it) and each request has a deadline.

import { concatTensors, sliceTensor } from "../ir/ops/shape.ts";
import type { Tensor } from "../ir/tensor.ts";
import type { Engine } from "../runtime/engine.ts";
import { ServeError } from "./errors.ts";
import type { MetricsRegistry } from "./metrics.ts";

export interface InferBatcherOptions {
  /** The most rows (along the batch size) in one engine run. */
  maxBatch: number;
  maxQueue: number;
  timeoutMs: number;
  /** Called after a failed engine run has failed its requests; the server may stop here. */
  onEngineError?: (error: ServeError) => void;
}

interface Pending {
  inputs: Record<string, Tensor>;
  rows: number;
  key: string;
  deadline: number;
  resolve(outputs: Record<string, Tensor>): void;
  reject(error: ServeError): void;
}

const STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128];

/** The symbolic size that leads every input and output and appears nowhere else, if there is one. */
export function batchDimension(engine: Engine): string | undefined {
  const types = [...engine.inputs, ...engine.outputs].map((entry) => entry.type.shape);
  const first = types[0]?.[0];
  if (typeof first !== "string" || !/^\w+$/.test(first)) return undefined;
  const leads = types.every((shape) => shape[0] === first);
  const elsewhere = types.some((shape) =>
    shape.slice(1).some((dim) => typeof dim === "string" && dim.includes(first))
  );
  return leads && !elsewhere ? first : undefined;
}

export class InferBatcher implements AsyncDisposable {
  readonly batchDim?: string;
  #waiting: Pending[] = [];
  #loop?: Promise<void>;
  #closed = false;
  readonly #metrics;

  constructor(readonly engine: Engine, readonly options: InferBatcherOptions, registry: MetricsRegistry) {
    this.batchDim = batchDimension(engine);
    this.#metrics = {
      queue: registry.gauge("rankflow_queue_depth", "requests waiting for the engine"),
      stepSeconds: registry.histogram("rankflow_step_seconds", "wall time of one engine run", STEP_BUCKETS),
      stepBatch: registry.histogram(
        "rankflow_step_batch_size",
        "requests run together in one engine run",
        BATCH_BUCKETS,
      ),
    };
  }

  /** The largest number of requests one engine run has taken so far. */
  get maxBatch(): number {
    return Math.max(0, this.#metrics.stepBatch.max);
  }

  infer(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    if (this.#closed) return Promise.reject(new ServeError(503, "the server is shutting down"));
    if (this.#waiting.length >= this.options.maxQueue) {
      return Promise.reject(
        new ServeError(
          429,
          `the server is busy: ${this.#waiting.length} requests are already waiting; try again later`,
        ),
      );
    }
    const batched = this.batchDim !== undefined;
    const rows = batched ? Object.values(inputs)[0].shape[0] : 1;
    const key = batched
      ? JSON.stringify(this.engine.inputs.map((input) => inputs[input.name].shape.slice(1)))
      : crypto.randomUUID();
    return new Promise((resolve, reject) => {
      this.#waiting.push({
        inputs,
        rows,
        key,
        deadline: performance.now() + this.options.timeoutMs,
        resolve,
        reject,
      });
      this.#metrics.queue.set(this.#waiting.length);
      this.#loop ??= this.#run().finally(() => (this.#loop = undefined));
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const pending of this.#waiting.splice(0)) {
      pending.reject(new ServeError(503, "the server is shutting down"));
    }
    this.#metrics.queue.set(0);
    await this.#loop;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #run(): Promise<void> {
    while (this.#waiting.length > 0) {
      // Lets requests arrive (and responses leave) between engine runs.
      await new Promise((resolve) => setTimeout(resolve, 0));
      const now = performance.now();
      for (const late of this.#waiting.filter((pending) => now > pending.deadline)) {
        late.reject(
          new ServeError(504, `the request timed out after ${(this.options.timeoutMs / 1000).toFixed(1)} s`),
        );
      }
      this.#waiting = this.#waiting.filter((pending) => now <= pending.deadline);
      if (this.#waiting.length === 0) break;
      const group = this.#take();
      this.#metrics.queue.set(this.#waiting.length);
      await this.#runGroup(group);
    }
  }

  /** The first waiting request and those after it that stack with it, within max_batch rows. */
  #take(): Pending[] {
    const [first] = this.#waiting;
    const group = [first];
    let rows = first.rows;
    if (this.batchDim !== undefined) {
      for (const pending of this.#waiting.slice(1)) {
        if (pending.key === first.key && rows + pending.rows <= this.options.maxBatch) {
          group.push(pending);
          rows += pending.rows;
        }
      }
    }
    this.#waiting = this.#waiting.filter((pending) => !group.includes(pending));
    return group;
  }

  async #runGroup(group: Pending[]): Promise<void> {
    const inputs: Record<string, Tensor> = {};
    for (const input of this.engine.inputs) {
      const parts = group.map((pending) => pending.inputs[input.name]);
      inputs[input.name] = parts.length === 1 ? parts[0] : concatTensors(parts, 0);
    }
    const began = performance.now();
    let outputs: Record<string, Tensor>;
    try {
      outputs = await this.engine.run(inputs);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const failure = new ServeError(500, `the engine run failed: ${message}`, "engine_error", undefined, {
        cause: error,
      });
      for (const pending of group) pending.reject(failure);
      this.options.onEngineError?.(failure);
      return;
    }
    this.#metrics.stepSeconds.observe((performance.now() - began) / 1000);
    this.#metrics.stepBatch.observe(group.length);
    let row = 0;
    for (const pending of group) {
      const own: Record<string, Tensor> = {};
      for (const [name, value] of Object.entries(outputs)) {
        own[name] = group.length === 1 ? value : sliceTensor(value, 0, row, row + pending.rows);
      }
      row += pending.rows;
      pending.resolve(own);
    }
  }
}
