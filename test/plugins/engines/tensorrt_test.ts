// CI tests of the tensorrt engine without TensorRT: converter selection, partitioning and the
// collective path, against fake capability tables. None of these names contains the letters
// "t-r-t" in a row, so `deno task test:trt` (a name filter) leaves them out.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert";
import { GraphBuilder } from "../../../core/ir/graph.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import {
  chooseCollectivePath,
  type CollectiveEnvironment,
} from "../../../plugins/engines/tensorrt/capabilities.ts";
import { checkNode, type ConvertTarget } from "../../../plugins/engines/tensorrt/converters/all.ts";
import { reshapeTarget } from "../../../plugins/engines/tensorrt/converters/shape.ts";
import { partitionForTensorRt, placeNodes } from "../../../plugins/engines/tensorrt/partition.ts";
import { writeNetwork } from "../../../plugins/engines/tensorrt/plan.ts";
import { f32 } from "../../../core/ir/tensor.ts";
import { fakeCapabilities, RecordingNetwork } from "./tensorrt/fakes.ts";

const V10_15 = fakeCapabilities(10, 15);
const V10_16 = fakeCapabilities(10, 16);
const V11_1 = fakeCapabilities(11, 1);

function target(
  tensorrt = V10_16,
  env: Omit<CollectiveEnvironment, "tensorrt"> = { worldSize: 2 },
): ConvertTarget {
  return { tensorrt, collectives: chooseCollectivePath({ ...env, tensorrt }), communicatorGroup: "tp" };
}

Deno.test("tensorrt collective path: priority order and world size 1", () => {
  const cases: [CollectiveEnvironment, string, boolean][] = [
    [{ worldSize: 1, tensorrt: V11_1 }, "none", true],
    [{ worldSize: 1 }, "none", true],
    [{ worldSize: 2, tensorrt: V10_16 }, "dist-collective", true],
    [
      { worldSize: 8, tensorrt: V11_1, trtllmPlugins: { path: "/x.so", exists: true } },
      "dist-collective",
      true,
    ],
    [{ worldSize: 2, tensorrt: { ...V11_1, libraryVersion: 101503 } }, "nccl-between-segments", false],
    [
      { worldSize: 2, tensorrt: V10_15, trtllmPlugins: { path: "/x.so", exists: true } },
      "trtllm-plugins",
      false,
    ],
    [
      { worldSize: 2, tensorrt: V10_15, trtllmPlugins: { path: "/x.so", exists: false } },
      "nccl-between-segments",
      false,
    ],
    [{ worldSize: 2 }, "nccl-between-segments", false],
  ];
  for (const [env, path, inEngine] of cases) {
    const choice = chooseCollectivePath(env);
    deepStrictEqual([choice.path, choice.inEngine], [path, inEngine], JSON.stringify(env));
  }
  ok(
    chooseCollectivePath({ worldSize: 2, tensorrt: V10_15, trtllmPlugins: { path: "/x.so", exists: false } })
      .reason.includes("/x.so is not a file"),
  );
});

function reducedLinear(size: number, reduce = "sum") {
  const b = new GraphBuilder("reduced");
  const x = b.input("x", "f32", ["batch", 4]);
  const y = b.op1("linear", [x, b.weight("w", "f32", [3, 4])]);
  const z = b.op1("fused_all_reduce", [y], { group: "tp", size, reduce });
  b.output(b.op1("add", [z, z], {}, "out"));
  return b.finish();
}

const weightsOf = (graph: ReturnType<typeof reducedLinear>) =>
  new Map(graph.weights.map((w) => {
    const shape = w.type.shape as number[];
    return [w.name, f32(shape, new Array(shape.reduce((a, c) => a * c, 1)).fill(0.5))];
  }));

Deno.test("tensorrt converters: a group of one rank adds no collective layer", () => {
  const graph = reducedLinear(1);
  const worldOne = target(V11_1, { worldSize: 1 });
  deepStrictEqual(placeNodes(graph, worldOne).map((p) => p.kind), ["tensorrt", "tensorrt", "tensorrt"]);
  const net = new RecordingNetwork();
  writeNetwork(net, graph, weightsOf(graph));
  deepStrictEqual(net.kinds(), ["matmul", "elementwise:add"]);
  const matmul = net.layers.find((l) => l.layer === "matmul")!;
  strictEqual(matmul.args[3], true, "linear multiplies by the weight transposed");
  deepStrictEqual(net.outputs.map((o) => o.name), ["out"]);
});

Deno.test("tensorrt converters: collectives over two ranks become DistCollective layers", () => {
  const graph = reducedLinear(2, "max");
  deepStrictEqual(placeNodes(graph, target(V10_16)).map((p) => p.kind), ["tensorrt", "tensorrt", "tensorrt"]);
  const net = new RecordingNetwork();
  writeNetwork(net, graph, weightsOf(graph));
  deepStrictEqual(net.kinds(), ["matmul", "collective:all_reduce", "elementwise:add"]);
  deepStrictEqual(net.layers.find((l) => l.layer === "collective:all_reduce")!.args.slice(1), ["max", -1, 2]);

  const b = new GraphBuilder("gather");
  const x = b.input("x", "f32", ["batch", 4]);
  b.output(b.op1("fused_all_gather", [x], { group: "tp", size: 2, axis: -1 }, "out"));
  const gather = new RecordingNetwork();
  writeNetwork(gather, b.finish(), new Map());
  deepStrictEqual(gather.kinds(), ["transpose", "collective:all_gather", "transpose"]);
  deepStrictEqual(gather.layers.filter((l) => l.layer === "transpose").map((l) => l.args[1]), [[1, 0], [
    1,
    0,
  ]]);
});

Deno.test("tensorrt converters: selection follows the capability table", () => {
  const b = new GraphBuilder("attention");
  const input = (name: string, seq: string) => b.input(name, "f16", [1, 2, seq, 8]);
  const [q, k, v] = [input("q", "seq"), input("k", "seq"), input("v", "seq")];
  b.op("sdpa", [q, k, v, input("past_k", "past"), input("past_v", "past")]);
  const x = b.input("x", "f32", [2, 3]);
  b.op1("reshape", [x], { shape: ["a", "b"] });
  b.op1("argmax", [b.op1("reshape", [x], { shape: [6] })]);
  const graph = b.finish();
  const verdicts = (caps = V10_16) => graph.nodes.map((node) => checkNode(node, graph.types, target(caps)));
  const [sdpa, twoUnknown, flat, argmax] = verdicts();
  ok(typeof sdpa === "string" && sdpa.includes("lower-right causal mask"), String(sdpa));
  ok(typeof twoUnknown === "string" && twoUnknown.includes("more than one size"), String(twoUnknown));
  strictEqual(flat, true);
  ok(typeof argmax === "string" && argmax.includes("rank-1"), String(argmax));
  strictEqual(verdicts(V11_1)[0], true, "TensorRT 11 has the attention sdpa needs");
  const unknown = checkNode({ op: "no_such_op", inputs: [], outputs: [], attrs: {} }, graph.types, target());
  strictEqual(unknown, "no TensorRT converter for no_such_op");
  deepStrictEqual(reshapeTarget(["batch", "seq", 64], ["batch", "seq", 4, 16]), [
    { axis: 0 },
    { axis: 1 },
    4,
    16,
  ]);
  deepStrictEqual(reshapeTarget(["batch", "seq", 64], ["tokens", 64]), [-1, 64]);
});

/** mul, add | reshape that TensorRT cannot take | silu, mul, add. */
function threeRuns() {
  const b = new GraphBuilder("runs");
  const x = b.input("x", "f32", [2, 4, 8]);
  const first = b.op1("add", [b.op1("mul", [x, x]), x], {}, "first");
  const odd = b.op1("reshape", [first], { shape: ["p", "q", 8] }, "odd");
  const silu = b.op1("silu", [odd]);
  b.output(b.op1("add", [b.op1("mul", [silu, silu]), odd], {}, "out"));
  return b.finish();
}

const summary = (steps: ReturnType<typeof partitionForTensorRt>) =>
  steps.map((s) => s.kind === "collective" ? `collective:${s.node.op}` : `${s.kind}:${s.graph.nodes.length}`);

Deno.test("tensorrt partition: fallback segments and min_block_size", () => {
  const graph = threeRuns();
  const options = (minBlockSize: number) => ({
    target: target(),
    minBlockSize,
    fallbackSupports: () => true,
  });
  const two = partitionForTensorRt(graph, options(2));
  deepStrictEqual(summary(two), ["tensorrt:2", "fallback:1", "tensorrt:3"]);
  const [head, middle, tail] = two as {
    kind: string;
    graph: { inputs: { name: string }[]; outputs: string[] };
  }[];
  deepStrictEqual([head.graph.inputs.map((i) => i.name), head.graph.outputs], [["x"], ["first"]]);
  deepStrictEqual([middle.graph.inputs.map((i) => i.name), middle.graph.outputs], [["first"], ["odd"]]);
  deepStrictEqual([tail.graph.inputs.map((i) => i.name), tail.graph.outputs], [["odd"], ["out"]]);
  ok((two[1] as { reasons: string[] }).reasons[0].startsWith("reshape:"));
  deepStrictEqual(summary(partitionForTensorRt(graph, options(3))), ["fallback:3", "tensorrt:3"]);
  deepStrictEqual(summary(partitionForTensorRt(graph, options(4))), ["fallback:6"]);
  throws(
    () => partitionForTensorRt(graph, { ...options(1), fallbackSupports: (op) => op !== "reshape" }),
    (e: Error) => e instanceof EngineError && e.message.includes("reshape (node 2) runs neither in TensorRT"),
  );
});

Deno.test("tensorrt partition: collectives between segments unless DistCollective is the path", () => {
  const graph = reducedLinear(2);
  const options = (tensorrt = V10_15) => ({
    target: target(tensorrt),
    minBlockSize: 1,
    fallbackSupports: () => true,
  });
  deepStrictEqual(summary(partitionForTensorRt(graph, options())), [
    "tensorrt:1",
    "collective:fused_all_reduce",
    "tensorrt:1",
  ]);
  deepStrictEqual(summary(partitionForTensorRt(graph, options(V10_16))), ["tensorrt:3"]);
  const otherGroup = { ...options(V10_16).target, communicatorGroup: "dp" };
  deepStrictEqual(
    summary(partitionForTensorRt(graph, { ...options(V10_16), target: otherGroup })),
    ["tensorrt:1", "collective:fused_all_reduce", "tensorrt:1"],
  );
});
