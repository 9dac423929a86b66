// Weight stores: where a graph's weights come from. A store reads one tensor, or a slice of it,
// on demand, so that a rank never reads more of a checkpoint than its own share.

import type { Graph, WeightSlice } from "./graph.ts";
import { castTensor, type DType, type Tensor } from "./tensor.ts";
import { sliceTensor } from "./ops/shape.ts";

export interface WeightInfo {
  dtype: DType;
  shape: number[];
}

export interface WeightStore extends Disposable {
  keys(): string[];
  has(key: string): boolean;
  info(key: string): WeightInfo;
  /** Reads a tensor, or only the given slices of it, in its stored dtype. */
  read(key: string, slices?: WeightSlice[]): Tensor;
  /**
   * A short string that changes whenever the tensor's bytes may have (its file, size and time),
   * so that a build cache can tell without reading it; stores that cannot say leave it out.
   */
  fingerprint?(key: string): string;
}

/** Reads every weight a graph names, sliced as the graph says, in the graph's dtypes. */
export function readGraphWeights(
  graph: Graph,
  store: WeightStore,
  progress?: (done: number, total: number) => void,
): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [index, weight] of graph.weights.entries()) {
    out.set(weight.name, castTensor(store.read(weight.key, weight.slices), weight.type.dtype));
    progress?.(index + 1, graph.weights.length);
  }
  return out;
}

/** A store over tensors already in memory: tests, and weights made by passes. */
export class MemoryWeightStore implements WeightStore {
  constructor(readonly tensors: Map<string, Tensor>) {}
  keys(): string[] {
    return [...this.tensors.keys()];
  }
  has(key: string): boolean {
    return this.tensors.has(key);
  }
  info(key: string): WeightInfo {
    const t = this.#get(key);
    return { dtype: t.dtype, shape: t.shape };
  }
  read(key: string, slices: WeightSlice[] = []): Tensor {
    let t = this.#get(key);
    for (const slice of slices) t = sliceTensor(t, slice.axis, slice.start, slice.end);
    return t;
  }
  [Symbol.dispose](): void {}
  #get(key: string): Tensor {
    const t = this.tensors.get(key);
    if (!t) throw new RangeError(`no weight named ${key}`);
    return t;
  }
}
