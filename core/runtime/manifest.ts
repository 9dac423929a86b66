// A saved engine set: one engine file per rank, written into a fresh folder `set-<id>/`, and
// manifest.json beside it naming the folder's files and their checksums. The manifest is written
// last and atomically, so until a new set is complete the previous one stays whole and loadable.

import { join } from "node:path";
import type { JobChannel } from "../dist/context.ts";
import type { Mesh } from "../dist/group.ts";
import type { ModelInfo } from "../pipeline/plugin.ts";
import { type Engine, type EngineBackend, EngineError } from "./engine.ts";
import {
  type EngineHeader,
  FORMAT_VERSION,
  readEngineFile,
  sha256Hex,
  writeEngineFile,
  writeFileAtomic,
} from "./engine_file.ts";
import { deserializeSegmented, SegmentedEngine } from "./segments.ts";
import { CompiledEngine } from "./compiled.ts";
import type { Tokenizer } from "./tokenizer.ts";

export interface ManifestEntry {
  rank: number;
  /** Relative to the manifest's folder. */
  file: string;
  sha256: string;
}

export interface Manifest {
  format: number;
  backend: string;
  worldSize: number;
  mesh: Mesh;
  model: ModelInfo;
  files: ManifestEntry[];
  /** Tokenizer files saved with the set, relative to the manifest's folder. */
  tokenizer: string[];
  /** The pipeline file that made the set, where one did. */
  pipeline?: string;
}

export const MANIFEST = "manifest.json";

export function rankFileName(rank: number): string {
  return `rank-${rank}.engine`;
}

export interface SaveSetOptions {
  rank: number;
  worldSize: number;
  mesh?: Mesh;
  model: ModelInfo;
  tokenizer?: Tokenizer;
  /** Present where there are several ranks: they agree on the set's folder and gather checksums. */
  job?: JobChannel;
  pipeline?: string;
}

/** Saves this rank's engine into the set; rank 0 then writes the manifest and drops older sets. */
export async function saveRankEngine(dir: string, engine: Engine, options: SaveSetOptions): Promise<string> {
  const newId = () => crypto.randomUUID().slice(0, 8);
  const id = options.job ? await options.job.agree("engine-set", newId) : newId();
  const folder = `set-${id}`;
  const payload = engine.serialize();
  const sha256 = await sha256Hex(payload);
  const file = join(folder, rankFileName(options.rank));
  const header = engineHeader(engine, payload.length, sha256, options);
  await writeEngineFile(join(dir, file), header, payload);
  const mine: ManifestEntry = { rank: options.rank, file, sha256 };
  const files = options.job ? await options.job.gather("engine-set", mine) : [mine];
  if (!files) return join(dir, file);
  const tokenizer: string[] = [];
  for (const [name, text] of Object.entries(options.tokenizer?.files ?? {})) {
    await writeFileAtomic(join(dir, folder, name), new TextEncoder().encode(text));
    tokenizer.push(join(folder, name));
  }
  await writeManifest(dir, {
    format: FORMAT_VERSION,
    backend: engine.backend,
    worldSize: options.worldSize,
    mesh: header.mesh,
    model: options.model,
    files,
    tokenizer,
    pipeline: options.pipeline,
  });
  await removeOtherSets(dir, folder);
  return join(dir, file);
}

/** The header of an engine file for `engine` at its place in the job. */
export function engineHeader(
  engine: Engine,
  payloadBytes: number,
  payloadSha256: string,
  place: { rank: number; worldSize: number; mesh?: Mesh; pipeline?: string },
): EngineHeader {
  const compiled = engine instanceof CompiledEngine ? engine : undefined;
  const inner = compiled?.engine ?? engine;
  const partitioned = inner instanceof SegmentedEngine;
  return {
    format: FORMAT_VERSION,
    backend: engine.backend,
    backendVersion: engine.backendVersion,
    rank: place.rank,
    worldSize: place.worldSize,
    mesh: place.mesh ?? { dp: 1, tp: place.worldSize },
    inputs: engine.inputs,
    outputs: engine.outputs,
    profiles: compiled?.profiles ?? {},
    partitioned,
    communicator: partitioned || (inner as { requiresCommunicator?: boolean }).requiresCommunicator === true,
    payloadBytes,
    payloadSha256,
    createdBy: "rankflow",
    graphSha256: compiled?.provenance.graphSha256,
    weightsSha256: compiled?.provenance.weightsSha256,
    pipeline: place.pipeline ?? compiled?.provenance.pipeline,
  };
}

/** The engine an engine file holds, made by its backend, with the profiles it was compiled for. */
export async function engineFromFile(
  header: EngineHeader,
  payload: Uint8Array,
  backend: EngineBackend,
): Promise<CompiledEngine> {
  const engine = header.partitioned
    ? await deserializeSegmented(backend, payload)
    : await backend.deserialize(payload);
  return new CompiledEngine(engine, header.profiles ?? {}, {
    graphSha256: header.graphSha256,
    weightsSha256: header.weightsSha256,
    pipeline: header.pipeline,
  });
}

/** Older sets and files left by interrupted saves; the manifest no longer names them. */
async function removeOtherSets(dir: string, keep: string): Promise<void> {
  for await (const entry of Deno.readDir(dir)) {
    const stale = (entry.isDirectory && entry.name.startsWith("set-") && entry.name !== keep) ||
      (entry.isFile && entry.name.endsWith(".engine")) || (entry.isFile && entry.name.endsWith(".tmp"));
    if (stale) await Deno.remove(join(dir, entry.name), { recursive: true }).catch(() => {});
  }
}

export async function writeManifest(dir: string, manifest: Manifest): Promise<void> {
  await writeFileAtomic(
    join(dir, MANIFEST),
    new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n"),
  );
}

export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, MANIFEST);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new EngineError(`${path}: no manifest; was the engine saved here?`);
    }
    throw error;
  }
  let manifest: Manifest;
  try {
    manifest = JSON.parse(text) as Manifest;
  } catch {
    throw new EngineError(`${path}: not valid JSON`);
  }
  if (manifest.format !== FORMAT_VERSION) {
    throw new EngineError(
      `${path}: format ${manifest.format}, this rankflow reads format ${FORMAT_VERSION}; save the engines again`,
    );
  }
  if (!Array.isArray(manifest.files) || manifest.files.length !== manifest.worldSize) {
    throw new EngineError(
      `${path}: lists ${manifest.files?.length ?? 0} files for ${manifest.worldSize} ranks`,
    );
  }
  return manifest;
}

/**
 * Loads this rank's engine after checking the set: the manifest against the running world, every
 * rank's file present (so all ranks fail alike), and this rank's file against the manifest.
 */
export async function loadRankEngine(
  dir: string,
  rank: number,
  worldSize: number,
  backends: (name: string) => EngineBackend,
  progress?: (what: string, done: number, total: number) => void,
): Promise<{ engine: CompiledEngine; manifest: Manifest; header: EngineHeader }> {
  const manifestPath = join(dir, MANIFEST);
  const manifest = await readManifest(dir);
  if (manifest.worldSize !== worldSize) {
    throw new EngineError(
      `${manifestPath}: saved for ${manifest.worldSize} ranks, this run has ${worldSize}`,
    );
  }
  for (const entry of manifest.files) {
    try {
      await Deno.stat(join(dir, entry.file));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      throw new EngineError(
        `${join(dir, entry.file)}: engine file not found (rank ${entry.rank}, in ${manifestPath})`,
      );
    }
  }
  const entry = manifest.files.find((file) => file.rank === rank);
  if (!entry) throw new EngineError(`${manifestPath}: lists no file for rank ${rank}`);
  const path = join(dir, entry.file);
  const reading = `reading ${entry.file}, MiB`;
  const { header, payload } = await readEngineFile(
    path,
    progress && ((done, total) => progress(reading, Math.round(done / 2 ** 20), Math.round(total / 2 ** 20))),
  );
  if (header.payloadSha256 !== entry.sha256) {
    throw new EngineError(
      `${path}: does not match the manifest's checksum; the set was changed after saving`,
    );
  }
  if (header.rank !== rank || header.worldSize !== worldSize) {
    throw new EngineError(
      `${path}: made for rank ${header.rank} of ${header.worldSize}, not rank ${rank} of ${worldSize}`,
    );
  }
  if (header.backend !== manifest.backend) {
    throw new EngineError(
      `${path}: made by backend ${header.backend}, the manifest says ${manifest.backend}`,
    );
  }
  const backend = backends(header.backend);
  if (header.backendVersion !== backend.version) {
    throw new EngineError(
      `${path}: made by ${header.backend} version ${header.backendVersion}, this is version ${backend.version}`,
    );
  }
  return { engine: await engineFromFile(header, payload, backend), manifest, header };
}
