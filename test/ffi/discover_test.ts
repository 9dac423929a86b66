// Library discovery against temporary folders laid out as users have them.

import { ok, strictEqual, throws } from "node:assert";
import { join } from "node:path";
import { findLibrary, type Probe, systemProbe } from "../../ffi/discover.ts";
import { FfiError } from "../../ffi/errors.ts";

const NCCL = { name: "nccl", files: ["libnccl.so.2", "libnccl.so"] };

/** The real file system, with environment, ldconfig and Python site-packages given by the test. */
function probe(env: Record<string, string>, ldconfig = "", sites: string[] = []): Probe {
  const system = systemProbe();
  return {
    env: (name) => env[name],
    isFile: system.isFile,
    listDir: system.listDir,
    ldconfig: () => ldconfig,
    sitePackages: () => sites,
  };
}

function touch(path: string): string {
  Deno.mkdirSync(join(path, ".."), { recursive: true });
  Deno.writeFileSync(path, new Uint8Array());
  return path;
}

Deno.test("discovery: the override variable wins, as a file or as its folder", () => {
  const dir = Deno.makeTempDirSync();
  const file = touch(join(dir, "custom", "libnccl.so.2"));
  touch(join(dir, "other", "libnccl.so.2"));
  strictEqual(
    findLibrary(NCCL, probe({ RANKFLOW_NCCL_PATH: file, LD_LIBRARY_PATH: join(dir, "other") })).path,
    file,
  );
  const found = findLibrary(NCCL, probe({ RANKFLOW_NCCL_PATH: join(dir, "custom") }));
  strictEqual(found.path, file);
  strictEqual(found.via, "RANKFLOW_NCCL_PATH");
  throws(() => findLibrary(NCCL, probe({ RANKFLOW_NCCL_PATH: join(dir, "missing") })), (error: Error) => {
    ok(error instanceof FfiError);
    ok(error.message.includes(join(dir, "missing")) && error.message.includes("libnccl.so.2"), error.message);
    return true;
  });
});

Deno.test("discovery: LD_LIBRARY_PATH, then ldconfig, then CUDA_HOME, then Python's nvidia/*/lib", () => {
  const dir = Deno.makeTempDirSync();
  const ld = touch(join(dir, "ld", "libnccl.so"));
  strictEqual(findLibrary(NCCL, probe({ LD_LIBRARY_PATH: `/nowhere:${join(dir, "ld")}` })).path, ld);

  const cached = touch(join(dir, "system", "libnccl.so.2"));
  const ldconfig = `2 libs found in cache\n\tlibnccl.so.2 (libc6,x86-64) => ${cached}\n`;
  const viaCache = findLibrary(NCCL, probe({}, ldconfig));
  strictEqual(viaCache.path, cached);
  strictEqual(viaCache.via, "ldconfig");

  const home = touch(join(dir, "cuda", "lib64", "libnccl.so.2"));
  strictEqual(findLibrary(NCCL, probe({ CUDA_HOME: join(dir, "cuda") })).path, home);

  const site = join(dir, "venv", "lib", "python3.12", "site-packages");
  const wheel = touch(join(site, "nvidia", "nccl", "lib", "libnccl.so.2"));
  strictEqual(findLibrary(NCCL, probe({}, "", [site])).path, wheel);
});

Deno.test("discovery: a miss names the file and every place searched", () => {
  const dir = Deno.makeTempDirSync();
  const site = join(dir, "site-packages");
  Deno.mkdirSync(join(site, "nvidia", "cublas", "lib"), { recursive: true });
  throws(
    () =>
      findLibrary(
        NCCL,
        probe({ LD_LIBRARY_PATH: join(dir, "ld"), CUDA_HOME: join(dir, "cuda") }, "", [site]),
      ),
    (error: Error) => {
      ok(error instanceof FfiError);
      for (
        const part of [
          "libnccl.so.2",
          "RANKFLOW_NCCL_PATH",
          join(dir, "ld"),
          "ldconfig",
          join(dir, "cuda", "lib64"),
          join(site, "nvidia", "cublas", "lib"),
        ]
      ) {
        ok(error.message.includes(part), `"${error.message}" should name ${part}`);
      }
      return true;
    },
  );
});

Deno.test("discovery: the driver is not looked for in CUDA_HOME or Python packages", () => {
  const dir = Deno.makeTempDirSync();
  touch(join(dir, "cuda", "lib64", "libcuda.so.1"));
  const driver = { name: "cuda", files: ["libcuda.so.1"], cuda: false };
  throws(() => findLibrary(driver, probe({ CUDA_HOME: join(dir, "cuda") })), FfiError);
});
