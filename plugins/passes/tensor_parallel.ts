// tensor-parallel: turns the whole graph into one rank's share of it. A plan maps weight names
// (globs over module paths) to colwise, rowwise or replicate; the pass slices each planned weight
// lazily for this rank, follows how each value is split through the graph (dividing head counts
// in reshapes, shrinking KV caches), and inserts a collective wherever a value must be whole
// again: an all_reduce after row-parallel layers, an all_gather for the vocab-parallel logits.
// A global pass, so a loop rather than rewrite rules.

import { z } from "zod";
import { definePlugin, type PassContext } from "../../core/pipeline/plugin.ts";
import {
  type Attrs,
  cloneGraph,
  type Graph,
  IrError,
  type Node,
  retype,
  usersOf,
  type Weight,
} from "../../core/ir/graph.ts";
import type { Dim } from "../../core/ir/tensor.ts";

export const STYLES = ["colwise", "rowwise", "replicate"] as const;
export type Style = typeof STYLES[number];

export const options = z.object({
  plan: z.union([z.literal("auto"), z.record(z.string(), z.enum(STYLES))]).default("auto").describe(
    "weight globs (module paths, `*` = one name) → colwise | rowwise | replicate, or auto for Llama, Qwen2, GPT-2",
  ),
  group: z.string().default("tp").describe("the process group the inserted collectives run over"),
}).strict();

export type Options = z.infer<typeof options>;

/** Built-in plans, by the module names the hf exporter gives. */
export const AUTO_PLANS: Record<string, Record<string, Style>> = {
  llama: {
    "layers.*.self_attn.q_proj": "colwise",
    "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise",
    "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
    "lm_head": "colwise",
  },
  gpt2: {
    "h.*.attn.c_attn.q": "colwise",
    "h.*.attn.c_attn.k": "colwise",
    "h.*.attn.c_attn.v": "colwise",
    "h.*.attn.c_proj": "rowwise",
    "h.*.mlp.c_fc": "colwise",
    "h.*.mlp.c_proj": "rowwise",
    "lm_head": "colwise",
  },
};

export class PlanError extends IrError {
  override name = "PlanError";
}

type Layout = { kind: "rep" } | { kind: "partial" } | { kind: "split"; fromEnd: number; factor: number };
const REP: Layout = { kind: "rep" };

/** The module path of a weight value: its name less a trailing .weight or .bias. */
function modulePath(name: string): string {
  return name.replace(/\.(weight|bias)$/, "");
}

/** Whether a glob (segments, `*` for one whole or partial segment) matches the end of a module path. */
export function globMatches(glob: string, path: string): boolean {
  const pattern = glob.split(".");
  const segments = path.split(".");
  if (pattern.length > segments.length) return false;
  const tail = segments.slice(segments.length - pattern.length);
  return pattern.every((part, i) =>
    new RegExp(`^${part.replace(/[^\w*]/g, "\\$&").replaceAll("*", "[^.]*")}$`).test(tail[i])
  );
}

function choosePlan(graph: Graph, plan: Options["plan"]): Record<string, Style> {
  if (plan !== "auto") return plan;
  const isGpt2 = graph.weights.some((w) => /(^|\.)wte\.weight$/.test(w.key));
  return AUTO_PLANS[isGpt2 ? "gpt2" : "llama"];
}

/** The share of a weight this rank holds: blocks of `unit` columns, whole heads where there are heads. */
interface Share {
  start: number;
  end: number;
  factor: number;
}

function shareOf(size: number, unit: number, what: string, tp: { rank: number; size: number }): Share {
  const units = size / unit;
  if (units % tp.size === 0) {
    const per = units / tp.size;
    return { start: tp.rank * per * unit, end: (tp.rank + 1) * per * unit, factor: tp.size };
  }
  // Fewer heads than ranks (KV heads under grouped-query attention): ranks share a head.
  if (unit > 1 && tp.size % units === 0) {
    const head = Math.floor((tp.rank * units) / tp.size);
    return { start: head * unit, end: (head + 1) * unit, factor: units };
  }
  const what2 = unit > 1 ? `${units} heads` : `${size} columns`;
  throw new PlanError(`tensor-parallel: ${what} has ${what2}, which do not split over ${tp.size} ranks`);
}

class Sharder {
  readonly out: Node[] = [];
  readonly layouts = new Map<string, Layout>();
  readonly weights: Map<string, Weight>;
  readonly users: Map<string, Node[]>;
  #counter = 0;

  constructor(
    readonly graph: Graph,
    readonly plan: Record<string, Style>,
    readonly tp: { rank: number; size: number },
    readonly group: string,
  ) {
    this.weights = new Map(graph.weights.map((w) => [w.name, w]));
    this.users = usersOf(graph);
  }

  layout(value: string): Layout {
    return this.layouts.get(value) ?? REP;
  }

  rank(value: string): number {
    return this.graph.types.get(value)!.shape.length;
  }

  style(weight: string): Style {
    const path = modulePath(weight);
    const matches = Object.entries(this.plan).filter(([glob]) => globMatches(glob, path)).map(([, style]) =>
      style
    );
    return matches[0] ?? "replicate";
  }

  fresh(hint: string): string {
    let name: string;
    do name = `${hint}.tp${this.#counter++}`; while (this.graph.types.has(name));
    this.graph.types.set(name, this.graph.types.get(hint.split(".tp")[0]) ?? { dtype: "f32", shape: [] });
    return name;
  }

  emit(op: string, inputs: string[], attrs: Attrs, output: string): void {
    this.out.push({ op, inputs, outputs: [output], attrs });
  }

  /** A collective and its wait, as a tracer writes them; fuse-distributed-ops fuses the pair. */
  collective(op: string, input: string, attrs: Attrs, output = this.fresh(input)): string {
    const started = this.fresh(input);
    this.emit(op, [input], { group: this.group, size: this.tp.size, ...attrs }, started);
    this.emit("wait", [started], {}, output);
    this.layouts.set(output, REP);
    return output;
  }

  /** The value made whole on every rank, inserting the collective that does it. */
  whole(value: string, output?: string): string {
    const layout = this.layout(value);
    if (layout.kind === "rep") return value;
    if (layout.kind === "partial") return this.collective("all_reduce", value, { reduce: "sum" }, output);
    if (layout.factor !== this.tp.size) {
      throw new PlanError(`tensor-parallel: %${value} is shared by ranks in groups, it cannot be gathered`);
    }
    return this.collective("all_gather", value, { axis: this.rank(value) - layout.fromEnd }, output);
  }

  /** Slices a weight's `axis` to this rank's share; a weight is sliced once. */
  slice(name: string, axis: number, share: Share): void {
    const weight = this.weights.get(name)!;
    const already = this.layouts.get(name);
    if (already) throw new PlanError(`tensor-parallel: weight ${name} is used by two sharded layers`);
    const shape = [...weight.type.shape];
    shape[axis] = share.end - share.start;
    weight.type = { dtype: weight.type.dtype, shape };
    weight.slices = [...weight.slices, { axis, start: share.start, end: share.end }];
    this.layouts.set(name, { kind: "split", fromEnd: shape.length - axis, factor: share.factor });
  }

  /** Heads of `unit` columns when the layer's output is next reshaped into [..., heads, unit]. */
  unitOf(value: string, columns: number): number {
    let users = this.users.get(value) ?? [];
    if (users.length === 1 && users[0].op === "add") users = this.users.get(users[0].outputs[0]) ?? [];
    const reshape = users.length === 1 && users[0].op === "reshape" ? users[0] : undefined;
    const target = reshape?.attrs.shape as Dim[] | undefined;
    const [heads, unit] = target?.slice(-2) ?? [];
    return typeof heads === "number" && typeof unit === "number" && heads * unit === columns ? unit : 1;
  }

  visit(node: Node): void {
    const handler = this.handlers[node.op] ?? this.handlers.default;
    handler(node);
  }

  readonly handlers: Record<string, (node: Node) => void> = {
    linear: (node) => this.project(node, 0, 1),
    matmul: (node) => this.project(node, 1, 0),
    embedding: (node) => {
      if (this.style(node.inputs[0]) !== "replicate") {
        throw new PlanError(`tensor-parallel: embedding ${node.inputs[0]} can only be replicated`);
      }
      this.keep(node, [node.inputs[0], this.whole(node.inputs[1])], REP);
    },
    add: (node) => this.binary(node),
    mul: (node) => this.binary(node),
    silu: (node) => this.activation(node),
    gelu: (node) => this.activation(node),
    cast: (node) => this.keep(node, node.inputs, this.layout(node.inputs[0])),
    wait: (node) => this.keep(node, node.inputs, this.layout(node.inputs[0])),
    rope: (node) => {
      const x = this.notPartial(node.inputs[0]);
      const layout = this.layout(x);
      if (layout.kind === "split" && layout.fromEnd === 1) return this.default(node);
      this.keep(node, [x, this.whole(node.inputs[1])], layout);
    },
    reshape: (node) => this.reshape(node),
    transpose: (node) => {
      const x = this.notPartial(node.inputs[0]);
      const layout = this.layout(x);
      if (layout.kind !== "split") return this.keep(node, [x], REP);
      const perm = node.attrs.perm as number[];
      const rank = perm.length;
      this.keep(node, [x], { ...layout, fromEnd: rank - perm.indexOf(rank - layout.fromEnd) });
    },
    sdpa: (node) => this.attention(node),
    default: (node) => this.default(node),
  };

  /** Every input made whole; the outputs whole too. */
  default(node: Node): void {
    this.keep(node, node.inputs.map((input) => (this.weights.has(input) ? input : this.whole(input))), REP);
  }

  keep(node: Node, inputs: string[], layout: Layout, attrs = node.attrs): void {
    this.out.push({ ...node, inputs, attrs });
    for (const output of node.outputs) this.layouts.set(output, layout);
  }

  activation(node: Node): void {
    const x = this.notPartial(node.inputs[0]);
    this.keep(node, [x], this.layout(x));
  }

  notPartial(value: string): string {
    return this.layout(value).kind === "partial" ? this.whole(value) : value;
  }

  /** linear (weight [out, in]) or matmul (weight [in, out]): `outAxis`/`inAxis` index the weight. */
  project(node: Node, outAxis: number, inAxis: number): void {
    const [x, w, bias] = node.inputs;
    const style = this.style(w);
    const weightShape = this.weights.get(w)!.type.shape as number[];
    if (style === "colwise") {
      const columns = weightShape[outAxis];
      const share = shareOf(columns, this.unitOf(node.outputs[0], columns), modulePath(w), this.tp);
      this.slice(w, outAxis, share);
      if (bias) this.slice(bias, 0, share);
      return this.keep(node, [this.whole(x), w, ...(bias ? [bias] : [])], {
        kind: "split",
        fromEnd: 1,
        factor: share.factor,
      });
    }
    if (style === "rowwise") {
      const layout = this.layout(x);
      if (layout.kind !== "split" || layout.fromEnd !== 1 || layout.factor !== this.tp.size) {
        throw new PlanError(
          `tensor-parallel: ${modulePath(w)} is rowwise but its input is not split by columns`,
        );
      }
      this.slice(w, inAxis, shareOf(weightShape[inAxis], 1, modulePath(w), this.tp));
      const output = node.outputs[0];
      const partial = this.fresh(output);
      this.out.push({ ...node, inputs: [x, w], outputs: [partial] });
      this.layouts.set(partial, { kind: "partial" });
      // The bias is added once, after the partial sums are reduced.
      if (!bias) return void this.whole(partial, output);
      this.emit("add", [this.whole(partial), bias], {}, output);
      this.layouts.set(output, REP);
      return;
    }
    if (bias && this.style(bias) !== "replicate") {
      throw new PlanError(`tensor-parallel: ${bias} is planned but its weight is not`);
    }
    this.keep(node, [this.whole(x), w, ...(bias ? [bias] : [])], REP);
  }

  binary(node: Node): void {
    let [a, b] = node.inputs;
    // The bias of a column-parallel matmul is sliced like the matmul's columns.
    for (const [value, other] of [[b, a], [a, b]]) {
      const layout = this.layout(other);
      if (
        this.weights.has(value) && !this.layouts.has(value) && this.style(value) === "colwise" &&
        layout.kind === "split" && layout.fromEnd === 1
      ) {
        const size = this.weights.get(value)!.type.shape[0] as number;
        const unit = this.unitOf(node.outputs[0], size);
        this.slice(value, 0, shareOf(size, unit, modulePath(value), this.tp));
      }
    }
    const [la, lb] = [this.layout(a), this.layout(b)];
    if (JSON.stringify(la) === JSON.stringify(lb) && (la.kind !== "partial" || node.op === "add")) {
      return this.keep(node, [a, b], la);
    }
    a = this.whole(a);
    b = this.whole(b);
    this.keep(node, [a, b], REP);
  }

  reshape(node: Node): void {
    const x = this.notPartial(node.inputs[0]);
    const layout = this.layout(x);
    if (layout.kind !== "split") return this.keep(node, [x], REP);
    const source = this.graph.types.get(node.inputs[0])!.shape;
    const target = [...(node.attrs.shape as Dim[])];
    const axis = source.length - layout.fromEnd;
    const samePrefix = axis < target.length && source.slice(0, axis).every((d, i) => d === target[i]);
    const size = target[axis];
    if (!samePrefix || typeof size !== "number" || size % layout.factor !== 0) return this.default(node);
    target[axis] = size / layout.factor;
    this.keep(node, [x], { ...layout, fromEnd: target.length - axis }, { ...node.attrs, shape: target });
  }

  attention(node: Node): void {
    const [q, k, v, pastK, pastV] = node.inputs.map((input) => this.notPartial(input));
    const [lq, lk] = [this.layout(q), this.layout(k)];
    if (lq.kind !== "split" || lk.kind !== "split") return this.default(node);
    if (lq.fromEnd !== 3 || lk.fromEnd !== 3 || JSON.stringify(this.layout(v)) !== JSON.stringify(lk)) {
      throw new PlanError("tensor-parallel: attention q, k and v must be split by heads");
    }
    // This rank keeps only its heads' caches: the cache inputs shrink to match.
    for (const past of [pastK, pastV]) {
      const input = this.graph.inputs.find((i) => i.name === past);
      if (!input) throw new PlanError(`tensor-parallel: cache %${past} is not a graph input`);
      const shape = [...input.type.shape];
      shape[1] = (shape[1] as number) / lk.factor;
      input.type = { dtype: input.type.dtype, shape };
      this.layouts.set(past, lk);
    }
    this.keep(node, [q, k, v, pastK, pastV], lq);
    this.layouts.set(node.outputs[1], lk);
    this.layouts.set(node.outputs[2], lk);
  }
}

export function shardGraph(graph: Graph, opts: Options, tp: { rank: number; size: number }): Graph {
  if (tp.size === 1) return graph;
  const copy = cloneGraph(graph);
  untieHead(copy);
  const plan = { ...choosePlan(copy, opts.plan) };
  // The auto plan keeps a vocabulary that does not split evenly whole instead of failing.
  const head = copy.weights.find((w) => w.name === "lm_head.weight");
  if (opts.plan === "auto" && head && (head.type.shape[0] as number) % tp.size !== 0) delete plan.lm_head;
  const sharder = new Sharder(copy, plan, tp, opts.group);
  for (const node of copy.nodes) sharder.visit(node);
  // Every output is whole on every rank, except each rank's own KV caches.
  copy.outputs.forEach((output) => {
    if (output.startsWith("present_") || sharder.layout(output).kind === "rep") return;
    const local = sharder.fresh(output);
    for (const node of sharder.out) node.outputs = node.outputs.map((o) => (o === output ? local : o));
    for (const node of sharder.out) node.inputs = node.inputs.map((i) => (i === output ? local : i));
    sharder.layouts.set(local, sharder.layout(output));
    sharder.whole(local, output);
  });
  copy.nodes = sharder.out;
  return retype(copy);
}

/** A tied lm_head reads the embedding table; it gets its own weight value so it can be split. */
function untieHead(graph: Graph): void {
  const head = graph.nodes.find((node) => node.outputs.includes(graph.outputs[0]) && node.op === "linear");
  if (!head) return;
  const tableUsers = graph.nodes.filter((node) => node.inputs.includes(head.inputs[1]));
  if (tableUsers.length < 2 || graph.types.has("lm_head.weight")) return;
  const table = graph.weights.find((w) => w.name === head.inputs[1])!;
  graph.weights.push({ ...table, name: "lm_head.weight", slices: [...table.slices] });
  graph.types.set("lm_head.weight", table.type);
  head.inputs = [head.inputs[0], "lm_head.weight", ...head.inputs.slice(2)];
}

export default definePlugin({
  kind: "pass",
  name: "tensor-parallel",
  description: "slices weights by a plan and inserts the collectives tensor parallelism needs",
  options,
  run(graph: Graph, opts: Options, ctx: PassContext) {
    return shardGraph(graph, opts, ctx.tp ?? { rank: 0, size: 1 });
  },
});
