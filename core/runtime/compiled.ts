// What the compile and load stages hand on: a backend's engine with the profiles it serves and
// where it came from. It checks every call against the profiles, forwards binding to process
// groups, and may be built just in time: at its first call rather than at the compile stage.

import type { GraphInput } from "../ir/graph.ts";
import type { Tensor } from "../ir/tensor.ts";
import type { ProcessGroup } from "../dist/group.ts";
import { type Engine, EngineError } from "./engine.ts";
import { checkInputs, type Profiles, sequenceLimits } from "./profiles.ts";
import {
  checkStep,
  openSequences,
  type SequenceEngine,
  type SequenceOptions,
  type Sequences,
  type SequenceStep,
} from "./sequences.ts";

/** Where an engine came from, recorded in its engine file. */
export interface Provenance {
  /** SHA-256 of the lowered graph's text. */
  graphSha256?: string;
  /** SHA-256 of this rank's weights: their bytes, or the fingerprints of the files they are read from. */
  weightsSha256?: string;
  /** The pipeline file that made it. */
  pipeline?: string;
}

type GroupResolver = (name: string) => ProcessGroup;

function bindIfBindable(engine: Engine, groups: GroupResolver): void {
  const bind = (engine as { bind?: (groups: GroupResolver) => unknown }).bind;
  if (typeof bind === "function") bind.call(engine, groups);
}

export class CompiledEngine implements SequenceEngine {
  constructor(
    readonly engine: Engine,
    readonly profiles: Profiles = {},
    readonly provenance: Provenance = {},
  ) {}

  get backend(): string {
    return this.engine.backend;
  }

  get backendVersion(): string {
    return this.engine.backendVersion;
  }

  get inputs(): GraphInput[] {
    return this.engine.inputs;
  }

  get outputs(): GraphInput[] {
    return this.engine.outputs;
  }

  run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    checkInputs(this.inputs, inputs, this.profiles);
    return this.engine.run(inputs);
  }

  sequences(options: SequenceOptions): Sequences {
    const limits = sequenceLimits(this.profiles);
    if (limits.slots !== undefined && options.slots > limits.slots) {
      throw new EngineError(
        `${options.slots} sequences at once, but this engine was compiled for batches up to ${limits.slots} (compile.profiles.batch)`,
      );
    }
    if (limits.maxLength !== undefined && options.maxLength > limits.maxLength) {
      throw new EngineError(
        `sequences of ${options.maxLength} tokens, but this engine was compiled for up to ${limits.maxLength} (compile.profiles)`,
      );
    }
    const pool = openSequences(this.engine, options);
    const longest = this.profiles.seq?.[2];
    const check = (batch: Parameters<Sequences["step"]>[0]) => {
      checkStep(batch, pool);
      const over = batch.find((entry) => longest !== undefined && entry.ids.length > longest);
      if (over) {
        throw new EngineError(
          `slot ${over.slot}: ${over.ids.length} ids in one step, more than the ${longest} this engine was compiled for (compile.profiles.seq)`,
        );
      }
    };
    const checked: Sequences = {
      slots: pool.slots,
      maxLength: pool.maxLength,
      step: async (batch) => {
        check(batch);
        return await pool.step(batch);
      },
      greedy: async (batch) => {
        check(batch);
        return await pool.greedy(batch);
      },
      release: (slot) => pool.release(slot),
      [Symbol.dispose]: () => pool[Symbol.dispose](),
    };
    return withOptional(checked, pool, check);
  }

  bind(groups: GroupResolver): this {
    bindIfBindable(this.engine, groups);
    return this;
  }

  serialize(): Uint8Array {
    return this.engine.serialize();
  }

  [Symbol.dispose](): void {
    this.engine[Symbol.dispose]();
  }
}

/** An engine built at its first call (just-in-time), then kept. */
export class LazyEngine implements SequenceEngine {
  #built?: Promise<Engine>;
  #groups?: GroupResolver;
  #disposed = false;

  constructor(
    readonly backend: string,
    readonly backendVersion: string,
    readonly inputs: GraphInput[],
    readonly outputs: GraphInput[],
    readonly build: () => Promise<Engine>,
  ) {}

  /** The engine, built now if this is the first call. */
  engine(): Promise<Engine> {
    if (this.#disposed) return Promise.reject(new EngineError("the engine was disposed"));
    this.#built ??= this.build().then((engine) => {
      if (this.#groups) bindIfBindable(engine, this.#groups);
      return engine;
    });
    return this.#built;
  }

  get built(): boolean {
    return this.#built !== undefined;
  }

  async run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    return await (await this.engine()).run(inputs);
  }

  sequences(options: SequenceOptions): Sequences {
    let opened: Promise<Sequences> | undefined;
    const pool = () => opened ??= this.engine().then((engine) => openSequences(engine, options));
    // the engine's own draws and chained steps join the pool once it is open (after the first step)
    const open = async () => {
      const inner = await pool();
      withOptional(lazy, inner);
      return inner;
    };
    const lazy: Sequences = {
      slots: options.slots,
      maxLength: options.maxLength,
      step: async (batch) => await (await open()).step(batch),
      greedy: async (batch) => await (await open()).greedy(batch),
      release: (slot) => void opened?.then((inner) => inner.release(slot)),
      [Symbol.dispose]: () => void opened?.then((inner) => inner[Symbol.dispose]()),
    };
    return lazy;
  }

  bind(groups: GroupResolver): this {
    this.#groups = groups;
    return this;
  }

  serialize(): Uint8Array {
    throw new EngineError("a just-in-time engine is built at its first request and cannot be saved");
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
    this.#built?.then((engine) => engine[Symbol.dispose]()).catch(() => {});
  }
}

/**
 * `outer` with the optional calls of `inner` (drawing on the device, chained greedy steps) where
 * `inner` has them, each checked by `check` first; returns `outer`.
 */
function withOptional(
  outer: Sequences,
  inner: Sequences,
  check: (batch: SequenceStep[]) => void = () => {},
): Sequences {
  const { sample, decodeGreedy } = inner;
  if (sample && !outer.sample) {
    outer.sample = async (batch, choices) => {
      check(batch);
      return await sample.call(inner, batch, choices);
    };
  }
  if (decodeGreedy && !outer.decodeGreedy) {
    outer.decodeGreedy = async (batch, steps) => {
      check(batch);
      return await decodeGreedy.call(inner, batch, steps);
    };
  }
  return outer;
}
