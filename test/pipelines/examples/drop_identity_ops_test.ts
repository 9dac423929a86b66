import pass from "../../../pipelines/examples/drop_identity_ops.ts";
import { assertPass, assertPreserves, parseGraph } from "../../../mod.ts";

const before = `
graph g {
  input %x: f32[batch, 4]
  %a: f32[batch, 4] = cast(%x) {dtype: "f32"}
  %b: f32[batch, 4] = reshape(%a) {shape: ["batch", 4]}
  %c: f32[4, batch] = transpose(%b) {perm: [1, 0]}
  %d: f32[4, batch] = transpose(%c) {perm: [0, 1]}
  %e: f32[4, batch] = silu(%d)
  return %e
}`;

Deno.test("drop-identity-ops removes every op that does nothing", () => {
  assertPass(
    pass,
    before,
    `
graph g {
  input %x: f32[batch, 4]
  %c: f32[4, batch] = transpose(%x) {perm: [1, 0]}
  %e: f32[4, batch] = silu(%c)
  return %e
}`,
  );
});

Deno.test("drop-identity-ops keeps the kinds it is told to keep", () => {
  assertPass(
    pass,
    before,
    `
graph g {
  input %x: f32[batch, 4]
  %a: f32[batch, 4] = cast(%x) {dtype: "f32"}
  %c: f32[4, batch] = transpose(%a) {perm: [1, 0]}
  %e: f32[4, batch] = silu(%c)
  return %e
}`,
    { casts: false },
  );
});

Deno.test("drop-identity-ops keeps the graph's outputs", () => {
  assertPreserves(pass, parseGraph(before), { dims: { batch: 3 } });
});

Deno.test("drop-identity-ops leaves an identity op whose output is the graph's output", () => {
  const graph = `
graph g {
  input %x: f32[2]
  %y: f32[2] = cast(%x) {dtype: "f32"}
  return %y
}`;
  assertPass(pass, graph, graph);
});
