// Tensors in the KServe v2 JSON form ({name, shape, datatype, data}) and back, checked against an
// engine's signature: the datatype must be the input's, fixed sizes must match, and a symbolic size
// ("batch") takes any value as long as every input agrees on it.

import { evalDim } from "../ir/dims.ts";
import type { GraphInput } from "../ir/graph.ts";
import { castTensor, type DType, numel, type Tensor, tensor, toF32 } from "../ir/tensor.ts";
import { ServeError } from "./errors.ts";

export const V2_DATATYPES: Record<DType, string> = {
  f32: "FP32",
  f16: "FP16",
  bf16: "BF16",
  i32: "INT32",
  i64: "INT64",
};

export interface V2Tensor {
  name: string;
  shape: number[];
  datatype: string;
  data: unknown;
}

/** A signature entry as v2 metadata shows it: symbolic sizes are -1. */
export function v2Signature(entry: GraphInput): { name: string; datatype: string; shape: number[] } {
  return {
    name: entry.name,
    datatype: V2_DATATYPES[entry.type.dtype],
    shape: entry.type.shape.map((dim) => (typeof dim === "number" ? dim : -1)),
  };
}

/** The request's tensors, each checked against the signature; symbolic sizes are bound across inputs. */
export function decodeInputs(given: unknown, signature: GraphInput[]): Record<string, Tensor> {
  if (!Array.isArray(given) || given.length === 0) {
    throw new ServeError(400, "inputs: expected a non-empty list of tensors");
  }
  const byName = new Map<string, V2Tensor>();
  for (const [index, value] of given.entries()) {
    const entry = checkShapeOfEntry(value, `inputs.${index}`);
    if (byName.has(entry.name)) throw new ServeError(400, `input ${entry.name} is given twice`);
    if (!signature.some((input) => input.name === entry.name)) {
      throw new ServeError(
        400,
        `input ${entry.name} is not an input of the model; it takes ${
          signature.map((i) => i.name).join(", ")
        }`,
      );
    }
    byName.set(entry.name, entry);
  }
  const bound = new Map<string, { size: number; input: string }>();
  const tensors: Record<string, Tensor> = {};
  for (const input of signature) {
    const entry = byName.get(input.name);
    if (!entry) throw new ServeError(400, `input ${input.name} is missing`);
    const expected = V2_DATATYPES[input.type.dtype];
    if (entry.datatype !== expected) {
      throw new ServeError(
        400,
        `input ${input.name}: datatype ${entry.datatype} given; the model takes ${expected}`,
      );
    }
    const wanted = `[${input.type.shape.join(", ")}]`;
    if (entry.shape.length !== input.type.shape.length) {
      throw new ServeError(
        400,
        `input ${input.name}: shape [${entry.shape}] given; the model takes ${wanted}`,
      );
    }
    input.type.shape.forEach((dim, axis) => {
      const size = entry.shape[axis];
      if (typeof dim === "number") {
        if (size !== dim) {
          throw new ServeError(
            400,
            `input ${input.name}: shape [${entry.shape}] given; the model takes ${wanted}`,
          );
        }
      } else if (/^\w+$/.test(dim)) {
        const known = bound.get(dim);
        if (known && known.size !== size) {
          throw new ServeError(
            400,
            `input ${input.name}: size '${dim}' is ${size} here but ${known.size} in input ${known.input}`,
          );
        }
        bound.set(dim, { size, input: input.name });
      }
    });
    tensors[input.name] = toTensor(entry, input.type.dtype);
  }
  // Sizes written as sums or products of names ("past+seq") are checked once every name is bound.
  const sizes = new Map([...bound].map(([name, { size }]) => [name, size]));
  for (const input of signature) {
    input.type.shape.forEach((dim, axis) => {
      if (typeof dim === "number" || /^\w+$/.test(dim)) return;
      const names = dim.split(/[+*]/).map((part) => part.trim()).filter((part) => !/^\d+$/.test(part));
      if (names.some((name) => !sizes.has(name))) return;
      const size = evalDim(dim, sizes);
      if (tensors[input.name].shape[axis] !== size) {
        throw new ServeError(
          400,
          `input ${input.name}: axis ${axis} is ${dim} = ${size}, but ${
            tensors[input.name].shape[axis]
          } was given`,
        );
      }
    });
  }
  return tensors;
}

/** An output tensor in v2 JSON: row-major data as plain numbers. */
export function encodeOutput(name: string, value: Tensor): V2Tensor {
  const data = value.dtype === "i32"
    ? Array.from(value.data as Int32Array)
    : value.dtype === "i64"
    ? Array.from(value.data as BigInt64Array, Number)
    : Array.from(toF32(value));
  return { name, shape: value.shape, datatype: V2_DATATYPES[value.dtype], data };
}

function checkShapeOfEntry(value: unknown, where: string): V2Tensor {
  const entry = value as Partial<V2Tensor> | null;
  if (!entry || typeof entry !== "object") throw new ServeError(400, `${where}: expected a tensor object`);
  if (typeof entry.name !== "string") throw new ServeError(400, `${where}.name: expected a string`);
  const name = entry.name;
  if (!Array.isArray(entry.shape) || !entry.shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new ServeError(400, `input ${name}: shape must be a list of non-negative integers`);
  }
  if (typeof entry.datatype !== "string") {
    throw new ServeError(400, `input ${name}: datatype must be a string`);
  }
  if (!Array.isArray(entry.data)) throw new ServeError(400, `input ${name}: data must be a list`);
  return entry as V2Tensor;
}

/** The entry's data (flat or nested, row-major) as a tensor of `dtype`. */
function toTensor(entry: V2Tensor, dtype: DType): Tensor {
  const values = (entry.data as unknown[]).flat(Infinity);
  const count = numel(entry.shape);
  if (values.length !== count) {
    throw new ServeError(
      400,
      `input ${entry.name}: shape [${entry.shape}] needs ${count} values, ${values.length} given`,
    );
  }
  const integer = dtype === "i32" || dtype === "i64";
  const bad = values.findIndex((v) =>
    typeof v !== "number" || !Number.isFinite(v) ||
    (integer && (!Number.isInteger(v) || (dtype === "i32" && (v < -(2 ** 31) || v >= 2 ** 31))))
  );
  if (bad >= 0) {
    const kind = integer ? `${V2_DATATYPES[dtype]} integers` : "finite numbers";
    throw new ServeError(
      400,
      `input ${entry.name}: data[${bad}] = ${JSON.stringify(values[bad])}; expected ${kind}`,
    );
  }
  const numbers = values as number[];
  if (dtype === "i32") return tensor("i32", entry.shape, Int32Array.from(numbers));
  if (dtype === "i64") return tensor("i64", entry.shape, BigInt64Array.from(numbers, (v) => BigInt(v)));
  return castTensor(tensor("f32", entry.shape, Float32Array.from(numbers)), dtype);
}
