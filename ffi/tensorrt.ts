// The TensorRT shim (native/trt, librankflow_trt): its C ABI as one symbol table, where the library
// is found, and a check that turns a failed call into an error carrying TensorRT's own messages.
// RANKFLOW_TENSORRT_PATH names the library; otherwise the build folders of this checkout are tried.

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cString, FfiError } from "./errors.ts";

export const symbols = {
  rf_trt_abi_version: { parameters: [], result: "i32" },
  rf_trt_header_version: { parameters: [], result: "i32" },
  rf_trt_library_version: { parameters: [], result: "i32" },
  rf_trt_features: { parameters: [], result: "u32" },
  rf_trt_last_error: { parameters: [], result: "pointer" },
  rf_trt_set_log_severity: { parameters: ["i32"], result: "void" }, // int32_t severity
  rf_trt_free: { parameters: ["pointer"], result: "void" }, // void* memory

  rf_trt_builder_create: { parameters: [], result: "pointer" },
  rf_trt_builder_destroy: { parameters: ["pointer"], result: "void" }, // rf_trt_builder* builder
  rf_trt_builder_set_flag: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t flag
      "i32", // int32_t on
    ],
    result: "i32",
  },
  rf_trt_builder_set_workspace: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "u64", // uint64_t bytes
    ],
    result: "i32",
  },
  rf_trt_builder_enable_multi_device: { parameters: ["pointer"], result: "i32" }, // rf_trt_builder* builder
  rf_trt_network_input: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "buffer", // const char* name
      "i32", // int32_t dtype
      "i32", // int32_t rank
      "buffer", // const int64_t* dims
      "buffer", // int32_t* tensor
    ],
    result: "i32",
  },
  rf_trt_profile_set: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "buffer", // const char* input
      "i32", // int32_t rank
      "buffer", // const int64_t* min
      "buffer", // const int64_t* opt
      "buffer", // const int64_t* max
    ],
    result: "i32",
  },
  rf_trt_network_constant: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t dtype
      "i32", // int32_t rank
      "buffer", // const int64_t* dims
      "buffer", // const void* data
      "u64", // uint64_t bytes
      "buffer", // int32_t* tensor
    ],
    result: "i32",
  },
  rf_trt_network_output: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t tensor
      "buffer", // const char* name
    ],
    result: "i32",
  },
  rf_trt_network_name_layer: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t tensor
      "buffer", // const char* name
    ],
    result: "i32",
  },
  rf_trt_tensor_rank: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t tensor
    ],
    result: "i32",
  },
  rf_trt_add_elementwise: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t op
      "i32", // int32_t a
      "i32", // int32_t b
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_unary: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t op
      "i32", // int32_t x
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_activation: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t kind
      "i32", // int32_t x
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_matmul: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t a
      "i32", // int32_t transpose_a
      "i32", // int32_t b
      "i32", // int32_t transpose_b
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_softmax: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t axis
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_cast: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t dtype
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_reduce: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t op
      "i32", // int32_t x
      "i32", // int32_t axis
      "i32", // int32_t keep_dims
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_gather: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t data
      "i32", // int32_t indices
      "i32", // int32_t axis
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_argmax: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t axis
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_reshape: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t rank
      "buffer", // const int64_t* spec
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_transpose: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t rank
      "buffer", // const int32_t* perm
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_concat: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t count
      "buffer", // const int32_t* inputs
      "i32", // int32_t axis
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_slice: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t axis
      "i64", // int64_t start
      "i64", // int64_t end
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_layernorm: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t scale
      "i32", // int32_t bias
      "f32", // float eps
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_attention: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t q
      "i32", // int32_t k
      "i32", // int32_t v
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_add_dist_collective: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "i32", // int32_t x
      "i32", // int32_t op
      "i32", // int32_t reduce
      "i64", // int64_t root
      "buffer", // const int64_t* groups
      "i64", // int64_t group_size
      "i32", // int32_t nb_ranks
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  rf_trt_builder_build: {
    parameters: [
      "pointer", // rf_trt_builder* builder
      "buffer", // void** plan
      "buffer", // uint64_t* bytes
    ],
    result: "i32",
    nonblocking: true, // building takes seconds to minutes
  },

  rf_trt_engine_deserialize: {
    parameters: [
      "buffer", // const void* plan
      "u64", // uint64_t bytes
    ],
    result: "pointer",
  },
  rf_trt_engine_destroy: { parameters: ["pointer"], result: "void" }, // rf_trt_engine* engine
  rf_trt_engine_io_count: { parameters: ["pointer"], result: "i32" }, // rf_trt_engine* engine
  rf_trt_engine_io_name: {
    parameters: [
      "pointer", // rf_trt_engine* engine
      "i32", // int32_t index
    ],
    result: "pointer",
  },
  rf_trt_engine_io_desc: {
    parameters: [
      "pointer", // rf_trt_engine* engine
      "buffer", // const char* name
      "buffer", // int32_t* is_input
      "buffer", // int32_t* dtype
      "buffer", // int32_t* rank
      "buffer", // int64_t* dims
    ],
    result: "i32",
  },
  rf_trt_context_create: { parameters: ["pointer"], result: "pointer" }, // rf_trt_engine* engine
  rf_trt_context_destroy: { parameters: ["pointer"], result: "void" }, // rf_trt_context* context
  rf_trt_context_set_communicator: {
    parameters: [
      "pointer", // rf_trt_context* context
      "pointer", // void* communicator
    ],
    result: "i32",
  },
  rf_trt_context_set_input_shape: {
    parameters: [
      "pointer", // rf_trt_context* context
      "buffer", // const char* name
      "i32", // int32_t rank
      "buffer", // const int64_t* dims
    ],
    result: "i32",
  },
  rf_trt_context_tensor_shape: {
    parameters: [
      "pointer", // rf_trt_context* context
      "buffer", // const char* name
      "buffer", // int32_t* rank
      "buffer", // int64_t* dims
    ],
    result: "i32",
  },
  rf_trt_context_set_address: {
    parameters: [
      "pointer", // rf_trt_context* context
      "buffer", // const char* name
      "pointer", // void* device
    ],
    result: "i32",
  },
  rf_trt_context_set_input_host: {
    parameters: [
      "pointer", // rf_trt_context* context
      "buffer", // const char* name
      "buffer", // const void* host
      "u64", // uint64_t bytes
    ],
    result: "i32",
  },
  rf_trt_context_allocate_outputs: { parameters: ["pointer"], result: "i32" }, // rf_trt_context* context
  rf_trt_context_enqueue: {
    parameters: [
      "pointer", // rf_trt_context* context
      "pointer", // void* stream
    ],
    result: "i32",
  },
  rf_trt_context_synchronize: {
    parameters: ["pointer"], // rf_trt_context* context
    result: "i32",
    nonblocking: true, // waits for the GPU
  },
  rf_trt_context_get_output_host: {
    parameters: [
      "pointer", // rf_trt_context* context
      "buffer", // const char* name
      "buffer", // void* host
      "u64", // uint64_t bytes
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

export type TensorRtSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** The C ABI version this table describes (RF_TRT_ABI_VERSION in native/trt/rankflow_trt.h). */
export const ABI_VERSION = 1;

/** Bits of rf_trt_features(): what the TensorRT headers the shim was compiled against define. */
export const FEATURE = {
  distCollective: 1 << 0,
  multiDevicePreview: 1 << 1,
  attentionLowerRight: 1 << 2,
  normalizationV2: 1 << 3,
} as const;

/** rankflow dtypes as the shim numbers them. */
export const DTYPE_CODES = { f32: 0, f16: 1, bf16: 2, i32: 3, i64: 4 } as const;

export const RC = { ok: 0, error: 1, unsupported: 2, badArgument: 3 } as const;

export interface TensorRtLibrary extends Disposable {
  readonly path: string;
  readonly symbols: TensorRtSymbols;
  /** Throws an FfiError with the shim's last error (TensorRT's logged errors included) when `rc` is not 0. */
  check(rc: number, what: string): void;
  lastError(): string;
}

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const LIBRARY_NAME = Deno.build.os === "windows"
  ? "rankflow_trt.dll"
  : Deno.build.os === "darwin"
  ? "librankflow_trt.dylib"
  : "librankflow_trt.so";

/** Where the shim is looked for, in order: the override, this checkout's build folders, the system. */
export function libraryCandidates(env: (name: string) => string | undefined = Deno.env.get): string[] {
  const override = env("RANKFLOW_TENSORRT_PATH");
  if (override) return [override];
  return [
    join(ROOT, "build", "native", "native", "trt", LIBRARY_NAME), // `deno task native` (top-level CMake)
    join(ROOT, "build", "trt", LIBRARY_NAME), // cmake -S native/trt -B build/trt
    LIBRARY_NAME, // the loader's search path
  ];
}

/** Opens the shim; a missing library or an ABI mismatch is one FfiError naming every path tried. */
export function openTensorRt(candidates = libraryCandidates()): TensorRtLibrary {
  const failures: string[] = [];
  let cause: unknown;
  for (const path of candidates) {
    let library: Deno.DynamicLibrary<typeof symbols>;
    try {
      library = Deno.dlopen(path, symbols);
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
        throw error;
      }
      failures.push(`${path}: ${(error as Error).message}`);
      cause = error;
      continue;
    }
    const abi = library.symbols.rf_trt_abi_version();
    if (abi !== ABI_VERSION) {
      library.close();
      failures.push(`${path}: C ABI ${abi}, this rankflow speaks ${ABI_VERSION} (rebuild native/trt)`);
      continue;
    }
    return wrap(path, library);
  }
  throw new FfiError(
    `the TensorRT shim could not be loaded (build native/trt where TensorRT is installed, or set ` +
      `RANKFLOW_TENSORRT_PATH):\n  ${failures.join("\n  ")}`,
    "tensorrt",
    undefined,
    { cause },
  );
}

function wrap(path: string, library: Deno.DynamicLibrary<typeof symbols>): TensorRtLibrary {
  const lastError = () => {
    return cString(library.symbols.rf_trt_last_error());
  };
  return {
    path,
    symbols: library.symbols,
    lastError,
    check(rc, what) {
      if (rc === RC.ok) return;
      throw new FfiError(`${what}: ${lastError() || `failed with code ${rc}`}`, "tensorrt", rc);
    },
    [Symbol.dispose]() {
      library.close();
    },
  };
}
