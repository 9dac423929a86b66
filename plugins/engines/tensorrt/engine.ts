// The tensorrt engine: TensorRT plans, fallback-engine segments and collectives between them, in
// graph order. Its payload is a small JSON index followed by each step's bytes; a TensorRT step's
// bytes are its serialized plan exactly as TensorRT wrote it.

import type { GraphInput, Node } from "../../../core/ir/graph.ts";
import { castTensor, isFloat, type Tensor } from "../../../core/ir/tensor.ts";
import { type Engine, type EngineBackend, EngineError } from "../../../core/runtime/engine.ts";
import { type GroupResolver, runCollective } from "../../../core/runtime/segments.ts";
import type { ProcessGroup } from "../../../core/dist/group.ts";
import type { PlanEngine, PlanSignature, SegmentPlanner } from "./plan.ts";

const MAGIC = "rankflow-tensorrt";
const PAYLOAD_VERSION = 1;

export type EngineStep =
  | { kind: "tensorrt"; engine: PlanEngine }
  | { kind: "fallback"; engine: Engine }
  | { kind: "collective"; node: Node };

type IndexStep =
  | { kind: "tensorrt"; bytes: number; signature: PlanSignature }
  | { kind: "fallback"; bytes: number; backend: string }
  | { kind: "collective"; node: Node };

interface PayloadIndex {
  magic: typeof MAGIC;
  version: number;
  backendVersion: string;
  inputs: GraphInput[];
  outputs: GraphInput[];
  steps: IndexStep[];
}

/** The raw ncclComm_t of a group of the nccl backend (plugins/collectives/nccl.ts), if it is one. */
function ncclCommOf(group: ProcessGroup): Deno.PointerValue | undefined {
  const comm = (group as { communicator?: { comm?: unknown } }).communicator?.comm;
  return typeof comm === "bigint" ? Deno.UnsafePointer.create(comm) : undefined;
}

export class TensorRtEngine implements Engine {
  readonly backend = "tensorrt";
  #groups?: GroupResolver;

  constructor(
    readonly backendVersion: string,
    readonly steps: EngineStep[],
    readonly inputs: GraphInput[],
    readonly outputs: GraphInput[],
  ) {}

  /** Collectives between steps need process groups; DistCollective layers need an NCCL communicator. */
  get requiresCommunicator(): boolean {
    return this.steps.some((step) =>
      step.kind === "collective" || (step.kind === "tensorrt" && step.engine.communicatorGroup !== undefined)
    );
  }

  bind(groups: GroupResolver): this {
    for (const step of this.steps) {
      if (step.kind !== "tensorrt" || step.engine.communicatorGroup === undefined) continue;
      const group = groups(step.engine.communicatorGroup);
      const comm = ncclCommOf(group);
      if (comm === undefined) {
        throw new EngineError(
          `this TensorRT engine runs DistCollective layers over group ${group.name}, which needs an NCCL ` +
            "communicator: run it with the nccl collective backend",
        );
      }
      step.engine.setCommunicator(comm);
    }
    this.#groups = groups;
    return this;
  }

  async run(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    if (this.requiresCommunicator && !this.#groups) {
      throw new EngineError("this engine runs collectives: bind it to its process groups first");
    }
    const values = new Map(Object.entries(inputs));
    for (const input of this.inputs) {
      const given = values.get(input.name);
      if (!given) throw new EngineError(`input ${input.name} is missing`);
      // The engine may compute in another float dtype than its caller holds (the precision option).
      if (given.dtype !== input.type.dtype && isFloat(given.dtype) && isFloat(input.type.dtype)) {
        values.set(input.name, castTensor(given, input.type.dtype));
      }
    }
    for (const step of this.steps) {
      if (step.kind === "collective") {
        const input = values.get(step.node.inputs[0]);
        if (!input) throw new EngineError(`${step.node.op}: input %${step.node.inputs[0]} was not computed`);
        const group = this.#groups!(step.node.attrs.group as string);
        values.set(step.node.outputs[0], await runCollective(step.node, input, group));
        continue;
      }
      const args: Record<string, Tensor> = {};
      for (const input of step.engine.inputs) {
        const value = values.get(input.name);
        if (!value) throw new EngineError(`input %${input.name} of a ${step.kind} segment was not computed`);
        args[input.name] = value;
      }
      for (const [name, value] of Object.entries(await step.engine.run(args))) values.set(name, value);
    }
    return Object.fromEntries(this.outputs.map((output) => [output.name, values.get(output.name)!]));
  }

  serialize(): Uint8Array {
    const parts = this.steps.map((step) =>
      step.kind === "collective" ? new Uint8Array() : step.engine.serialize()
    );
    const steps: IndexStep[] = this.steps.map((step, i) => {
      if (step.kind === "collective") return { kind: "collective", node: step.node };
      if (step.kind === "fallback") {
        return { kind: "fallback", bytes: parts[i].length, backend: step.engine.backend };
      }
      const signature: PlanSignature = {
        inputs: step.engine.inputs,
        outputs: step.engine.outputs,
        communicatorGroup: step.engine.communicatorGroup,
      };
      return { kind: "tensorrt", bytes: parts[i].length, signature };
    });
    const index: PayloadIndex = {
      magic: MAGIC,
      version: PAYLOAD_VERSION,
      backendVersion: this.backendVersion,
      inputs: this.inputs,
      outputs: this.outputs,
      steps,
    };
    const json = new TextEncoder().encode(JSON.stringify(index));
    const out = new Uint8Array(4 + json.length + parts.reduce((n, part) => n + part.length, 0));
    new DataView(out.buffer).setUint32(0, json.length, true);
    out.set(json, 4);
    let offset = 4 + json.length;
    for (const part of parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }

  [Symbol.dispose](): void {
    for (const step of this.steps) if (step.kind !== "collective") step.engine[Symbol.dispose]();
  }
}

/** Reads a payload back; the planner and the fallback backend are asked for only when a step needs them. */
export async function deserializeTensorRt(
  payload: Uint8Array,
  planner: () => SegmentPlanner,
  fallback: (name: string) => Promise<EngineBackend>,
): Promise<TensorRtEngine> {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const length = payload.length >= 4 ? view.getUint32(0, true) : 0;
  let index: PayloadIndex;
  try {
    index = JSON.parse(new TextDecoder().decode(payload.subarray(4, 4 + length)));
  } catch {
    throw new EngineError("not a tensorrt engine payload (its index is not JSON)");
  }
  if (index.magic !== MAGIC || index.version !== PAYLOAD_VERSION) {
    throw new EngineError(`not a tensorrt engine payload of version ${PAYLOAD_VERSION}`);
  }
  let offset = 4 + length;
  const steps: EngineStep[] = [];
  for (const step of index.steps) {
    if (step.kind === "collective") {
      steps.push(step);
      continue;
    }
    const bytes = payload.subarray(offset, offset + step.bytes);
    offset += step.bytes;
    if (step.kind === "fallback") {
      steps.push({ kind: "fallback", engine: await (await fallback(step.backend)).deserialize(bytes) });
      continue;
    }
    steps.push({ kind: "tensorrt", engine: await planner().load(bytes, step.signature) });
  }
  return new TensorRtEngine(index.backendVersion, steps, index.inputs, index.outputs);
}
