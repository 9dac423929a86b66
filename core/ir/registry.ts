// The op registry: every op has a shape rule and a reference implementation. The reference
// engine is nothing but these implementations run in graph order.

import type { Attrs } from "./graph.ts";
import type { Tensor, TensorType } from "./tensor.ts";

/** What a reference implementation may consult besides its inputs. */
export interface RunEnv {
  /** Sizes bound to the graph's symbolic dims for this run. */
  dims: Map<string, number>;
}

export interface OpDef {
  name: string;
  /** One line on what the op computes, shown by `rankflow graph --ops`. */
  doc: string;
  /** Fewest and most inputs. */
  arity: [number, number];
  /** True for the collective ops, which engines may run between segments instead of inside. */
  collective?: boolean;
  infer(inputs: TensorType[], attrs: Attrs): TensorType[];
  run(inputs: Tensor[], attrs: Attrs, env: RunEnv): Tensor[];
}

const ops = new Map<string, OpDef>();

export class OpError extends Error {
  override name = "OpError";
}

export function registerOp(def: OpDef): OpDef {
  if (ops.has(def.name)) throw new OpError(`op ${def.name} is registered twice`);
  const infer = def.infer;
  ops.set(def.name, {
    ...def,
    infer(inputs, attrs) {
      const [min, max] = def.arity;
      if (inputs.length < min || inputs.length > max) {
        const expected = min === max ? `${min}` : `${min} to ${max}`;
        throw new OpError(`${def.name} takes ${expected} inputs, got ${inputs.length}`);
      }
      return infer(inputs, attrs);
    },
  });
  return def;
}

export function getOp(name: string): OpDef {
  const def = ops.get(name);
  if (!def) {
    const near = closestName(name, [...ops.keys()]);
    throw new OpError(`unknown op '${name}'${near ? ` (did you mean '${near}'?)` : ""}`);
  }
  return def;
}

export function hasOp(name: string): boolean {
  return ops.has(name);
}

export function opNames(): string[] {
  return [...ops.keys()].sort();
}

/** The known name nearest to `name` by edit distance, if it is near enough to be a typo. */
export function closestName(name: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}
