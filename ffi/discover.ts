// Library discovery: where a native library is, looked up the way users install them: an
// explicit RANKFLOW_<LIB>_PATH, LD_LIBRARY_PATH, the system linker cache (ldconfig -p), CUDA_HOME,
// and the nvidia/*/lib folders of Python site-packages (how PyTorch's wheels ship cuBLAS and NCCL).
// A miss names the file and every place searched, in one message.

import { FfiError } from "./errors.ts";

export interface LibrarySpec {
  /** Short name used in messages and in the override variable: "nccl" → RANKFLOW_NCCL_PATH. */
  name: string;
  /** File names to accept, most wanted first ("libnccl.so.2", "libnccl.so"). */
  files: string[];
  /** Whether CUDA_HOME/lib64 and the Python nvidia/*\/lib folders may hold it (false for the driver). */
  cuda?: boolean;
}

/** What discovery reads from the machine; tests give their own. */
export interface Probe {
  env(name: string): string | undefined;
  isFile(path: string): boolean;
  listDir(path: string): string[];
  /** The output of `ldconfig -p`, or "" where it cannot run. */
  ldconfig(): string;
  /** Python site-packages folders, or [] where there is no Python. */
  sitePackages(): string[];
}

export interface Found {
  path: string;
  /** Which place it was found in ("RANKFLOW_NCCL_PATH", "ldconfig", …). */
  via: string;
}

export function overrideVariable(spec: LibrarySpec): string {
  return `RANKFLOW_${spec.name.toUpperCase()}_PATH`;
}

/** Finds the library or throws one FfiError listing every place searched. */
export function findLibrary(spec: LibrarySpec, probe: Probe = systemProbe()): Found {
  const variable = overrideVariable(spec);
  const override = probe.env(variable);
  if (override) {
    // An override is taken at its word: a folder holding the file, or the file itself.
    const candidates = probe.isFile(override) ? [override] : spec.files.map((file) => join(override, file));
    const hit = candidates.find((path) => probe.isFile(path));
    if (hit) return { path: hit, via: variable };
    throw new FfiError(
      `${variable}=${override}, but no ${spec.files.join(" or ")} is there`,
      spec.name,
    );
  }
  const searched: string[] = [`${variable} (not set)`];
  const inFolders = (folders: string[], via: string): Found | undefined => {
    for (const folder of folders) {
      for (const file of spec.files) {
        const path = join(folder, file);
        if (probe.isFile(path)) return { path, via };
      }
    }
    searched.push(`${via}: ${folders.length ? folders.join(", ") : "(empty)"}`);
    return undefined;
  };
  const ldPath = (probe.env("LD_LIBRARY_PATH") ?? "").split(":").filter((p) => p.length > 0);
  const found = inFolders(ldPath, "LD_LIBRARY_PATH") ?? fromLdconfig(spec, probe, searched);
  if (found) return found;
  if (spec.cuda !== false) {
    const homes = ["CUDA_HOME", "CUDA_PATH"].map((name) => probe.env(name)).filter((h): h is string => !!h);
    const cudaFolders = [...homes, "/usr/local/cuda"].flatMap((home) => [
      join(home, "lib64"),
      join(home, "lib"),
      join(home, "targets/x86_64-linux/lib"),
    ]);
    const cuda = inFolders(cudaFolders, "CUDA_HOME and /usr/local/cuda");
    if (cuda) return cuda;
    const python = inFolders(pythonFolders(probe), "Python site-packages nvidia/*/lib");
    if (python) return python;
  }
  throw new FfiError(
    `${spec.files[0]} (the ${spec.name} library) was not found. Looked in: ${searched.join("; ")}. ` +
      `Set ${variable} to the file or its folder.`,
    spec.name,
  );
}

function fromLdconfig(spec: LibrarySpec, probe: Probe, searched: string[]): Found | undefined {
  const cache = probe.ldconfig();
  // Lines read "\tlibnccl.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnccl.so.2".
  const entries = new Map<string, string>();
  for (const line of cache.split("\n")) {
    const match = line.match(/^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$/);
    if (match && match[2].includes("x86-64") && !entries.has(match[1])) entries.set(match[1], match[3]);
  }
  for (const file of spec.files) {
    const path = entries.get(file);
    if (path && probe.isFile(path)) return { path, via: "ldconfig" };
  }
  searched.push(cache ? "ldconfig -p" : "ldconfig -p (could not run)");
  return undefined;
}

function pythonFolders(probe: Probe): string[] {
  const folders: string[] = [];
  for (const site of probe.sitePackages()) {
    const nvidia = join(site, "nvidia");
    for (const entry of probe.listDir(nvidia).sort()) folders.push(join(nvidia, entry, "lib"));
  }
  return folders;
}

function join(folder: string, ...parts: string[]): string {
  return parts.reduce(joinTwo, folder);
}

function joinTwo(folder: string, file: string): string {
  return folder.endsWith("/") ? `${folder}${file}` : `${folder}/${file}`;
}

let sitePackagesCache: string[] | undefined;

/** The machine itself: environment, files, ldconfig and the `python3` on PATH (or RANKFLOW_PYTHON). */
export function systemProbe(): Probe {
  return {
    env: (name) => Deno.env.get(name),
    isFile(path) {
      try {
        return Deno.statSync(path).isFile;
      } catch {
        return false;
      }
    },
    listDir(path) {
      try {
        return [...Deno.readDirSync(path)].filter((e) => e.isDirectory || e.isSymlink).map((e) => e.name);
      } catch {
        return [];
      }
    },
    ldconfig() {
      for (const command of ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]) {
        try {
          const out = new Deno.Command(command, { args: ["-p"], stdout: "piped", stderr: "null" })
            .outputSync();
          if (out.success) return new TextDecoder().decode(out.stdout);
        } catch {
          // not this one; try the next location
        }
      }
      return "";
    },
    sitePackages() {
      if (sitePackagesCache) return sitePackagesCache;
      const python = Deno.env.get("RANKFLOW_PYTHON") ?? "python3";
      const script = "import json, site, sys\n" +
        "paths = list(getattr(site, 'getsitepackages', lambda: [])()) + [site.getusersitepackages()]\n" +
        "print(json.dumps(paths + [p for p in sys.path if p.endswith('-packages')]))";
      try {
        const out = new Deno.Command(python, { args: ["-c", script], stdout: "piped", stderr: "null" })
          .outputSync();
        sitePackagesCache = out.success
          ? [...new Set<string>(JSON.parse(new TextDecoder().decode(out.stdout)))]
          : [];
      } catch {
        sitePackagesCache = [];
      }
      return sitePackagesCache;
    },
  };
}

/** Opens the library with `symbols`; a failure to load is one FfiError with the original as cause. */
export function openLibrary<S extends Deno.ForeignLibraryInterface>(
  spec: LibrarySpec,
  symbols: S,
  probe?: Probe,
): { library: Deno.DynamicLibrary<S>; path: string } {
  const { path } = findLibrary(spec, probe);
  try {
    return { library: Deno.dlopen(path, symbols), path };
  } catch (error) {
    if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotCapable) throw error;
    throw new FfiError(
      `${path} (the ${spec.name} library) could not be loaded: ${(error as Error).message}`,
      spec.name,
      undefined,
      { cause: error },
    );
  }
}
