// Matching the products of a graph for the cuda engine's lowering. A linear layer absorbs the bias
// add and the residual add after it; linear layers that read the same input become one product
// over concatenated weights; silu(a)·b is one step. Two folds then take launches away in decode:
// - the RMSNorm whose output only products of one group read becomes that product's prologue;
// - silu(gate)·up over the two parts of one product becomes that product's gated epilogue.
// The binder falls back to separate launches where the weight-streaming kernel does not run.

import type { Node } from "../../../core/ir/graph.ts";
import { formatType } from "../../../core/ir/tensor.ts";
import type { GemmPart, GraphIndex, Step } from "./lower.ts";

type GemmStep = Extract<Step, { kind: "gemm" }>;

interface Candidate {
  node: Node;
  x: string;
  part: GemmPart;
  residual?: string;
  absorbed: Node[];
}

export interface MatchedProducts {
  /** The step each group's first node becomes. */
  products: Map<Node, GemmStep>;
  /** silu·mul steps that stay steps of their own, by their mul node. */
  siluMuls: Map<Node, Extract<Step, { kind: "silu_mul" }>>;
  /** Nodes that some step above already computes. */
  skip: Set<Node>;
}

export function matchProducts(index: GraphIndex): MatchedProducts {
  const { graph, type, weights, soleUser, producer, users, outputs } = index;
  const skip = new Set<Node>();
  const candidates = new Map<Node, Candidate>();
  for (const node of graph.nodes) {
    const candidate = gemmCandidate(node, index);
    if (!candidate) continue;
    // Absorb the bias add, then the residual add, that alone read the product.
    for (;;) {
      const add = soleUser(candidate.part.output);
      if (!add || add.op !== "add" || add.inputs[0] === add.inputs[1]) break;
      const other = add.inputs[0] === candidate.part.output ? add.inputs[1] : add.inputs[0];
      const otherType = type(other);
      if (
        !candidate.part.bias && !candidate.residual && weights.has(other) && otherType.shape.length === 1 &&
        otherType.shape[0] === candidate.part.width
      ) {
        candidate.part.bias = other;
      } else if (
        !candidate.residual && !weights.has(other) &&
        formatType(otherType) === formatType(type(candidate.part.output)) && index.definedBefore(other, node)
      ) {
        candidate.residual = other;
      } else {
        break;
      }
      candidate.absorbed.push(add);
      candidate.part.output = add.outputs[0];
    }
    candidates.set(node, candidate);
  }
  // Products of one input without a residual share one launch over concatenated weights.
  const groups: Candidate[][] = [];
  const bySource = new Map<string, Candidate[]>();
  for (const candidate of candidates.values()) {
    if (candidate.residual) {
      groups.push([candidate]);
      continue;
    }
    const key = `${candidate.x}|${!!candidate.part.bias}`;
    const list = bySource.get(key) ?? [];
    if (list.length === 0) groups.push(list);
    list.push(candidate);
    bySource.set(key, list);
  }
  const products = new Map<Node, GemmStep>();
  const stepOf = new Map<Node, GemmStep>();
  for (const group of groups) {
    const [first] = group;
    const shape = type(first.part.weight).shape as number[];
    const step: GemmStep = {
      kind: "gemm",
      x: first.x,
      k: first.part.transposed ? shape[0] : shape[1],
      parts: group.map((member) => member.part),
      residual: first.residual,
    };
    products.set(first.node, step);
    for (const member of group) {
      stepOf.set(member.node, step);
      if (member !== first) skip.add(member.node);
      for (const add of member.absorbed) skip.add(add);
    }
  }

  // The RMSNorm read by one product alone runs as its prologue.
  for (const step of products.values()) {
    const norm = producer.get(step.x);
    if (norm?.op !== "rmsnorm" || outputs.has(step.x)) continue;
    const readers = users.get(step.x) ?? [];
    if (readers.length === 0 || !readers.every((reader) => stepOf.get(reader) === step)) continue;
    if (readers.some((reader) => reader.inputs.filter((input) => input === step.x).length !== 1)) continue;
    step.norm = { x: norm.inputs[0], w: norm.inputs[1], eps: Number(norm.attrs.eps ?? 1e-6) };
    skip.add(norm);
  }

  // silu(a) * b: one step, or the epilogue of the product that makes a and b.
  const siluMuls = new Map<Node, Extract<Step, { kind: "silu_mul" }>>();
  for (const node of graph.nodes) {
    if (node.op !== "mul") continue;
    for (const [i, input] of node.inputs.entries()) {
      const silu = producer.get(input);
      if (silu?.op !== "silu" || soleUser(input) !== node || skip.has(silu)) continue;
      const [gate, up] = [silu.inputs[0], node.inputs[1 - i]];
      skip.add(silu);
      if (!foldGated(gate, up, silu, node)) {
        siluMuls.set(node, { kind: "silu_mul", gate, up, out: node.outputs[0] });
      }
      break;
    }
  }

  /** Makes silu(gate)·up the epilogue of the product whose two parts are gate and up. */
  function foldGated(gate: string, up: string, silu: Node, mul: Node): boolean {
    const [gateNode, upNode] = [producer.get(gate), producer.get(up)];
    const step = gateNode && stepOf.get(gateNode);
    if (!step || step.parts.length !== 2 || step.residual || step.gated) return false;
    const gatePart = step.parts.find((part) => part.output === gate);
    const upPart = step.parts.find((part) => part.output === up);
    if (!gatePart || !upPart || gatePart === upPart || gatePart.width !== upPart.width) return false;
    if (!upNode || stepOf.get(upNode) !== step) return false;
    if (soleUser(gate) !== silu || soleUser(up) !== mul) return false;
    step.parts = [gatePart, upPart];
    step.gated = { out: mul.outputs[0] };
    skip.add(mul);
    return true;
  }

  return { products, siluMuls, skip };
}

function gemmCandidate(node: Node, index: GraphIndex): Candidate | undefined {
  if (node.op !== "linear" && node.op !== "matmul") return undefined;
  const [x, w, b] = node.inputs;
  if (!index.weights.has(w)) return undefined;
  const shape = index.type(w).shape as number[];
  const transposed = node.op === "matmul";
  const width = transposed ? shape[1] : shape[0];
  if (b !== undefined && !index.weights.has(b)) return undefined;
  return {
    node,
    x,
    part: { weight: w, transposed, bias: b, output: node.outputs[0], width },
    absorbed: [],
  };
}
