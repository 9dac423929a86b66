// Lockstep: the front rank of a tensor-parallel group takes requests; every other rank of the group
// must run the same engine calls in the same order, since each call runs collectives over the group.
// The front broadcasts each call (as a small message) before running it; followers loop, receiving
// and running calls until the front says stop. Serving code sees one ordinary engine on the front.
// A step's tokens are chosen on the front and come back to every rank as the next step's ids, except
// in chained greedy steps (decodeGreedy), where each rank feeds its own argmax back in: after those
// the ranks compare their ids, and the call fails on the front if any rank chose another token.

import { i32, type Tensor, tensor, viewOf } from "../ir/tensor.ts";
import type { DType } from "../ir/tensor.ts";
import { type Engine, EngineError } from "../runtime/engine.ts";
import {
  checkStep,
  openSequences,
  type SampleChoice,
  type SequenceEngine,
  type SequenceOptions,
  type Sequences,
  type SequenceStep,
} from "../runtime/sequences.ts";
import { DistError, type ProcessGroup } from "./group.ts";

type Call =
  | { op: "run"; inputs: EncodedTensor[] }
  | { op: "open"; pool: number; options: SequenceOptions }
  | { op: "step" | "greedy"; pool: number; batch: SequenceStep[] }
  | { op: "sample"; pool: number; batch: SequenceStep[]; choices: SampleChoice[] }
  | { op: "decodeGreedy"; pool: number; batch: SequenceStep[]; steps: number }
  | { op: "release"; pool: number; slot: number }
  | { op: "close"; pool: number }
  | { op: "stop" };

interface EncodedTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** The tensor's bytes, base64. */
  data: string;
}

const ROOT = 0;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Sends one call from the front to every follower: its length, then its bytes. */
async function sendCall(group: ProcessGroup, call: Call): Promise<void> {
  const bytes = encoder.encode(JSON.stringify(call));
  const words = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
  words.set(bytes);
  await group.broadcast(i32([1], [bytes.length]), ROOT);
  await group.broadcast(tensor("i32", [words.length / 4], viewOf("i32", words.buffer)), ROOT);
}

async function receiveCall(group: ProcessGroup): Promise<Call> {
  const [length] = (await group.broadcast(i32([1]), ROOT)).data as Int32Array;
  const words = await group.broadcast(i32([Math.ceil(length / 4)]), ROOT);
  const bytes = new Uint8Array(words.data.buffer, words.data.byteOffset, length);
  return JSON.parse(decoder.decode(bytes)) as Call;
}

function encodeTensor(name: string, t: Tensor): EncodedTensor {
  const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return { name, dtype: t.dtype, shape: t.shape, data: btoa(binary) };
}

function decodeTensor(encoded: EncodedTensor): Tensor {
  const binary = atob(encoded.data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return tensor(encoded.dtype, encoded.shape, viewOf(encoded.dtype, bytes.buffer));
}

/**
 * The front rank's view of its group's engines: every call is sent to the followers, then run here.
 * `stop()` (or disposal) releases the followers; the engine itself is not disposed.
 */
export class LockstepEngine implements SequenceEngine {
  readonly backend: string;
  readonly backendVersion: string;
  readonly inputs: Engine["inputs"];
  readonly outputs: Engine["outputs"];
  #pools = 0;
  #stopped = false;
  /** Calls are sent and run one at a time, in the order they were made. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(readonly engine: Engine, readonly group: ProcessGroup) {
    if (group.rank !== ROOT) {
      throw new DistError(`lockstep: rank ${group.rank} of ${group.name} is not its front`);
    }
    this.backend = engine.backend;
    this.backendVersion = engine.backendVersion;
    this.inputs = engine.inputs;
    this.outputs = engine.outputs;
  }

  run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    const encoded = Object.entries(inputs).map(([name, t]) => encodeTensor(name, t));
    return this.#call({ op: "run", inputs: encoded }, () => this.engine.run(inputs));
  }

  sequences(options: SequenceOptions): Sequences {
    const pool = this.#pools++;
    const local = openSequences(this.engine, options);
    const opened = this.#call({ op: "open", pool, options }, () => undefined);
    const call = <T>(message: Call, work: () => Promise<T> | T) =>
      opened.then(() => this.#call(message, work));
    const sequences: Sequences = {
      slots: local.slots,
      maxLength: local.maxLength,
      step: async (batch) => {
        checkStep(batch, local);
        return await call({ op: "step", pool, batch }, () => local.step(batch)).finally(adopt);
      },
      greedy: async (batch) => {
        checkStep(batch, local);
        return await call({ op: "greedy", pool, batch }, () => local.greedy(batch)).finally(adopt);
      },
      // Release and dispose return at once, as the contract has them, but take effect here and on
      // the followers at the same point in the order of calls, after every step made before them.
      release: (slot) => {
        call({ op: "release", pool, slot }, () => local.release(slot)).catch(() => {});
      },
      [Symbol.dispose]: () => {
        call({ op: "close", pool }, () => local[Symbol.dispose]()).catch(() => {});
      },
    };
    // The optional calls of the pool here (drawing on the device, chained greedy steps), sent like
    // the rest; a pool of a just-in-time engine gains them at its first call.
    const adopt = () => {
      const { sample, decodeGreedy } = local;
      if (sample && !sequences.sample) {
        sequences.sample = async (batch, choices) => {
          checkStep(batch, local);
          return await call({ op: "sample", pool, batch, choices }, () => sample.call(local, batch, choices));
        };
      }
      if (decodeGreedy && !sequences.decodeGreedy) {
        sequences.decodeGreedy = async (batch, steps) => {
          checkStep(batch, local);
          return await call(
            { op: "decodeGreedy", pool, batch, steps },
            async () => await agree(this.group, await decodeGreedy.call(local, batch, steps)),
          );
        };
      }
    };
    adopt();
    return sequences;
  }

  serialize(): Uint8Array {
    return this.engine.serialize();
  }

  /** Tells the followers to return; later calls are refused. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    await this.#call({ op: "stop" }, () => undefined);
    this.#stopped = true;
  }

  [Symbol.dispose](): void {
    this.stop().catch(() => {});
  }

  #call<T>(message: Call, work: () => Promise<T> | T): Promise<T> {
    const next = this.#queue.catch(() => {}).then(async () => {
      if (this.#stopped) throw new EngineError("lockstep: the followers were stopped; no more calls can run");
      await sendCall(this.group, message);
      return await work();
    });
    this.#queue = next;
    return next;
  }
}

/**
 * After chained greedy steps: every rank learns the front's ids and says whether its own differ; the
 * call fails everywhere if any rank's do (its cache then holds other tokens than the front's).
 */
async function agree(group: ProcessGroup, ids: number[][]): Promise<number[][]> {
  const flat = Int32Array.from(ids.flat());
  const front = (await group.broadcast(i32([flat.length], flat), ROOT)).data as Int32Array;
  const differs = front.some((id, i) => id !== flat[i]) ? 1 : 0;
  const [ranks] = (await group.allReduce(i32([1], [differs]), "sum")).data as Int32Array;
  if (ranks > 0) {
    throw new EngineError(
      `lockstep: chained greedy steps chose other tokens on ${ranks} of the ${group.size} ranks than on the ` +
        "front; their caches no longer match it",
    );
  }
  return ids;
}

/** A follower's loop: runs the front's calls on this rank's engine until it says stop. */
export async function followLockstep(engine: Engine, group: ProcessGroup): Promise<void> {
  if (group.rank === ROOT) {
    throw new DistError(`lockstep: rank 0 of ${group.name} is the front, not a follower`);
  }
  const pools = new Map<number, Sequences>();
  try {
    while (true) {
      const call = await receiveCall(group);
      try {
        if (await runCall(call, engine, group, pools)) return;
      } catch (error) {
        // The front runs the same call on the same inputs and meets the same refusal; it reports it.
        if (!(error instanceof EngineError)) throw error;
      }
    }
  } finally {
    for (const pool of pools.values()) pool[Symbol.dispose]();
  }
}

/** Runs one call of the front's on this rank; true when it says stop. */
async function runCall(
  call: Call,
  engine: Engine,
  group: ProcessGroup,
  pools: Map<number, Sequences>,
): Promise<boolean> {
  switch (call.op) {
    case "stop":
      return true;
    case "run":
      await engine.run(Object.fromEntries(call.inputs.map((t) => [t.name, decodeTensor(t)])));
      break;
    case "open":
      pools.set(call.pool, openSequences(engine, call.options));
      break;
    case "step":
      await poolOf(pools, call.pool).step(call.batch);
      break;
    case "greedy":
      await poolOf(pools, call.pool).greedy(call.batch);
      break;
    case "sample": {
      const pool = poolOf(pools, call.pool);
      if (!pool.sample) {
        throw new DistError("lockstep: the front draws on its device; this rank's pool cannot");
      }
      await pool.sample(call.batch, call.choices);
      break;
    }
    case "decodeGreedy": {
      const pool = poolOf(pools, call.pool);
      if (!pool.decodeGreedy) {
        throw new DistError("lockstep: the front chains greedy steps; this rank's pool cannot");
      }
      await agree(group, await pool.decodeGreedy(call.batch, call.steps));
      break;
    }
    case "release":
      poolOf(pools, call.pool).release(call.slot);
      break;
    case "close":
      poolOf(pools, call.pool)[Symbol.dispose]();
      pools.delete(call.pool);
      break;
  }
  return false;
}

function poolOf(pools: Map<number, Sequences>, id: number): Sequences {
  const pool = pools.get(id);
  if (!pool) throw new DistError(`lockstep: the front used pool ${id}, which this rank never opened`);
  return pool;
}
