// cuBLASLt: matrix products with fp32 accumulation and fused epilogues (bias, beta·C for a
// residual). A `Gemm` describes one product shape once; its algorithm is chosen by cuBLASLt's
// heuristic for each row count and kept, so replays and CUDA graph captures pay nothing more.

import { cString, FfiError, outPointer } from "./errors.ts";
import { type LibrarySpec, openLibrary } from "./discover.ts";

export const CUBLASLT: LibrarySpec = {
  name: "cublaslt",
  files: ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"],
};

export const symbols = {
  cublasLtCreate: { parameters: ["buffer"], result: "i32" }, // cublasLtHandle_t* lightHandle
  cublasLtDestroy: { parameters: ["u64"], result: "i32" }, // cublasLtHandle_t lightHandle
  cublasLtGetVersion: { parameters: [], result: "usize" },
  cublasLtGetStatusString: { parameters: ["i32"], result: "pointer" }, // cublasStatus_t status
  cublasLtMatmulDescCreate: {
    parameters: [
      "buffer", // cublasLtMatmulDesc_t* matmulDesc
      "i32", // cublasComputeType_t computeType
      "i32", // cudaDataType_t scaleType
    ],
    result: "i32",
  },
  cublasLtMatmulDescDestroy: { parameters: ["u64"], result: "i32" }, // cublasLtMatmulDesc_t matmulDesc
  cublasLtMatmulDescSetAttribute: {
    parameters: [
      "u64", // cublasLtMatmulDesc_t matmulDesc
      "i32", // cublasLtMatmulDescAttributes_t attr
      "buffer", // const void* buf
      "usize", // size_t sizeInBytes
    ],
    result: "i32",
  },
  cublasLtMatrixLayoutCreate: {
    parameters: [
      "buffer", // cublasLtMatrixLayout_t* matLayout
      "i32", // cudaDataType type
      "u64", // uint64_t rows
      "u64", // uint64_t cols
      "i64", // int64_t ld
    ],
    result: "i32",
  },
  cublasLtMatrixLayoutDestroy: { parameters: ["u64"], result: "i32" }, // cublasLtMatrixLayout_t matLayout
  cublasLtMatmulPreferenceCreate: { parameters: ["buffer"], result: "i32" }, // cublasLtMatmulPreference_t* pref
  cublasLtMatmulPreferenceDestroy: { parameters: ["u64"], result: "i32" }, // cublasLtMatmulPreference_t pref
  cublasLtMatmulPreferenceSetAttribute: {
    parameters: [
      "u64", // cublasLtMatmulPreference_t pref
      "i32", // cublasLtMatmulPreferenceAttributes_t attr
      "buffer", // const void* buf
      "usize", // size_t sizeInBytes
    ],
    result: "i32",
  },
  cublasLtMatmulAlgoGetHeuristic: {
    parameters: [
      "u64", // cublasLtHandle_t lightHandle
      "u64", // cublasLtMatmulDesc_t operationDesc
      "u64", // cublasLtMatrixLayout_t Adesc
      "u64", // cublasLtMatrixLayout_t Bdesc
      "u64", // cublasLtMatrixLayout_t Cdesc
      "u64", // cublasLtMatrixLayout_t Ddesc
      "u64", // cublasLtMatmulPreference_t preference
      "i32", // int requestedAlgoCount
      "buffer", // cublasLtMatmulHeuristicResult_t heuristicResultsArray[]
      "buffer", // int* returnAlgoCount
    ],
    result: "i32",
  },
  cublasLtMatmul: {
    parameters: [
      "u64", // cublasLtHandle_t lightHandle
      "u64", // cublasLtMatmulDesc_t computeDesc
      "buffer", // const void* alpha (host)
      "u64", // const void* A
      "u64", // cublasLtMatrixLayout_t Adesc
      "u64", // const void* B
      "u64", // cublasLtMatrixLayout_t Bdesc
      "buffer", // const void* beta (host)
      "u64", // const void* C
      "u64", // cublasLtMatrixLayout_t Cdesc
      "u64", // void* D
      "u64", // cublasLtMatrixLayout_t Ddesc
      "buffer", // const cublasLtMatmulAlgo_t* algo
      "u64", // void* workspace
      "usize", // size_t workspaceSizeInBytes
      "u64", // cudaStream_t stream
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** cudaDataType_t of each float dtype. */
export const DATA_TYPE = { f32: 0, f16: 2, bf16: 14 } as const;
const COMPUTE_32F = 68;
const DESC = { transA: 3, transB: 4, epilogue: 7, biasPointer: 8 } as const;
const PREFERENCE_MAX_WORKSPACE = 1;
const OP_T = 1;
const EPILOGUE = { default: 1, bias: 4 } as const;
/** sizeof(cublasLtMatmulHeuristicResult_t): algo (64) + workspaceSize (8) + state (4) + wavesCount (4) + reserved (16). */
const HEURISTIC_BYTES = 96;

type Lt = Deno.DynamicLibrary<typeof symbols>["symbols"];
let loaded: { library: Deno.DynamicLibrary<typeof symbols>; path: string } | undefined;

export function cublasLt(): Lt {
  loaded ??= openLibrary(CUBLASLT, symbols);
  return loaded.library.symbols;
}

export function cublasLtVersion(): number {
  return Number(cublasLt().cublasLtGetVersion());
}

export function check(rc: number, what: string): void {
  if (rc === 0) return;
  const text = cString(cublasLt().cublasLtGetStatusString(rc));
  throw new FfiError(`${what}: ${text} (cublasStatus ${rc})`, "cublaslt", rc);
}

export function createHandle(): bigint {
  const out = outPointer();
  check(cublasLt().cublasLtCreate(out), "cublasLtCreate");
  return out[0];
}

export function destroyHandle(handle: bigint): void {
  check(cublasLt().cublasLtDestroy(handle), "cublasLtDestroy");
}

export type GemmDtype = keyof typeof DATA_TYPE;

/** out[M, N] = x[M, K] · w[N, K]ᵀ (+ bias[N]) (+ residual[M, N]); row-major, fp32 accumulation. */
export interface GemmShape {
  dtype: GemmDtype;
  n: number;
  k: number;
  /** Row strides, in elements, of x and of out (and residual, which shares out's layout). */
  ldx: number;
  ldOut: number;
  bias: boolean;
  residual: boolean;
}

interface Plan {
  layouts: bigint[];
  algo: Uint8Array<ArrayBuffer>;
  workspace: number;
}

/** One matrix product shape; algorithms are picked per row count on first use and kept. */
export class Gemm implements Disposable {
  readonly #desc: bigint;
  readonly #plans = new Map<number, Plan>();
  readonly #alpha = new Float32Array([1]);
  readonly #beta: Float32Array<ArrayBuffer>;
  #bias = new BigUint64Array(1);

  constructor(readonly handle: bigint, readonly shape: GemmShape, readonly workspaceBytes: number) {
    const lt = cublasLt();
    const out = outPointer();
    // Row-major out = x·wᵀ is, column-major, outᵀ[N, M] = w[K, N]ᵀ · xᵀ[K, M]: A = w transposed, B = x.
    check(lt.cublasLtMatmulDescCreate(out, COMPUTE_32F, DATA_TYPE.f32), "cublasLtMatmulDescCreate");
    this.#desc = out[0];
    this.#set(DESC.transA, new Int32Array([OP_T]));
    this.#set(DESC.epilogue, new Int32Array([shape.bias ? EPILOGUE.bias : EPILOGUE.default]));
    this.#beta = new Float32Array([shape.residual ? 1 : 0]);
  }

  /** Enqueues the product for `m` rows; `residual` is read as C (beta = 1) when the shape has one. */
  run(
    m: number,
    pointers: { x: bigint; w: bigint; out: bigint; bias?: bigint; residual?: bigint },
    workspace: bigint,
    stream: bigint,
  ): void {
    if (this.shape.bias) {
      if (!pointers.bias) {
        throw new FfiError("this product has a bias epilogue; no bias was given", "cublaslt");
      }
      if (this.#bias[0] !== pointers.bias) {
        this.#bias = new BigUint64Array([pointers.bias]);
        this.#set(DESC.biasPointer, this.#bias);
      }
    }
    const plan = this.#plan(m);
    const c = this.shape.residual ? pointers.residual! : pointers.out;
    const [a, b, cd] = plan.layouts;
    check(
      cublasLt().cublasLtMatmul(
        this.handle,
        this.#desc,
        this.#alpha,
        pointers.w,
        a,
        pointers.x,
        b,
        this.#beta,
        c,
        cd,
        pointers.out,
        cd,
        plan.algo,
        workspace,
        BigInt(plan.workspace),
        stream,
      ),
      `cublasLtMatmul [${m}×${this.shape.k}]·[${this.shape.n}×${this.shape.k}]ᵀ`,
    );
  }

  [Symbol.dispose](): void {
    const lt = cublasLt();
    for (const plan of this.#plans.values()) {
      for (const layout of plan.layouts) lt.cublasLtMatrixLayoutDestroy(layout);
    }
    this.#plans.clear();
    lt.cublasLtMatmulDescDestroy(this.#desc);
  }

  #set(attribute: number, value: Int32Array<ArrayBuffer> | BigUint64Array<ArrayBuffer>): void {
    const bytes = new Uint8Array(value.buffer);
    check(
      cublasLt().cublasLtMatmulDescSetAttribute(this.#desc, attribute, bytes, BigInt(bytes.byteLength)),
      "cublasLtMatmulDescSetAttribute",
    );
  }

  #plan(m: number): Plan {
    const known = this.#plans.get(m);
    if (known) return known;
    const lt = cublasLt();
    const { dtype, n, k, ldx, ldOut } = this.shape;
    const type = DATA_TYPE[dtype];
    const layout = (rows: number, cols: number, ld: number) => {
      const out = outPointer();
      check(lt.cublasLtMatrixLayoutCreate(out, type, BigInt(rows), BigInt(cols), BigInt(ld)), "layout");
      return out[0];
    };
    const layouts = [layout(k, n, k), layout(k, m, ldx), layout(n, m, ldOut)];
    const preference = outPointer();
    check(lt.cublasLtMatmulPreferenceCreate(preference), "cublasLtMatmulPreferenceCreate");
    try {
      const limit = new BigUint64Array([BigInt(this.workspaceBytes)]);
      check(
        lt.cublasLtMatmulPreferenceSetAttribute(
          preference[0],
          PREFERENCE_MAX_WORKSPACE,
          new Uint8Array(limit.buffer),
          8n,
        ),
        "cublasLtMatmulPreferenceSetAttribute",
      );
      const results = new Uint8Array(HEURISTIC_BYTES);
      const count = new Int32Array(1);
      check(
        lt.cublasLtMatmulAlgoGetHeuristic(
          this.handle,
          this.#desc,
          layouts[0],
          layouts[1],
          layouts[2],
          layouts[2],
          preference[0],
          1,
          results,
          count,
        ),
        `no cuBLASLt algorithm for ${dtype} [${m}×${k}]·[${n}×${k}]ᵀ`,
      );
      if (count[0] < 1) {
        throw new FfiError(`no cuBLASLt algorithm for ${dtype} [${m}×${k}]·[${n}×${k}]ᵀ`, "cublaslt");
      }
      const view = new DataView(results.buffer);
      const plan = {
        layouts,
        algo: results.slice(0, 64),
        workspace: Number(view.getBigUint64(64, true)),
      };
      this.#plans.set(m, plan);
      return plan;
    } finally {
      lt.cublasLtMatmulPreferenceDestroy(preference[0]);
    }
  }
}
