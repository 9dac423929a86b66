// What this machine offers rankflow's GPU path: GPUs, driver and CUDA runtime, the native
// libraries the cuda engine and the nccl backend load (and where from), and which collective path
// a pipeline would take. `rankflow features` prints it, like the seed's ENABLED_FEATURES.

import {
  CUDART,
  DEVICE_ATTRIBUTE,
  deviceAttribute,
  deviceName,
  driverVersion,
  memoryInfo,
  probeDevices,
  runtimeVersion,
} from "../../ffi/cuda.ts";
import { CUBLASLT, cublasLtVersion } from "../../ffi/cublaslt.ts";
import { NCCL, ncclVersion } from "../../ffi/nccl.ts";
import { NVRTC, nvrtcVersion } from "../../ffi/nvrtc.ts";
import { findLibrary, type LibrarySpec, overrideVariable } from "../../ffi/discover.ts";
import { KERNELS } from "../../ffi/kernels.ts";
import { KERNELS_LIBRARY } from "../../native/build.ts";

export interface GpuInfo {
  index: number;
  name: string;
  computeCapability: string;
  multiprocessors: number;
}

export interface LibraryInfo {
  name: string;
  /** The version it reports, when it loaded. */
  version?: string;
  path?: string;
  /** Why it is not usable, when it is not. */
  problem?: string;
}

export interface FeatureReport {
  gpus: GpuInfo[];
  /** Why no GPU is usable, when none is. */
  gpuProblem?: string;
  driver?: string;
  runtime?: string;
  memoryGiB?: number;
  libraries: LibraryInfo[];
  kernels: { path: string; built: boolean };
  /** Where collectives run: inside the cuda engine over NCCL, or between segments over tcp. */
  collectives: string;
}

function cudaVersion(code: number): string {
  return `${Math.floor(code / 1000)}.${Math.floor((code % 1000) / 10)}`;
}

function library(spec: LibrarySpec, version: () => string): LibraryInfo {
  try {
    const { path } = findLibrary(spec);
    try {
      return { name: spec.name, path, version: version() };
    } catch (error) {
      return { name: spec.name, path, problem: (error as Error).message };
    }
  } catch (error) {
    return { name: spec.name, problem: (error as Error).message };
  }
}

export function featureReport(): FeatureReport {
  const probe = probeDevices();
  const gpus: GpuInfo[] = [];
  const report: FeatureReport = {
    gpus,
    libraries: [],
    kernels: kernelsLibrary(),
    collectives: "between engine segments, over tcp (cpu engine)",
  };
  if (probe.count === 0) report.gpuProblem = probe.reason;
  for (let index = 0; index < probe.count; index++) {
    let name = "unknown";
    try {
      name = deviceName(index);
    } catch (error) {
      name = `(name unavailable: ${(error as Error).message})`;
    }
    gpus.push({
      index,
      name,
      computeCapability: `${deviceAttribute(DEVICE_ATTRIBUTE.major, index)}.${
        deviceAttribute(DEVICE_ATTRIBUTE.minor, index)
      }`,
      multiprocessors: deviceAttribute(DEVICE_ATTRIBUTE.multiprocessors, index),
    });
  }
  if (probe.count > 0) {
    report.driver = cudaVersion(driverVersion());
    report.runtime = cudaVersion(runtimeVersion());
    report.memoryGiB = memoryInfo().total / 2 ** 30;
  }
  report.libraries.push(library(CUDART, () => cudaVersion(runtimeVersion())));
  report.libraries.push(library(CUBLASLT, () => {
    const v = cublasLtVersion();
    return `${Math.floor(v / 10000)}.${Math.floor((v % 10000) / 100)}.${v % 100}`;
  }));
  report.libraries.push(library(NCCL, ncclVersion));
  report.libraries.push(library(NVRTC, nvrtcVersion));
  const nccl = report.libraries.find((lib) => lib.name === "nccl");
  if (gpus.length > 0 && nccl?.version) {
    report.collectives =
      `inside the cuda engine, on its stream, over NCCL ${nccl.version} (collective backend nccl)`;
  }
  return report;
}

export function formatFeatures(report: FeatureReport): string {
  const lines: string[] = [];
  if (report.gpus.length === 0) lines.push(`GPUs: none (${report.gpuProblem ?? "no reason given"})`);
  for (const gpu of report.gpus) {
    lines.push(
      `GPU ${gpu.index}: ${gpu.name}, compute capability ${gpu.computeCapability}, ${gpu.multiprocessors} SMs`,
    );
  }
  if (report.driver) {
    lines.push(
      `CUDA driver ${report.driver}, runtime ${report.runtime}, ${report.memoryGiB!.toFixed(1)} GiB on GPU 0`,
    );
  }
  for (const lib of report.libraries) {
    lines.push(
      lib.version
        ? `${lib.name.padEnd(9)} ${lib.version.padEnd(8)} ${lib.path}`
        : `${lib.name.padEnd(9)} unavailable: ${lib.problem}`,
    );
  }
  lines.push(
    `kernels   ${
      report.kernels.built ? "built" : "not built (deno task native; built on first use)"
    } ${report.kernels.path}`,
  );
  lines.push(`collectives: ${report.collectives}`);
  return lines.join("\n");
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The kernels library the cuda engine would load: the override where one is set, else the build's. */
function kernelsLibrary(): { path: string; built: boolean } {
  if (Deno.env.get(overrideVariable(KERNELS))) {
    try {
      return { path: findLibrary(KERNELS).path, built: true };
    } catch (error) {
      return { path: (error as Error).message, built: false };
    }
  }
  return { path: KERNELS_LIBRARY, built: isFile(KERNELS_LIBRARY) };
}
