// The cuda engine's lowering, on the CPU: which nodes become one launch.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert";
import { join } from "node:path";
import { exportCheckpoint } from "../../../plugins/export/hf.ts";
import { lower, type Step } from "../../../plugins/engines/cuda/lower.ts";
import { GraphBuilder } from "../../../core/ir/graph.ts";
import { EngineError } from "../../../core/runtime/engine.ts";

const FIXTURES = new URL("../../fixtures/", import.meta.url).pathname;

function kinds(steps: Step[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const step of steps) counts[step.kind] = (counts[step.kind] ?? 0) + 1;
  return counts;
}

Deno.test("cuda lowering of Llama: fused q/k/v and gate/up, residual epilogues, silu·mul, folded attention", () => {
  using model = exportCheckpoint(join(FIXTURES, "tiny-llama"));
  const { steps, layers } = lower(model.graph);
  strictEqual(layers, 2);
  // per layer: 2 rmsnorm, qkv, o(+residual), gate/up, down(+residual), silu·mul, attention, 4 reshapes
  // (views, no launch); then norm and head
  deepStrictEqual(kinds(steps), { embedding: 1, rmsnorm: 5, gemm: 9, attention: 2, silu_mul: 2, reshape: 8 });
  const gemms = steps.filter((s): s is Extract<Step, { kind: "gemm" }> => s.kind === "gemm");
  deepStrictEqual(gemms[0].parts.map((p) => p.weight), [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
  ]);
  ok(gemms[1].residual, "o_proj adds the residual in its epilogue");
  strictEqual(gemms[2].parts.length, 2, "gate and up are one product");
  ok(gemms[3].residual, "down_proj adds the residual in its epilogue");
  const attention = steps.find((s): s is Extract<Step, { kind: "attention" }> => s.kind === "attention")!;
  ok(attention.q.rope && attention.k.rope && !attention.v.rope, "rope folds into the cache-writing kernel");
  ok(attention.outTokenMajor, "the transpose after attention folds away");
  ok(!steps.some((s) => s.kind === "transpose" || s.kind === "rope"));
});

Deno.test("cuda lowering of GPT-2: matmul + bias adds become bias epilogues of one q/k/v product", () => {
  using model = exportCheckpoint(join(FIXTURES, "tiny-gpt2"));
  const { steps } = lower(model.graph);
  const gemms = steps.filter((s): s is Extract<Step, { kind: "gemm" }> => s.kind === "gemm");
  const qkv = gemms[0];
  strictEqual(qkv.parts.length, 3);
  ok(qkv.parts.every((p) => p.transposed && p.bias), "Conv1D weights are [K, N]; their biases fold in");
  ok(gemms[1].residual && gemms[1].parts[0].bias, "c_proj: bias and residual in one epilogue");
  ok(!steps.some((s) => s.kind === "binary" && s.op === "add" && s.b.endsWith(".bias")));
});

Deno.test("cuda lowering: unfused graphs still lower op by op; products need weights", () => {
  const b = new GraphBuilder("plain");
  const x = b.input("x", "f32", ["batch", 4]);
  const y = b.input("y", "f32", ["batch", 4]);
  b.output(b.op1("softmax", [b.op1("mul", [b.op1("silu", [x]), y])]));
  const { steps } = lower(b.finish());
  deepStrictEqual(steps.map((s) => s.kind), ["silu_mul", "softmax"]);

  const c = new GraphBuilder("computed");
  const p = c.input("p", "f32", [2, 3]);
  const q = c.input("q", "f32", [3, 2]);
  c.output(c.op1("matmul", [p, q]));
  throws(
    () => lower(c.finish()),
    (error: Error) => error instanceof EngineError && /weights/.test(error.message),
  );
});
