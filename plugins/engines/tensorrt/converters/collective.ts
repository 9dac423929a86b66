// Collectives inside the engine: DistCollective layers where that is the chosen path, nothing at
// all over a group of one. Everywhere else the check fails and the graph is cut at them.

import {
  collectiveKind,
  COLLECTIVES,
  fusedName,
  type Reduction,
} from "../../../../core/ir/ops/collective.ts";
import type { Node } from "../../../../core/ir/graph.ts";
import type { ConversionScope, ConvertTarget } from "./registry.ts";
import { normalizedAxis, registerConverter } from "./registry.ts";

function checkCollective(node: Node, target: ConvertTarget): true | string {
  const size = node.attrs.size as number;
  if (size === 1) return true;
  const { collectives } = target;
  if (collectives.path === "none") return `a collective over ${size} ranks in a job of one rank`;
  if (!collectives.inEngine) return `collectives run between segments (${collectives.path})`;
  if (target.communicatorGroup !== undefined && node.attrs.group !== target.communicatorGroup) {
    return `the engine's communicator is group ${target.communicatorGroup}, not ${node.attrs.group}`;
  }
  return true;
}

function convertCollective(node: Node, scope: ConversionScope): number[] {
  const input = node.inputs[0];
  const x = scope.value(input);
  const size = node.attrs.size as number;
  if (size === 1) return [x]; // a group of one: the identity, no layer
  const kind = collectiveKind(node.op)!;
  const { net } = scope;
  const reduce = kind === "all_reduce" || kind === "reduce_scatter"
    ? (node.attrs.reduce ?? "sum") as Reduction
    : undefined;
  const root = kind === "broadcast" ? (node.attrs.root ?? 0) as number : -1;
  const rank = scope.rank(input);
  const axis = kind === "all_gather" || kind === "reduce_scatter"
    ? normalizedAxis(node.attrs.axis as number, rank)
    : 0;
  if (axis === 0) return [net.distCollective(x, kind, reduce, root, size)];
  // DistCollective gathers and scatters along the outermost axis: bring the IR's axis there and back.
  const forward = [axis, ...Array.from({ length: rank }, (_, i) => i).filter((i) => i !== axis)];
  const backward = forward.map((_, i) => forward.indexOf(i));
  const moved = net.transpose(x, forward);
  return [net.transpose(net.distCollective(moved, kind, reduce, root, size), backward)];
}

for (const kind of COLLECTIVES) {
  for (const op of [kind, fusedName(kind)]) {
    registerConverter(op, {
      check: (node, _types, target) => checkCollective(node, target),
      convert: convertCollective,
    });
  }
}
