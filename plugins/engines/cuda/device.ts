// One GPU as the cuda engine uses it: a stream of its own, a cuBLASLt handle and workspace, and
// every device allocation the engine makes, freed together on dispose.

import {
  check,
  createStream,
  deviceAlloc,
  deviceFree,
  probeDevices,
  synchronize,
} from "../../../ffi/cuda.ts";
import { cudart } from "../../../ffi/cuda.ts";
import { createHandle, destroyHandle } from "../../../ffi/cublaslt.ts";
import { kernels } from "../../../ffi/kernels.ts";
import { EngineError } from "../../../core/runtime/engine.ts";

const WORKSPACE_BYTES = 32 << 20;

export class DeviceContext implements Disposable {
  readonly stream: bigint;
  readonly lt: bigint;
  readonly workspace: bigint;
  readonly workspaceBytes = WORKSPACE_BYTES;
  #allocations = new Set<bigint>();
  #disposed = false;

  constructor(readonly device: number) {
    const { count, reason } = probeDevices();
    if (count === 0) throw new EngineError(`the cuda engine needs a GPU: ${reason}`);
    if (device >= count) throw new EngineError(`GPU ${device} asked for, this machine has ${count}`);
    check(cudart().cudaSetDevice(device), `cudaSetDevice(${device})`);
    kernels();
    this.stream = createStream();
    this.lt = createHandle();
    this.workspace = this.alloc(WORKSPACE_BYTES);
  }

  alloc(bytes: number): bigint {
    const pointer = deviceAlloc(bytes);
    this.#allocations.add(pointer);
    return pointer;
  }

  free(pointer: bigint): void {
    if (this.#allocations.delete(pointer)) deviceFree(pointer);
  }

  synchronize(): void {
    synchronize(this.stream);
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    synchronize(this.stream);
    for (const pointer of this.#allocations) deviceFree(pointer);
    this.#allocations.clear();
    destroyHandle(this.lt);
    check(cudart().cudaStreamDestroy(this.stream), "cudaStreamDestroy");
  }
}
