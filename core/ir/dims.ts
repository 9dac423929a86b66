// Symbolic dimensions: a dim is a number or a name ("seq"), or a sum of such ("past+seq").
// Shape rules combine them; a run binds the names to sizes from its input tensors.

import type { Dim, Tensor, TensorType } from "./tensor.ts";
import { OpError } from "./registry.ts";

export function addDims(a: Dim, b: Dim): Dim {
  if (typeof a === "number" && typeof b === "number") return a + b;
  if (a === 0) return b;
  if (b === 0) return a;
  return `${a}+${b}`;
}

export function mulDim(a: Dim, factor: number): Dim {
  if (typeof a === "number") return a * factor;
  return factor === 1 ? a : `${a}*${factor}`;
}

export function divDim(a: Dim, divisor: number, what: string): Dim {
  if (typeof a !== "number") {
    const suffix = `*${divisor}`;
    if (a.endsWith(suffix)) return a.slice(0, -suffix.length);
    throw new OpError(`${what}: cannot divide the symbolic size ${a} by ${divisor}`);
  }
  if (a % divisor !== 0) throw new OpError(`${what}: size ${a} does not divide by ${divisor}`);
  return a / divisor;
}

/** The size of a dim under bound names; sums and products of terms are allowed. */
export function evalDim(dim: Dim, dims: Map<string, number>): number {
  if (typeof dim === "number") return dim;
  let total = 0;
  for (const term of dim.split("+")) {
    let product = 1;
    for (const factor of term.split("*")) {
      const name = factor.trim();
      const value = /^\d+$/.test(name) ? Number(name) : dims.get(name);
      if (value === undefined) throw new OpError(`symbolic size '${name}' is not bound`);
      product *= value;
    }
    total += product;
  }
  return total;
}

export function sameDim(a: Dim, b: Dim): boolean {
  return a === b;
}

export function checkRank(type: TensorType, rank: number, what: string): void {
  if (type.shape.length !== rank) {
    throw new OpError(`${what}: expected rank ${rank}, got [${type.shape.join(", ")}]`);
  }
}

export function checkDim(a: Dim, b: Dim, what: string): void {
  if (!sameDim(a, b)) throw new OpError(`${what}: sizes ${a} and ${b} differ`);
}

/** Binds each symbolic name in the declared types to the size the given tensor has there. */
export function bindDims(
  declared: { name: string; type: TensorType }[],
  tensors: Record<string, Tensor>,
  dims = new Map<string, number>(),
): Map<string, number> {
  for (const { name, type } of declared) {
    const t = tensors[name];
    if (!t) throw new OpError(`input ${name} is missing`);
    if (t.shape.length !== type.shape.length) {
      throw new OpError(
        `input ${name}: expected rank ${type.shape.length} [${type.shape}], got [${t.shape}]`,
      );
    }
    type.shape.forEach((dim, axis) => {
      const size = t.shape[axis];
      if (typeof dim === "number") {
        if (dim !== size) throw new OpError(`input ${name}: axis ${axis} must be ${dim}, got ${size}`);
      } else if (/^[A-Za-z_]\w*$/.test(dim)) {
        const bound = dims.get(dim);
        if (bound !== undefined && bound !== size) {
          throw new OpError(`input ${name}: axis ${axis} is ${dim}=${bound} elsewhere, got ${size}`);
        }
        dims.set(dim, size);
      }
    });
  }
  return dims;
}
