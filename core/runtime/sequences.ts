// Sequences: a pool of KV-cache slots that generation and serving step through. An engine that
// keeps its caches itself (the cuda engine, on the device) provides its own; for any other engine
// the host pool below keeps each slot's caches as tensors and runs the functional graph convention
// of generate.ts, batching the sequences that are at the same position.

import { concatTensors, sliceTensor } from "../ir/ops/shape.ts";
import { f32, i32, type Tensor, tensor, toF32 } from "../ir/tensor.ts";
import { type Engine, EngineError } from "./engine.ts";

/** Caches of length zero for every `past…` input of the engine. */
export function emptyCaches(engine: Engine, batch: number): Record<string, Tensor> {
  const caches: Record<string, Tensor> = {};
  for (const input of engine.inputs) {
    if (!input.name.startsWith("past_")) continue;
    const shape = input.type.shape.map((dim) => {
      if (dim === "batch") return batch;
      if (dim === "past") return 0;
      if (typeof dim === "number") return dim;
      throw new EngineError(`cache input ${input.name} has an unexpected symbolic size ${dim}`);
    });
    caches[input.name] = tensor(input.type.dtype, shape);
  }
  return caches;
}

/** One sequence's share of a step: `ids` run after the first `start` tokens already cached in `slot`. */
export interface SequenceStep {
  slot: number;
  ids: number[];
  /** How many of the slot's cached tokens to keep; the new ids take positions start, start+1, … */
  start: number;
}

export interface SequenceOptions {
  /** How many sequences may be alive at once. */
  slots: number;
  /** The longest a sequence may grow (prompt and generated tokens). */
  maxLength: number;
}

/**
 * How one entry's next token is drawn from its logits (the rule is `sampleLogits` in
 * core/serve/sampling.ts, which engines that sample on their device must follow to the token).
 */
export interface SampleChoice {
  /** Above 0 (a temperature of 0 is greedy and goes through `greedy`). */
  temperature: number;
  /** Keeps only the topK likeliest tokens; 0 keeps all. */
  topK: number;
  /** Nucleus mass in (0, 1]; 1 keeps all. */
  topP: number;
  /** The request's uniform draw in [0, 1) for this token. */
  uniform: number;
}

export interface Sequences extends Disposable {
  readonly slots: number;
  readonly maxLength: number;
  /** Runs every entry's ids; returns f32 [batch.length, vocab], the logits at each entry's last id. */
  step(batch: SequenceStep[]): Promise<Tensor>;
  /** Like step, but returns only the index of the largest logit of each entry. */
  greedy(batch: SequenceStep[]): Promise<number[]>;
  /**
   * Like step, but draws each entry's next token where the logits are (on the device), by
   * `choices[i]` for entry i. Optional: callers without it sample the logits of step on the host.
   */
  sample?(batch: SequenceStep[], choices: SampleChoice[]): Promise<number[]>;
  /**
   * `steps` greedy steps of entries that each hold one id, each step's ids the input of the next,
   * without the host in between (the ids stay on the device). Returns ids[step][entry], what as
   * many calls of greedy would return. Optional: callers without it call greedy step by step.
   */
  decodeGreedy?(batch: SequenceStep[], steps: number): Promise<number[][]>;
  /** Forgets the slot's cache; the slot may start a new sequence. */
  release(slot: number): void;
}

/** Engines that keep KV caches themselves offer their own pool. */
export interface SequenceEngine extends Engine {
  sequences(options: SequenceOptions): Sequences;
}

export function hasOwnSequences(engine: Engine): engine is SequenceEngine {
  return typeof (engine as Partial<SequenceEngine>).sequences === "function";
}

/** The engine's own pool where it has one, else a host pool over its functional graph. */
export function openSequences(engine: Engine, options: SequenceOptions): Sequences {
  return hasOwnSequences(engine) ? engine.sequences(options) : new HostSequences(engine, options);
}

/** Checks a step against the pool's limits, the same way for every implementation. */
export function checkStep(batch: SequenceStep[], pool: { slots: number; maxLength: number }): void {
  if (batch.length === 0) throw new EngineError("a step needs at least one sequence");
  const seen = new Set<number>();
  for (const entry of batch) {
    if (!Number.isInteger(entry.slot) || entry.slot < 0 || entry.slot >= pool.slots) {
      throw new EngineError(`slot ${entry.slot} is outside the pool's ${pool.slots} slots`);
    }
    if (seen.has(entry.slot)) throw new EngineError(`slot ${entry.slot} appears twice in one step`);
    seen.add(entry.slot);
    if (entry.ids.length === 0) throw new EngineError(`slot ${entry.slot}: a step needs at least one id`);
    if (entry.start + entry.ids.length > pool.maxLength) {
      throw new EngineError(
        `slot ${entry.slot}: ${
          entry.start + entry.ids.length
        } tokens exceed the maximum length ${pool.maxLength}`,
      );
    }
  }
}

/** The index of the largest value in each row of a [rows, n] tensor. */
export function argmaxRows(logits: Tensor): number[] {
  const [rows, n] = logits.shape;
  const values = toF32(logits);
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let v = 1; v < n; v++) if (values[r * n + v] > values[r * n + best]) best = v;
    out.push(best);
  }
  return out;
}

/** Caches on the host, one set per slot; sequences at the same position and length run as one batch. */
export class HostSequences implements Sequences {
  readonly slots: number;
  readonly maxLength: number;
  #caches = new Map<number, Record<string, Tensor>>();

  constructor(readonly engine: Engine, options: SequenceOptions) {
    this.slots = options.slots;
    this.maxLength = options.maxLength;
  }

  async step(batch: SequenceStep[]): Promise<Tensor> {
    checkStep(batch, this);
    const groups = new Map<string, number[]>();
    batch.forEach((entry, index) => {
      const cached = this.#length(entry.slot);
      if (entry.start > cached) {
        throw new EngineError(
          `slot ${entry.slot} holds ${cached} tokens; a step cannot start at ${entry.start}`,
        );
      }
      const key = `${entry.start}:${entry.ids.length}`;
      groups.set(key, [...(groups.get(key) ?? []), index]);
    });
    const rows: Float32Array[] = new Array(batch.length);
    for (const members of groups.values()) {
      const entries = members.map((index) => batch[index]);
      const logits = await this.#runGroup(entries);
      members.forEach((index, row) => (rows[index] = logits[row]));
    }
    const vocab = rows[0].length;
    const out = f32([batch.length, vocab]);
    rows.forEach((row, index) => (out.data as Float32Array).set(row, index * vocab));
    return out;
  }

  async greedy(batch: SequenceStep[]): Promise<number[]> {
    return argmaxRows(await this.step(batch));
  }

  release(slot: number): void {
    this.#caches.delete(slot);
  }

  [Symbol.dispose](): void {
    this.#caches.clear();
  }

  #length(slot: number): number {
    const caches = this.#caches.get(slot);
    if (!caches) return 0;
    const first = Object.values(caches)[0];
    return first ? first.shape[2] : 0;
  }

  /** Runs entries that share start and length as one batch; returns each one's last logits. */
  async #runGroup(entries: SequenceStep[]): Promise<Float32Array[]> {
    const { start } = entries[0];
    const seq = entries[0].ids.length;
    const perSlot = entries.map((entry) => this.#cachesFor(entry.slot, start));
    const names = Object.keys(perSlot[0]);
    const caches: Record<string, Tensor> = {};
    for (const name of names) {
      caches[name] = perSlot.length === 1 ? perSlot[0][name] : concatTensors(perSlot.map((c) => c[name]), 0);
    }
    const outputs = await this.engine.run({
      ids: i32([entries.length, seq], entries.flatMap((entry) => entry.ids)),
      pos: i32([seq], Array.from({ length: seq }, (_, i) => start + i)),
      ...caches,
    });
    entries.forEach((entry, row) => {
      const next: Record<string, Tensor> = {};
      for (const [name, value] of Object.entries(outputs)) {
        if (!name.startsWith("present_")) continue;
        next[`past_${name.slice("present_".length)}`] = entries.length === 1
          ? value
          : sliceTensor(value, 0, row, row + 1);
      }
      this.#caches.set(entry.slot, next);
    });
    const logits = outputs.logits;
    const vocab = logits.shape[2];
    const values = toF32(logits);
    return entries.map((_, row) => {
      const base = (row * seq + seq - 1) * vocab;
      return values.slice(base, base + vocab);
    });
  }

  /** The slot's caches cut to `start` tokens (empty for a new sequence). */
  #cachesFor(slot: number, start: number): Record<string, Tensor> {
    const caches = this.#caches.get(slot);
    if (!caches || start === 0) return emptyCaches(this.engine, 1);
    if (this.#length(slot) === start) return caches;
    const cut: Record<string, Tensor> = {};
    for (const [name, value] of Object.entries(caches)) cut[name] = sliceTensor(value, 2, 0, start);
    return cut;
  }
}
