// Safetensors checkpoints as weight stores. A file is opened lazily: only its header is read up
// front (and checked against the file's real size), and each read fetches just the bytes of the
// requested slice, so that a rank reading its shard never touches the rest of the checkpoint.

import { join } from "node:path";
import type { WeightSlice } from "./graph.ts";
import { BYTES_PER_ELEMENT, type DType, numel, type Tensor, tensor, viewOf } from "./tensor.ts";
import type { WeightInfo, WeightStore } from "./weights.ts";

export class WeightError extends Error {
  override name = "WeightError";
}

const DTYPE_OF_NAME: Record<string, DType> = { F32: "f32", F16: "f16", BF16: "bf16", I32: "i32", I64: "i64" };
const NAME_OF_DTYPE: Record<DType, string> = { f32: "F32", f16: "F16", bf16: "BF16", i32: "I32", i64: "I64" };

/** Headers past this size are refused before being read: real ones are a few MB at most. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

interface Entry extends WeightInfo {
  /** Absolute byte offsets of the tensor's data in the file. */
  begin: number;
  end: number;
}

/** One .safetensors file, its header parsed and validated, its data read on demand. */
export class SafetensorsFile implements WeightStore {
  readonly metadata: Record<string, string>;
  readonly #entries: Map<string, Entry>;
  #file: Deno.FsFile | undefined;

  constructor(readonly path: string) {
    const file = openFile(path);
    try {
      const size = file.statSync().size;
      const fail = (message: string): never => {
        throw new WeightError(`${path}: ${message}`);
      };
      if (size < 8) fail(`the file has ${size} bytes, too few for a safetensors header`);
      const headerLength = Number(new DataView(readAt(file, 0, 8).buffer).getBigUint64(0, true));
      if (headerLength > size - 8 || headerLength > MAX_HEADER_BYTES) {
        fail(`the header claims ${headerLength} bytes but the file has ${size - 8} after the length`);
      }
      let header: unknown;
      try {
        header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(readAt(file, 8, headerLength)));
      } catch (error) {
        fail(`the header is not valid JSON (${(error as Error).message})`);
      }
      if (typeof header !== "object" || header === null || Array.isArray(header)) {
        fail("the header is not a JSON object");
      }
      const parsed = parseHeader(header as Record<string, unknown>, 8 + headerLength, size, fail);
      this.metadata = parsed.metadata;
      this.#entries = parsed.entries;
      this.#file = file;
    } catch (error) {
      file.close();
      throw error;
    }
  }

  keys(): string[] {
    return [...this.#entries.keys()];
  }

  has(key: string): boolean {
    return this.#entries.has(key);
  }

  info(key: string): WeightInfo {
    const { dtype, shape } = this.#entry(key);
    return { dtype, shape: [...shape] };
  }

  /** The file, its size and modification time, and the tensor's place in it. */
  fingerprint(key: string): string {
    const entry = this.#entry(key);
    const file = this.#file;
    if (!file) throw new WeightError(`${this.path}: fingerprint of ${key} after the file was closed`);
    const stat = file.statSync();
    return `${this.path}:${stat.size}:${stat.mtime?.getTime() ?? 0}:${entry.begin}-${entry.end}`;
  }

  /** Reads a tensor, or the box the slices cut out of it, with one read per contiguous run. */
  read(key: string, slices: WeightSlice[] = []): Tensor {
    const entry = this.#entry(key);
    const file = this.#file;
    if (!file) throw new WeightError(`${this.path}: read of ${key} after the file was closed`);
    // Slices compose as they do in MemoryWeightStore: each cuts the result of the ones before it.
    const ranges = entry.shape.map((size) => [0, size]);
    for (const { axis, start, end } of slices) {
      const range = ranges[axis];
      const size = range ? range[1] - range[0] : undefined;
      if (
        size === undefined || !Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > size ||
        start > end
      ) {
        throw new WeightError(
          `${this.path}: slice ${start}..${end} of axis ${axis} is outside ${key} [${entry.shape}]`,
        );
      }
      ranges[axis] = [range[0] + start, range[0] + end];
    }
    const shape = ranges.map(([start, end]) => end - start);
    const bytes = BYTES_PER_ELEMENT[entry.dtype];
    const out = new Uint8Array(numel(shape) * bytes);
    if (shape.length === 0) readInto(file, entry.begin, out);
    else if (out.length > 0) {
      // Axes after `split` are whole, so each index of the axes up to it is one contiguous run.
      let split = shape.length - 1;
      while (split > 0 && shape[split] === entry.shape[split]) split--;
      const strides = rowMajorStrides(entry.shape);
      const runBytes = shape[split] * strides[split] * bytes;
      const index = ranges.slice(0, split).map(([start]) => start);
      for (let offset = 0; offset < out.length; offset += runBytes) {
        let element = ranges[split][0] * strides[split];
        index.forEach((i, axis) => (element += i * strides[axis]));
        readInto(file, entry.begin + element * bytes, out.subarray(offset, offset + runBytes));
        for (let axis = split - 1; axis >= 0; axis--) {
          if (++index[axis] < ranges[axis][1]) break;
          index[axis] = ranges[axis][0];
        }
      }
    }
    return tensor(entry.dtype, shape, viewOf(entry.dtype, out.buffer));
  }

  [Symbol.dispose](): void {
    this.#file?.close();
    this.#file = undefined;
  }

  #entry(key: string): Entry {
    const entry = this.#entries.get(key);
    if (!entry) throw new WeightError(`${this.path}: no tensor named ${key}`);
    return entry;
  }
}

function parseHeader(
  header: Record<string, unknown>,
  dataStart: number,
  fileSize: number,
  fail: (message: string) => never,
): { metadata: Record<string, string>; entries: Map<string, Entry> } {
  const metadata: Record<string, string> = {};
  const entries = new Map<string, Entry>();
  for (const [key, value] of Object.entries(header)) {
    if (key === "__metadata__") {
      for (const [name, text] of Object.entries(value as Record<string, unknown> ?? {})) {
        if (typeof text !== "string") fail(`metadata ${name} is not a string`);
        metadata[name] = text as string;
      }
      continue;
    }
    const { dtype: dtypeName, shape, data_offsets: offsets } = (value ?? {}) as Record<string, unknown>;
    const dtype = DTYPE_OF_NAME[dtypeName as string];
    if (!dtype) {
      fail(
        `tensor ${key} has dtype ${JSON.stringify(dtypeName)}; supported are ${Object.keys(DTYPE_OF_NAME)}`,
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`tensor ${key} has shape ${JSON.stringify(shape)}, not a list of sizes`);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]
    ) {
      fail(`tensor ${key} has data_offsets ${JSON.stringify(offsets)}, not [begin, end]`);
    }
    const [begin, end] = offsets as [number, number];
    const expected = numel(shape as number[]) * BYTES_PER_ELEMENT[dtype];
    if (end - begin !== expected) {
      fail(
        `tensor ${key} (${dtypeName} [${shape}]) needs ${expected} bytes, its data_offsets span ${
          end - begin
        }`,
      );
    }
    if (dataStart + end > fileSize) {
      fail(`tensor ${key} ends at byte ${dataStart + end}, past the end of the file (${fileSize} bytes)`);
    }
    entries.set(key, { dtype, shape: shape as number[], begin: dataStart + begin, end: dataStart + end });
  }
  const sorted = [...entries].filter(([, e]) => e.end > e.begin).sort(([, a], [, b]) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    const [previousKey, previous] = sorted[i - 1];
    const [key, entry] = sorted[i];
    if (entry.begin < previous.end) fail(`the data of tensors ${previousKey} and ${key} overlap`);
  }
  return { metadata, entries };
}

function openFile(path: string): Deno.FsFile {
  try {
    return Deno.openSync(path, { read: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new WeightError(`${path}: no such file`);
    throw error;
  }
}

function readAt(file: Deno.FsFile, position: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  readInto(file, position, out);
  return out;
}

function readInto(file: Deno.FsFile, position: number, out: Uint8Array): void {
  file.seekSync(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < out.length) {
    const n = file.readSync(out.subarray(done));
    if (n === null || n === 0) throw new WeightError(`unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

function rowMajorStrides(shape: number[]): number[] {
  const strides = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

/** A checkpoint directory: model.safetensors, or model.safetensors.index.json and its shards. */
export class SafetensorsStore implements WeightStore {
  readonly #files: SafetensorsFile[] = [];
  readonly #fileOf = new Map<string, SafetensorsFile>();

  constructor(readonly dir: string) {
    try {
      this.#open();
    } catch (error) {
      this[Symbol.dispose]();
      throw error;
    }
  }

  keys(): string[] {
    return [...this.#fileOf.keys()];
  }

  has(key: string): boolean {
    return this.#fileOf.has(key);
  }

  info(key: string): WeightInfo {
    return this.#file(key).info(key);
  }

  read(key: string, slices?: WeightSlice[]): Tensor {
    return this.#file(key).read(key, slices);
  }

  fingerprint(key: string): string {
    return this.#file(key).fingerprint(key);
  }

  [Symbol.dispose](): void {
    for (const file of this.#files) file[Symbol.dispose]();
    this.#files.length = 0;
  }

  #open(): void {
    const indexPath = join(this.dir, "model.safetensors.index.json");
    const singlePath = join(this.dir, "model.safetensors");
    if (!exists(indexPath)) {
      if (!exists(singlePath)) {
        throw new WeightError(`${this.dir}: found neither ${singlePath} nor ${indexPath}`);
      }
      const file = new SafetensorsFile(singlePath);
      this.#files.push(file);
      for (const key of file.keys()) this.#fileOf.set(key, file);
      return;
    }
    let weightMap: Record<string, unknown>;
    try {
      weightMap = JSON.parse(Deno.readTextFileSync(indexPath)).weight_map;
    } catch (error) {
      throw new WeightError(`${indexPath}: not valid JSON (${(error as Error).message})`);
    }
    if (typeof weightMap !== "object" || weightMap === null) {
      throw new WeightError(`${indexPath}: has no weight_map object`);
    }
    const shards = new Map<string, SafetensorsFile>();
    for (const [key, shard] of Object.entries(weightMap)) {
      if (typeof shard !== "string") {
        throw new WeightError(`${indexPath}: weight ${key} maps to no file name`);
      }
      let file = shards.get(shard);
      if (!file) {
        const shardPath = join(this.dir, shard);
        if (!exists(shardPath)) {
          throw new WeightError(`${shardPath}: shard file named by ${indexPath} for ${key} is missing`);
        }
        file = new SafetensorsFile(shardPath);
        shards.set(shard, file);
        this.#files.push(file);
      }
      if (!file.has(key)) {
        throw new WeightError(`${file.path}: ${indexPath} places ${key} here but it is not in it`);
      }
      this.#fileOf.set(key, file);
    }
  }

  #file(key: string): SafetensorsFile {
    const file = this.#fileOf.get(key);
    if (!file) throw new WeightError(`${this.dir}: the checkpoint has no weight named ${key}`);
    return file;
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** Writes tensors as one safetensors file, atomically: a temporary file, fsync, then rename. */
export function writeSafetensors(
  path: string,
  tensors: Map<string, Tensor>,
  metadata?: Record<string, string>,
): void {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [key, t] of tensors) {
    if (t.data.length !== numel(t.shape)) {
      throw new WeightError(`${path}: tensor ${key} of shape [${t.shape}] holds ${t.data.length} elements`);
    }
    const size = t.data.byteLength;
    header[key] = { dtype: NAME_OF_DTYPE[t.dtype], shape: t.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  // Padding the header with spaces to a multiple of 8 keeps every tensor's data aligned.
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  const temporary = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    using file = Deno.openSync(temporary, { write: true, createNew: true });
    writeAll(file, prefix);
    writeAll(file, headerBytes);
    for (const t of tensors.values()) {
      writeAll(file, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    file.syncSync();
  } catch (error) {
    removeQuietly(temporary);
    throw error;
  }
  Deno.renameSync(temporary, path);
}

function removeQuietly(path: string): void {
  try {
    Deno.removeSync(path);
  } catch {
    // The temporary file may never have been made; the original error is the one to report.
  }
}

function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
}
