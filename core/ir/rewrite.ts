// The pattern rewriter that local passes are written with: a pass is a list of rules, each a
// pattern over nodes and a function that builds the replacement. Rules apply until none matches;
// nodes left without readers are then removed.

import { type Attrs, cloneGraph, type Graph, IrError, type Node } from "./graph.ts";
import { getOp } from "./registry.ts";
import type { TensorType } from "./tensor.ts";

/** Matches a value: made by a node of `op` whose inputs match `inputs`, or (no op) any value. */
export interface Pattern {
  op?: string | string[];
  inputs?: Pattern[];
  /** Captures the matched value (and its node, if any) under this name. */
  as?: string;
  where?: (node: Node, graph: Graph) => boolean;
}

export interface Match {
  graph: Graph;
  /** The node the rule is rooted at. */
  root: Node;
  /** Captured values by name. */
  values: Record<string, string>;
  /** Nodes that made captured values, by the same names. */
  nodes: Record<string, Node>;
  type(value: string): TensorType;
}

/** Adds nodes in front of the matched root; returns their output names. */
export interface Emitter {
  op(op: string, inputs: string[], attrs?: Attrs): string[];
}

/** Returns the values that replace the root's outputs, or undefined to leave the match alone. */
export type Replace = (match: Match, emit: Emitter) => string[] | undefined;

export type Rule = [Pattern, Replace];

export function rewrite(graph: Graph, rules: Rule[], maxRewrites = 100_000): Graph {
  const out = cloneGraph(graph);
  let rewrites = 0;
  let changed = true;
  while (changed) {
    changed = false;
    const producers = producerMap(out);
    for (let index = 0; index < out.nodes.length && !changed; index++) {
      for (const [pattern, replace] of rules) {
        const match = matchNode(out, producers, out.nodes[index], pattern);
        if (match && applyRule(out, index, match, replace)) {
          changed = true;
          if (++rewrites > maxRewrites) {
            throw new IrError(`rewrite did not settle after ${maxRewrites} rewrites`);
          }
          break;
        }
      }
    }
  }
  return removeDeadNodes(out);
}

function producerMap(graph: Graph): Map<string, Node> {
  const producers = new Map<string, Node>();
  for (const node of graph.nodes) for (const output of node.outputs) producers.set(output, node);
  return producers;
}

function matchNode(
  graph: Graph,
  producers: Map<string, Node>,
  root: Node,
  pattern: Pattern,
): Match | undefined {
  const match: Match = {
    graph,
    root,
    values: {},
    nodes: {},
    type: (value) => graph.types.get(value)!,
  };
  return matchValue(root.outputs[0], pattern, producers, match, root) ? match : undefined;
}

function matchValue(
  value: string,
  pattern: Pattern,
  producers: Map<string, Node>,
  match: Match,
  node = producers.get(value),
): boolean {
  if (pattern.as && match.values[pattern.as] !== undefined && match.values[pattern.as] !== value) {
    return false;
  }
  if (pattern.op !== undefined) {
    const ops = Array.isArray(pattern.op) ? pattern.op : [pattern.op];
    if (!node || !ops.includes(node.op)) return false;
    if (pattern.where && !pattern.where(node, match.graph)) return false;
    if (pattern.inputs) {
      if (pattern.inputs.length !== node.inputs.length) return false;
      for (let i = 0; i < pattern.inputs.length; i++) {
        if (!matchValue(node.inputs[i], pattern.inputs[i], producers, match)) return false;
      }
    }
    if (pattern.as) match.nodes[pattern.as] = node;
  } else if (pattern.where) {
    throw new IrError("a pattern with `where` needs an `op`");
  }
  if (pattern.as) match.values[pattern.as] = value;
  return true;
}

function applyRule(graph: Graph, index: number, match: Match, replace: Replace): boolean {
  const emitted: Node[] = [];
  const emitter: Emitter = {
    op(op, inputs, attrs = {}) {
      const types = inputs.map((input) => {
        const type = graph.types.get(input);
        if (!type) throw new IrError(`rewrite: %${input} is not defined`);
        return type;
      });
      const outputs = getOp(op).infer(types, attrs).map((type) => {
        const name = freshName(graph, op);
        graph.types.set(name, type);
        return name;
      });
      emitted.push({ op, inputs, outputs, attrs });
      return outputs;
    },
  };
  const root = match.root;
  const replacement = replace(match, emitter);
  const discard = () => {
    for (const node of emitted) for (const output of node.outputs) graph.types.delete(output);
    return false;
  };
  if (!replacement) return discard();
  if (replacement.length !== root.outputs.length) {
    throw new IrError(
      `rewrite of ${root.op}: ${replacement.length} replacements for ${root.outputs.length} outputs`,
    );
  }
  // A new value that replaces an output takes the output's name, so names stay stable through a
  // pass; an existing value that replaces it takes over its readers (not a graph output's name).
  const emittedValues = new Set(emitted.flatMap((node) => node.outputs));
  const renames = new Map<string, string>();
  const substitute = new Map<string, string>();
  for (let i = 0; i < replacement.length; i++) {
    const [old, value] = [root.outputs[i], replacement[i]];
    if (old === value) continue;
    if (emittedValues.has(value) && !renames.has(value)) renames.set(value, old);
    else if (graph.outputs.includes(old)) return discard();
    else substitute.set(old, value);
  }
  graph.nodes.splice(graph.nodes.indexOf(root), 1);
  for (const output of root.outputs) if (![...renames.values()].includes(output)) graph.types.delete(output);
  for (const node of emitted) {
    node.outputs = node.outputs.map((output) => renames.get(output) ?? output);
    node.inputs = node.inputs.map((input) => renames.get(input) ?? input);
  }
  for (const [value, name] of renames) {
    graph.types.set(name, graph.types.get(value)!);
    graph.types.delete(value);
  }
  graph.nodes.splice(index, 0, ...emitted);
  for (const node of graph.nodes) node.inputs = node.inputs.map((input) => substitute.get(input) ?? input);
  return true;
}

let counter = 0;
function freshName(graph: Graph, hint: string): string {
  let name: string;
  do name = `${hint}_r${counter++}`; while (graph.types.has(name));
  return name;
}

/** Drops nodes none of whose outputs is read or returned, then weights no node reads. */
export function removeDeadNodes(graph: Graph): Graph {
  const live = new Set(graph.outputs);
  const kept: Node[] = [];
  for (let i = graph.nodes.length - 1; i >= 0; i--) {
    const node = graph.nodes[i];
    if (node.outputs.some((output) => live.has(output))) {
      kept.push(node);
      for (const input of node.inputs) live.add(input);
    } else {
      for (const output of node.outputs) graph.types.delete(output);
    }
  }
  graph.nodes = kept.reverse();
  const unused = graph.weights.filter((weight) => !live.has(weight.name));
  for (const weight of unused) graph.types.delete(weight.name);
  graph.weights = graph.weights.filter((weight) => live.has(weight.name));
  return graph;
}
