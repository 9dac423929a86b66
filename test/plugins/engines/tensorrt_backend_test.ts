// CI tests of the tensorrt backend's orchestration without TensorRT: segments from a planner whose
// plans are cpu engines, the fallback engine between them, collectives between segments over
// simulated ranks, and the payload round trip. Test names avoid "t-r-t" (see tensorrt_test.ts).

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { GraphBuilder } from "../../../core/ir/graph.ts";
import { f32, type Tensor, toF32 } from "../../../core/ir/tensor.ts";
import { memoryGroups } from "../../../core/dist/memory.ts";
import { interpret } from "../../../core/runtime/interpreter.ts";
import { seededRandom } from "../../../core/testing/passes.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { options, tensorrtBackend } from "../../../plugins/engines/tensorrt.ts";
import type { TensorRtEngine } from "../../../plugins/engines/tensorrt/engine.ts";
import { cpuPlanner, fakeCapabilities } from "./tensorrt/fakes.ts";

const random = (shape: number[], seed: number) => {
  const next = seededRandom(seed);
  return f32(shape, Array.from({ length: shape.reduce((a, c) => a * c, 1) }, () => next() - 0.5));
};

function backendFor(major: number, minor: number) {
  const planner = cpuPlanner(fakeCapabilities(major, minor));
  const backend = tensorrtBackend(options.parse({ min_block_size: 1 }), {
    planner,
    fallback: cpuBackend(),
    collectives: (worldSize) => ({ worldSize }),
  });
  return { planner, backend };
}

/** q scaled by itself, attention over a KV cache, the result doubled. */
function attentionGraph() {
  const b = new GraphBuilder("attention");
  const q = b.input("q", "f32", [1, 2, "seq", 4]);
  const k = b.input("k", "f32", [1, 2, "seq", 4]);
  const v = b.input("v", "f32", [1, 2, "seq", 4]);
  const pastK = b.input("past_k", "f32", [1, 2, "past", 4]);
  const pastV = b.input("past_v", "f32", [1, 2, "past", 4]);
  const [out, presentK] = b.op("sdpa", [b.op1("mul", [q, q]), k, v, pastK, pastV]);
  b.output(b.op1("add", [out, out], {}, "out"));
  b.output(presentK);
  return b.finish();
}

Deno.test("tensorrt backend: ops without a converter run in the fallback engine between segments", async () => {
  const graph = attentionGraph();
  const inputs: Record<string, Tensor> = {
    q: random([1, 2, 3, 4], 1),
    k: random([1, 2, 3, 4], 2),
    v: random([1, 2, 3, 4], 3),
    past_k: random([1, 2, 2, 4], 4),
    past_v: random([1, 2, 2, 4], 5),
  };
  const expected = interpret(graph, new Map(), inputs);
  const { planner, backend } = backendFor(10, 16); // no lower-right attention: sdpa falls back
  using engine = await backend.build(graph, new Map()) as TensorRtEngine;
  deepStrictEqual(engine.steps.map((s) => s.kind), ["tensorrt", "fallback", "tensorrt"]);
  deepStrictEqual(planner.networks.map((n) => n.kinds()), [["elementwise:mul"], ["elementwise:add"]]);
  strictEqual(engine.requiresCommunicator, false);
  const got = await engine.run(inputs);
  for (const name of graph.outputs) deepStrictEqual(toF32(got[name]), toF32(expected[name]), name);

  using loaded = await backend.deserialize(engine.serialize()) as TensorRtEngine;
  deepStrictEqual(loaded.steps.map((s) => s.kind), ["tensorrt", "fallback", "tensorrt"]);
  deepStrictEqual(loaded.inputs, engine.inputs);
  const again = await loaded.run(inputs);
  for (const name of graph.outputs) deepStrictEqual(toF32(again[name]), toF32(got[name]), name);

  using whole = await backendFor(11, 1).backend.build(graph, new Map()) as TensorRtEngine;
  deepStrictEqual(whole.steps.map((s) => s.kind), ["tensorrt"], "TensorRT 11 converts sdpa too");
});

function reducedSquare(size: number) {
  const b = new GraphBuilder("reduced");
  const x = b.input("x", "f32", ["batch", 3]);
  const y = b.op1("fused_all_reduce", [x], { group: "tp", size, reduce: "sum" });
  b.output(b.op1("mul", [y, y], {}, "out"));
  return b.finish();
}

Deno.test("tensorrt backend: collectives between segments over two ranks through the process group", async () => {
  const { backend } = backendFor(10, 15); // no DistCollective: nccl between segments
  const groups = memoryGroups(2, "tp");
  const engines = await Promise.all([0, 1].map(async (rank) => {
    const engine = await backend.build(reducedSquare(2), new Map()) as TensorRtEngine;
    return engine.bind((name) => {
      strictEqual(name, "tp");
      return groups[rank];
    });
  }));
  deepStrictEqual(engines[0].steps.map((s) => s.kind), ["collective", "tensorrt"]);
  ok(engines[0].requiresCommunicator);
  const xs = [f32([2, 3], [1, 2, 3, 4, 5, 6]), f32([2, 3], [6, 5, 4, 3, 2, 1])];
  const outs = await Promise.all(engines.map((engine, rank) => engine.run({ x: xs[rank] })));
  for (const out of outs) deepStrictEqual(Array.from(toF32(out.out)), new Array(6).fill(49));
  for (const engine of engines) engine[Symbol.dispose]();

  using single = await backend.build(reducedSquare(1), new Map()) as TensorRtEngine;
  deepStrictEqual(single.steps.map((s) => s.kind), ["tensorrt"]);
  strictEqual(single.requiresCommunicator, false, "one rank needs no communicator");
});

Deno.test("tensorrt backend: DistCollective segments ask the bound group for an NCCL communicator", async () => {
  const { backend } = backendFor(10, 16);
  using engine = await backend.build(reducedSquare(2), new Map()) as TensorRtEngine;
  deepStrictEqual(engine.steps.map((s) => s.kind), ["tensorrt"]);
  ok(engine.requiresCommunicator);
  const [group] = memoryGroups(2, "tp");
  let error: Error | undefined;
  try {
    engine.bind(() => group);
  } catch (e) {
    error = e as Error;
  }
  ok(error?.message.includes("needs an NCCL communicator"), String(error));
  let given: Deno.PointerValue | undefined;
  const step = engine.steps[0] as { engine: { setCommunicator(c: Deno.PointerValue): void } };
  step.engine.setCommunicator = (communicator) => (given = communicator);
  engine.bind(() => Object.assign(Object.create(group), { communicator: { comm: 0x1234n } }));
  strictEqual(
    Deno.UnsafePointer.value(given!),
    0x1234n,
    "the nccl group's ncclComm_t reaches setCommunicator",
  );
});
