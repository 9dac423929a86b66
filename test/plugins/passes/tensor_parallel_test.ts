import { deepStrictEqual, ok, throws } from "node:assert";
import { join } from "node:path";
import tp, { globMatches, PlanError, shardGraph } from "../../../plugins/passes/tensor_parallel.ts";
import fuse from "../../../plugins/passes/fuse_distributed_ops.ts";
import { exportCheckpoint } from "../../../plugins/export/hf.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { generateGreedy, logitsOf, testPassContext } from "../../../mod.ts";
import { onEveryRank, simulatedEngines } from "../../../core/testing/ranks.ts";
import { printGraph } from "../../../core/ir/text.ts";

const fixtures = new URL("../../fixtures/", import.meta.url).pathname;

function shards(
  model: string,
  size: number,
  plan: "auto" | Record<string, "colwise" | "rowwise" | "replicate"> = "auto",
) {
  const exported = exportCheckpoint(join(fixtures, model));
  const graphs = Array.from({ length: size }, (_, rank) => {
    const ctx = testPassContext({ tp: { rank, size } });
    return fuse.run(tp.run(exported.graph, { plan, group: "tp" }, ctx));
  });
  return { exported, graphs };
}

async function oracle(model: string) {
  return JSON.parse(await Deno.readTextFile(join(fixtures, model, "oracle.json")));
}

for (const model of ["tiny-llama", "tiny-qwen2", "tiny-gpt2"]) {
  for (const size of [2, 4]) {
    Deno.test(`tensor-parallel ${size} on ${model} gives the transformers logits and greedy tokens`, async () => {
      const { exported, graphs } = shards(model, size);
      using _ = exported;
      const expected = await oracle(model);
      const engines = await simulatedEngines(graphs, exported.weights, cpuBackend());
      const logits = await onEveryRank(engines, (engine) => logitsOf(engine, expected.logit_ids));
      let worst = 0;
      for (const rows of logits) {
        rows.forEach((row, i) =>
          row.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - expected.logits[i][j]))))
        );
      }
      ok(worst <= 1e-4, `max logit error ${worst}`);
      const tokens = await onEveryRank(
        engines,
        (engine) => generateGreedy(engine, [expected.prompt_ids], { maxTokens: 16 }),
      );
      for (const [rank, ids] of tokens.entries()) {
        deepStrictEqual(ids[0], expected.greedy_ids.slice(0, 16), `rank ${rank}`);
      }
    });
  }
}

Deno.test("tensor-parallel: each rank reads only its slice, and KV heads fewer than ranks are shared", () => {
  const { graphs } = shards("tiny-llama", 4); // 4 query heads, 2 KV heads
  const q = graphs[3].weights.find((w) => w.name === "model.layers.0.self_attn.q_proj.weight")!;
  deepStrictEqual(q.slices, [{ axis: 0, start: 48, end: 64 }]);
  const k = graphs.map((g) =>
    g.weights.find((w) => w.name === "model.layers.0.self_attn.k_proj.weight")!.slices[0]
  );
  deepStrictEqual(k.map((s) => s.start), [0, 0, 16, 16]);
  deepStrictEqual(graphs[0].inputs.find((i) => i.name === "past_k.0")!.type.shape, ["batch", 1, "past", 16]);
  const text = printGraph(graphs[1]);
  ok(text.includes("fused_all_reduce"), "row-parallel layers end in an all-reduce");
  ok(text.includes("fused_all_gather"), "the vocab-parallel logits are gathered");
});

Deno.test("tensor-parallel: a plan whose shapes do not divide fails clearly", () => {
  const { exported } = shards("tiny-llama", 1);
  using _ = exported;
  throws(
    () => shardGraph(exported.graph, { plan: "auto", group: "tp" }, { rank: 0, size: 3 }),
    (e: Error) =>
      e instanceof PlanError && /q_proj has 4 heads, which do not split over 3 ranks/.test(e.message),
  );
  throws(
    () =>
      shardGraph(exported.graph, { plan: { "layers.*.self_attn.o_proj": "rowwise" }, group: "tp" }, {
        rank: 0,
        size: 2,
      }),
    /o_proj is rowwise but its input is not split/,
  );
});

Deno.test("tensor-parallel: globs match module paths by whole trailing names", () => {
  ok(globMatches("layers.*.self_attn.q_proj", "model.layers.11.self_attn.q_proj"));
  ok(!globMatches("layers.*.self_attn.q_proj", "model.layers.1.self_attn.qq_proj"));
  ok(globMatches("lm_head", "lm_head"));
  ok(!globMatches("head", "lm_head"));
  ok(globMatches("*_proj", "model.layers.0.mlp.up_proj"));
});
