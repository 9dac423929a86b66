// KV-cache slots on the device. Every step runs all its sequences' tokens as one flat batch: each
// token carries its slot and position, writes its k and v into its slot's cache and attends to
// the slot's cache up to itself, so prompts, decode tokens and sequences at different positions
// mix freely. A decode step (one id per sequence) is captured once per batch-size bucket and span
// (the positions its attention covers: a power of two up to the pool's length) into a CUDA graph
// that copies the step's ids in, runs every layer, picks the argmax and copies the ids out;
// replaying it is one FFI call. decodeGreedy chains such steps on the device (a second graph
// whose first kernel feeds the step before's argmax back in), so that the host launches many steps
// without waiting for any and reads their ids once.

import {
  checkStep,
  type SampleChoice,
  type Sequences,
  type SequenceStep,
} from "../../../core/runtime/sequences.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import { BYTES_PER_ELEMENT, castTensor, type Tensor, tensor, viewOf } from "../../../core/ir/tensor.ts";
import {
  captureGraph,
  check as checkCuda,
  createEvent,
  cudart,
  destroyGraph,
  elapsedMs,
  EVENT_RECORD_EXTERNAL,
  hostAlloc,
  hostFree,
  MEMCPY,
} from "../../../ffi/cuda.ts";
import { check as checkKernel, KERNEL_DTYPE, kernels } from "../../../ffi/kernels.ts";
import { bind, type Bound, type Caches } from "./program.ts";
import type { View } from "./views.ts";
import { DECODE_TOKENS } from "./steps/attention.ts";
import { copyOut, type CudaEngine } from "./engine.ts";

export interface CudaSequenceOptions {
  slots: number;
  maxLength: number;
  graphs: boolean;
  prefillChunk: number;
}

interface Graph {
  graph: bigint;
  exec: bigint;
  /** Where the replay leaves the logits. */
  logits: View;
}

/** Steps of a chain whose ids the device keeps until the host reads them after the chain's last. */
export const CHAIN_STEPS = 64;

/**
 * The fewest positions a decode graph's attention covers. A graph's attention launches blocks for
 * every chunk of its span, and those past a token's position return at once: spans are powers of
 * two from here up to the pool's length, so that a short sequence in a long pool does not pay for
 * the whole pool.
 */
export const MIN_SPAN = 256;

/** decodeGreedy's ids on the device ([CHAIN_STEPS + 1][entries]), their count, and their pinned copy. */
interface ChainBuffers {
  history: bigint;
  count: bigint;
  host: { pointer: bigint; bytes: Uint8Array<ArrayBuffer> };
}

/** What a run hands back: every entry's logits, its argmax, or a token drawn by its choice. */
type Pick = "logits" | "greedy" | SampleChoice[];

/** The i32 step buffer: ids, positions and slots of each token, then each entry's last row. */
interface StepLayout {
  tokens: number;
  entries: number;
}

export class CudaSequences implements Sequences {
  readonly slots: number;
  readonly maxLength: number;
  readonly #engine: CudaEngine;
  readonly #options: CudaSequenceOptions;
  readonly #caches: Caches;
  readonly #lengths: number[];
  /** Token and entry capacity of one run. */
  readonly #tokens: number;
  readonly #entries: number;
  readonly #meta: bigint;
  readonly #host: { pointer: bigint; bytes: Uint8Array<ArrayBuffer> };
  readonly #ids: bigint;
  /** Per entry: temperature, top_k, top_p and the uniform draw (f64), for rf_sample. */
  readonly #params: bigint;
  /** rf_sample's scratch (rf_sample_scratch_bytes), allocated and zeroed at the first draw. */
  #sampling = 0n;
  readonly #arena: bigint;
  /** Per bucket and span (graphKey): the decode step. */
  readonly #graphs = new Map<string, Graph>();
  /** Per bucket and span: the decode step that takes its ids from the step before (decodeGreedy). */
  readonly #chained = new Map<string, Graph>();
  /** Per bucket: the key of the graph it replayed last (replayDecodeMs replays that one). */
  readonly #lastGraph = new Map<number, string>();
  #chain?: ChainBuffers;
  readonly #allocations: bigint[] = [];
  #disposed = false;

  constructor(engine: CudaEngine, options: CudaSequenceOptions) {
    if (!Number.isInteger(options.slots) || options.slots < 1) {
      throw new EngineError("a pool needs at least one slot");
    }
    if (!Number.isInteger(options.maxLength) || options.maxLength < 1) {
      throw new EngineError("maxLength must be ≥ 1");
    }
    this.#engine = engine;
    this.#options = options;
    this.slots = options.slots;
    this.maxLength = options.maxLength;
    this.#lengths = new Array(options.slots).fill(0);
    const ctx = engine.ctx;
    const alloc = (bytes: number) => {
      const pointer = ctx.alloc(bytes);
      this.#allocations.push(pointer);
      return pointer;
    };
    // One slot past the pool's takes the padding rows of a bucket.
    const cacheSlots = options.slots + 1;
    const caches: Caches = { k: [], v: [], merge: [], maxLength: options.maxLength };
    const zeroed = (bytes: number) => {
      const pointer = alloc(bytes);
      checkCuda(cudart().cudaMemsetAsync(pointer, 0, BigInt(bytes), ctx.stream), "cudaMemsetAsync");
      return pointer;
    };
    const merges = new Map<string, Caches["merge"][number]>();
    for (const step of engine.lowered.steps) {
      if (step.kind !== "attention") continue;
      const dtype = engine.lowered.types.get(step.q.value)!.dtype;
      const bytes = cacheSlots * step.kvHeads * options.maxLength * step.headDim * BYTES_PER_ELEMENT[dtype];
      caches.k[step.layer] = alloc(bytes);
      caches.v[step.layer] = alloc(bytes);
      const shape = `${step.heads}/${step.kvHeads}/${step.headDim}`;
      if (!merges.has(shape)) {
        const partials = kernels().rf_decode_attention_scratch_bytes(
          DECODE_TOKENS,
          step.heads,
          step.headDim,
          options.maxLength,
        );
        merges.set(shape, {
          counters: zeroed(16 * DECODE_TOKENS * step.kvHeads),
          partials: zeroed(Number(partials)),
        });
      }
      caches.merge[step.layer] = merges.get(shape)!;
    }
    this.#caches = caches;
    this.#entries = nextPowerOfTwo(options.slots);
    this.#tokens = Math.max(this.#entries, Math.min(options.prefillChunk, options.slots * options.maxLength));
    const metaBytes = 4 * (3 * this.#tokens + this.#entries);
    this.#meta = alloc(metaBytes);
    this.#ids = alloc(4 * this.#entries);
    this.#params = alloc(32 * this.#entries);
    this.#host = hostAlloc(this.#paramsAt + 32 * this.#entries);
    const measure = this.#bind(0n, { tokens: this.#tokens, entries: this.#entries }, 1);
    this.#arena = alloc(measure.bytes);
  }

  async step(batch: SequenceStep[]): Promise<Tensor> {
    checkStep(batch, this);
    this.#checkStarts(batch);
    const rows = await this.#run(batch, "logits");
    return rows.logits!;
  }

  async greedy(batch: SequenceStep[]): Promise<number[]> {
    checkStep(batch, this);
    this.#checkStarts(batch);
    return (await this.#run(batch, "greedy")).ids!;
  }

  async sample(batch: SequenceStep[], choices: SampleChoice[]): Promise<number[]> {
    checkStep(batch, this);
    this.#checkStarts(batch);
    if (choices.length !== batch.length) {
      throw new EngineError(`a step of ${batch.length} sequences got ${choices.length} sampling choices`);
    }
    choices.forEach((choice, i) => {
      const { temperature, topK, topP, uniform } = choice;
      if (!(temperature > 0 && Number.isFinite(temperature))) {
        throw new EngineError(`sequence ${i}: temperature ${temperature} must be above 0 (0 is greedy)`);
      }
      if (!Number.isInteger(topK) || topK < 0) {
        throw new EngineError(`sequence ${i}: top_k ${topK} must be ≥ 0`);
      }
      if (!(topP > 0 && topP <= 1)) throw new EngineError(`sequence ${i}: top_p ${topP} must be in (0, 1]`);
      if (!(uniform >= 0 && uniform < 1)) {
        throw new EngineError(`sequence ${i}: draw ${uniform} must be in [0, 1)`);
      }
    });
    return (await this.#run(batch, choices)).ids!;
  }

  /**
   * Greedy decode of `steps` tokens for each entry (one id each: its next input), the ids of each
   * step fed to the next on the device: the host launches up to CHAIN_STEPS steps at once and
   * reads their ids after the last, so no step waits for the host. Returns the ids step by step
   * (ids[step][entry]), equal to what `steps` calls of greedy() would return.
   */
  // deno-lint-ignore require-await -- the device calls are synchronous; the contract is async
  async decodeGreedy(batch: SequenceStep[], steps: number): Promise<number[][]> {
    checkStep(batch, this);
    this.#checkStarts(batch);
    if (!Number.isInteger(steps) || steps < 1) {
      throw new EngineError(`steps must be a whole number ≥ 1, not ${steps}`);
    }
    if (batch.length > this.#entries || batch.some((entry) => entry.ids.length !== 1)) {
      throw new EngineError(`decodeGreedy takes one id for each of at most ${this.#entries} sequences`);
    }
    for (const entry of batch) {
      if (entry.start + steps > this.maxLength) {
        throw new EngineError(
          `slot ${entry.slot}: ${steps} steps from position ${entry.start} pass the pool's ${this.maxLength} positions`,
        );
      }
    }
    const out: number[][] = [];
    let entries = batch;
    while (out.length < steps) {
      const ids = this.#decodeChain(entries, Math.min(steps - out.length, CHAIN_STEPS + 1));
      out.push(...ids);
      for (const entry of entries) this.#lengths[entry.slot] = entry.start + ids.length;
      entries = nextSteps(entries, ids.at(-1)!, ids.length);
    }
    return out;
  }

  /** `count` greedy steps (at most CHAIN_STEPS + 1): the first from the host's ids, the rest chained. */
  #decodeChain(batch: SequenceStep[], count: number): number[][] {
    if (!this.#options.graphs) {
      // without graphs every step is its own
      const ids: number[][] = [];
      for (let entries = batch; ids.length < count; entries = nextSteps(entries, ids.at(-1)!, 1)) {
        ids.push(this.#decode(entries, "greedy").ids!);
      }
      return ids;
    }
    const bucket = nextPowerOfTwo(batch.length);
    // every step of the chain runs on graphs of the span of its last
    const span = this.#span(Math.max(...batch.map((entry) => entry.start)) + count);
    // the first step of a bucket and span runs eagerly and captures their graph
    const first = !this.#graphs.has(graphKey(bucket, span)) || count === 1
      ? this.#decode(batch, "greedy", span).ids!
      : undefined;
    if (count === 1) return [first!];
    return this.#launchChain(batch, bucket, span, count, first);
  }

  /** The span of a decode graph whose tokens reach `positions` positions. */
  #span(positions: number): number {
    return Math.min(this.maxLength, Math.max(MIN_SPAN, nextPowerOfTwo(positions)));
  }

  /** Launches step 1 (unless `first` holds its ids already) and `count - 1` chained steps, then reads. */
  #launchChain(
    batch: SequenceStep[],
    bucket: number,
    span: number,
    count: number,
    first?: number[],
  ): number[][] {
    const ctx = this.#engine.ctx;
    const c = cudart();
    const chain = this.#chainBuffers();
    const chained = this.#chainedGraph(bucket, span, chain);
    if (!first) {
      this.#fill(batch, { tokens: bucket, entries: bucket });
      checkCuda(
        c.cudaGraphLaunch(this.#graphs.get(graphKey(bucket, span))!.exec, ctx.stream),
        "decode graph launch",
      );
    }
    checkCuda(c.cudaMemsetAsync(chain.count, 0, 4n, ctx.stream), "cudaMemsetAsync");
    for (let n = 1; n < count; n++) {
      checkCuda(c.cudaGraphLaunch(chained.exec, ctx.stream), "chained step launch");
    }
    // history row n - 1 holds step n's ids (the ids each chained step started from); #ids the last step's
    const rows = (count - 1) * bucket;
    checkCuda(
      c.cudaMemcpyAsync(chain.host.pointer, chain.history, BigInt(4 * rows), MEMCPY.deviceToHost, ctx.stream),
      "copy of the chain's ids from the device",
    );
    checkCuda(
      c.cudaMemcpyAsync(
        chain.host.pointer + BigInt(4 * rows),
        this.#ids,
        BigInt(4 * bucket),
        MEMCPY.deviceToHost,
        ctx.stream,
      ),
      "copy of the ids from the device",
    );
    ctx.synchronize();
    const all = new Int32Array(chain.host.bytes.buffer, 0, rows + bucket);
    return Array.from(
      { length: count },
      (_, n) => Array.from(all.subarray(n * bucket, n * bucket + batch.length)),
    );
  }

  #chainBuffers(): ChainBuffers {
    if (!this.#chain) {
      const ctx = this.#engine.ctx;
      const history = ctx.alloc(4 * (CHAIN_STEPS + 1) * this.#entries);
      this.#allocations.push(history);
      const count = ctx.alloc(4);
      this.#allocations.push(count);
      this.#chain = { history, count, host: hostAlloc(4 * (CHAIN_STEPS + 1) * this.#entries) };
    }
    return this.#chain;
  }

  /** The decode step of a bucket and span whose first kernel takes the ids from the step before's argmax. */
  #chainedGraph(bucket: number, span: number, chain: ChainBuffers): Graph {
    const key = graphKey(bucket, span);
    let graph = this.#chained.get(key);
    if (graph) return graph;
    const stream = this.#engine.ctx.stream;
    this.#engine.ctx.synchronize();
    let logits: View | undefined;
    const captured = captureGraph(stream, () => {
      const bound = this.#bind(this.#arena, { tokens: bucket, entries: bucket }, span);
      checkKernel(
        kernels().rf_decode_advance(
          this.#meta,
          this.#meta + BigInt(4 * this.#tokens),
          this.#ids,
          bucket,
          chain.history,
          chain.count,
          stream,
        ),
        "decode advance",
      );
      for (const launch of bound.launches) launch();
      logits = bound.views.get("logits");
      if (!logits) throw new EngineError("the graph has no output named logits");
      this.#argmax(logits, stream);
    });
    graph = { ...captured, logits: logits! };
    this.#chained.set(key, graph);
    return graph;
  }

  release(slot: number): void {
    if (slot >= 0 && slot < this.slots) this.#lengths[slot] = 0;
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const ctx = this.#engine.ctx;
    ctx.synchronize();
    for (const graph of [...this.#graphs.values(), ...this.#chained.values()]) destroyGraph(graph);
    this.#graphs.clear();
    this.#chained.clear();
    if (this.#chain) hostFree(this.#chain.host.pointer);
    for (const pointer of this.#allocations) ctx.free(pointer);
    hostFree(this.#host.pointer);
  }

  #checkStarts(batch: SequenceStep[]): void {
    for (const entry of batch) {
      if (entry.start > this.#lengths[entry.slot]) {
        throw new EngineError(
          `slot ${entry.slot} holds ${
            this.#lengths[entry.slot]
          } tokens; a step cannot start at ${entry.start}`,
        );
      }
    }
  }

  // deno-lint-ignore require-await -- the device calls are synchronous; the contract is async
  async #run(batch: SequenceStep[], pick: Pick): Promise<{ logits?: Tensor; ids?: number[] }> {
    const decode = batch.every((entry) => entry.ids.length === 1) && batch.length <= this.#entries;
    let result: { logits?: Tensor; ids?: number[] };
    if (decode) {
      result = this.#decode(batch, pick);
    } else {
      // Prompts longer than a run's capacity go in chunks; only the last chunk's logits are kept.
      const ids: number[] = new Array(batch.length);
      const logits: Float32Array[] = new Array(batch.length);
      let pending = batch.map((entry, index) => ({ ...entry, index }));
      while (pending.length) {
        const group: typeof pending = [];
        const rest: typeof pending = [];
        let used = 0;
        for (const entry of pending) {
          const room = this.#tokens - used;
          if (room <= 0 || group.length === this.#entries) {
            rest.push(entry);
            continue;
          }
          const take = Math.min(room, entry.ids.length);
          group.push({ ...entry, ids: entry.ids.slice(0, take) });
          used += take;
          if (take < entry.ids.length) {
            rest.push({ ...entry, ids: entry.ids.slice(take), start: entry.start + take });
          }
        }
        const out = this.#eager(
          group,
          pick === "logits" || pick === "greedy" ? pick : group.map((e) => pick[e.index]),
        );
        group.forEach((entry, row) => {
          if (out.ids) ids[entry.index] = out.ids[row];
          else logits[entry.index] = out.rows![row];
        });
        pending = rest;
      }
      result = pick === "logits" ? { logits: stack(logits) } : { ids };
    }
    for (const entry of batch) this.#lengths[entry.slot] = entry.start + entry.ids.length;
    return result;
  }

  /** Fills the pinned step buffer; returns the tokens of the run. */
  #fill(batch: SequenceStep[], layout: StepLayout): number {
    const words = new Int32Array(this.#host.bytes.buffer, 0, 3 * this.#tokens + this.#entries);
    const idsAt = 0;
    const posAt = this.#tokens;
    const slotsAt = 2 * this.#tokens;
    const lastAt = 3 * this.#tokens;
    let t = 0;
    batch.forEach((entry, row) => {
      entry.ids.forEach((id, i) => {
        words[idsAt + t] = id;
        words[posAt + t] = entry.start + i;
        words[slotsAt + t] = entry.slot;
        t++;
      });
      words[lastAt + row] = t - 1;
    });
    // Padding rows of a bucket write into the spare slot at position 0.
    for (let row = batch.length; row < layout.entries; row++) {
      words[idsAt + t] = 0;
      words[posAt + t] = 0;
      words[slotsAt + t] = this.slots;
      words[lastAt + row] = t;
      t++;
    }
    return t;
  }

  #bind(base: bigint, layout: StepLayout, span: number): Bound {
    const engine = this.#engine;
    const stepView = (name: string, shape: number[]): View => ({
      ptr: this.#meta + (name === "ids" ? 0n : BigInt(4 * this.#tokens)),
      dtype: "i32",
      shape,
      ld: shape.at(-1)!,
      width: shape.at(-1)!,
      capacity: this.#tokens,
    });
    return bind(
      engine.lowered.steps,
      engine.bindContext({
        mode: "sequence",
        dims: new Map([["batch", 1], ["seq", layout.tokens], ["past", 0], ["__entries", layout.entries]]),
        capacity: new Map([["batch", 1], ["seq", this.#tokens], ["past", 0], ["__entries", this.#entries]]),
        base,
        external: new Map([
          ["ids", stepView("ids", [1, layout.tokens])],
          ["pos", stepView("pos", [layout.tokens])],
        ]),
        meta: {
          slots: this.#meta + BigInt(8 * this.#tokens),
          cachePos: this.#meta + BigInt(4 * this.#tokens),
          lastRows: this.#meta + BigInt(12 * this.#tokens),
          entries: layout.entries,
          span,
        },
        caches: this.#caches,
      }),
    );
  }

  /** Queues the copy of the step buffer (ids, positions, slots, rows) to the device; returns its bytes. */
  #copyStep(stream: bigint): number {
    const metaBytes = 4 * (3 * this.#tokens + this.#entries);
    checkCuda(
      cudart().cudaMemcpyAsync(
        this.#meta,
        this.#host.pointer,
        BigInt(metaBytes),
        MEMCPY.hostToDevice,
        stream,
      ),
      "copy of the step to the device",
    );
    return metaBytes;
  }

  /** The launches of a run, with the step buffer copied in first and (greedy) ids copied out last. */
  #enqueue(layout: StepLayout, span: number, greedy: boolean): { logits: View } {
    const bound = this.#bind(this.#arena, layout, span);
    const stream = this.#engine.ctx.stream;
    const c = cudart();
    const metaBytes = this.#copyStep(stream);
    for (const launch of bound.launches) launch();
    const logits = bound.views.get("logits");
    if (!logits) throw new EngineError("the graph has no output named logits");
    if (greedy) {
      const rows = this.#argmax(logits, stream);
      checkCuda(
        c.cudaMemcpyAsync(
          this.#host.pointer + BigInt(metaBytes),
          this.#ids,
          BigInt(4 * rows),
          MEMCPY.deviceToHost,
          stream,
        ),
        "copy of the ids from the device",
      );
    }
    return { logits };
  }

  #eager(batch: SequenceStep[], pick: Pick): { ids?: number[]; rows?: Float32Array[] } {
    const layout = { tokens: 0, entries: batch.length };
    layout.tokens = this.#fill(batch, layout);
    const span = Math.max(...batch.map((entry) => entry.start + entry.ids.length));
    const { logits } = this.#enqueue(layout, span, pick === "greedy");
    if (Array.isArray(pick)) this.#draw(logits, pick);
    this.#engine.ctx.synchronize();
    return pick === "logits"
      ? { rows: this.#readLogits(logits, batch.length) }
      : { ids: this.#readIds(batch.length) };
  }

  /** Draws each entry's token from its row of logits into the ids (host copy queued, not awaited). */
  #draw(logits: View, choices: SampleChoice[]): void {
    const ctx = this.#engine.ctx;
    const c = cudart();
    const [, vocab] = logits.shape;
    if (this.#sampling === 0n) {
      const bytes = kernels().rf_sample_scratch_bytes(this.#entries, vocab);
      if (bytes < 0n) throw new EngineError(`this GPU cannot sample rows of ${vocab} tokens on the device`);
      this.#sampling = ctx.alloc(Number(bytes));
      this.#allocations.push(this.#sampling);
      checkCuda(c.cudaMemsetAsync(this.#sampling, 0, bytes, ctx.stream), "cudaMemsetAsync");
    }
    const params = new Float64Array(this.#host.bytes.buffer, this.#paramsAt, 4 * choices.length);
    choices.forEach((choice, row) =>
      params.set([choice.temperature, choice.topK, choice.topP, choice.uniform], 4 * row)
    );
    checkCuda(
      c.cudaMemcpyAsync(
        this.#params,
        this.#host.pointer + BigInt(this.#paramsAt),
        BigInt(params.byteLength),
        MEMCPY.hostToDevice,
        ctx.stream,
      ),
      "copy of the sampling choices to the device",
    );
    const dtype = KERNEL_DTYPE[logits.dtype as "f32" | "f16" | "bf16"];
    checkKernel(
      kernels().rf_sample(
        dtype,
        logits.ptr,
        logits.ld,
        choices.length,
        vocab,
        this.#params,
        this.#sampling,
        this.#ids,
        ctx.stream,
      ),
      "sampling",
    );
    checkCuda(
      c.cudaMemcpyAsync(
        this.#host.pointer + BigInt(this.#idsAt),
        this.#ids,
        BigInt(4 * choices.length),
        MEMCPY.deviceToHost,
        ctx.stream,
      ),
      "copy of the ids from the device",
    );
  }

  #decode(
    batch: SequenceStep[],
    pick: Pick,
    span = this.#span(Math.max(...batch.map((entry) => entry.start)) + 1),
  ): { logits?: Tensor; ids?: number[] } {
    const bucket = nextPowerOfTwo(batch.length);
    const layout = { tokens: bucket, entries: bucket };
    this.#fill(batch, layout);
    const key = graphKey(bucket, span);
    const graph = this.#options.graphs ? this.#graphs.get(key) : undefined;
    let logits: View;
    if (graph) {
      checkKernel(kernels().rf_graph_launch_sync(graph.exec, this.#engine.ctx.stream), "decode graph replay");
      logits = graph.logits;
    } else {
      // The first step of a bucket and span runs eagerly (choosing cuBLASLt algorithms), then is captured.
      logits = this.#enqueue(layout, span, true).logits;
      this.#engine.ctx.synchronize();
      if (this.#options.graphs) {
        const stream = this.#engine.ctx.stream;
        const captured = captureGraph(stream, () => this.#enqueue(layout, span, true));
        this.#graphs.set(key, { ...captured, logits });
      }
    }
    this.#lastGraph.set(bucket, key);
    if (Array.isArray(pick)) {
      this.#draw(logits, pick);
      this.#engine.ctx.synchronize();
    }
    if (pick !== "logits") return { ids: this.#readIds(batch.length) };
    return { logits: stack(this.#readLogits(logits, batch.length)) };
  }

  /**
   * Device time of one decode step (ms), for benchmarks: the graph of a batch of `size` that ran
   * last replayed `replays` times back to back, so that the host's wait between steps stays out.
   * The replays redo the last step (same ids and positions); the pool's lengths do not change.
   */
  replayDecodeMs(size: number, replays: number): number {
    const key = this.#lastGraph.get(nextPowerOfTwo(size));
    const graph = key === undefined ? undefined : this.#graphs.get(key);
    if (!graph) throw new EngineError(`no decode graph for a batch of ${size} yet: run a decode step first`);
    const stream = this.#engine.ctx.stream;
    const c = cudart();
    const [start, end] = [createEvent(), createEvent()];
    try {
      checkCuda(c.cudaEventRecord(start, stream), "cudaEventRecord");
      for (let n = 0; n < replays; n++) checkCuda(c.cudaGraphLaunch(graph.exec, stream), "cudaGraphLaunch");
      checkCuda(c.cudaEventRecord(end, stream), "cudaEventRecord");
      this.#engine.ctx.synchronize();
      return elapsedMs(start, end) / replays;
    } finally {
      for (const event of [start, end]) checkCuda(c.cudaEventDestroy(event), "cudaEventDestroy");
    }
  }

  /**
   * Device time of each kind of launch in one step of `batch` (ms), for benchmarks: a decode step,
   * or a prefill of at most the prefill chunk's tokens.
   */
  profileStep(batch: SequenceStep[]): Map<string, { ms: number; launches: number }> {
    checkStep(batch, this);
    this.#checkStarts(batch);
    const layout = { tokens: 0, entries: batch.length };
    layout.tokens = this.#fill(batch, layout);
    if (layout.tokens > this.#tokens) {
      throw new EngineError(`a profiled step takes at most ${this.#tokens} tokens, not ${layout.tokens}`);
    }
    const bound = this.#bind(
      this.#arena,
      layout,
      this.#span(Math.max(...batch.map((e) => e.start + e.ids.length))),
    );
    const stream = this.#engine.ctx.stream;
    const c = cudart();
    this.#copyStep(stream);
    this.#engine.ctx.synchronize();
    // Events between the launches, captured into a graph with them, so that host gaps stay out.
    const events = Array.from({ length: bound.launches.length + 1 }, () => createEvent());
    const graph = captureGraph(stream, () => {
      bound.launches.forEach((launch, i) => {
        checkCuda(c.cudaEventRecordWithFlags(events[i], stream, EVENT_RECORD_EXTERNAL), "cudaEventRecord");
        launch();
      });
      checkCuda(c.cudaEventRecordWithFlags(events.at(-1)!, stream, EVENT_RECORD_EXTERNAL), "cudaEventRecord");
    });
    for (let replay = 0; replay < 2; replay++) {
      checkKernel(kernels().rf_graph_launch_sync(graph.exec, stream), "profile replay");
    }
    destroyGraph(graph);
    const totals = new Map<string, { ms: number; launches: number }>();
    bound.labels.forEach((label, i) => {
      const kind = label.replace(/ of layer \d+$/, "").replace(/ .*$/, "");
      const entry = totals.get(kind) ?? { ms: 0, launches: 0 };
      entry.ms += elapsedMs(events[i], events[i + 1]);
      entry.launches++;
      totals.set(kind, entry);
    });
    for (const event of events) checkCuda(c.cudaEventDestroy(event), "cudaEventDestroy");
    for (const entry of batch) this.#lengths[entry.slot] = entry.start + entry.ids.length;
    return totals;
  }

  /** Queues each row's argmax of the logits into the ids; returns the rows. */
  #argmax(logits: View, stream: bigint): number {
    const dtype = KERNEL_DTYPE[logits.dtype as "f32" | "f16" | "bf16"];
    const [rows, vocab] = logits.shape;
    checkKernel(kernels().rf_argmax(dtype, logits.ptr, logits.ld, this.#ids, rows, vocab, stream), "argmax");
    return rows;
  }

  /** Where the pinned buffer holds the ids after the step buffer, and the choices after them. */
  get #idsAt(): number {
    return 4 * (3 * this.#tokens + this.#entries);
  }

  get #paramsAt(): number {
    return Math.ceil((this.#idsAt + 4 * this.#entries) / 8) * 8;
  }

  #readIds(count: number): number[] {
    return Array.from(new Int32Array(this.#host.bytes.buffer, this.#idsAt, count));
  }

  #readLogits(logits: View, count: number): Float32Array[] {
    const [, vocab] = logits.shape;
    const bytes = new Uint8Array(logits.ld * count * BYTES_PER_ELEMENT[logits.dtype]);
    copyOut(bytes, logits.ptr, this.#engine.ctx.stream);
    const all = castTensor(
      tensor(logits.dtype, [count, logits.ld], viewOf(logits.dtype, bytes.buffer)),
      "f32",
    );
    const values = all.data as Float32Array;
    return Array.from({ length: count }, (_, row) => values.slice(row * logits.ld, row * logits.ld + vocab));
  }
}

/** The entries' next decode steps: `ids` in, `by` positions on. */
function nextSteps(batch: SequenceStep[], ids: number[], by: number): SequenceStep[] {
  return batch.map((entry, row) => ({ slot: entry.slot, ids: [ids[row]], start: entry.start + by }));
}

function graphKey(bucket: number, span: number): string {
  return `${bucket}:${span}`;
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

function stack(rows: Float32Array[]): Tensor {
  const vocab = rows[0].length;
  const out = new Float32Array(rows.length * vocab);
  rows.forEach((row, i) => out.set(row, i * vocab));
  return tensor("f32", [rows.length, vocab], out);
}
