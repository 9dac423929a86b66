import { deepStrictEqual, throws } from "node:assert";
import { GraphBuilder, IrError, parseGraph, printGraph, verifyGraph } from "../../../mod.ts";

function sample() {
  const b = new GraphBuilder("sample");
  const ids = b.input("ids", "i32", ["batch", "seq"]);
  const table = b.weight("model.embed.weight", "f32", [16, 8]);
  const half = b.weight("layers.0.w", "f32", [4, 8], "w_half");
  const x = b.op1("embedding", [table, ids]);
  const y = b.op1("rmsnorm", [x, b.weight("norm", "f32", [8])], { eps: 1e-5 });
  const z = b.op1("linear", [y, half]);
  const r = b.op1("reshape", [z], { shape: ["batch", "seq", 2, 2] });
  b.output(r);
  const graph = b.finish();
  graph.weights[1].slices.push({ axis: 0, start: 4, end: 8 });
  return graph;
}

Deno.test("the text form prints and parses back to the same graph", () => {
  const graph = sample();
  const text = printGraph(graph);
  const again = parseGraph(text);
  verifyGraph(again);
  deepStrictEqual(printGraph(again), text);
  deepStrictEqual(again.weights[1], graph.weights[1]);
  deepStrictEqual(again.nodes, graph.nodes);
});

Deno.test("the text form reads comments, symbolic sums and every attribute kind", () => {
  const graph = parseGraph(`
# a comment line
graph g {
  input %q: f32[1, 2, seq, 4]
  input %k: f32[1, 1, seq, 4]
  input %pk: f32[1, 1, past, 4]   # trailing comment
  %o: f32[1, 2, seq, 4], %ck: f32[1, 1, past+seq, 4], %cv: f32[1, 1, past+seq, 4] = sdpa(%q, %k, %k, %pk, %pk) {scale: 0.5}
  %s: f32[1, 2, seq, 4] = softmax(%o) {axis: -1}
  return %s, %ck
}`);
  deepStrictEqual(graph.types.get("ck")!.shape, [1, 1, "past+seq", 4]);
  deepStrictEqual(graph.nodes[0].attrs, { scale: 0.5 });
});

Deno.test("text errors name the line and what is wrong", () => {
  const cases: [string, RegExp][] = [
    ["graph g {\n  input %x: f32[2]\n  %y: f32[3] = silu(%x)\n  return %y\n}", /line 3.*gives f32\[2\]/],
    ["graph g {\n  input %x: f32[2]\n  %y: f32[2] = silu(%z)\n  return %y\n}", /line 3.*%z is used before/],
    ["graph g {\n  input %x: q8[2]\n}", /line 2.*unknown dtype q8/],
    ["graph g {\n  input %x: f32[2]\n  %y: f32[2] = sigmoid(%x)\n}", /line 3.*unknown op 'sigmoid'/],
    ["graph g {\n  input %x: f32[2]\n  return %x\n", /not closed/],
    ["graph g {\n  input %x: f32[2]\n  input %x: f32[2]\n}", /line 3.*defined twice/],
  ];
  for (const [text, message] of cases) {
    throws(() => parseGraph(text), (e: Error) => e instanceof IrError && message.test(e.message));
  }
});
