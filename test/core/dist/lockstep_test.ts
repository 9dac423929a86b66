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
