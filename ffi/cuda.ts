// The CUDA runtime (libcudart) and the few driver (libcuda) calls rankflow needs: devices, device
// memory, streams, events and CUDA graphs. Device pointers and opaque handles travel as bigints
// ("u64"); host memory as typed arrays ("buffer").

import { cString, FfiError, outPointer } from "./errors.ts";
import { type LibrarySpec, openLibrary } from "./discover.ts";

export const CUDART: LibrarySpec = {
  name: "cudart",
  files: ["libcudart.so.13", "libcudart.so.12", "libcudart.so"],
};
export const CUDA_DRIVER: LibrarySpec = { name: "cuda", files: ["libcuda.so.1", "libcuda.so"], cuda: false };

export const symbols = {
  cudaGetErrorString: { parameters: ["i32"], result: "pointer" }, // cudaError_t error
  cudaGetDeviceCount: { parameters: ["buffer"], result: "i32" }, // int* count
  cudaSetDevice: { parameters: ["i32"], result: "i32" }, // int device
  cudaGetDevice: { parameters: ["buffer"], result: "i32" }, // int* device
  cudaDeviceGetAttribute: {
    parameters: [
      "buffer", // int* value
      "i32", // cudaDeviceAttr attr
      "i32", // int device
    ],
    result: "i32",
  },
  cudaDriverGetVersion: { parameters: ["buffer"], result: "i32" }, // int* driverVersion
  cudaRuntimeGetVersion: { parameters: ["buffer"], result: "i32" }, // int* runtimeVersion
  cudaMemGetInfo: {
    parameters: [
      "buffer", // size_t* free
      "buffer", // size_t* total
    ],
    result: "i32",
  },
  cudaMalloc: {
    parameters: [
      "buffer", // void** devPtr
      "usize", // size_t size
    ],
    result: "i32",
  },
  cudaFree: { parameters: ["u64"], result: "i32" }, // void* devPtr
  cudaHostAlloc: {
    parameters: [
      "buffer", // void** pHost
      "usize", // size_t size
      "u32", // unsigned int flags
    ],
    result: "i32",
  },
  cudaFreeHost: { parameters: ["u64"], result: "i32" }, // void* ptr
  cudaMemcpyToDevice: {
    name: "cudaMemcpy",
    parameters: [
      "u64", // void* dst
      "buffer", // const void* src
      "usize", // size_t count
      "i32", // cudaMemcpyKind kind
    ],
    result: "i32",
  },
  cudaMemcpyToHost: {
    name: "cudaMemcpy",
    parameters: [
      "buffer", // void* dst
      "u64", // const void* src
      "usize", // size_t count
      "i32", // cudaMemcpyKind kind
    ],
    result: "i32",
  },
  cudaMemcpyAsync: {
    parameters: [
      "u64", // void* dst
      "u64", // const void* src
      "usize", // size_t count
      "i32", // cudaMemcpyKind kind
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  cudaMemcpyAsyncToDevice: {
    name: "cudaMemcpyAsync",
    parameters: [
      "u64", // void* dst
      "buffer", // const void* src
      "usize", // size_t count
      "i32", // cudaMemcpyKind kind
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  cudaMemcpyAsyncToHost: {
    name: "cudaMemcpyAsync",
    parameters: [
      "buffer", // void* dst
      "u64", // const void* src
      "usize", // size_t count
      "i32", // cudaMemcpyKind kind
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  cudaMemcpy2DAsync: {
    parameters: [
      "u64", // void* dst
      "usize", // size_t dpitch
      "u64", // const void* src
      "usize", // size_t spitch
      "usize", // size_t width
      "usize", // size_t height
      "i32", // cudaMemcpyKind kind
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  cudaMemsetAsync: {
    parameters: [
      "u64", // void* devPtr
      "i32", // int value
      "usize", // size_t count
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  cudaStreamCreateWithFlags: {
    parameters: [
      "buffer", // cudaStream_t* pStream
      "u32", // unsigned int flags
    ],
    result: "i32",
  },
  cudaStreamDestroy: { parameters: ["u64"], result: "i32" }, // cudaStream_t stream
  cudaStreamSynchronize: { parameters: ["u64"], result: "i32" }, // cudaStream_t stream
  cudaDeviceSynchronize: { parameters: [], result: "i32" },
  cudaGetLastError: { parameters: [], result: "i32" },
  cudaEventCreate: { parameters: ["buffer"], result: "i32" }, // cudaEvent_t* event
  cudaEventDestroy: { parameters: ["u64"], result: "i32" }, // cudaEvent_t event
  cudaEventRecord: {
    parameters: [
      "u64", // cudaEvent_t event
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  cudaEventRecordWithFlags: {
    parameters: [
      "u64", // cudaEvent_t event
      "u64", // cudaStream_t stream
      "u32", // unsigned int flags
    ],
    result: "i32",
  },
  cudaEventSynchronize: { parameters: ["u64"], result: "i32" }, // cudaEvent_t event
  cudaEventElapsedTime: {
    parameters: [
      "buffer", // float* ms
      "u64", // cudaEvent_t start
      "u64", // cudaEvent_t end
    ],
    result: "i32",
  },
  cudaStreamBeginCapture: {
    parameters: [
      "u64", // cudaStream_t stream
      "i32", // cudaStreamCaptureMode mode
    ],
    result: "i32",
  },
  cudaStreamEndCapture: {
    parameters: [
      "u64", // cudaStream_t stream
      "buffer", // cudaGraph_t* pGraph
    ],
    result: "i32",
  },
  cudaGraphInstantiate: {
    parameters: [
      "buffer", // cudaGraphExec_t* pGraphExec
      "u64", // cudaGraph_t graph
      "u64", // unsigned long long flags
    ],
    result: "i32",
  },
  cudaGraphLaunch: {
    parameters: [
      "u64", // cudaGraphExec_t graphExec
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  cudaGraphExecDestroy: { parameters: ["u64"], result: "i32" }, // cudaGraphExec_t graphExec
  cudaGraphDestroy: { parameters: ["u64"], result: "i32" }, // cudaGraph_t graph
} as const satisfies Deno.ForeignLibraryInterface;

export const driverSymbols = {
  cuInit: { parameters: ["u32"], result: "i32" }, // unsigned int Flags
  cuDriverGetVersion: { parameters: ["buffer"], result: "i32" }, // int* driverVersion
  cuDeviceGet: {
    parameters: [
      "buffer", // CUdevice* device
      "i32", // int ordinal
    ],
    result: "i32",
  },
  cuDeviceGetName: {
    parameters: [
      "buffer", // char* name
      "i32", // int len
      "i32", // CUdevice dev
    ],
    result: "i32",
  },
  cuGetErrorString: {
    parameters: [
      "i32", // CUresult error
      "buffer", // const char** pStr
    ],
    result: "i32",
  },
  cuModuleLoadData: {
    parameters: [
      "buffer", // CUmodule* module
      "buffer", // const void* image (PTX text, NUL-terminated)
    ],
    result: "i32",
  },
  cuModuleGetFunction: {
    parameters: [
      "buffer", // CUfunction* hfunc
      "u64", // CUmodule hmod
      "buffer", // const char* name
    ],
    result: "i32",
  },
  cuLaunchKernel: {
    parameters: [
      "u64", // CUfunction f
      "u32", // unsigned int gridDimX
      "u32", // unsigned int gridDimY
      "u32", // unsigned int gridDimZ
      "u32", // unsigned int blockDimX
      "u32", // unsigned int blockDimY
      "u32", // unsigned int blockDimZ
      "u32", // unsigned int sharedMemBytes
      "u64", // CUstream hStream
      "buffer", // void** kernelParams
      "pointer", // void** extra
    ],
    result: "i32",
  },
  cuModuleUnload: { parameters: ["u64"], result: "i32" }, // CUmodule hmod
} as const satisfies Deno.ForeignLibraryInterface;

export const MEMCPY = { hostToDevice: 1, deviceToHost: 2, deviceToDevice: 3 } as const;
export const DEVICE_ATTRIBUTE = { multiprocessors: 16, major: 75, minor: 76, l2Bytes: 38 } as const;
export const STREAM_NON_BLOCKING = 1;
export const CAPTURE_THREAD_LOCAL = 1;
/** cudaEventRecordExternal: inside a capture, the record becomes a node of the graph. */
export const EVENT_RECORD_EXTERNAL = 1;

type Runtime = Deno.DynamicLibrary<typeof symbols>["symbols"];
type Driver = Deno.DynamicLibrary<typeof driverSymbols>["symbols"];
let runtime: { library: Deno.DynamicLibrary<typeof symbols>; path: string } | undefined;
let driver: { library: Deno.DynamicLibrary<typeof driverSymbols>; path: string } | undefined;

/** The CUDA runtime's functions, loaded on first use. */
export function cudart(): Runtime {
  runtime ??= openLibrary(CUDART, symbols);
  return runtime.library.symbols;
}

export function cudartPath(): string {
  cudart();
  return runtime!.path;
}

/** The driver's functions (initialized), loaded on first use. */
export function cudaDriver(): Driver {
  if (!driver) {
    driver = openLibrary(CUDA_DRIVER, driverSymbols);
    const rc = driver.library.symbols.cuInit(0);
    if (rc !== 0) throw new FfiError(`cuInit: ${driverError(rc)} (CUresult ${rc})`, "cuda", rc);
  }
  return driver.library.symbols;
}

/** Throws an FfiError naming the call and the driver's own words for a non-zero CUresult. */
export function checkDriver(rc: number, what: string): void {
  if (rc !== 0) throw new FfiError(`${what}: ${driverError(rc)} (CUresult ${rc})`, "cuda", rc);
}

function driverError(rc: number): string {
  const out = outPointer();
  if (!driver || driver.library.symbols.cuGetErrorString(rc, out) !== 0 || out[0] === 0n) {
    return "unknown error";
  }
  return cString(Deno.UnsafePointer.create(out[0]));
}

/** Throws an FfiError naming the call and the runtime's own words for a non-zero cudaError_t. */
export function check(rc: number, what: string): void {
  if (rc === 0) return;
  const text = cString(cudart().cudaGetErrorString(rc));
  throw new FfiError(`${what}: ${text} (cudaError ${rc})`, "cudart", rc);
}

function readInt(fill: (out: Int32Array<ArrayBuffer>) => number, what: string): number {
  const out = new Int32Array(1);
  check(fill(out), what);
  return out[0];
}

/** How many GPUs the runtime sees; 0 with the reason when there is no usable driver or device. */
export function probeDevices(): { count: number; reason?: string } {
  try {
    const out = new Int32Array(1);
    const rc = cudart().cudaGetDeviceCount(out);
    if (rc !== 0) return { count: 0, reason: cString(cudart().cudaGetErrorString(rc)) };
    return out[0] > 0 ? { count: out[0] } : { count: 0, reason: "the CUDA runtime sees no GPU" };
  } catch (error) {
    return { count: 0, reason: (error as Error).message };
  }
}

export function deviceAttribute(attribute: number, device: number): number {
  return readInt((out) => cudart().cudaDeviceGetAttribute(out, attribute, device), "cudaDeviceGetAttribute");
}

export function driverVersion(): number {
  return readInt((out) => cudart().cudaDriverGetVersion(out), "cudaDriverGetVersion");
}

export function runtimeVersion(): number {
  return readInt((out) => cudart().cudaRuntimeGetVersion(out), "cudaRuntimeGetVersion");
}

export function deviceName(device: number): string {
  const d = cudaDriver();
  const handle = new Int32Array(1);
  let rc = d.cuDeviceGet(handle, device);
  if (rc !== 0) throw new FfiError(`cuDeviceGet: ${driverError(rc)}`, "cuda", rc);
  const name = new Uint8Array(256);
  rc = d.cuDeviceGetName(name, name.length, handle[0]);
  if (rc !== 0) throw new FfiError(`cuDeviceGetName: ${driverError(rc)}`, "cuda", rc);
  return new TextDecoder().decode(name.subarray(0, name.indexOf(0)));
}

export function memoryInfo(): { free: number; total: number } {
  const free = new BigUint64Array(1);
  const total = new BigUint64Array(1);
  check(cudart().cudaMemGetInfo(free, total), "cudaMemGetInfo");
  return { free: Number(free[0]), total: Number(total[0]) };
}

/** Device memory of `bytes` bytes (at least 1); the caller frees it. */
export function deviceAlloc(bytes: number): bigint {
  const out = outPointer();
  check(cudart().cudaMalloc(out, BigInt(Math.max(1, bytes))), `cudaMalloc of ${bytes} bytes`);
  return out[0];
}

export function deviceFree(pointer: bigint): void {
  check(cudart().cudaFree(pointer), "cudaFree");
}

/** Page-locked host memory that the device can copy from inside a CUDA graph. */
export function hostAlloc(bytes: number): { pointer: bigint; bytes: Uint8Array<ArrayBuffer> } {
  const out = outPointer();
  check(cudart().cudaHostAlloc(out, BigInt(Math.max(1, bytes)), 0), `cudaHostAlloc of ${bytes} bytes`);
  const view = Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(out[0])!, Math.max(1, bytes));
  return { pointer: out[0], bytes: new Uint8Array(view) };
}

export function hostFree(pointer: bigint): void {
  check(cudart().cudaFreeHost(pointer), "cudaFreeHost");
}

/** Synchronous copy of host bytes to the device. */
export function upload(destination: bigint, source: ArrayBufferView): void {
  const bytes = new Uint8Array(source.buffer as ArrayBuffer, source.byteOffset, source.byteLength);
  check(
    cudart().cudaMemcpyToDevice(destination, bytes, BigInt(bytes.byteLength), MEMCPY.hostToDevice),
    `copy of ${bytes.byteLength} bytes to the device`,
  );
}

/** Synchronous copy of device bytes into `destination` (waits for prior work on every stream). */
export function download(destination: ArrayBufferView, source: bigint): void {
  const bytes = new Uint8Array(
    destination.buffer as ArrayBuffer,
    destination.byteOffset,
    destination.byteLength,
  );
  check(
    cudart().cudaMemcpyToHost(bytes, source, BigInt(bytes.byteLength), MEMCPY.deviceToHost),
    `copy of ${bytes.byteLength} bytes from the device`,
  );
}

export function createStream(): bigint {
  const out = outPointer();
  check(cudart().cudaStreamCreateWithFlags(out, STREAM_NON_BLOCKING), "cudaStreamCreateWithFlags");
  return out[0];
}

export function synchronize(stream: bigint): void {
  check(cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

export function createEvent(): bigint {
  const out = outPointer();
  check(cudart().cudaEventCreate(out), "cudaEventCreate");
  return out[0];
}

/** Milliseconds between two recorded events, once `end` has completed. */
export function elapsedMs(start: bigint, end: bigint): number {
  check(cudart().cudaEventSynchronize(end), "cudaEventSynchronize");
  const out = new Float32Array(1);
  check(cudart().cudaEventElapsedTime(out, start, end), "cudaEventElapsedTime");
  return out[0];
}

/** A captured and instantiated CUDA graph of everything `enqueue` puts on `stream`. */
export function captureGraph(stream: bigint, enqueue: () => void): { graph: bigint; exec: bigint } {
  const c = cudart();
  check(c.cudaStreamBeginCapture(stream, CAPTURE_THREAD_LOCAL), "cudaStreamBeginCapture");
  const graph = outPointer();
  try {
    enqueue();
  } finally {
    const rc = c.cudaStreamEndCapture(stream, graph);
    if (rc !== 0) check(rc, "cudaStreamEndCapture");
  }
  const exec = outPointer();
  check(c.cudaGraphInstantiate(exec, graph[0], 0n), "cudaGraphInstantiate");
  return { graph: graph[0], exec: exec[0] };
}

export function destroyGraph(graph: { graph: bigint; exec: bigint }): void {
  check(cudart().cudaGraphExecDestroy(graph.exec), "cudaGraphExecDestroy");
  check(cudart().cudaGraphDestroy(graph.graph), "cudaGraphDestroy");
}
