// The pools of compiled and just-in-time engines pass on the engine pool's optional calls (drawing on
// the device, chained greedy steps), checked like its steps, and only where the engine has them; and
// generateGreedy chains greedy steps where the pool can.

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert";
import { f32 } from "../../../core/ir/tensor.ts";
import { CompiledEngine, LazyEngine } from "../../../core/runtime/compiled.ts";
import { generateGreedy } from "../../../core/runtime/generate.ts";
import type { Engine } from "../../../core/runtime/engine.ts";
import type {
  SampleChoice,
  SequenceEngine,
  Sequences,
  SequenceStep,
} from "../../../core/runtime/sequences.ts";

/** An engine whose pool predicts (last id + 1), with or without the optional calls; it logs them. */
function fakeEngine(optional: boolean, log: string[]): SequenceEngine {
  const sequences = (): Sequences => {
    const pool: Sequences = {
      slots: 4,
      maxLength: 64,
      step: (batch) => Promise.resolve(f32([batch.length, 8])),
      greedy: (batch) => Promise.resolve(batch.map((entry) => entry.ids.at(-1)! + 1)),
      release: () => {},
      [Symbol.dispose]: () => {},
    };
    if (optional) {
      pool.sample = (batch: SequenceStep[], choices: SampleChoice[]) => {
        log.push(`sample ${choices.length}`);
        return Promise.resolve(batch.map(() => 7));
      };
      pool.decodeGreedy = (batch: SequenceStep[], steps: number) => {
        log.push(`decodeGreedy ${steps}`);
        return Promise.resolve(Array.from({ length: steps }, (_, n) => batch.map((e) => e.ids[0] + n + 1)));
      };
    }
    return pool;
  };
  const engine = {
    backend: "fake",
    backendVersion: "1",
    inputs: [],
    outputs: [],
    run: () => Promise.resolve({}),
    serialize: () => new Uint8Array(),
    sequences,
    [Symbol.dispose]: () => {},
  };
  return engine as Engine as SequenceEngine;
}

const CHOICE: SampleChoice = { temperature: 1, topK: 0, topP: 1, uniform: 0.5 };

Deno.test("compiled engine: the pool passes on the engine's device draws and chained steps, checked", async () => {
  const log: string[] = [];
  const compiled = new CompiledEngine(fakeEngine(true, log), { seq: [1, 2, 2], past: [0, 32, 32] });
  using pool = compiled.sequences({ slots: 2, maxLength: 32 });
  deepStrictEqual(await pool.decodeGreedy!([{ slot: 0, ids: [3], start: 4 }], 3), [[4], [5], [6]]);
  deepStrictEqual(await pool.sample!([{ slot: 1, ids: [1, 2], start: 0 }], [CHOICE]), [7]);
  // three ids in one step pass the compiled profile's 2: refused before the engine sees them
  await rejects(() => pool.sample!([{ slot: 0, ids: [1, 2, 3], start: 0 }], [CHOICE]), /compiled for/);
  deepStrictEqual(log, ["decodeGreedy 3", "sample 1"]);
  using plain = new CompiledEngine(fakeEngine(false, log)).sequences({ slots: 2, maxLength: 32 });
  strictEqual(plain.sample, undefined);
  strictEqual(plain.decodeGreedy, undefined);
});

Deno.test("just-in-time engine: the optional calls join the pool once the engine is built", async () => {
  const log: string[] = [];
  const lazy = new LazyEngine("fake", "1", [], [], () => Promise.resolve(fakeEngine(true, log)));
  using pool = lazy.sequences({ slots: 2, maxLength: 32 });
  strictEqual(pool.decodeGreedy, undefined, "nothing is known of the engine before it is built");
  deepStrictEqual(await pool.greedy([{ slot: 0, ids: [1, 2], start: 0 }]), [3]);
  const built: Sequences = pool; // strictEqual above narrowed the type of pool.decodeGreedy
  ok(built.decodeGreedy && built.sample);
  deepStrictEqual(await built.decodeGreedy([{ slot: 0, ids: [3], start: 2 }], 2), [[4], [5]]);
  deepStrictEqual(log, ["decodeGreedy 2"]);
  using plainPool = new LazyEngine("fake", "1", [], [], () => Promise.resolve(fakeEngine(false, log)))
    .sequences({ slots: 2, maxLength: 32 });
  await plainPool.greedy([{ slot: 0, ids: [1], start: 0 }]);
  strictEqual(plainPool.decodeGreedy, undefined);
});

Deno.test("generateGreedy: chained runs where the pool chains, the tokens of step-by-step", async () => {
  const log: string[] = [];
  const prompts = [[1, 2], [5]];
  const streamed: number[][] = [];
  const chained = await generateGreedy(fakeEngine(true, log), prompts, {
    maxTokens: 20,
    onToken: (step) => streamed.push(step),
  });
  const stepwise = await generateGreedy(fakeEngine(false, log), prompts, { maxTokens: 20 });
  deepStrictEqual(chained, stepwise);
  deepStrictEqual(chained[0], Array.from({ length: 20 }, (_, i) => 3 + i));
  deepStrictEqual(log, ["decodeGreedy 16", "decodeGreedy 3"]);
  strictEqual(streamed.length, 20, "every step still streams its tokens");
});
