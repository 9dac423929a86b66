// A NetworkWriter over the shim's rf_trt_add_* calls: one builder's network, each call checked so
// that a refused layer is a FfiError carrying TensorRT's words.

import type { DType, Tensor } from "../../../core/ir/tensor.ts";
import { DTYPE_CODES, type TensorRtLibrary } from "../../../ffi/tensorrt.ts";
import { cText } from "../../../ffi/errors.ts";
import type { NetworkWriter, ReshapeDim, TensorId } from "./network.ts";

const CODES = {
  elementwise: { add: 0, sub: 1, mul: 2, div: 3, max: 4, min: 5, pow: 6 },
  unary: { exp: 0, log: 1, sqrt: 2, recip: 3, neg: 4, sin: 5, cos: 6 },
  activation: { sigmoid: 0, gelu_erf: 1, gelu_tanh: 2, relu: 3, tanh: 4 },
  reduce: { sum: 0, avg: 1, max: 2, min: 3 },
  collective: { all_reduce: 0, all_gather: 1, reduce_scatter: 2, broadcast: 3 },
} as const;
const REDUCE_NONE = -1;

function dtypeCode(dtype: DType): number {
  return DTYPE_CODES[dtype];
}

export function bytesOf(value: Tensor): Uint8Array<ArrayBuffer> {
  return new Uint8Array(value.data.buffer as ArrayBuffer, value.data.byteOffset, value.data.byteLength);
}

/** The network of one builder; each call is one shim call, its failure a FfiError. */
export class NativeNetwork implements NetworkWriter {
  readonly #out = new Int32Array(1);
  constructor(readonly library: TensorRtLibrary, readonly builder: Deno.PointerValue) {}

  #made(rc: number, what: string): TensorId {
    this.library.check(rc, what);
    return this.#out[0];
  }

  input(name: string, dtype: DType, dims: number[]): TensorId {
    const s = this.library.symbols;
    return this.#made(
      s.rf_trt_network_input(
        this.builder,
        cText(name),
        dtypeCode(dtype),
        dims.length,
        BigInt64Array.from(dims, BigInt),
        this.#out,
      ),
      `input ${name}`,
    );
  }
  constant(value: Tensor, dims = value.shape): TensorId {
    const bytes = bytesOf(value);
    const rc = this.library.symbols.rf_trt_network_constant(
      this.builder,
      dtypeCode(value.dtype),
      dims.length,
      BigInt64Array.from(dims, BigInt),
      bytes,
      BigInt(bytes.length),
      this.#out,
    );
    return this.#made(rc, "constant");
  }
  output(tensor: TensorId, name: string): void {
    this.library.check(
      this.library.symbols.rf_trt_network_output(this.builder, tensor, cText(name)),
      `output ${name}`,
    );
  }
  nameLayer(tensor: TensorId, name: string): void {
    this.library.check(
      this.library.symbols.rf_trt_network_name_layer(this.builder, tensor, cText(name)),
      name,
    );
  }
  elementwise(op: keyof typeof CODES.elementwise, a: TensorId, b: TensorId): TensorId {
    return this.#made(
      this.library.symbols.rf_trt_add_elementwise(this.builder, CODES.elementwise[op], a, b, this.#out),
      op,
    );
  }
  unary(op: keyof typeof CODES.unary, x: TensorId): TensorId {
    return this.#made(this.library.symbols.rf_trt_add_unary(this.builder, CODES.unary[op], x, this.#out), op);
  }
  activation(kind: keyof typeof CODES.activation, x: TensorId): TensorId {
    return this.#made(
      this.library.symbols.rf_trt_add_activation(this.builder, CODES.activation[kind], x, this.#out),
      kind,
    );
  }
  matmul(a: TensorId, transposeA: boolean, b: TensorId, transposeB: boolean): TensorId {
    const rc = this.library.symbols.rf_trt_add_matmul(
      this.builder,
      a,
      transposeA ? 1 : 0,
      b,
      transposeB ? 1 : 0,
      this.#out,
    );
    return this.#made(rc, "matmul");
  }
  softmax(x: TensorId, axis: number): TensorId {
    return this.#made(this.library.symbols.rf_trt_add_softmax(this.builder, x, axis, this.#out), "softmax");
  }
  cast(x: TensorId, dtype: DType): TensorId {
    return this.#made(
      this.library.symbols.rf_trt_add_cast(this.builder, x, dtypeCode(dtype), this.#out),
      "cast",
    );
  }
  reduce(op: keyof typeof CODES.reduce, x: TensorId, axis: number, keepDims: boolean): TensorId {
    const rc = this.library.symbols.rf_trt_add_reduce(
      this.builder,
      CODES.reduce[op],
      x,
      axis,
      keepDims ? 1 : 0,
      this.#out,
    );
    return this.#made(rc, "reduce");
  }
  gather(data: TensorId, indices: TensorId, axis: number): TensorId {
    return this.#made(
      this.library.symbols.rf_trt_add_gather(this.builder, data, indices, axis, this.#out),
      "gather",
    );
  }
  argmax(x: TensorId, axis: number): TensorId {
    return this.#made(this.library.symbols.rf_trt_add_argmax(this.builder, x, axis, this.#out), "argmax");
  }
  reshape(x: TensorId, target: ReshapeDim[]): TensorId {
    const spec = BigInt64Array.from(target, (dim) => BigInt(typeof dim === "number" ? dim : -2 - dim.axis));
    return this.#made(
      this.library.symbols.rf_trt_add_reshape(this.builder, x, target.length, spec, this.#out),
      "reshape",
    );
  }
  transpose(x: TensorId, perm: number[]): TensorId {
    const rc = this.library.symbols.rf_trt_add_transpose(
      this.builder,
      x,
      perm.length,
      Int32Array.from(perm),
      this.#out,
    );
    return this.#made(rc, "transpose");
  }
  concat(inputs: TensorId[], axis: number): TensorId {
    const rc = this.library.symbols.rf_trt_add_concat(
      this.builder,
      inputs.length,
      Int32Array.from(inputs),
      axis,
      this.#out,
    );
    return this.#made(rc, "concat");
  }
  slice(x: TensorId, axis: number, start: number, end: number): TensorId {
    const rc = this.library.symbols.rf_trt_add_slice(
      this.builder,
      x,
      axis,
      BigInt(start),
      BigInt(end),
      this.#out,
    );
    return this.#made(rc, "slice");
  }
  layernorm(x: TensorId, scale: TensorId, bias: TensorId, eps: number): TensorId {
    return this.#made(
      this.library.symbols.rf_trt_add_layernorm(this.builder, x, scale, bias, eps, this.#out),
      "layernorm",
    );
  }
  attention(q: TensorId, k: TensorId, v: TensorId): TensorId {
    return this.#made(
      this.library.symbols.rf_trt_add_attention(this.builder, q, k, v, this.#out),
      "attention",
    );
  }
  distCollective(
    x: TensorId,
    kind: keyof typeof CODES.collective,
    reduce: keyof typeof CODES.reduce | undefined,
    root: number,
    ranks: number,
  ): TensorId {
    const reduceCode = reduce === undefined ? REDUCE_NONE : CODES.reduce[reduce];
    // No rank list: the collective runs over every rank of the communicator bound to the context.
    const rc = this.library.symbols.rf_trt_add_dist_collective(
      this.builder,
      x,
      CODES.collective[kind],
      reduceCode,
      BigInt(root),
      null,
      BigInt(0),
      ranks,
      this.#out,
    );
    return this.#made(rc, kind);
  }
}
