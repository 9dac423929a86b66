// Collective ops over a named process group of `size` ranks. Each comes in two forms: the started
// collective plus a `wait` on its result (as a tracer emits them), and the fused form that
// fuse-distributed-ops makes of the pair. Engines that cannot run them inside themselves cut the
// graph at the fused forms and run them between segments; over a group of one they are identities.

import { type OpDef, OpError, registerOp } from "../registry.ts";
import type { Attrs } from "../graph.ts";
import type { Tensor, TensorType } from "../tensor.ts";
import { divDim, mulDim } from "../dims.ts";
import { normalizeAxis, numberAttr, stringAttr } from "./common.ts";

export const REDUCTIONS = ["sum", "max", "min", "avg"] as const;
export type Reduction = typeof REDUCTIONS[number];

export const COLLECTIVES = ["all_reduce", "all_gather", "reduce_scatter", "broadcast"] as const;
export type CollectiveKind = typeof COLLECTIVES[number];

/** The fused op name of a collective: `fused_all_reduce` for `all_reduce`. */
export function fusedName(kind: CollectiveKind): string {
  return `fused_${kind}`;
}

export function collectiveKind(op: string): CollectiveKind | undefined {
  const bare = op.startsWith("fused_") ? op.slice("fused_".length) : op;
  return (COLLECTIVES as readonly string[]).includes(bare) ? bare as CollectiveKind : undefined;
}

export function isFusedCollective(op: string): boolean {
  return op.startsWith("fused_") && collectiveKind(op) !== undefined;
}

function groupSize(attrs: Attrs, op: string): number {
  stringAttr(attrs, "group", op);
  const size = numberAttr(attrs, "size", op);
  if (!Number.isInteger(size) || size < 1) throw new OpError(`${op}: group size must be a positive integer`);
  return size;
}

const shapeRules: Record<CollectiveKind, (x: TensorType, attrs: Attrs, op: string) => TensorType> = {
  all_reduce(x, attrs, op) {
    const reduce = stringAttr(attrs, "reduce", op, "sum");
    if (!(REDUCTIONS as readonly string[]).includes(reduce)) {
      throw new OpError(`${op}: unknown reduction ${reduce}`);
    }
    return x;
  },
  all_gather(x, attrs, op) {
    const axis = normalizeAxis(numberAttr(attrs, "axis", op), x.shape.length, op);
    const size = groupSize(attrs, op);
    return { dtype: x.dtype, shape: x.shape.map((d, i) => (i === axis ? mulDim(d, size) : d)) };
  },
  reduce_scatter(x, attrs, op) {
    const axis = normalizeAxis(numberAttr(attrs, "axis", op), x.shape.length, op);
    const size = groupSize(attrs, op);
    return { dtype: x.dtype, shape: x.shape.map((d, i) => (i === axis ? divDim(d, size, op) : d)) };
  },
  broadcast(x, attrs, op) {
    const root = numberAttr(attrs, "root", op, 0);
    if (root < 0 || root >= groupSize(attrs, op)) {
      throw new OpError(`${op}: root ${root} is outside the group`);
    }
    return x;
  },
};

function collectiveOp(name: string, kind: CollectiveKind, doc: string): OpDef {
  return registerOp({
    name,
    doc,
    arity: [1, 1],
    collective: true,
    infer([x], attrs) {
      groupSize(attrs, name);
      return [shapeRules[kind](x, attrs, name)];
    },
    run([x], attrs): Tensor[] {
      if (groupSize(attrs, name) === 1) return [x];
      throw new OpError(
        `${name} over ${attrs.size} ranks cannot run inside the reference engine: partition the graph so ` +
          "the runtime runs it between segments",
      );
    },
  });
}

const docs: Record<CollectiveKind, string> = {
  all_reduce: "reduces x over the group (attribute reduce: sum, max, min, avg)",
  all_gather: "concatenates every rank's x along attribute axis",
  reduce_scatter: "reduces x over the group and keeps this rank's share of attribute axis",
  broadcast: "every rank gets the x of attribute root",
};

for (const kind of COLLECTIVES) {
  collectiveOp(kind, kind, `starts a collective that ${docs[kind]}; its result is read through wait`);
  collectiveOp(fusedName(kind), kind, `${docs[kind]}, started and awaited in one node`);
}

registerOp({
  name: "wait",
  doc: "the finished result of a started collective",
  arity: [1, 1],
  infer([x]) {
    return [x];
  },
  run([x]) {
    return [x];
  },
});
