// The engine's weights on the device: each weight a step reads directly, and for each product
// the concatenation of its parts' weights ([N, K] rows, matmul weights transposed) and biases.

import type { Lowered } from "./lower.ts";
import type { View } from "./views.ts";
import type { DeviceContext } from "./device.ts";
import { upload } from "../../../ffi/cuda.ts";
import { allocate, castTensor, type DType, numel, type Tensor, tensor } from "../../../core/ir/tensor.ts";
import type { Graph } from "../../../core/ir/graph.ts";
import { EngineError } from "../../../core/runtime/engine.ts";

export interface DeviceWeights {
  views: Map<string, View>;
  /** Per gemm step index: the concatenated weight and bias. */
  products: Map<number, { w: bigint; bias?: bigint }>;
  bytes: number;
}

export function uploadWeights(
  ctx: DeviceContext,
  graph: Graph,
  lowered: Lowered,
  host: Map<string, Tensor>,
): DeviceWeights {
  const declared = new Map(graph.weights.map((w) => [w.name, w]));
  const valueOf = (name: string): Tensor => {
    const weight = declared.get(name)!;
    const value = host.get(name);
    if (!value) throw new EngineError(`weight ${name} (${weight.key}) was not provided`);
    const shape = weight.type.shape as number[];
    if (value.shape.join() !== shape.join()) {
      throw new EngineError(`weight ${name} has shape [${value.shape}], the graph declares [${shape}]`);
    }
    return castTensor(value, weight.type.dtype);
  };
  const views = new Map<string, View>();
  let bytes = 0;
  const put = (t: Tensor): bigint => {
    const ptr = ctx.alloc(t.data.byteLength);
    upload(ptr, t.data);
    bytes += t.data.byteLength;
    return ptr;
  };
  const plain = (name: string): View => {
    const known = views.get(name);
    if (known) return known;
    const t = valueOf(name);
    const width = t.shape.at(-1) ?? 1;
    const view = { ptr: put(t), dtype: t.dtype, shape: t.shape, ld: width, width, capacity: numel(t.shape) };
    views.set(name, view);
    return view;
  };
  const products = new Map<number, { w: bigint; bias?: bigint }>();
  lowered.steps.forEach((step, index) => {
    if (step.kind !== "gemm") {
      for (const name of namesRead(step)) if (declared.has(name)) plain(name);
      return;
    }
    if (step.norm) plain(step.norm.w);
    if (step.parts.length === 1 && !step.parts[0].transposed) {
      const part = step.parts[0];
      products.set(index, { w: plain(part.weight).ptr, bias: part.bias ? plain(part.bias).ptr : undefined });
      return;
    }
    const rows = step.parts.map((part) => {
      const t = valueOf(part.weight);
      return part.transposed ? transpose2d(t) : t;
    });
    const w = put(concatRows(rows));
    const biases = step.parts.every((part) => part.bias)
      ? put(concatRows(step.parts.map((part) => valueOf(part.bias!))))
      : undefined;
    products.set(index, { w, bias: biases });
  });
  return { views, products, bytes };
}

function namesRead(step: Lowered["steps"][number]): string[] {
  return Object.values(step).flatMap((value) =>
    typeof value === "string"
      ? [value]
      : Array.isArray(value)
      ? value.filter((v) => typeof v === "string")
      : []
  );
}

function concatRows(parts: Tensor[]): Tensor {
  const dtype: DType = parts[0].dtype;
  const width = parts[0].shape.length === 1 ? 1 : parts[0].shape[1];
  const rows = parts.reduce((n, t) => n + t.shape[0], 0);
  const out = allocate(dtype, rows * width);
  let offset = 0;
  for (const t of parts) {
    // deno-lint-ignore no-explicit-any -- every TensorData has set() over its own element type
    (out as any).set(t.data, offset);
    offset += t.data.length;
  }
  return tensor(dtype, parts[0].shape.length === 1 ? [rows] : [rows, width], out);
}

function transpose2d(t: Tensor): Tensor {
  const [rows, cols] = t.shape;
  const out = allocate(t.dtype, rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = t.data[r * cols + c];
  }
  return tensor(t.dtype, [cols, rows], out);
}
