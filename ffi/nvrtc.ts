// NVRTC: compiles CUDA C++ source to PTX at run time (for kernels specialized to one model's
// shapes). rankflow's fixed kernels are built ahead of time in native/; this table is what the
// engine and `rankflow features` use to say whether run-time compilation is available.

import { cString, cText, FfiError, outPointer } from "./errors.ts";
import { type LibrarySpec, openLibrary } from "./discover.ts";
import { checkDriver, cudaDriver } from "./cuda.ts";

export const NVRTC: LibrarySpec = {
  name: "nvrtc",
  files: ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
};

export const symbols = {
  nvrtcVersion: {
    parameters: [
      "buffer", // int* major
      "buffer", // int* minor
    ],
    result: "i32",
  },
  nvrtcGetErrorString: { parameters: ["i32"], result: "pointer" }, // nvrtcResult result
  nvrtcCreateProgram: {
    parameters: [
      "buffer", // nvrtcProgram* prog
      "buffer", // const char* src
      "buffer", // const char* name
      "i32", // int numHeaders
      "pointer", // const char* const* headers
      "pointer", // const char* const* includeNames
    ],
    result: "i32",
  },
  nvrtcCompileProgram: {
    parameters: [
      "u64", // nvrtcProgram prog
      "i32", // int numOptions
      "buffer", // const char* const* options
    ],
    result: "i32",
  },
  nvrtcGetPTXSize: {
    parameters: [
      "u64", // nvrtcProgram prog
      "buffer", // size_t* ptxSizeRet
    ],
    result: "i32",
  },
  nvrtcGetPTX: {
    parameters: [
      "u64", // nvrtcProgram prog
      "buffer", // char* ptx
    ],
    result: "i32",
  },
  nvrtcGetProgramLogSize: {
    parameters: [
      "u64", // nvrtcProgram prog
      "buffer", // size_t* logSizeRet
    ],
    result: "i32",
  },
  nvrtcGetProgramLog: {
    parameters: [
      "u64", // nvrtcProgram prog
      "buffer", // char* log
    ],
    result: "i32",
  },
  nvrtcDestroyProgram: { parameters: ["buffer"], result: "i32" }, // nvrtcProgram* prog
} as const satisfies Deno.ForeignLibraryInterface;

type Nvrtc = Deno.DynamicLibrary<typeof symbols>["symbols"];
let loaded: { library: Deno.DynamicLibrary<typeof symbols>; path: string } | undefined;

export function nvrtc(): Nvrtc {
  loaded ??= openLibrary(NVRTC, symbols);
  return loaded.library.symbols;
}

export function check(rc: number, what: string): void {
  if (rc === 0) return;
  throw new FfiError(`${what}: ${cString(nvrtc().nvrtcGetErrorString(rc))} (nvrtcResult ${rc})`, "nvrtc", rc);
}

export function nvrtcVersion(): string {
  const major = new Int32Array(1);
  const minor = new Int32Array(1);
  check(nvrtc().nvrtcVersion(major, minor), "nvrtcVersion");
  return `${major[0]}.${minor[0]}`;
}

/** PTX for `source`; a compile error carries NVRTC's log. */
export function compileToPtx(source: string, name: string, options: string[] = []): string {
  const n = nvrtc();
  const program = outPointer();
  check(n.nvrtcCreateProgram(program, cText(source), cText(name), 0, null, null), "nvrtcCreateProgram");
  try {
    const texts = options.map(cText);
    const table = new BigUint64Array(
      texts.map((text) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(text)))),
    );
    const rc = n.nvrtcCompileProgram(program[0], options.length, new Uint8Array(table.buffer));
    if (rc !== 0) {
      const size = new BigUint64Array(1);
      n.nvrtcGetProgramLogSize(program[0], size);
      const log = new Uint8Array(Number(size[0]));
      n.nvrtcGetProgramLog(program[0], log);
      throw new FfiError(
        `${name}: ${cString(n.nvrtcGetErrorString(rc))}\n${
          new TextDecoder().decode(log).replace(/\0+$/, "")
        }`,
        "nvrtc",
        rc,
      );
    }
    const size = new BigUint64Array(1);
    check(n.nvrtcGetPTXSize(program[0], size), "nvrtcGetPTXSize");
    const ptx = new Uint8Array(Number(size[0]));
    check(n.nvrtcGetPTX(program[0], ptx), "nvrtcGetPTX");
    return new TextDecoder().decode(ptx).replace(/\0+$/, "");
  } finally {
    n.nvrtcDestroyProgram(new Uint8Array(program.buffer));
  }
}

/** A kernel argument: a device pointer (bigint), or a 32-bit int or float. */
export type KernelArgument = bigint | { i32: number } | { f32: number };

/** PTX loaded into the current context through the driver API; `launch` runs its kernels. */
export class PtxModule {
  readonly #module: bigint;
  #unloaded = false;

  constructor(ptx: string) {
    const out = outPointer();
    checkDriver(cudaDriver().cuModuleLoadData(out, cText(ptx)), "cuModuleLoadData");
    this.#module = out[0];
  }

  /** Enqueues `name` on `stream` (0n: the legacy default stream). */
  launch(
    name: string,
    grid: [number, number, number],
    block: [number, number, number],
    args: KernelArgument[],
    stream = 0n,
  ): void {
    const driver = cudaDriver();
    const fn = outPointer();
    checkDriver(driver.cuModuleGetFunction(fn, this.#module, cText(name)), `cuModuleGetFunction(${name})`);
    // kernelParams: one pointer to each argument's bytes
    const values = args.map((arg) => {
      const bytes = new Uint8Array(8);
      const view = new DataView(bytes.buffer);
      if (typeof arg === "bigint") view.setBigUint64(0, arg, true);
      else if ("i32" in arg) view.setInt32(0, arg.i32, true);
      else view.setFloat32(0, arg.f32, true);
      return bytes;
    });
    const table = new BigUint64Array(
      values.map((bytes) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)))),
    );
    checkDriver(
      driver.cuLaunchKernel(fn[0], ...grid, ...block, 0, stream, new Uint8Array(table.buffer), null),
      `cuLaunchKernel(${name})`,
    );
  }

  [Symbol.dispose](): void {
    if (this.#unloaded) return;
    this.#unloaded = true;
    checkDriver(cudaDriver().cuModuleUnload(this.#module), "cuModuleUnload");
  }
}
