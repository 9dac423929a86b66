import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert";
import { join } from "node:path";
import { loadRankEngine, readManifest } from "../../../core/runtime/manifest.ts";
import { bytesBackend } from "./fixtures/bytes_engine.ts";

const SCRIPT = new URL("./fixtures/save_bytes.ts", import.meta.url).pathname;

function save(dir: string, mib: number, byte: number): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, dir, String(mib), String(byte)],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Temporary files of a save in progress, anywhere under dir. */
function temporaries(dir: string): string[] {
  const found: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.isDirectory) {
      found.push(...temporaries(join(dir, entry.name)).map((name) => join(entry.name, name)));
    } else if (entry.name.endsWith(".tmp")) found.push(entry.name);
  }
  return found;
}

Deno.test("a save killed part-way leaves the previous set whole and loadable", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-killed-save-" });
  try {
    const first = await save(dir, 1, 7).output();
    strictEqual(first.code, 0, new TextDecoder().decode(first.stderr));
    const before = await readManifest(dir);

    const second = save(dir, 256, 9);
    const deadline = Date.now() + 60_000;
    while (temporaries(dir).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    ok(temporaries(dir).length > 0, "the second save started writing");
    second.kill("SIGKILL");
    const status = await second.status;
    await second.stdout.cancel();
    await second.stderr.cancel();
    strictEqual(status.signal, "SIGKILL");

    deepStrictEqual(await readManifest(dir), before);
    const { engine } = await loadRankEngine(dir, 0, 1, () => bytesBackend);
    const payload = engine.serialize();
    strictEqual(payload.length, 1024 * 1024);
    ok(payload.every((byte) => byte === 7));

    // The next complete save replaces the set and clears what the killed one left.
    const third = await save(dir, 1, 8).output();
    strictEqual(third.code, 0);
    deepStrictEqual(temporaries(dir), []);
    const sets = [...Deno.readDirSync(dir)].filter((entry) => entry.isDirectory).map((entry) => entry.name);
    strictEqual(sets.length, 1);
    ok((await loadRankEngine(dir, 0, 1, () => bytesBackend)).engine.serialize().every((byte) => byte === 8));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("load refuses a set whose manifest and files disagree, naming the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-manifest-" });
  try {
    strictEqual((await save(dir, 1, 3).output()).code, 0);
    const manifest = await readManifest(dir);
    const path = join(dir, "manifest.json");
    const write = (value: unknown) => Deno.writeTextFile(path, JSON.stringify(value));
    await write({ ...manifest, files: [{ ...manifest.files[0], sha256: "0".repeat(64) }] });
    await rejects(loadRankEngine(dir, 0, 1, () => bytesBackend), /does not match the manifest's checksum/);
    await write({ ...manifest, backend: "cpu" });
    await rejects(
      loadRankEngine(dir, 0, 1, () => bytesBackend),
      /made by backend bytes, the manifest says cpu/,
    );
    await write({ ...manifest, worldSize: 2 });
    await rejects(loadRankEngine(dir, 0, 2, () => bytesBackend), /lists 1 files for 2 ranks/);
    await write({
      ...manifest,
      worldSize: 2,
      files: [manifest.files[0], { rank: 1, file: "set-gone/rank-1.engine", sha256: "" }],
    });
    await rejects(
      loadRankEngine(dir, 0, 2, () => bytesBackend),
      (error: Error) =>
        error.message.includes(join(dir, "set-gone/rank-1.engine")) &&
        /engine file not found \(rank 1/.test(error.message),
    );
    await write({ ...manifest, format: 1 });
    await rejects(loadRankEngine(dir, 0, 1, () => bytesBackend), /format 1, this rankflow reads format 2/);
    await write(manifest);
    await rejects(
      loadRankEngine(dir, 0, 1, () => ({ ...bytesBackend, version: "2" })),
      /made by bytes version 1, this is version 2/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loading reports how much of the engine file it has read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-progress-" });
  try {
    strictEqual((await save(dir, 40, 5).output()).code, 0);
    const reports: [string, number, number][] = [];
    await loadRankEngine(
      dir,
      0,
      1,
      () => bytesBackend,
      (what, done, total) => reports.push([what, done, total]),
    );
    const { files } = await readManifest(dir);
    ok(reports.length >= 3, `${reports.length} reports for a 40 MiB file read in 16 MiB chunks`);
    ok(reports.every(([what]) => what === `reading ${files[0].file}, MiB`));
    deepStrictEqual(reports.at(-1)!.slice(1), [40, 40]);
    ok(reports.every(([, done], i) => i === 0 || done >= reports[i - 1][1]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
