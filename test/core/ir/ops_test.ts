import { deepStrictEqual, ok as assert, throws } from "node:assert";
import {
  bf16ToF32,
  f16ToF32,
  f32,
  f32ToBf16,
  f32ToF16,
  getOp,
  GraphBuilder,
  i32,
  interpret,
  OpError,
  type Tensor,
  toF32,
} from "../../../mod.ts";
import { seededRandom } from "../../../core/testing/passes.ts";
import { castTensor, tensor } from "../../../core/ir/tensor.ts";

function run(op: string, inputs: Tensor[], attrs = {}): Tensor[] {
  return getOp(op).run(inputs, attrs, { dims: new Map() });
}

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance = 1e-6): void {
  assert(actual.length === expected.length, `length ${actual.length} vs ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    assert(Math.abs(actual[i] - expected[i]) <= tolerance, `[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

function random(shape: number[], seed: number): Tensor {
  const next = seededRandom(seed);
  return f32(shape, Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => next() * 2 - 1));
}

Deno.test("f16 and bf16 conversions round to nearest even and keep specials", () => {
  deepStrictEqual([1, -2, 0.5, 65504].map(f32ToF16).map(f16ToF32), [1, -2, 0.5, 65504]);
  assert(f16ToF32(f32ToF16(1e6)) === Infinity);
  assert(Number.isNaN(f16ToF32(f32ToF16(NaN))));
  deepStrictEqual(f32ToF16(1 + 2 ** -11), f32ToF16(1)); // a tie rounds to the even neighbour
  deepStrictEqual(f16ToF32(f32ToF16(2 ** -24)), 2 ** -24); // smallest subnormal
  deepStrictEqual([1, -3.5, 0.15625].map(f32ToBf16).map(bf16ToF32), [1, -3.5, 0.15625]);
  deepStrictEqual(f32ToBf16(1 + 2 ** -8), f32ToBf16(1)); // tie to even
  deepStrictEqual(bf16ToF32(f32ToBf16(1 + 3 * 2 ** -9)), 1 + 2 ** -7); // rounds up
});

Deno.test("add and mul broadcast like numpy", () => {
  const [sum] = run("add", [f32([2, 3], [1, 2, 3, 4, 5, 6]), f32([3], [10, 20, 30])]);
  deepStrictEqual([...toF32(sum)], [11, 22, 33, 14, 25, 36]);
  const [product] = run("mul", [f32([2, 1], [2, 3]), f32([1, 3], [1, 2, 3])]);
  deepStrictEqual(product.shape, [2, 3]);
  deepStrictEqual([...toF32(product)], [2, 4, 6, 3, 6, 9]);
  throws(
    () => getOp("add").infer([{ dtype: "f32", shape: [2, 3] }, { dtype: "f32", shape: [4] }], {}),
    OpError,
  );
});

Deno.test("softmax, rmsnorm and layernorm match hand-computed values", () => {
  const [s] = run("softmax", [f32([2], [0, Math.log(3)])], { axis: -1 });
  close(toF32(s), [0.25, 0.75]);
  const [r] = run("rmsnorm", [f32([2], [3, 4]), f32([2], [1, 2])], { eps: 0 });
  const rms = Math.sqrt(12.5);
  close(toF32(r), [3 / rms, 8 / rms]);
  const [l] = run("layernorm", [f32([3], [1, 2, 3]), f32([3], [1, 1, 1]), f32([3], [0, 1, 0])], { eps: 0 });
  close(toF32(l), [-Math.sqrt(1.5), 1, Math.sqrt(1.5)], 1e-6);
});

Deno.test("linear equals matmul by the transposed weight, plus bias", () => {
  const x = random([2, 3, 4], 1);
  const w = random([5, 4], 2);
  const b = random([5], 3);
  const [wt] = run("transpose", [w], { perm: [1, 0] });
  const [viaMatmul] = run("matmul", [x, wt]);
  const [withBias] = run("add", [viaMatmul, b]);
  const [viaLinear] = run("linear", [x, w, b]);
  deepStrictEqual(viaLinear.shape, [2, 3, 5]);
  close(toF32(viaLinear), toF32(withBias), 1e-6);
});

Deno.test("gelu and silu agree with their definitions", () => {
  const [g] = run("gelu", [f32([3], [-1, 0, 2])], { approximate: "none" });
  close(toF32(g), [-0.15865525393145707, 0, 1.9544997361036416], 1e-6);
  const [t] = run("gelu", [f32([1], [1])], { approximate: "tanh" });
  close(toF32(t), [0.8411919906082768], 1e-6);
  const [s] = run("silu", [f32([2], [0, 1])]);
  close(toF32(s), [0, 1 / (1 + Math.exp(-1))]);
});

Deno.test("rope leaves position 0 unchanged and rotates pairs of halves", () => {
  const x = random([1, 2, 1, 4], 4);
  const [out] = run("rope", [x, i32([2], [0, 1])], { theta: 10000 });
  const xs = toF32(x);
  const o = toF32(out);
  close(o.subarray(0, 4), xs.subarray(0, 4));
  // position 1, pair 0 turns by 1 radian; pair 1 by 1/100 radian
  close(
    [o[4], o[6]],
    [xs[4] * Math.cos(1) - xs[6] * Math.sin(1), xs[6] * Math.cos(1) + xs[4] * Math.sin(1)],
    1e-6,
  );
  close([o[5], o[7]], [
    xs[5] * Math.cos(0.01) - xs[7] * Math.sin(0.01),
    xs[7] * Math.cos(0.01) + xs[5] * Math.sin(0.01),
  ], 1e-6);
});

Deno.test("sdpa over a cache gives what attention over the whole sequence gives", () => {
  // 4 query heads over 2 kv heads, 5 positions: all at once, or 3 then 2 with the cache.
  const q = random([1, 4, 5, 8], 5);
  const k = random([1, 2, 5, 8], 6);
  const v = random([1, 2, 5, 8], 7);
  const empty = f32([1, 2, 0, 8]);
  const [whole, presentK, presentV] = run("sdpa", [q, k, v, empty, empty]);
  deepStrictEqual(presentK.shape, [1, 2, 5, 8]);
  const part = (t: Tensor, from: number, to: number) =>
    run("slice", [t], { axis: 2, start: from, end: to })[0];
  const [first, pastK, pastV] = run("sdpa", [part(q, 0, 3), part(k, 0, 3), part(v, 0, 3), empty, empty]);
  const [second] = run("sdpa", [part(q, 3, 5), part(k, 3, 5), part(v, 3, 5), pastK, pastV]);
  const [joined] = run("concat", [first, second], { axis: 2 });
  close(toF32(joined), toF32(whole), 1e-6);
  close(toF32(presentV), toF32(v));
  // The first position sees only itself: its output is its own value row.
  close(toF32(whole).subarray(0, 8), toF32(v).subarray(0, 8), 1e-6);
});

Deno.test("shape ops move elements as numpy does", () => {
  const x = f32([2, 3], [0, 1, 2, 3, 4, 5]);
  deepStrictEqual([...toF32(run("transpose", [x], { perm: [1, 0] })[0])], [0, 3, 1, 4, 2, 5]);
  deepStrictEqual(run("reshape", [x], { shape: [3, -1] })[0].shape, [3, 2]);
  deepStrictEqual([...toF32(run("slice", [x], { axis: 1, start: 1, end: 3 })[0])], [1, 2, 4, 5]);
  deepStrictEqual([...toF32(run("concat", [x, x], { axis: 0 })[0])], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]);
  deepStrictEqual([...run("argmax", [f32([2, 3], [1, 5, 5, 9, 0, 2])], { axis: -1 })[0].data], [1, 0]);
  const [ids] = run("embedding", [f32([3, 2], [0, 1, 2, 3, 4, 5]), i32([2], [2, 0])]);
  deepStrictEqual([...toF32(ids)], [4, 5, 0, 1]);
  throws(() => run("embedding", [f32([3, 2]), i32([1], [3])]), /outside the table/);
  throws(
    () => getOp("slice").infer([{ dtype: "f32", shape: [2, 3] }], { axis: 1, start: 2, end: 5 }),
    OpError,
  );
});

Deno.test("symbolic sizes flow through shape rules and bind at run time", () => {
  const b = new GraphBuilder("g");
  const x = b.input("x", "f32", ["batch", "seq", 8]);
  const y = b.op1("reshape", [x], { shape: ["batch", "seq", 2, 4] });
  const z = b.op1("reshape", [y], { shape: ["batch", -1, 8] });
  b.output(z);
  const graph = b.finish();
  deepStrictEqual(graph.types.get(y)!.shape, ["batch", "seq", 2, 4]);
  deepStrictEqual(graph.types.get(z)!.shape, ["batch", "seq", 8]);
  const out = interpret(graph, new Map(), { x: random([2, 3, 8], 9) });
  deepStrictEqual(out[z].shape, [2, 3, 8]);
  throws(() => interpret(graph, new Map(), { x: random([2, 3, 7], 9) }), /axis 2 must be 8/);
});

Deno.test("collectives are identities over one rank and refuse to run over several", () => {
  const x = f32([2], [1, 2]);
  for (const op of ["all_reduce", "fused_all_gather", "reduce_scatter", "fused_broadcast"]) {
    deepStrictEqual(run(op, [x], { group: "tp", size: 1, axis: 0 })[0], x);
  }
  throws(() => run("fused_all_reduce", [x], { group: "tp", size: 2 }), /between segments/);
  deepStrictEqual(
    getOp("all_gather").infer([{ dtype: "f32", shape: ["seq", 4] }], { group: "tp", size: 2, axis: 1 })[0]
      .shape,
    ["seq", 8],
  );
  deepStrictEqual(
    getOp("reduce_scatter").infer([{ dtype: "f32", shape: [6] }], { group: "tp", size: 3, axis: 0 })[0].shape,
    [2],
  );
  throws(
    () => getOp("reduce_scatter").infer([{ dtype: "f32", shape: [5] }], { group: "tp", size: 2, axis: 0 }),
    /does not divide/,
  );
});

Deno.test("an unknown op names the closest known one", () => {
  throws(() => getOp("rms_norm"), /did you mean 'rmsnorm'/);
});

Deno.test("bf16 tensors past V8's plain-array limit (2^27 elements) convert to f32 and back", () => {
  const count = 2 ** 27 + 3; // a 1B model's tied embedding has 2^28
  const at = [0, 1, count - 2, count - 1];
  const value = (i: number) => (i % 2 ? -1.5 : 3);
  const bits = new Uint16Array(count);
  for (const i of at) bits[i] = f32ToBf16(value(i));
  const wide = castTensor(tensor("bf16", [count], bits), "f32");
  deepStrictEqual(at.map((i) => (wide.data as Float32Array)[i]), at.map(value));
  const back = castTensor(wide, "bf16");
  deepStrictEqual(at.map((i) => back.data[i]), at.map((i) => f32ToBf16(value(i))));
});
