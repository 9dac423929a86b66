// Tests against a real TensorRT through the shim (native/trt). Their names start with "trt:" so
// `deno task test:trt` runs exactly these; where the shim or TensorRT cannot be loaded they are
// skipped with the reason printed. Build the shim first (README, "TensorRT").

import { ok, strictEqual } from "node:assert";
import { GraphBuilder } from "../../../core/ir/graph.ts";
import { f32, i32, type Tensor, toF32 } from "../../../core/ir/tensor.ts";
import { seededRandom } from "../../../core/testing/passes.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { options, tensorrtBackend } from "../../../plugins/engines/tensorrt.ts";
import type { TensorRtEngine } from "../../../plugins/engines/tensorrt/engine.ts";
import { capabilitiesOf, formatVersion } from "../../../plugins/engines/tensorrt/capabilities.ts";
import { openTensorRt, type TensorRtLibrary } from "../../../ffi/tensorrt.ts";
import { cText, FfiError } from "../../../ffi/errors.ts";

let library: TensorRtLibrary | undefined;
let skipped = "";
try {
  library = openTensorRt();
  const builder = library.symbols.rf_trt_builder_create();
  if (!builder) skipped = `TensorRT is not usable: ${library.lastError()}`;
  else library.symbols.rf_trt_builder_destroy(builder);
} catch (error) {
  skipped = (error as Error).message;
}
if (skipped) console.log(`trt tests skipped: ${skipped}`);
else {console.log(
    `trt tests on TensorRT ${formatVersion(capabilitiesOf(library!).libraryVersion)} (${library!.path})`,
  );}

const ignore = skipped !== "";

function random(shape: number[], seed: number): Tensor {
  const next = seededRandom(seed);
  return f32(shape, Array.from({ length: shape.reduce((a, c) => a * c, 1) }, () => next() - 0.5));
}

function assertClose(actual: Tensor, expected: Tensor, tolerance: number, what: string) {
  const [a, e] = [toF32(actual), toF32(expected)];
  strictEqual(a.length, e.length, `${what}: sizes`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - e[i]));
  ok(worst <= tolerance, `${what}: largest difference ${worst} > ${tolerance}`);
}

/** embedding → rmsnorm → linear → gelu → layernorm → linear → softmax, and argmax of the logits. */
function smallModel() {
  const b = new GraphBuilder("small");
  const ids = b.input("ids", "i32", ["batch", "seq"]);
  const x = b.op1("embedding", [b.weight("embed", "f32", [16, 8]), ids]);
  const normed = b.op1("rmsnorm", [x, b.weight("norm", "f32", [8])], { eps: 1e-6 });
  const hidden = b.op1("gelu", [
    b.op1("linear", [normed, b.weight("up", "f32", [12, 8]), b.weight("bias", "f32", [12])]),
  ]);
  const ln = b.op1("layernorm", [hidden, b.weight("ln_w", "f32", [12]), b.weight("ln_b", "f32", [12])]);
  const logits = b.op1("linear", [ln, b.weight("head", "f32", [16, 12])], {}, "logits");
  b.output(b.op1("softmax", [logits], { axis: -1 }, "probs"));
  b.output(b.op1("argmax", [logits], { axis: -1 }, "next"));
  const graph = b.finish();
  const weights = new Map(graph.weights.map((w, i) => [w.name, random(w.type.shape as number[], 10 + i)]));
  return { graph, weights };
}

const backend = () =>
  tensorrtBackend(options.parse({ tf32: false, min_block_size: 1 }), {
    fallback: cpuBackend(),
    collectives: (worldSize) => ({ worldSize }),
  });

Deno.test({
  name: "trt: a small model builds, runs at two shapes, and matches the cpu engine",
  ignore,
  async fn() {
    const { graph, weights } = smallModel();
    using engine = await backend().build(graph, weights) as TensorRtEngine;
    ok(engine.steps.every((step) => step.kind === "tensorrt"), "every op converts");
    using reference = await cpuBackend().build(graph, weights);
    for (const ids of [i32([1, 3], [1, 5, 9]), i32([2, 4], [0, 15, 3, 7, 2, 2, 11, 4])]) {
      const [got, want] = [await engine.run({ ids }), await reference.run({ ids })];
      assertClose(got.probs, want.probs, 1e-4, "probs");
      strictEqual(toF32(got.next).join(), toF32(want.next).join(), "argmax");
    }
    using loaded = await backend().deserialize(engine.serialize());
    const ids = i32([1, 2], [4, 8]);
    assertClose((await loaded.run({ ids })).probs, (await reference.run({ ids })).probs, 1e-4, "reloaded");
  },
});

Deno.test({
  name: "trt: rope and attention over a KV cache match the reference",
  ignore: ignore || !capabilitiesOf(library!).attentionLowerRight,
  async fn() {
    const b = new GraphBuilder("attention");
    const pos = b.input("pos", "i32", ["seq"]);
    const q = b.op1("transpose", [b.op1("rope", [b.input("q", "f32", [1, "seq", 4, 8]), pos])], {
      perm: [0, 2, 1, 3],
    });
    const k = b.input("k", "f32", [1, 2, "seq", 8]);
    const v = b.input("v", "f32", [1, 2, "seq", 8]);
    b.op(
      "sdpa",
      [q, k, v, b.input("past_k", "f32", [1, 2, "past", 8]), b.input("past_v", "f32", [1, 2, "past", 8])],
      {},
      ["out", "pk", "pv"],
    );
    b.output("out");
    b.output("pk");
    const graph = b.finish();
    using engine = await backend().build(graph, new Map());
    using reference = await cpuBackend().build(graph, new Map());
    const inputs = {
      pos: i32([3], [5, 6, 7]),
      q: random([1, 3, 4, 8], 1),
      k: random([1, 2, 3, 8], 2),
      v: random([1, 2, 3, 8], 3),
      past_k: random([1, 2, 5, 8], 4),
      past_v: random([1, 2, 5, 8], 5),
    };
    const [got, want] = [await engine.run(inputs), await reference.run(inputs)];
    assertClose(got.out, want.out, 1e-3, "attention");
    assertClose(got.pk, want.pk, 0, "present keys");
  },
});

Deno.test({
  name: "trt: a failing call throws FfiError with the shim's and TensorRT's words",
  ignore,
  fn() {
    const s = library!.symbols;
    const builder = s.rf_trt_builder_create();
    try {
      const out = new Int32Array(1);
      const dims = (...d: number[]) => BigInt64Array.from(d, BigInt);
      s.rf_trt_network_input(builder, cText("a"), 0, 2, dims(2, 3), out);
      s.rf_trt_network_input(builder, cText("b"), 0, 2, dims(4, 5), out);
      let error: unknown;
      try {
        library!.check(s.rf_trt_add_matmul(builder, 0, 0, 1, 0, out), "matmul");
        library!.check(s.rf_trt_add_elementwise(builder, 0, 99, 0, out), "elementwise");
      } catch (e) {
        error = e;
      }
      ok(error instanceof FfiError, String(error));
      ok(error.message.length > "matmul: ".length, error.message);
    } finally {
      s.rf_trt_builder_destroy(builder);
    }
  },
});
