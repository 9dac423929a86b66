// NCCL: communicators and collectives on a CUDA stream. The unique id that joins ranks into one
// communicator is a 128-byte struct passed by value.

import { cString, FfiError, outPointer } from "./errors.ts";
import { type LibrarySpec, openLibrary } from "./discover.ts";

export const NCCL: LibrarySpec = { name: "nccl", files: ["libnccl.so.2", "libnccl.so"] };
export const UNIQUE_ID_BYTES = 128;
const uniqueId = { struct: Array.from({ length: UNIQUE_ID_BYTES }, () => "u8" as const) } as const;

export const symbols = {
  ncclGetVersion: { parameters: ["buffer"], result: "i32" }, // int* version
  ncclGetErrorString: { parameters: ["i32"], result: "pointer" }, // ncclResult_t result
  ncclGetUniqueId: { parameters: ["buffer"], result: "i32" }, // ncclUniqueId* uniqueId
  ncclCommInitRank: {
    parameters: [
      "buffer", // ncclComm_t* comm
      "i32", // int nranks
      uniqueId, // ncclUniqueId commId
      "i32", // int rank
    ],
    result: "i32",
  },
  ncclCommDestroy: { parameters: ["u64"], result: "i32" }, // ncclComm_t comm
  ncclCommCount: {
    parameters: [
      "u64", // const ncclComm_t comm
      "buffer", // int* count
    ],
    result: "i32",
  },
  ncclCommUserRank: {
    parameters: [
      "u64", // const ncclComm_t comm
      "buffer", // int* rank
    ],
    result: "i32",
  },
  ncclAllReduce: {
    parameters: [
      "u64", // const void* sendbuff
      "u64", // void* recvbuff
      "usize", // size_t count
      "i32", // ncclDataType_t datatype
      "i32", // ncclRedOp_t op
      "u64", // ncclComm_t comm
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  ncclAllGather: {
    parameters: [
      "u64", // const void* sendbuff
      "u64", // void* recvbuff
      "usize", // size_t sendcount
      "i32", // ncclDataType_t datatype
      "u64", // ncclComm_t comm
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  ncclReduceScatter: {
    parameters: [
      "u64", // const void* sendbuff
      "u64", // void* recvbuff
      "usize", // size_t recvcount
      "i32", // ncclDataType_t datatype
      "i32", // ncclRedOp_t op
      "u64", // ncclComm_t comm
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
  ncclBroadcast: {
    parameters: [
      "u64", // const void* sendbuff
      "u64", // void* recvbuff
      "usize", // size_t count
      "i32", // ncclDataType_t datatype
      "i32", // int root
      "u64", // ncclComm_t comm
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** ncclDataType_t of each dtype. */
export const NCCL_DTYPE = { i32: 2, i64: 4, f16: 6, f32: 7, bf16: 9 } as const;
/** ncclRedOp_t of each reduction. */
export const NCCL_OP = { sum: 0, max: 2, min: 3, avg: 4 } as const;

type Nccl = Deno.DynamicLibrary<typeof symbols>["symbols"];
let loaded: { library: Deno.DynamicLibrary<typeof symbols>; path: string } | undefined;

export function nccl(): Nccl {
  loaded ??= openLibrary(NCCL, symbols);
  return loaded.library.symbols;
}

export function ncclPath(): string {
  nccl();
  return loaded!.path;
}

export function check(rc: number, what: string): void {
  if (rc === 0) return;
  throw new FfiError(`${what}: ${cString(nccl().ncclGetErrorString(rc))} (ncclResult ${rc})`, "nccl", rc);
}

/** NCCL's version as "2.28.3". */
export function ncclVersion(): string {
  const out = new Int32Array(1);
  check(nccl().ncclGetVersion(out), "ncclGetVersion");
  const code = out[0];
  // Since 2.9 the code is major*10000 + minor*100 + patch.
  return `${Math.floor(code / 10000)}.${Math.floor((code % 10000) / 100)}.${code % 100}`;
}

export function newUniqueId(): Uint8Array<ArrayBuffer> {
  const id = new Uint8Array(UNIQUE_ID_BYTES);
  check(nccl().ncclGetUniqueId(id), "ncclGetUniqueId");
  return id;
}

/** Joins `size` ranks that share `id` into one communicator (blocks until every rank has called). */
export function initRank(id: Uint8Array, size: number, rank: number): bigint {
  if (id.byteLength !== UNIQUE_ID_BYTES) {
    throw new FfiError(`an NCCL unique id has ${UNIQUE_ID_BYTES} bytes, got ${id.byteLength}`, "nccl");
  }
  const out = outPointer();
  check(nccl().ncclCommInitRank(out, size, id, rank), `ncclCommInitRank (rank ${rank} of ${size})`);
  return out[0];
}

export function destroyComm(comm: bigint): void {
  check(nccl().ncclCommDestroy(comm), "ncclCommDestroy");
}
