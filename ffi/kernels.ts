// rankflow's own CUDA kernels (native/, built into build/native/librankflow_kernels.so). The
// library is built with CMake on first use when it is missing; RANKFLOW_KERNELS_PATH points
// elsewhere. Signatures mirror native/include/rankflow_kernels.h.

import { cString, FfiError } from "./errors.ts";
import { findLibrary, type LibrarySpec, overrideVariable } from "./discover.ts";
import { buildNative, KERNELS_LIBRARY } from "../native/build.ts";

export const KERNELS: LibrarySpec = { name: "kernels", files: ["librankflow_kernels.so"], cuda: false };
export const ABI_VERSION = 8;

const stream = "u64"; // void* stream (cudaStream_t)
const dev = "u64"; // device pointer

export const symbols = {
  rf_abi_version: { parameters: [], result: "i32" },
  rf_error_string: { parameters: ["i32"], result: "pointer" }, // int code
  rf_gather_rows: {
    parameters: [
      "i32", // int elem_bytes
      dev, // const void* table
      "i32", // int width
      "i32", // int ld_table
      dev, // const int32_t* ids
      "i32", // int rows
      dev, // void* out
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_peer_region_bytes: { parameters: ["i64", "i32"], result: "i64" }, // int64_t capacity, int world
  rf_ipc_alloc: { parameters: ["i64", "buffer", "buffer"], result: "i32" }, // bytes, void** ptr, handle[64]
  rf_ipc_open: { parameters: ["buffer", "buffer"], result: "i32" }, // const handle[64], void** ptr
  rf_ipc_close: { parameters: [dev], result: "i32" }, // void* ptr
  rf_peer_all_reduce: {
    parameters: [
      "i32", // int dtype
      dev, // const void* in
      dev, // void* out
      "i64", // int64_t count
      "buffer", // void* const* regions (host array of world device pointers)
      "i32", // int rank
      "i32", // int world
      "i64", // int64_t capacity
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_decode_advance: {
    parameters: [
      dev, // int32_t* ids_in
      dev, // int32_t* pos
      dev, // const int32_t* ids
      "i32", // int rows
      dev, // int32_t* history
      dev, // int32_t* count
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_rmsnorm: {
    parameters: [
      "i32", // int dtype
      dev, // const void* x
      "i32", // int ldx
      dev, // const void* w
      dev, // void* out
      "i32", // int rows
      "i32", // int width
      "f32", // float eps
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_layernorm: {
    parameters: [
      "i32", // int dtype
      dev, // const void* x
      "i32", // int ldx
      dev, // const void* w
      dev, // const void* b
      dev, // void* out
      "i32", // int rows
      "i32", // int width
      "f32", // float eps
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_rope: {
    parameters: [
      "i32", // int dtype
      dev, // const void* x
      "i32", // int ldx
      dev, // void* out
      dev, // const int32_t* pos
      "i32", // int period
      "i32", // int tokens
      "i32", // int heads
      "i32", // int head_dim
      "f32", // float theta
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_unary: {
    parameters: [
      "i32", // int dtype
      "i32", // int op
      dev, // const void* x
      "i32", // int ldx
      dev, // void* out
      "i32", // int rows
      "i32", // int width
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_silu_mul: {
    parameters: [
      "i32", // int dtype
      dev, // const void* a
      "i32", // int lda
      dev, // const void* b
      "i32", // int ldb
      dev, // void* out
      "i32", // int rows
      "i32", // int width
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_binary: {
    parameters: [
      "i32", // int dtype
      "i32", // int op
      dev, // const void* a
      "buffer", // const int64_t* a_strides
      dev, // const void* b
      "buffer", // const int64_t* b_strides
      dev, // void* out
      "buffer", // const int64_t* shape
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_softmax: {
    parameters: [
      "i32", // int dtype
      dev, // const void* x
      dev, // void* out
      "i32", // int rows
      "i32", // int width
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_argmax: {
    parameters: [
      "i32", // int dtype
      dev, // const void* x
      "i32", // int ldx
      dev, // int32_t* out
      "i32", // int rows
      "i32", // int width
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_sample: {
    parameters: [
      "i32", // int dtype
      dev, // const void* x
      "i32", // int ldx
      "i32", // int rows
      "i32", // int vocab
      dev, // const double* params
      dev, // void* scratch
      dev, // int32_t* out
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_sample_scratch_bytes: {
    parameters: [
      "i32", // int rows
      "i32", // int vocab
    ],
    result: "i64",
  },
  rf_cast: {
    parameters: [
      "i32", // int from
      "i32", // int to
      dev, // const void* x
      dev, // void* out
      "i32", // int n
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_permute: {
    parameters: [
      "i32", // int elem_bytes
      dev, // const void* x
      dev, // void* out
      "buffer", // const int64_t* shape
      "buffer", // const int64_t* perm
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_qkv_prepare: {
    parameters: [
      "i32", // int dtype
      dev, // const void* q
      "i32", // int ldq
      dev, // const void* k
      "i32", // int ldk
      dev, // const void* v
      "i32", // int ldv
      dev, // void* q_out
      dev, // void* k_cache
      dev, // void* v_cache
      dev, // const int32_t* slots
      dev, // const int32_t* cache_pos
      dev, // const int32_t* rope_pos
      "i32", // int rope_period
      "i32", // int rope_q
      "i32", // int rope_k
      "f32", // float theta
      "i32", // int tokens
      "i32", // int heads
      "i32", // int kv_heads
      "i32", // int head_dim
      "i32", // int max_len
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_attention: {
    parameters: [
      "i32", // int dtype
      dev, // const void* q
      dev, // void* out
      dev, // const void* k_cache
      dev, // const void* v_cache
      dev, // const int32_t* slots
      dev, // const int32_t* cache_pos
      "i32", // int tokens
      "i32", // int heads
      "i32", // int kv_heads
      "i32", // int head_dim
      "i32", // int max_len
      "i32", // int span
      "f32", // float scale
      dev, // float* scratch
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_attention_scratch_bytes: {
    parameters: [
      "i32", // int tokens
      "i32", // int heads
      "i32", // int head_dim
      "i32", // int span
    ],
    result: "i64",
  },
  rf_decode_attention: {
    parameters: [
      "i32", // int dtype
      dev, // const void* q
      "i32", // int ldq
      dev, // const void* k
      "i32", // int ldk
      dev, // const void* v
      "i32", // int ldv
      dev, // void* k_cache
      dev, // void* v_cache
      dev, // const int32_t* slots
      dev, // const int32_t* cache_pos
      dev, // const int32_t* rope_pos
      "i32", // int rope_period
      "i32", // int rope_q
      "i32", // int rope_k
      "f32", // float theta
      "i32", // int tokens
      "i32", // int heads
      "i32", // int kv_heads
      "i32", // int head_dim
      "i32", // int max_len
      "i32", // int span
      "f32", // float scale
      dev, // float* scratch
      dev, // int* counters
      dev, // void* out
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_decode_attention_scratch_bytes: {
    parameters: [
      "i32", // int tokens
      "i32", // int heads
      "i32", // int head_dim
      "i32", // int span
    ],
    result: "i64",
  },
  rf_gemv: {
    parameters: [
      "i32", // int dtype
      "i32", // int m
      dev, // const void* x
      "i32", // int ldx
      dev, // const void* norm
      "f32", // float eps
      dev, // const void* w
      dev, // const void* bias
      dev, // const void* residual
      dev, // void* out
      "i32", // int ld_out
      "i32", // int n
      "i32", // int k
      "i32", // int gated
      stream, // void* stream
    ],
    result: "i32",
  },
  rf_gemv_stages: {
    parameters: [
      "i32", // int dtype
      "i32", // int m
      "i32", // int k
    ],
    result: "i32",
  },
  rf_set_programmatic_launch: {
    parameters: ["i32"], // int on
    result: "i32",
  },
  rf_set_attention_room: {
    parameters: [
      "i32", // int dtype
      "i32", // int heads
      "i32", // int kv_heads
      "i32", // int head_dim
    ],
    result: "i32",
  },
  rf_graph_launch_sync: {
    parameters: [
      "u64", // void* exec (cudaGraphExec_t)
      stream, // void* stream
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

export const KERNEL_DTYPE = { f32: 0, f16: 1, bf16: 2 } as const;
export const UNARY = { silu: 0, geluTanh: 1, geluErf: 2 } as const;
export const BINARY = { add: 0, mul: 1 } as const;

type Kernels = Deno.DynamicLibrary<typeof symbols>["symbols"];
let loaded: Kernels | undefined;

/** The kernels, building the library first when neither the override nor build/native has it. */
export function kernels(log: (line: string) => void = console.error): Kernels {
  if (loaded) return loaded;
  let path: string;
  if (Deno.env.get(overrideVariable(KERNELS))) {
    path = findLibrary(KERNELS).path;
  } else {
    path = KERNELS_LIBRARY;
    if (!exists(path)) {
      log(`${path} is missing; building it (deno task native)`);
      buildNative(log);
    }
  }
  let library: Deno.DynamicLibrary<typeof symbols>;
  try {
    library = Deno.dlopen(path, symbols);
  } catch (error) {
    if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotCapable) throw error;
    throw new FfiError(
      `${path} (rankflow's kernels) could not be loaded: ${(error as Error).message}`,
      "kernels",
      undefined,
      {
        cause: error,
      },
    );
  }
  const version = library.symbols.rf_abi_version();
  if (version !== ABI_VERSION) {
    library.close();
    throw new FfiError(
      `${path} has kernel ABI ${version}, this rankflow needs ${ABI_VERSION}: rebuild it with deno task native`,
      "kernels",
    );
  }
  loaded = library.symbols;
  return loaded;
}

export function check(rc: number, what: string): void {
  if (rc === 0) return;
  throw new FfiError(`${what}: ${cString(kernels().rf_error_string(rc))} (cudaError ${rc})`, "kernels", rc);
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}
