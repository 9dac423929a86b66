// Lowering for the cuda engine: the graph's nodes become steps, one per cuBLASLt product or
// kernel launch. Groups of nodes that one launch can do are matched here and in
// lower_products.ts: products absorb bias and residual adds, share launches over concatenated
// weights and take in the RMSNorm before them and the silu·mul after them; the transposes and
// rotary embeddings around attention fold into the kernel that writes the KV cache. Everything
// else maps op by op, so any graph of supported ops runs, fused or not.

import { type Graph, type Node, usersOf } from "../../../core/ir/graph.ts";
import { type CollectiveKind, collectiveKind } from "../../../core/ir/ops/collective.ts";
import type { DType, TensorType } from "../../../core/ir/tensor.ts";
import { EngineError } from "../../../core/runtime/engine.ts";
import { matchProducts } from "./lower_products.ts";

/** A [B, S, H, D] value, token-major, that attention reads; rotated by rope on the way when given. */
export interface TokenSource {
  value: string;
  rope?: { pos: string; theta: number };
}

export interface GemmPart {
  /** The weight, [N, K] (or [K, N] when transposed: a matmul's right side). */
  weight: string;
  transposed: boolean;
  bias?: string;
  /** The value this part of the product becomes. */
  output: string;
  width: number;
}

export type Step =
  | {
    kind: "gemm";
    x: string;
    k: number;
    parts: GemmPart[];
    residual?: string;
    /** x is this RMSNorm's output, which the product may compute on the way from its input `x`. */
    norm?: { x: string; w: string; eps: number };
    /** silu(parts[0]) · parts[1] is value `out`; the parts' own outputs are not kept. */
    gated?: { out: string };
  }
  | { kind: "embedding"; table: string; ids: string; out: string }
  | { kind: "rmsnorm"; x: string; w: string; out: string; eps: number }
  | { kind: "layernorm"; x: string; w: string; b: string; out: string; eps: number }
  | { kind: "unary"; op: "silu" | "gelu_tanh" | "gelu_erf"; x: string; out: string }
  | { kind: "silu_mul"; gate: string; up: string; out: string }
  | { kind: "binary"; op: "add" | "mul"; a: string; b: string; out: string }
  | { kind: "rope"; x: string; pos: string; out: string; theta: number }
  | {
    kind: "attention";
    layer: number;
    q: TokenSource;
    k: TokenSource;
    v: TokenSource;
    pastK: string;
    pastV: string;
    presentK: string;
    presentV: string;
    out: string;
    /** True when `out` is the [B, S, H, D] transpose of the sdpa result (the transpose was folded). */
    outTokenMajor: boolean;
    heads: number;
    kvHeads: number;
    headDim: number;
    scale: number;
  }
  | { kind: "transpose"; x: string; out: string; perm: number[] }
  | { kind: "reshape"; x: string; out: string }
  | { kind: "softmax"; x: string; out: string }
  | { kind: "cast"; x: string; out: string; dtype: DType }
  | { kind: "argmax"; x: string; out: string }
  | { kind: "concat"; inputs: string[]; out: string; axis: number }
  | { kind: "slice"; x: string; out: string; axis: number; start: number; end: number }
  | {
    kind: "collective";
    op: CollectiveKind;
    x: string;
    out: string;
    group: string;
    size: number;
    reduce: "sum" | "max" | "min" | "avg";
    axis: number;
    root: number;
  };

export interface Lowered {
  steps: Step[];
  /** The graph's types plus those of values the lowering made up (token-major copies). */
  types: Map<string, TensorType>;
  /** How many attention layers (KV caches) the graph has. */
  layers: number;
}

/** The ops this engine runs. */
export const CUDA_OPS = new Set([
  "embedding",
  "linear",
  "matmul",
  "rmsnorm",
  "layernorm",
  "silu",
  "gelu",
  "add",
  "mul",
  "rope",
  "sdpa",
  "transpose",
  "reshape",
  "softmax",
  "cast",
  "argmax",
  "concat",
  "slice",
  "wait",
  "all_reduce",
  "all_gather",
  "reduce_scatter",
  "broadcast",
  "fused_all_reduce",
  "fused_all_gather",
  "fused_reduce_scatter",
  "fused_broadcast",
]);

const TOKEN_MAJOR = [0, 2, 1, 3];

/** What the matchers need to know of a graph. */
export interface GraphIndex {
  graph: Graph;
  type(name: string): TensorType;
  weights: Set<string>;
  outputs: Set<string>;
  users: Map<string, Node[]>;
  producer: Map<string, Node>;
  /** The only node reading `value`, when exactly one does (once) and it is not a graph output. */
  soleUser(value: string): Node | undefined;
  definedBefore(value: string, node: Node): boolean;
}

export function lower(graph: Graph): Lowered {
  for (const node of graph.nodes) {
    if (!CUDA_OPS.has(node.op)) {
      throw new EngineError(`the cuda engine cannot run op ${node.op} (it runs ${[...CUDA_OPS].join(", ")})`);
    }
  }
  const types = new Map(graph.types);
  const type = (name: string): TensorType => {
    const t = types.get(name);
    if (!t) throw new EngineError(`value %${name} has no type`);
    return t;
  };
  const weights = new Set(graph.weights.map((w) => w.name));
  const outputs = new Set(graph.outputs);
  const users = usersOf(graph);
  const producer = new Map<string, Node>();
  const order = new Map<Node, number>();
  graph.nodes.forEach((node, index) => {
    order.set(node, index);
    for (const output of node.outputs) producer.set(output, node);
  });
  /** The only node reading `value`, when exactly one does (once) and it is not a graph output. */
  const soleUser = (value: string): Node | undefined => {
    const list = users.get(value) ?? [];
    if (list.length !== 1 || outputs.has(value)) return undefined;
    return list[0].inputs.filter((input) => input === value).length === 1 ? list[0] : undefined;
  };
  const definedBefore = (value: string, node: Node): boolean => {
    const source = producer.get(value);
    return !source || order.get(source)! < order.get(node)!;
  };

  const index: GraphIndex = { graph, type, weights, outputs, users, producer, soleUser, definedBefore };
  const { products, siluMuls, skip } = matchProducts(index);
  /** Steps that must run just before a node's own: token-major copies of attention inputs. */
  const extraBefore = new Map<Node, Step[]>();

  // Attention: fold the transposes (and the rope) around sdpa.
  const attention = new Map<Node, Step>();
  let layer = 0;
  for (const node of graph.nodes) {
    if (node.op !== "sdpa") continue;
    const [q, k, v, pastK, pastV] = node.inputs;
    const [out, presentK, presentV] = node.outputs;
    const qType = type(q);
    const kType = type(k);
    const [heads, kvHeads, headDim] = [qType.shape[1], kType.shape[1], qType.shape[3]];
    if (typeof heads !== "number" || typeof kvHeads !== "number" || typeof headDim !== "number") {
      throw new EngineError(`sdpa ${out}: heads and head_dim must be fixed sizes`);
    }
    const sources = [q, k, v].map((value) => tokenSource(value, node));
    // q and k rotate in the cache-writing kernel only when both do, with the same positions.
    const [qs, ks] = sources;
    const ropeTogether = qs.rope && ks.rope && qs.rope.pos === ks.rope.pos && qs.rope.theta === ks.rope.theta;
    for (const [i, source] of sources.entries()) {
      if (source.rope && (i === 2 || !ropeTogether)) {
        unfoldRope(source);
      }
    }
    let target = out;
    let outTokenMajor = false;
    const after = soleUser(out);
    if (after?.op === "transpose" && samePerm(after.attrs.perm, TOKEN_MAJOR)) {
      skip.add(after);
      target = after.outputs[0];
      outTokenMajor = true;
    }
    const scale = typeof node.attrs.scale === "number" ? node.attrs.scale : 1 / Math.sqrt(headDim);
    attention.set(node, {
      kind: "attention",
      layer: layer++,
      q: { value: sources[0].value, rope: sources[0].rope },
      k: { value: sources[1].value, rope: sources[1].rope },
      v: { value: sources[2].value, rope: sources[2].rope },
      pastK,
      pastV,
      presentK,
      presentV,
      out: target,
      outTokenMajor,
      heads,
      kvHeads,
      headDim,
      scale,
    });
  }

  /** A rope folded by tokenSource that must run on its own after all: keep its node. */
  function unfoldRope(source: TokenSource & { ropeNode?: Node; ropeOut?: string }): void {
    if (source.ropeNode) skip.delete(source.ropeNode);
    source.value = source.ropeOut!;
    delete source.rope;
    delete source.ropeNode;
    delete source.ropeOut;
  }

  /** Where attention reads q, k or v token-major: the transpose's input, or a copy made for it. */
  function tokenSource(value: string, sdpa: Node): TokenSource & { ropeNode?: Node; ropeOut?: string } {
    const transpose = producer.get(value);
    if (
      transpose?.op === "transpose" && samePerm(transpose.attrs.perm, TOKEN_MAJOR) && soleUser(value) === sdpa
    ) {
      skip.add(transpose);
      const source = transpose.inputs[0];
      const rope = producer.get(source);
      if (rope?.op === "rope" && soleUser(source) === transpose) {
        skip.add(rope);
        const theta = typeof rope.attrs.theta === "number" ? rope.attrs.theta : 10000;
        return {
          value: rope.inputs[0],
          rope: { pos: rope.inputs[1], theta },
          ropeNode: rope,
          ropeOut: source,
        };
      }
      return { value: source };
    }
    const copy = `${value}@tokens`;
    const t = type(value);
    types.set(copy, { dtype: t.dtype, shape: TOKEN_MAJOR.map((axis) => t.shape[axis]) });
    extraBefore.set(sdpa, [...(extraBefore.get(sdpa) ?? []), {
      kind: "transpose",
      x: value,
      out: copy,
      perm: TOKEN_MAJOR,
    }]);
    return { value: copy };
  }

  const steps: Step[] = [];
  for (const node of graph.nodes) {
    if (skip.has(node)) continue;
    const fused = products.get(node) ?? siluMuls.get(node);
    if (fused) {
      steps.push(fused);
      continue;
    }
    const attentionStep = attention.get(node);
    if (attentionStep) {
      steps.push(...(extraBefore.get(node) ?? []), attentionStep);
      continue;
    }
    steps.push(plainStep(node));
  }
  return { steps, types, layers: layer };
}

function samePerm(value: unknown, perm: number[]): boolean {
  return Array.isArray(value) && value.length === perm.length && value.every((p, i) => p === perm[i]);
}

function plainStep(node: Node): Step {
  const [x] = node.inputs;
  const [out] = node.outputs;
  const attrs = node.attrs;
  const kind = collectiveKind(node.op);
  if (kind) {
    return {
      kind: "collective",
      op: kind,
      x,
      out,
      group: String(attrs.group),
      size: Number(attrs.size),
      reduce: (attrs.reduce ?? "sum") as "sum",
      axis: typeof attrs.axis === "number" ? attrs.axis : 0,
      root: typeof attrs.root === "number" ? attrs.root : 0,
    };
  }
  switch (node.op) {
    case "embedding":
      return { kind: "embedding", table: node.inputs[0], ids: node.inputs[1], out };
    case "rmsnorm":
      return { kind: "rmsnorm", x, w: node.inputs[1], out, eps: Number(attrs.eps ?? 1e-6) };
    case "layernorm":
      return {
        kind: "layernorm",
        x,
        w: node.inputs[1],
        b: node.inputs[2],
        out,
        eps: Number(attrs.eps ?? 1e-5),
      };
    case "silu":
      return { kind: "unary", op: "silu", x, out };
    case "gelu":
      return { kind: "unary", op: attrs.approximate === "none" ? "gelu_erf" : "gelu_tanh", x, out };
    case "add":
    case "mul":
      return { kind: "binary", op: node.op, a: node.inputs[0], b: node.inputs[1], out };
    case "rope":
      return { kind: "rope", x, pos: node.inputs[1], out, theta: Number(attrs.theta ?? 10000) };
    case "transpose":
      return { kind: "transpose", x, out, perm: attrs.perm as number[] };
    case "reshape":
    case "wait":
      return { kind: "reshape", x, out };
    case "softmax":
      return { kind: "softmax", x, out };
    case "cast":
      return { kind: "cast", x, out, dtype: attrs.dtype as DType };
    case "argmax":
      return { kind: "argmax", x, out };
    case "concat":
      return { kind: "concat", inputs: node.inputs, out, axis: Number(attrs.axis) };
    case "slice":
      return {
        kind: "slice",
        x,
        out,
        axis: Number(attrs.axis),
        start: Number(attrs.start),
        end: Number(attrs.end),
      };
    case "linear":
    case "matmul":
      throw new EngineError(
        `${node.op} ${out}: the cuda engine multiplies by weights only, not by computed values`,
      );
    default:
      throw new EngineError(`the cuda engine cannot run op ${node.op}`);
  }
}
