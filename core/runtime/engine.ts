// The engine contract: what every backend builds from a lowered graph and how the runtime calls it.

import type { Graph, GraphInput } from "../ir/graph.ts";
import type { Tensor } from "../ir/tensor.ts";

export class EngineError extends Error {
  override name = "EngineError";
}

export interface EngineCapabilities {
  /** Whether this backend can run the op (collective ops included) inside an engine. */
  supports(op: string): boolean;
  /** Whether collectives run inside the engine; if not, the graph is cut at them into segments. */
  collectivesInEngine: boolean;
}

export interface Engine extends Disposable {
  readonly backend: string;
  /** The backend version that made the engine; an engine file records it. */
  readonly backendVersion: string;
  readonly inputs: GraphInput[];
  readonly outputs: GraphInput[];
  run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>>;
  /** The backend's own payload for an engine file. */
  serialize(): Uint8Array;
}

export interface EngineBackend {
  readonly name: string;
  readonly version: string;
  readonly capabilities: EngineCapabilities;
  build(graph: Graph, weights: Map<string, Tensor>): Promise<Engine>;
  deserialize(payload: Uint8Array): Promise<Engine>;
}
