import { deepStrictEqual, strictEqual, throws } from "node:assert";
import { join } from "node:path";
import {
  SafetensorsFile,
  SafetensorsStore,
  WeightError,
  writeSafetensors,
} from "../../../core/ir/safetensors.ts";
import { sliceTensor } from "../../../core/ir/ops/shape.ts";
import { f32ToBf16, f32ToF16, type Tensor, tensor } from "../../../core/ir/tensor.ts";

function sample(): Map<string, Tensor> {
  const values = Array.from({ length: 24 }, (_, i) => i * 0.5 - 3);
  return new Map<string, Tensor>([
    ["a.f32", tensor("f32", [4, 6], Float32Array.from(values))],
    ["b.f16", tensor("f16", [2, 3, 4], Uint16Array.from(values, f32ToF16))],
    ["c.bf16", tensor("bf16", [24], Uint16Array.from(values, f32ToBf16))],
    ["d.i32", tensor("i32", [3, 8], Int32Array.from(values, (v) => Math.round(v * 1000)))],
    ["e.i64", tensor("i64", [6, 4], BigInt64Array.from(values, (v) => BigInt(Math.round(v)) << 40n))],
    ["f.scalar", tensor("f32", [], Float32Array.of(7))],
    ["g.empty", tensor("f32", [0, 5])],
  ]);
}

function plain(t: Tensor) {
  return { dtype: t.dtype, shape: t.shape, data: Array.from(t.data as ArrayLike<number | bigint>) };
}

Deno.test("safetensors: every dtype round-trips through a file, metadata too", () => {
  const dir = Deno.makeTempDirSync();
  const path = join(dir, "model.safetensors");
  const tensors = sample();
  writeSafetensors(path, tensors, { format: "pt" });
  deepStrictEqual([...Deno.readDirSync(dir)].map((entry) => entry.name), ["model.safetensors"]);
  using file = new SafetensorsFile(path);
  deepStrictEqual(file.metadata, { format: "pt" });
  deepStrictEqual(file.keys(), [...tensors.keys()]);
  for (const [key, t] of tensors) {
    deepStrictEqual(file.info(key), { dtype: t.dtype, shape: t.shape });
    deepStrictEqual(plain(file.read(key)), plain(t), key);
  }
});

/** Counts the bytes and calls of every read of an open file while `body` runs. */
function countReads(body: () => void): { calls: number; bytes: number } {
  const original = Deno.FsFile.prototype.readSync;
  const count = { calls: 0, bytes: 0 };
  Deno.FsFile.prototype.readSync = function (this: Deno.FsFile, buffer: Uint8Array) {
    const n = original.call(this, buffer);
    count.calls++;
    count.bytes += n ?? 0;
    return n;
  };
  try {
    body();
  } finally {
    Deno.FsFile.prototype.readSync = original;
  }
  return count;
}

Deno.test("safetensors: slices read only their own bytes", () => {
  const dir = Deno.makeTempDirSync();
  const path = join(dir, "model.safetensors");
  const big = tensor("f32", [64, 32], Float32Array.from({ length: 64 * 32 }, (_, i) => i));
  writeSafetensors(path, new Map([["w", big], ["i", sample().get("e.i64")!]]));
  using file = new SafetensorsFile(path);

  let rows!: Tensor;
  const rowReads = countReads(() => (rows = file.read("w", [{ axis: 0, start: 8, end: 24 }])));
  deepStrictEqual(plain(rows), plain(sliceTensor(big, 0, 8, 24)));
  deepStrictEqual(rowReads, { calls: 1, bytes: 16 * 32 * 4 });

  let columns!: Tensor;
  const columnReads = countReads(() => (columns = file.read("w", [{ axis: 1, start: 4, end: 12 }])));
  deepStrictEqual(plain(columns), plain(sliceTensor(big, 1, 4, 12)));
  deepStrictEqual(columnReads, { calls: 64, bytes: 64 * 8 * 4 });

  let box!: Tensor;
  const boxReads = countReads(() =>
    box = file.read("w", [{ axis: 0, start: 2, end: 5 }, { axis: 1, start: 30, end: 32 }])
  );
  deepStrictEqual(plain(box), plain(sliceTensor(sliceTensor(big, 0, 2, 5), 1, 30, 32)));
  deepStrictEqual(boxReads, { calls: 3, bytes: 3 * 2 * 4 });

  // Slices on one axis compose as in MemoryWeightStore: the second cuts the result of the first.
  const twice = file.read("w", [{ axis: 0, start: 10, end: 30 }, { axis: 0, start: 5, end: 7 }]);
  deepStrictEqual(plain(twice), plain(sliceTensor(big, 0, 15, 17)));
  deepStrictEqual(
    plain(file.read("i", [{ axis: 1, start: 1, end: 3 }])),
    plain(sliceTensor(sample().get("e.i64")!, 1, 1, 3)),
  );
  throws(() => file.read("w", [{ axis: 1, start: 30, end: 33 }]), WeightError);
  throws(() => file.read("w", [{ axis: 2, start: 0, end: 1 }]), WeightError);
});

/** A file whose 8-byte length prefix and JSON header are given as is, followed by `dataBytes` zeros. */
function rawFile(header: unknown, dataBytes: number, claimedLength?: number): string {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const bytes = new Uint8Array(8 + json.length + dataBytes);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(claimedLength ?? json.length), true);
  bytes.set(json, 8);
  const path = join(Deno.makeTempDirSync(), "model.safetensors");
  Deno.writeFileSync(path, bytes);
  return path;
}

function throwsNaming(path: string, pattern: RegExp): void {
  throws(() => new SafetensorsFile(path), (error: Error) => {
    strictEqual(error.name, "WeightError");
    strictEqual(error instanceof WeightError, true);
    strictEqual(error.message.includes(path), true, `"${error.message}" should name ${path}`);
    strictEqual(pattern.test(error.message), true, `"${error.message}" should match ${pattern}`);
    return true;
  });
}

Deno.test("safetensors: a header that lies about the file gives one WeightError naming it", () => {
  const ok = { w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] } };
  throwsNaming(rawFile(ok, 16, 1_000_000), /header claims 1000000 bytes/);
  throwsNaming(rawFile("{not json", 0), /not valid JSON/);
  throwsNaming(rawFile([1, 2], 0), /not a JSON object/);
  throwsNaming(rawFile({ w: { dtype: "F8_E4M3", shape: [2], data_offsets: [0, 2] } }, 2), /dtype "F8_E4M3"/);
  throwsNaming(rawFile({ w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 12] } }, 16), /needs 16 bytes/);
  throwsNaming(rawFile({ w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] } }, 8), /past the end/);
  throwsNaming(
    rawFile({
      a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
      b: { dtype: "F16", shape: [4], data_offsets: [8, 16] },
    }, 16),
    /overlap/,
  );
  throwsNaming(rawFile({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, 4), /shape/);
  const short = join(Deno.makeTempDirSync(), "short.safetensors");
  Deno.writeFileSync(short, new Uint8Array(5));
  throwsNaming(short, /too few/);
  throwsNaming(join(Deno.makeTempDirSync(), "absent.safetensors"), /no such file/);
});

Deno.test("safetensors store: one file or sharded, and missing files are named", () => {
  const fixtures = new URL("../../fixtures/", import.meta.url).pathname;
  using sharded = new SafetensorsStore(join(fixtures, "tiny-llama"));
  strictEqual(sharded.keys().length, 21);
  deepStrictEqual(sharded.info("lm_head.weight"), { dtype: "f32", shape: [256, 64] });
  deepStrictEqual(sharded.read("model.norm.weight").shape, [64]);
  throws(() => sharded.read("model.nothing"), /no weight named model\.nothing/);

  const dir = Deno.makeTempDirSync();
  throws(() => new SafetensorsStore(dir), (error: Error) => {
    strictEqual(error instanceof WeightError, true);
    return error.message.includes(join(dir, "model.safetensors"));
  });
  for (const entry of Deno.readDirSync(join(fixtures, "tiny-llama"))) {
    if (entry.name !== "model-00002-of-00003.safetensors") {
      Deno.copyFileSync(join(fixtures, "tiny-llama", entry.name), join(dir, entry.name));
    }
  }
  throws(() => new SafetensorsStore(dir), (error: Error) => {
    strictEqual(error instanceof WeightError, true);
    return error.message.includes(join(dir, "model-00002-of-00003.safetensors"));
  });
});
