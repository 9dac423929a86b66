// An example of a user pass, named in a pipeline by its path:
//   lower:
//     - use: ./examples/drop_identity_ops.ts
// It removes ops that do nothing: casts to the dtype a value already has, reshapes to the shape
// it already has, and transposes by the identity permutation.

import { z } from "zod";
import { definePlugin, rewrite, type Rule } from "../../mod.ts";

export const options = z.object({
  casts: z.boolean().default(true).describe("drop casts to the value's own dtype"),
  reshapes: z.boolean().default(true).describe("drop reshapes to the value's own shape"),
  transposes: z.boolean().default(true).describe("drop transposes by the identity permutation"),
}).strict();

const sameShape = (a: unknown[], b: unknown[]) => a.length === b.length && a.every((d, i) => d === b[i]);

const rules = {
  // cast(x) to x's own dtype is x
  casts: [{
    op: "cast",
    inputs: [{ as: "x" }],
    where: (node, graph) => graph.types.get(node.inputs[0])!.dtype === node.attrs.dtype,
  }, (m) => [m.values.x]],
  // reshape(x) to x's own shape is x
  reshapes: [
    { op: "reshape", inputs: [{ as: "x" }], as: "out" },
    (m) => sameShape(m.type(m.values.x).shape, m.type(m.values.out).shape) ? [m.values.x] : undefined,
  ],
  // transpose(x) by 0, 1, 2, … is x
  transposes: [{
    op: "transpose",
    inputs: [{ as: "x" }],
    where: (node) => (node.attrs.perm as number[]).every((p, i) => p === i),
  }, (m) => [m.values.x]],
} satisfies Record<string, Rule>;

export default definePlugin({
  kind: "pass",
  name: "drop-identity-ops",
  description: "removes casts, reshapes and transposes that change nothing",
  options,
  run(graph, opts: z.infer<typeof options>) {
    const chosen = (Object.keys(rules) as (keyof typeof rules)[]).filter((key) => opts[key]).map((key) =>
      rules[key]
    );
    return rewrite(graph, chosen);
  },
});
