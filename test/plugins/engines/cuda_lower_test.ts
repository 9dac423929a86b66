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

Deno.test("cuda lowering of Llama: fused q/k/v and gate/up, norms and silu·mul folded into products, folded attention", () => {
  using model = exportCheckpoint(join(FIXTURES, "tiny-llama"));
  const { steps, layers } = lower(model.graph);
  strictEqual(layers, 2);
  // per layer: qkv (+norm), o (+residual), gate/up (+norm, silu·mul), down (+residual), attention, 4
  // reshapes (views, no launch); then the head (+norm)
  deepStrictEqual(kinds(steps), { embedding: 1, gemm: 9, attention: 2, reshape: 8 });
  const gemms = steps.filter((s): s is Extract<Step, { kind: "gemm" }> => s.kind === "gemm");
  deepStrictEqual(gemms[0].parts.map((p) => p.weight), [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
  ]);
  deepStrictEqual(gemms[0].norm?.w, "model.layers.0.input_layernorm.weight");
  ok(gemms[1].residual && !gemms[1].norm, "o_proj adds the residual in its epilogue");
  strictEqual(gemms[2].parts.length, 2, "gate and up are one product");
  deepStrictEqual(gemms[2].parts.map((p) => p.weight), [
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
  ]);
  ok(
    gemms[2].gated && gemms[2].norm,
    "silu(gate)·up is the epilogue and post_attention_layernorm the prologue",
  );
  ok(gemms[8].norm && gemms[8].parts[0].output === "logits", "the final norm folds into the head");
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

  // A norm whose output something besides the product reads stays a step; so does a silu·mul of
  // products that are not the two parts of one product.
  const n = new GraphBuilder("shared norm");
  const h = n.input("h", "f32", ["batch", 4]);
  const normW = n.weight("norm", "f32", [4]);
  const gateW = n.weight("gate", "f32", [6, 4]);
  const upW = n.weight("up", "f32", [6, 4]);
  const normed = n.op1("rmsnorm", [h, normW], { eps: 1e-5 });
  const gate = n.op1("linear", [normed, gateW]);
  const up = n.op1("linear", [h, upW]);
  n.output(n.op1("mul", [n.op1("silu", [gate]), up]));
  n.output(n.op1("add", [normed, h]));
  deepStrictEqual(lower(n.finish()).steps.map((s) => s.kind), [
    "rmsnorm",
    "gemm",
    "gemm",
    "silu_mul",
    "binary",
  ]);

  const c = new GraphBuilder("computed");
  const p = c.input("p", "f32", [2, 3]);
  const q = c.input("q", "f32", [3, 2]);
  c.output(c.op1("matmul", [p, q]));
  throws(
    () => lower(c.finish()),
    (error: Error) => error instanceof EngineError && /weights/.test(error.message),
  );
});
