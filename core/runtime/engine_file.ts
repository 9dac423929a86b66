// The engine file: magic, format version, a JSON header that says what the engine is and where
// it belongs, then the backend's payload. Files are written under a temporary name, synced and
// renamed, so a reader sees the old file or the new one, never half of one.

import { dirname, join } from "node:path";
import type { GraphInput } from "../ir/graph.ts";
import type { Mesh } from "../dist/group.ts";
import type { Profiles } from "./profiles.ts";
import { EngineError } from "./engine.ts";

const MAGIC = new TextEncoder().encode("RANKFLOW");
export const FORMAT_VERSION = 2;

export interface EngineHeader {
  format: number;
  backend: string;
  backendVersion: string;
  rank: number;
  worldSize: number;
  /** The dp × tp shape of the job the engine was made for. */
  mesh: Mesh;
  inputs: GraphInput[];
  outputs: GraphInput[];
  /** The [min, opt, max] sizes of the inputs' symbolic dims the engine serves. */
  profiles: Profiles;
  /** Whether the payload is segments with collectives between them (the backend cannot run them inside). */
  partitioned: boolean;
  /** Whether the engine runs collectives and so must be bound to a communicator before it runs. */
  communicator: boolean;
  payloadBytes: number;
  /** Hex SHA-256 of the payload. */
  payloadSha256: string;
  createdBy: string;
  /** SHA-256 of the lowered graph's text and of this rank's weights (or their files' fingerprints). */
  graphSha256?: string;
  weightsSha256?: string;
  /** The pipeline file that made the engine, where one did. */
  pipeline?: string;
}

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function encodeEngineFile(header: EngineHeader, payload: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(MAGIC.length + 8 + json.length + payload.length);
  out.set(MAGIC, 0);
  const view = new DataView(out.buffer);
  view.setUint32(MAGIC.length, FORMAT_VERSION, true);
  view.setUint32(MAGIC.length + 4, json.length, true);
  out.set(json, MAGIC.length + 8);
  out.set(payload, MAGIC.length + 8 + json.length);
  return out;
}

/** Writes bytes to a temporary name beside `path`, syncs, and renames it into place. */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const temporary = join(dirname(path), `.${crypto.randomUUID()}.tmp`);
  try {
    using file = await Deno.open(temporary, { write: true, createNew: true });
    let written = 0;
    while (written < bytes.length) written += await file.write(bytes.subarray(written));
    await file.sync();
  } catch (error) {
    await Deno.remove(temporary).catch(() => {});
    throw error;
  }
  await Deno.rename(temporary, path);
}

export async function writeEngineFile(
  path: string,
  header: EngineHeader,
  payload: Uint8Array,
): Promise<void> {
  await writeFileAtomic(path, encodeEngineFile(header, payload));
}

const READ_CHUNK = 16 * 2 ** 20;

/** The whole file, read in chunks so that progress can be told; `progress` gets bytes read and the size. */
async function readWhole(
  path: string,
  progress?: (done: number, total: number) => void,
): Promise<Uint8Array> {
  using file = await Deno.open(path);
  const size = (await file.stat()).size;
  const bytes = new Uint8Array(size);
  let done = 0;
  while (done < size) {
    const n = await file.read(bytes.subarray(done, Math.min(size, done + READ_CHUNK)));
    if (n === null) break;
    done += n;
    progress?.(done, size);
  }
  return bytes.subarray(0, done);
}

/** Reads and verifies an engine file: magic, version, lengths and payload checksum. */
export async function readEngineFile(
  path: string,
  progress?: (done: number, total: number) => void,
): Promise<{ header: EngineHeader; payload: Uint8Array }> {
  let bytes: Uint8Array;
  try {
    bytes = await readWhole(path, progress);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new EngineError(`${path}: engine file not found`);
    throw error;
  }
  const bad = (what: string) => new EngineError(`${path}: ${what}`);
  if (bytes.length < MAGIC.length + 8 || !MAGIC.every((b, i) => bytes[i] === b)) {
    throw bad("not a rankflow engine file (bad magic)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(MAGIC.length, true);
  if (version !== FORMAT_VERSION) {
    throw bad(
      `engine file format ${version}, this rankflow reads format ${FORMAT_VERSION}; rebuild the engine`,
    );
  }
  const headerLength = view.getUint32(MAGIC.length + 4, true);
  const start = MAGIC.length + 8;
  if (start + headerLength > bytes.length) throw bad("truncated: the header runs past the end of the file");
  let header: EngineHeader;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(start, start + headerLength)));
  } catch {
    throw bad("the header is not valid JSON");
  }
  const payload = bytes.subarray(start + headerLength);
  if (payload.length !== header.payloadBytes) {
    throw bad(
      `truncated or padded: payload has ${payload.length} bytes, the header says ${header.payloadBytes}`,
    );
  }
  if (await sha256Hex(payload) !== header.payloadSha256) {
    throw bad("checksum mismatch: the payload was altered");
  }
  return { header, payload };
}
