// The manifest of a saved engine set: one engine file per rank in one folder, described by
// manifest.json so that a later run can check the set as a whole before loading any of it.

import { join } from "node:path";
import { EngineError } from "./engine.ts";
import { FORMAT_VERSION, readEngineFile, writeFileAtomic } from "./engine_file.ts";
import type { ModelInfo } from "../pipeline/plugin.ts";
import type { Engine, EngineBackend } from "./engine.ts";

export interface Manifest {
  format: number;
  backend: string;
  worldSize: number;
  model: ModelInfo;
  files: { rank: number; file: string; sha256: string }[];
}

export const MANIFEST = "manifest.json";

export function rankFileName(rank: number): string {
  return `rank-${rank}.engine`;
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
  try {
    const manifest = JSON.parse(text) as Manifest;
    if (manifest.format !== FORMAT_VERSION) {
      throw new EngineError(
        `${path}: format ${manifest.format}, this rankflow reads format ${FORMAT_VERSION}`,
      );
    }
    return manifest;
  } catch (error) {
    if (error instanceof EngineError) throw error;
    throw new EngineError(`${path}: not valid JSON`);
  }
}

/** Loads this rank's engine after checking it against the manifest and the running world. */
export async function loadRankEngine(
  dir: string,
  rank: number,
  worldSize: number,
  backends: (name: string) => EngineBackend,
): Promise<{ engine: Engine; manifest: Manifest }> {
  const manifest = await readManifest(dir);
  if (manifest.worldSize !== worldSize) {
    throw new EngineError(
      `${join(dir, MANIFEST)}: saved for ${manifest.worldSize} ranks, this run has ${worldSize}`,
    );
  }
  const entry = manifest.files.find((file) => file.rank === rank);
  if (!entry) throw new EngineError(`${join(dir, MANIFEST)}: lists no file for rank ${rank}`);
  const path = join(dir, entry.file);
  const { header, payload } = await readEngineFile(path);
  if (header.payloadSha256 !== entry.sha256) {
    throw new EngineError(`${path}: does not match the manifest's checksum`);
  }
  if (header.rank !== rank || header.worldSize !== worldSize) {
    throw new EngineError(
      `${path}: made for rank ${header.rank} of ${header.worldSize}, not rank ${rank} of ${worldSize}`,
    );
  }
  const backend = backends(header.backend);
  if (header.backendVersion !== backend.version) {
    throw new EngineError(
      `${path}: made by ${header.backend} version ${header.backendVersion}, this is version ${backend.version}`,
    );
  }
  return { engine: await backend.deserialize(payload), manifest };
}
