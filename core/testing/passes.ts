// Helpers for pass authors' tests: a pass turns IR text A into IR text B, and a pass keeps a
// graph's outputs on seeded random inputs and weights (run with the reference kernels).

import { AssertionError } from "node:assert";
import type { z } from "zod";
import { type Graph, verifyGraph } from "../ir/graph.ts";
import { parseGraph, printGraph } from "../ir/text.ts";
import { type Dim, isFloat, type Tensor, tensor, toF32 } from "../ir/tensor.ts";
import { castTensor } from "../ir/tensor.ts";
import type { PassContext, PassPlugin } from "../pipeline/plugin.ts";
import { interpret } from "../runtime/interpreter.ts";

export function testPassContext(overrides: Partial<PassContext> = {}): PassContext {
  return { baseDir: Deno.cwd(), rank: 0, worldSize: 1, log: () => {}, ...overrides };
}

function runPass<O extends z.ZodType>(
  pass: PassPlugin<O>,
  graph: Graph,
  options: unknown,
  ctx: PassContext,
): Graph {
  const out = pass.run(graph, pass.options.parse(options ?? {}), ctx);
  verifyGraph(out);
  return out;
}

/** Asserts that `pass` turns the graph written `before` into the graph written `after` (both IR text). */
export function assertPass<O extends z.ZodType>(
  pass: PassPlugin<O>,
  before: string,
  after: string,
  options: unknown = {},
  ctx: PassContext = testPassContext(),
): void {
  const actual = printGraph(runPass(pass, parseGraph(before), options, ctx));
  const expected = printGraph(parseGraph(after));
  if (actual !== expected) {
    throw new AssertionError({
      message: `pass ${pass.name} gave\n${actual}\nexpected\n${expected}`,
      actual,
      expected,
    });
  }
}

export interface PreserveOptions {
  seed?: number;
  /** Sizes for symbolic dims; any not named is 2 ("past" defaults to 0). */
  dims?: Record<string, number>;
  /** Largest absolute difference allowed between outputs before and after. */
  tolerance?: number;
  options?: unknown;
  ctx?: PassContext;
}

/** Asserts that `pass` keeps the graph's outputs, on seeded random inputs and weights. */
export function assertPreserves<O extends z.ZodType>(
  pass: PassPlugin<O>,
  graph: Graph,
  opts: PreserveOptions = {},
): Graph {
  const after = runPass(pass, graph, opts.options, opts.ctx ?? testPassContext());
  const random = seededRandom(opts.seed ?? 0);
  const dims = { past: 0, ...opts.dims };
  const weights = new Map<string, Tensor>();
  for (const weight of graph.weights) weights.set(weight.name, randomTensor(weight.type, dims, random, 8));
  const inputs: Record<string, Tensor> = {};
  for (const input of graph.inputs) {
    inputs[input.name] = randomTensor(input.type, dims, random, integerLimit(graph, input.name));
  }
  const expected = interpret(graph, weights, inputs);
  const actual = interpret(after, weights, inputs);
  const tolerance = opts.tolerance ?? 1e-5;
  for (const name of graph.outputs) {
    if (!actual[name]) throw new AssertionError({ message: `pass ${pass.name} dropped output ${name}` });
    const [a, e] = [toF32(actual[name]), toF32(expected[name])];
    if (actual[name].shape.join() !== expected[name].shape.join()) {
      throw new AssertionError({
        message: `output ${name}: shape [${actual[name].shape}], expected [${expected[name].shape}]`,
      });
    }
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - e[i]));
    if (!(worst <= tolerance)) {
      throw new AssertionError({
        message: `pass ${pass.name} changed output ${name} by up to ${worst} (> ${tolerance})`,
      });
    }
  }
  return after;
}

/** Integer inputs stay below the row count of every embedding table that reads them. */
function integerLimit(graph: Graph, input: string): number {
  let limit = 8;
  for (const node of graph.nodes) {
    if (node.op === "embedding" && node.inputs[1] === input) {
      const rows = graph.types.get(node.inputs[0])!.shape[0];
      if (typeof rows === "number") limit = Math.min(limit, rows);
    }
  }
  return limit;
}

function randomTensor(
  type: { dtype: Tensor["dtype"]; shape: Dim[] },
  dims: Record<string, number>,
  random: () => number,
  limit: number,
): Tensor {
  const shape = type.shape.map((dim) => (typeof dim === "number" ? dim : dims[dim] ?? 2));
  const count = shape.reduce((a, b) => a * b, 1);
  if (isFloat(type.dtype)) {
    const values = Float32Array.from({ length: count }, () => random() * 2 - 1);
    return castTensor(tensor("f32", shape, values), type.dtype);
  }
  return castTensor(
    tensor("f32", shape, Float32Array.from({ length: count }, () => Math.floor(random() * limit))),
    type.dtype,
  );
}

/** mulberry32: small, seeded, good enough for test inputs. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
