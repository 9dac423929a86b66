// Builds librankflow_kernels.so (and the TensorRT shim where present) with CMake into build/native.
//   deno task native          configure + build, with progress and the compiler's errors
// ffi/kernels.ts calls buildNative() on first use when the library is missing.

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const BUILD_DIR = join(ROOT, "build", "native");
export const KERNELS_LIBRARY = join(BUILD_DIR, "librankflow_kernels.so");

export class NativeBuildError extends Error {
  override name = "NativeBuildError";
}

/** Configures and builds; `log` receives progress lines. Throws with the tool's output on failure. */
export function buildNative(log: (line: string) => void = console.error): string {
  const cmake = Deno.env.get("CMAKE") ?? "cmake";
  const nvcc = findNvcc();
  const configure = [
    "-S",
    ROOT,
    "-B",
    BUILD_DIR,
    "-DCMAKE_BUILD_TYPE=Release",
    ...(nvcc ? [`-DCMAKE_CUDA_COMPILER=${nvcc}`] : []),
  ];
  log(`native: configuring with ${cmake} ${configure.join(" ")}`);
  run(cmake, configure, "configure");
  const jobs = String(Math.max(1, Math.min(16, navigator.hardwareConcurrency ?? 4)));
  log(`native: building ${KERNELS_LIBRARY} (${jobs} jobs)`);
  run(cmake, ["--build", BUILD_DIR, "-j", jobs], "build");
  log(`native: built ${KERNELS_LIBRARY}`);
  return KERNELS_LIBRARY;
}

/** nvcc from CUDACXX, CUDA_HOME, /usr/local/cuda or PATH; undefined lets CMake search itself. */
function findNvcc(): string | undefined {
  const explicit = Deno.env.get("CUDACXX");
  if (explicit) return explicit;
  for (const home of [Deno.env.get("CUDA_HOME"), Deno.env.get("CUDA_PATH"), "/usr/local/cuda"]) {
    if (!home) continue;
    const candidate = join(home, "bin", "nvcc");
    try {
      if (Deno.statSync(candidate).isFile) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function run(command: string, args: string[], step: string): void {
  let output: Deno.CommandOutput;
  try {
    output = new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).outputSync();
  } catch (error) {
    throw new NativeBuildError(
      `native ${step}: could not start ${command} (${(error as Error).message}); ` +
        "the kernels need CMake ≥ 3.24 and the CUDA toolkit (nvcc)",
      { cause: error },
    );
  }
  if (!output.success) {
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    const errors = text.split("\n").filter((line) => /error|Error|CMake Error/.test(line));
    throw new NativeBuildError(
      `native ${step} failed (${command} ${args.join(" ")}):\n${
        (errors.length ? errors : text.split("\n")).slice(-40).join("\n")
      }`,
    );
  }
}

if (import.meta.main) {
  try {
    buildNative((line) => console.log(line));
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(1);
  }
}
