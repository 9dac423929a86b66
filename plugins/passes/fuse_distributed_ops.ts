// fuse-distributed-ops: a started collective whose only reader is its wait becomes one fused
// collective node, the form engines run (inside, or between segments). A collective read by
// anything else stays as it is. Running the pass twice changes nothing.

import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";
import { type Graph, usersOf } from "../../core/ir/graph.ts";
import { rewrite, type Rule } from "../../core/ir/rewrite.ts";
import { COLLECTIVES, fusedName } from "../../core/ir/ops/collective.ts";

export const options = z.object({}).strict();

function fuseRules(graph: Graph): Rule[] {
  const users = usersOf(graph);
  return COLLECTIVES.map((kind): Rule => [
    // wait(collective(x)) is fused_collective(x) when the wait is the collective's only reader
    {
      op: "wait",
      inputs: [{
        op: kind,
        as: "started",
        inputs: [{ as: "x" }],
        where: (node) => users.get(node.outputs[0])?.length === 1,
      }],
    },
    (m, emit) => emit.op(fusedName(kind), [m.values.x], m.nodes.started.attrs),
  ]);
}

export default definePlugin({
  kind: "pass",
  name: "fuse-distributed-ops",
  description: "fuses each collective with its wait into one node",
  options,
  run(graph: Graph) {
    return rewrite(graph, fuseRules(graph));
  },
});
