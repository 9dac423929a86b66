// Tensors and their types: the values that flow between graph nodes, engines and collectives.
// Floating tensors of every dtype are computed in f32 by the reference engine; f16 and bf16
// are stored as raw 16-bit patterns so that bytes read from a file are kept as they are.

export const DTYPES = ["f32", "f16", "bf16", "i32", "i64"] as const;
export type DType = typeof DTYPES[number];

/** A dimension: a fixed size, or the name of a symbolic size bound when the graph runs ("seq"). */
export type Dim = number | string;

export interface TensorType {
  dtype: DType;
  shape: Dim[];
}

export type TensorData = Float32Array | Uint16Array | Int32Array | BigInt64Array;

/** A dense row-major tensor with every dimension known. */
export interface Tensor {
  dtype: DType;
  shape: number[];
  data: TensorData;
}

export const BYTES_PER_ELEMENT: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, i64: 8 };

export function isFloat(dtype: DType): boolean {
  return dtype === "f32" || dtype === "f16" || dtype === "bf16";
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** The elements of `buffer` as the typed array of `dtype` (little-endian, as Deno's hosts are). */
export function viewOf(dtype: DType, buffer: ArrayBuffer): TensorData {
  switch (dtype) {
    case "f32":
      return new Float32Array(buffer);
    case "f16":
    case "bf16":
      return new Uint16Array(buffer);
    case "i32":
      return new Int32Array(buffer);
    case "i64":
      return new BigInt64Array(buffer);
  }
}

export function allocate(dtype: DType, count: number): TensorData {
  return viewOf(dtype, new ArrayBuffer(count * BYTES_PER_ELEMENT[dtype]));
}

export function tensor(dtype: DType, shape: number[], data?: TensorData): Tensor {
  const count = numel(shape);
  const values = data ?? allocate(dtype, count);
  if (values.length !== count) {
    throw new RangeError(`tensor of shape [${shape}] needs ${count} elements, got ${values.length}`);
  }
  return { dtype, shape, data: values };
}

export function f32(shape: number[], values?: ArrayLike<number>): Tensor {
  return tensor("f32", shape, values ? Float32Array.from(values) : undefined);
}

export function i32(shape: number[], values?: ArrayLike<number>): Tensor {
  return tensor("i32", shape, values ? Int32Array.from(values) : undefined);
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

export function bf16ToF32(bits: number): number {
  scratchBits[0] = bits << 16;
  return scratch[0];
}

/** Rounds to nearest even, as PyTorch does when it casts to bfloat16. */
export function f32ToBf16(value: number): number {
  scratch[0] = value;
  const x = scratchBits[0];
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40; // NaN stays NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

export function f32ToF16(value: number): number {
  scratch[0] = value;
  const x = scratchBits[0];
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let result = mantissa >> shift;
    const rest = mantissa & ((1 << shift) - 1);
    if (rest > half || (rest === half && (result & 1))) result++;
    return sign | result;
  }
  // A carry out of the mantissa while rounding moves into the exponent, up to infinity.
  let result = (e << 10) | (mantissa >> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (result & 1))) result++;
  return sign | result;
}

/** The values of a float tensor as f32, converting f16/bf16 bit patterns. */
export function toF32(t: Tensor): Float32Array {
  switch (t.dtype) {
    case "f32":
      return t.data as Float32Array;
    case "bf16":
      return mapInto(new Float32Array(t.data.length), t.data as Uint16Array, bf16ToF32);
    case "f16":
      return mapInto(new Float32Array(t.data.length), t.data as Uint16Array, f16ToF32);
    case "i32":
      return Float32Array.from(t.data as Int32Array);
    case "i64":
      return Float32Array.from(t.data as BigInt64Array, Number);
  }
}

/** Converts a float tensor to the given dtype (rounding to nearest even for f16/bf16). */
export function castTensor(t: Tensor, dtype: DType): Tensor {
  if (t.dtype === dtype) return t;
  const values = toF32(t);
  switch (dtype) {
    case "f32":
      return tensor("f32", t.shape, values);
    case "bf16":
      return tensor("bf16", t.shape, mapInto(new Uint16Array(values.length), values, f32ToBf16));
    case "f16":
      return tensor("f16", t.shape, mapInto(new Uint16Array(values.length), values, f32ToF16));
    case "i32":
      return tensor("i32", t.shape, Int32Array.from(values, Math.trunc));
    case "i64":
      return tensor("i64", t.shape, BigInt64Array.from(values, (v) => BigInt(Math.trunc(v))));
  }
}

/**
 * out[i] = convert(source[i]). (TypedArray.from with a mapping function first gathers the values
 * into a plain array, which V8 refuses past 2^27 elements: a 1B model's embedding has 2^28.)
 */
function mapInto<O extends { [i: number]: number }>(
  out: O,
  source: ArrayLike<number>,
  convert: (value: number) => number,
): O {
  for (let i = 0; i < source.length; i++) out[i] = convert(source[i]);
  return out;
}

/** Integer tensor values as plain numbers (token ids, positions). */
export function toIndices(t: Tensor): Int32Array {
  if (t.dtype === "i32") return t.data as Int32Array;
  if (t.dtype === "i64") return Int32Array.from(t.data as BigInt64Array, Number);
  throw new TypeError(`expected an integer tensor, got ${t.dtype}`);
}

export function formatType(type: TensorType): string {
  return `${type.dtype}[${type.shape.join(", ")}]`;
}
