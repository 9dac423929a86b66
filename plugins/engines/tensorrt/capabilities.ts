// What the TensorRT at hand can do, and which way collectives go. The choice is a pure function
// of a capability description so it can be tested without TensorRT; probeCollectives() builds the
// description from the real shim and environment at startup.

import { FEATURE, openTensorRt, type TensorRtLibrary } from "../../../ffi/tensorrt.ts";

export interface TensorRtCapabilities {
  /** TensorRT version the shim was compiled against, major * 10000 + minor * 100 + patch. */
  headerVersion: number;
  /** TensorRT version of the libnvinfer loaded at run time (same encoding). */
  libraryVersion: number;
  /** The headers define addDistCollective and setCommunicator (TensorRT 10.16 and newer). */
  distCollective: boolean;
  /** Multi-device layers sit behind PreviewFeature::kMULTIDEVICE_RUNTIME_10_16 (10.16 .. 10.x). */
  multiDevicePreview: boolean;
  /** addAttentionV2 with a lower-right causal mask, i.e. attention over a KV cache (11.0 and newer). */
  attentionLowerRight: boolean;
}

export const DIST_COLLECTIVE_VERSION = 101600;

export function formatVersion(version: number): string {
  return `${Math.floor(version / 10000)}.${Math.floor(version / 100) % 100}.${version % 100}`;
}

export function capabilitiesOf(library: TensorRtLibrary): TensorRtCapabilities {
  const features = library.symbols.rf_trt_features();
  return {
    headerVersion: library.symbols.rf_trt_header_version(),
    libraryVersion: library.symbols.rf_trt_library_version(),
    distCollective: (features & FEATURE.distCollective) !== 0,
    multiDevicePreview: (features & FEATURE.multiDevicePreview) !== 0,
    attentionLowerRight: (features & FEATURE.attentionLowerRight) !== 0,
  };
}

export type CollectivePath = "none" | "dist-collective" | "trtllm-plugins" | "nccl-between-segments";

export interface CollectiveEnvironment {
  worldSize: number;
  /** Absent where the shim (or TensorRT) could not be loaded. */
  tensorrt?: TensorRtCapabilities;
  /** TRTLLM_PLUGINS_PATH, and whether a file is there. */
  trtllmPlugins?: { path: string; exists: boolean };
}

export interface CollectiveChoice {
  path: CollectivePath;
  /** Whether collectives become layers inside the engine (else the graph is cut at them). */
  inEngine: boolean;
  reason: string;
}

/** Collective paths in priority order: DistCollective, TensorRT-LLM plugins, NCCL between segments. */
export function chooseCollectivePath(env: CollectiveEnvironment): CollectiveChoice {
  if (env.worldSize <= 1) {
    return { path: "none", inEngine: true, reason: "one rank: collectives are identities and add no layer" };
  }
  const trt = env.tensorrt;
  const usable = trt ? Math.min(trt.headerVersion, trt.libraryVersion) : 0;
  if (trt?.distCollective && usable >= DIST_COLLECTIVE_VERSION) {
    return {
      path: "dist-collective",
      inEngine: true,
      reason: `TensorRT ${formatVersion(usable)} has DistCollective layers (setCommunicator binds NCCL)`,
    };
  }
  const why = !trt
    ? "TensorRT is not loadable"
    : `TensorRT ${formatVersion(usable)} has no DistCollective (10.16 or newer has)`;
  if (env.trtllmPlugins?.exists) {
    return {
      path: "trtllm-plugins",
      inEngine: false,
      reason: `${why}; TRTLLM_PLUGINS_PATH=${env.trtllmPlugins.path} is present, but rankflow does not ` +
        "emit TensorRT-LLM plugin layers yet, so collectives run between segments through nccl",
    };
  }
  const plugins = env.trtllmPlugins ? `; TRTLLM_PLUGINS_PATH=${env.trtllmPlugins.path} is not a file` : "";
  return {
    path: "nccl-between-segments",
    inEngine: false,
    reason: `${why}${plugins}: the graph is cut at collectives and nccl runs them between segments`,
  };
}

/** The environment as this process sees it: the shim if it loads, TRTLLM_PLUGINS_PATH if set. */
export function probeCollectives(worldSize: number, open = openTensorRt): CollectiveEnvironment {
  let tensorrt: TensorRtCapabilities | undefined;
  try {
    using library = open();
    tensorrt = capabilitiesOf(library);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) throw error;
  }
  return { worldSize, tensorrt, trtllmPlugins: trtllmPluginsFromEnv() };
}

/** TRTLLM_PLUGINS_PATH and whether a file is there; undefined when the variable is not set. */
export function trtllmPluginsFromEnv(): CollectiveEnvironment["trtllmPlugins"] {
  const path = Deno.env.get("TRTLLM_PLUGINS_PATH");
  if (!path) return undefined;
  try {
    return { path, exists: Deno.statSync(path).isFile };
  } catch {
    return { path, exists: false };
  }
}

/** Lines for `rankflow features`: TensorRT's version and the collective path for `worldSize` ranks. */
export function describeTensorRt(env: CollectiveEnvironment): string[] {
  const trt = env.tensorrt;
  const lines = [
    trt
      ? `tensorrt: shim compiled against TensorRT ${formatVersion(trt.headerVersion)}, libnvinfer ` +
        formatVersion(trt.libraryVersion)
      : "tensorrt: not available (the shim or libnvinfer could not be loaded)",
  ];
  const choice = chooseCollectivePath(env);
  lines.push(`tensorrt collectives (${env.worldSize} ranks): ${choice.path}: ${choice.reason}`);
  return lines;
}
