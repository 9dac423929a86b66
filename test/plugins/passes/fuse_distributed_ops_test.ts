import pass from "../../../plugins/passes/fuse_distributed_ops.ts";
import { assertPass, assertPreserves, parseGraph } from "../../../mod.ts";

Deno.test("fuse-distributed-ops fuses every collective kind with its wait", () => {
  assertPass(
    pass,
    `
graph g {
  input %x: f32[batch, 8]
  %a: f32[batch, 8] = all_reduce(%x) {group: "tp", reduce: "sum", size: 2}
  %b: f32[batch, 8] = wait(%a)
  %c: f32[batch, 16] = all_gather(%b) {axis: 1, group: "tp", size: 2}
  %d: f32[batch, 16] = wait(%c)
  %e: f32[batch, 8] = reduce_scatter(%d) {axis: 1, group: "tp", reduce: "max", size: 2}
  %f: f32[batch, 8] = wait(%e)
  %g: f32[batch, 8] = broadcast(%f) {group: "tp", root: 1, size: 2}
  %h: f32[batch, 8] = wait(%g)
  return %h
}`,
    `
graph g {
  input %x: f32[batch, 8]
  %b: f32[batch, 8] = fused_all_reduce(%x) {group: "tp", reduce: "sum", size: 2}
  %d: f32[batch, 16] = fused_all_gather(%b) {axis: 1, group: "tp", size: 2}
  %f: f32[batch, 8] = fused_reduce_scatter(%d) {axis: 1, group: "tp", reduce: "max", size: 2}
  %h: f32[batch, 8] = fused_broadcast(%f) {group: "tp", root: 1, size: 2}
  return %h
}`,
  );
});

const shared = `
graph g {
  input %x: f32[4]
  %a: f32[4] = all_reduce(%x) {group: "tp", reduce: "sum", size: 1}
  %b: f32[4] = wait(%a)
  %c: f32[4] = add(%a, %b)
  return %c
}`;

Deno.test("fuse-distributed-ops leaves a collective that has other readers", () => {
  assertPass(pass, shared, shared);
});

Deno.test("fuse-distributed-ops run twice changes nothing more", () => {
  const once = `
graph g {
  input %x: f32[4]
  %a: f32[4] = all_reduce(%x) {group: "tp", reduce: "sum", size: 1}
  %b: f32[4] = wait(%a)
  return %b
}`;
  const fused = `
graph g {
  input %x: f32[4]
  %b: f32[4] = fused_all_reduce(%x) {group: "tp", reduce: "sum", size: 1}
  return %b
}`;
  assertPass(pass, once, fused);
  assertPass(pass, fused, fused);
  assertPreserves(pass, parseGraph(once));
});
