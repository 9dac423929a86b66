// The payload of engines that keep their graph and weights as they are (cpu, cuda): the graph's
// IR text and each weight's bytes, so that an engine file rebuilds the same engine.

import type { Graph } from "../ir/graph.ts";
import { BYTES_PER_ELEMENT, type DType, numel, type Tensor, tensor, viewOf } from "../ir/tensor.ts";
import { parseGraph, printGraph } from "../ir/text.ts";

// Payload: u32 length + graph text, u32 length + JSON index of weights, then each weight's bytes
// at an 8-byte aligned offset.
interface WeightEntry {
  name: string;
  dtype: DType;
  shape: number[];
  offset: number;
}

export function encodeGraphPayload(graph: Graph, weights: Map<string, Tensor>): Uint8Array {
  const text = new TextEncoder().encode(printGraph(graph));
  const entries: WeightEntry[] = [];
  let offset = 0;
  for (const [name, t] of weights) {
    entries.push({ name, dtype: t.dtype, shape: t.shape, offset });
    offset += Math.ceil(t.data.byteLength / 8) * 8;
  }
  const index = new TextEncoder().encode(JSON.stringify(entries));
  const head = 8 + text.length + index.length;
  const start = Math.ceil(head / 8) * 8;
  const out = new Uint8Array(start + offset);
  const view = new DataView(out.buffer);
  view.setUint32(0, text.length, true);
  out.set(text, 4);
  view.setUint32(4 + text.length, index.length, true);
  out.set(index, 8 + text.length);
  entries.forEach((entry) => {
    const t = weights.get(entry.name)!;
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), start + entry.offset);
  });
  return out;
}

export function decodeGraphPayload(payload: Uint8Array): { graph: Graph; weights: Map<string, Tensor> } {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const textLength = view.getUint32(0, true);
  const graph = parseGraph(new TextDecoder().decode(payload.subarray(4, 4 + textLength)));
  const indexLength = view.getUint32(4 + textLength, true);
  const head = 8 + textLength + indexLength;
  const entries: WeightEntry[] = JSON.parse(new TextDecoder().decode(payload.subarray(8 + textLength, head)));
  const start = Math.ceil(head / 8) * 8;
  const weights = new Map<string, Tensor>();
  for (const entry of entries) {
    const bytes = numel(entry.shape) * BYTES_PER_ELEMENT[entry.dtype];
    const copy = payload.slice(start + entry.offset, start + entry.offset + bytes);
    weights.set(entry.name, tensor(entry.dtype, entry.shape, viewOf(entry.dtype, copy.buffer)));
  }
  return { graph, weights };
}
