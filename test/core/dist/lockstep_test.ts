import { deepStrictEqual, ok, rejects } from "node:assert";
import hf from "../../../plugins/export/hf.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { shardGraph } from "../../../plugins/passes/tensor_parallel.ts";
import fuse from "../../../plugins/passes/fuse_distributed_ops.ts";
import { simulatedEngines } from "../../../core/testing/ranks.ts";
import { memoryGroups } from "../../../core/dist/memory.ts";
import { followLockstep, LockstepEngine } from "../../../core/dist/lockstep.ts";
import { generateGreedy, logitsOf } from "../../../core/runtime/generate.ts";
import type { ExportedModel } from "../../../core/pipeline/plugin.ts";
import type { Engine } from "../../../core/runtime/engine.ts";
import { openSequences, type SequenceEngine, type Sequences } from "../../../core/runtime/sequences.ts";
import { sampleLogits } from "../../../core/serve/sampling.ts";

const FIXTURES = new URL("../../fixtures/", import.meta.url).pathname;
const ORACLE = JSON.parse(Deno.readTextFileSync(`${FIXTURES}/tiny-llama/oracle.json`));

function tinyLlama(): Promise<ExportedModel> {
  return hf.export(hf.options.parse({ path: "tiny-llama", dtype: "f32" }), {
    baseDir: FIXTURES,
    rank: 0,
    worldSize: 1,
    log: () => {},
  });
}

async function tensorParallelEngines(model: ExportedModel, size: number) {
  const graphs = Array.from(
    { length: size },
    (_, rank) => fuse.run(shardGraph(model.graph, { plan: "auto", group: "tp" }, { rank, size })),
  );
  return await simulatedEngines(graphs, model.weights, cpuBackend());
}

Deno.test("lockstep: the front alone drives its follower; tokens and logits equal the oracle's", async () => {
  using model = await tinyLlama();
  const engines = await tensorParallelEngines(model, 2);
  // The commands travel over a group of their own, as they would over the job's tp group.
  const control = memoryGroups(2, "tp");
  const front = new LockstepEngine(engines[0], control[0]);
  const follower = followLockstep(engines[1], control[1]);
  const [greedy] = await generateGreedy(front, [ORACLE.prompt_ids], { maxTokens: 12 });
  deepStrictEqual(greedy, ORACLE.greedy_ids.slice(0, 12));
  // A step the pool refuses is refused on the front and never reaches the follower.
  using pool = front.sequences({ slots: 1, maxLength: 8 });
  await rejects(pool.greedy([{ slot: 1, ids: [1], start: 0 }]), /slot 1 is outside the pool's 1 slots/);
  deepStrictEqual(await pool.greedy([{ slot: 0, ids: ORACLE.prompt_ids.slice(0, 4), start: 0 }]), [
    (await generateGreedy(front, [ORACLE.prompt_ids.slice(0, 4)], {
      maxTokens: 1,
    }))[0][0],
  ]);
  const logits = await logitsOf(front, ORACLE.logit_ids);
  const error = Math.max(...logits.flatMap((row, i) => row.map((v, j) => Math.abs(v - ORACLE.logits[i][j]))));
  ok(error < 1e-4, `max logit error ${error}`);
  await front.stop();
  await follower;
  await rejects(front.run({}), /followers were stopped/);
  engines.forEach((engine) => engine[Symbol.dispose]());
});

Deno.test("lockstep: a follower is refused the front's place and the front a follower's", async () => {
  const [zero, one] = memoryGroups(2, "tp");
  const engine = { inputs: [], outputs: [] } as unknown as ConstructorParameters<typeof LockstepEngine>[0];
  await rejects(followLockstep(engine, zero), /rank 0 of tp is the front/);
  let message = "";
  try {
    new LockstepEngine(engine, one);
  } catch (error) {
    message = (error as Error).message;
  }
  ok(message.includes("rank 1 of tp is not its front"), message);
});

Deno.test("lockstep: a release made while a step is queued takes effect after it, on both ranks", async () => {
  using model = await tinyLlama();
  const engines = await tensorParallelEngines(model, 2);
  const control = memoryGroups(2, "tp");
  const front = new LockstepEngine(engines[0], control[0]);
  const follower = followLockstep(engines[1], control[1]);
  using pool = front.sequences({ slots: 1, maxLength: 16 });
  const first = pool.greedy([{ slot: 0, ids: [1, 2, 3], start: 0 }]);
  const second = pool.greedy([{ slot: 0, ids: [4], start: 3 }]);
  pool.release(0);
  // The release comes after both steps: the slot is empty again, here as on the follower, so
  // continuing at 4 is refused on both, and both stay in step for what follows.
  await rejects(pool.greedy([{ slot: 0, ids: [5], start: 4 }]), /slot 0 holds 0 tokens/);
  deepStrictEqual(await pool.greedy([{ slot: 0, ids: [1, 2, 3], start: 0 }]), await first);
  await second;
  await front.stop();
  await follower;
  engines.forEach((engine) => engine[Symbol.dispose]());
});

/**
 * The engine with the optional calls of a device pool, made on the host for the lockstep plumbing
 * alone: draws from step's logits, chained greedy steps from greedy (their ids plus `skew` reported,
 * as a rank whose argmax went another way would report them).
 */
function withDeviceCalls(engine: Engine, skew = 0): SequenceEngine {
  return {
    backend: engine.backend,
    backendVersion: engine.backendVersion,
    inputs: engine.inputs,
    outputs: engine.outputs,
    run: (inputs) => engine.run(inputs),
    serialize: () => engine.serialize(),
    [Symbol.dispose]: () => engine[Symbol.dispose](),
    sequences(options): Sequences {
      const inner = openSequences(engine, options);
      return {
        slots: inner.slots,
        maxLength: inner.maxLength,
        step: (batch) => inner.step(batch),
        greedy: (batch) => inner.greedy(batch),
        sample: async (batch, choices) => {
          const logits = (await inner.step(batch)).data as Float32Array;
          const vocab = logits.length / batch.length;
          return choices.map((choice, i) =>
            sampleLogits(logits.subarray(i * vocab, (i + 1) * vocab), choice, choice.uniform)
          );
        },
        decodeGreedy: async (batch, steps) => {
          const out: number[][] = [];
          let entries = batch;
          for (let n = 0; n < steps; n++) {
            const ids = await inner.greedy(entries);
            out.push(ids.map((id) => id + skew));
            entries = entries.map((entry, i) => ({
              slot: entry.slot,
              ids: [ids[i]],
              start: entry.start + 1,
            }));
          }
          return out;
        },
        release: (slot) => inner.release(slot),
        [Symbol.dispose]: () => inner[Symbol.dispose](),
      };
    },
  };
}

Deno.test("lockstep: chained greedy steps and device draws run on the follower too; a rank that chains to other tokens fails the call", async () => {
  using model = await tinyLlama();
  const engines = await tensorParallelEngines(model, 2);
  const control = memoryGroups(2, "tp");
  const front = new LockstepEngine(withDeviceCalls(engines[0]), control[0]);
  const follower = followLockstep(withDeviceCalls(engines[1]), control[1]);
  // generateGreedy chains its steps through decodeGreedy: were the follower not running them, the
  // tensor-parallel collectives inside the front's steps would never complete.
  const [greedy] = await generateGreedy(front, [ORACLE.prompt_ids], { maxTokens: 12 });
  deepStrictEqual(greedy, ORACLE.greedy_ids.slice(0, 12));
  using pool = front.sequences({ slots: 1, maxLength: 32 });
  ok(pool.sample && pool.decodeGreedy, "the lockstep pool offers the optional calls of the pools under it");
  const prompt = ORACLE.prompt_ids.slice(0, 4);
  const drawn = await pool.sample([{ slot: 0, ids: prompt, start: 0 }], [{
    temperature: 0.7,
    topK: 0,
    topP: 0.9,
    uniform: 0.25,
  }]);
  const logits = await logitsOf(front, prompt);
  deepStrictEqual(drawn, [
    sampleLogits(Float32Array.from(logits.at(-1)!), { temperature: 0.7, topK: 0, topP: 0.9 }, 0.25),
  ]);
  deepStrictEqual(
    await pool.decodeGreedy([{ slot: 0, ids: drawn, start: prompt.length }], 3),
    (await generateGreedy(front, [[...prompt, ...drawn]], { maxTokens: 3 }))[0].map((id) => [id]),
  );
  await front.stop();
  await follower;

  // The follower's chained ids differ from the front's: the front's call fails, naming how many ranks.
  const skewed = memoryGroups(2, "tp");
  const front2 = new LockstepEngine(withDeviceCalls(engines[0]), skewed[0]);
  const follower2 = followLockstep(withDeviceCalls(engines[1], 1), skewed[1]);
  using pool2 = front2.sequences({ slots: 1, maxLength: 32 });
  await rejects(
    pool2.decodeGreedy!([{ slot: 0, ids: prompt, start: 0 }], 2),
    /chose other tokens on 1 of the 2 ranks than on the front/,
  );
  await front2.stop();
  await follower2;
  engines.forEach((engine) => engine[Symbol.dispose]());
});
