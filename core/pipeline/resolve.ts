// Plugin resolution: a stage's `use:` names a built-in plugin (`use: engine-file` →
// plugins/save/engine_file.ts) or a module path relative to the pipeline file (`use: ./my_pass.ts`).
// Either way the module's default export must be a plugin of the stage's kind.

import { resolve as resolvePath } from "node:path";
import { pathToFileURL } from "node:url";
import { closestName } from "../ir/registry.ts";
import { PipelineError, type SourceLocation } from "./errors.ts";
import { type Plugin, PLUGIN_KINDS, type PluginKind } from "./plugin.ts";
import type { StageName } from "./schema.ts";
import { isFile } from "../runtime/files.ts";

/** The plugin kind each stage takes. */
export const STAGE_KINDS = {
  collectives: "collective",
  export: "export",
  lower: "pass",
  compile: "engine",
  save: "save",
  load: "load",
  serve: "serve",
} as const satisfies Record<StageName, PluginKind>;

/** The folder under plugins/ holding each stage's built-ins. */
export const STAGE_FOLDERS = {
  collectives: "collectives",
  export: "export",
  lower: "passes",
  compile: "engines",
  save: "save",
  load: "load",
  serve: "serve",
} as const satisfies Record<StageName, string>;

/** The function each kind of plugin must have besides kind, name and options. */
const ENTRY_POINTS = {
  collective: "create",
  export: "export",
  pass: "run",
  engine: "backend",
  save: "save",
  load: "load",
  serve: "serve",
} as const;

/** The plugin type a stage takes: `PluginFor<"compile">` is `EnginePlugin`. */
export type PluginFor<S extends StageName> = Extract<Plugin, { kind: typeof STAGE_KINDS[S] }>;

/** True where `use:` names a module rather than a built-in. */
export function isModulePath(use: string): boolean {
  return use.startsWith("./") || use.startsWith("../") || use.startsWith("/") || use.endsWith(".ts");
}

/** Where a built-in plugin's module lives: `-` in its name is `_` in the file name. */
export function builtinUrl(stage: StageName, name: string): URL {
  return new URL(`../../plugins/${STAGE_FOLDERS[stage]}/${name.replaceAll("-", "_")}.ts`, import.meta.url);
}

/**
 * The names of a stage's built-ins, from its folder's .ts files; undefined where the folder
 * cannot be listed (rankflow imported from a remote URL), empty where it does not exist.
 */
export async function builtinNames(stage: StageName): Promise<string[] | undefined> {
  const folder = new URL(`../../plugins/${STAGE_FOLDERS[stage]}/`, import.meta.url);
  if (folder.protocol !== "file:") return undefined;
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(folder)) {
      if (!entry.isFile || !entry.name.endsWith(".ts") || entry.name.endsWith("_test.ts")) continue;
      names.push(entry.name.slice(0, -".ts".length).replaceAll("_", "-"));
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
  return names.sort();
}

export interface ResolveOptions {
  /** The pipeline file's folder: module paths resolve against it. */
  baseDir: string;
  /** The `use:` line, for errors. */
  at?: SourceLocation;
}

/** Imports the plugin a stage's `use:` names and checks that it is a plugin of the stage's kind. */
export async function resolvePlugin<S extends StageName>(
  stage: S,
  use: string,
  options: ResolveOptions,
): Promise<PluginFor<S>> {
  const { at } = options;
  let url: URL;
  if (isModulePath(use)) {
    url = pathToFileURL(resolvePath(options.baseDir, use));
    if (!isFile(url)) {
      throw new PipelineError(`${stage}: module ${use} does not exist (looked for ${url.pathname})`, at);
    }
  } else {
    const known = await builtinNames(stage);
    if (known !== undefined && !known.includes(use)) throw unknownBuiltin(stage, use, known, at);
    url = builtinUrl(stage, use);
  }
  let module: Record<string, unknown>;
  try {
    module = await import(url.href);
  } catch (error) {
    const reason = error instanceof Error ? error.message.split("\n")[0] : String(error);
    throw new PipelineError(`${stage}: cannot load plugin ${use}: ${reason}`, at, { cause: error });
  }
  return checkPlugin(stage, use, module.default, at);
}

function unknownBuiltin(stage: StageName, use: string, known: string[], at?: SourceLocation): PipelineError {
  const kind = STAGE_KINDS[stage];
  const near = closestName(use, known);
  const hint = near
    ? ` (did you mean '${near}'?)`
    : known.length > 0
    ? `; built-in ${kind} plugins: ${known.join(", ")}`
    : `; there are no built-in ${kind} plugins yet`;
  return new PipelineError(`${stage}: unknown ${kind} plugin '${use}'${hint}`, at);
}

function checkPlugin<S extends StageName>(
  stage: S,
  use: string,
  plugin: unknown,
  at?: SourceLocation,
): PluginFor<S> {
  const expected = STAGE_KINDS[stage];
  const fail = (why: string): never => {
    throw new PipelineError(`${stage}: ${use} ${why}`, at);
  };
  if (plugin === undefined) {
    fail("has no default export; a plugin module ends with `export default definePlugin({…})`");
  }
  if (plugin === null || typeof plugin !== "object") {
    fail("exports by default something that is not a plugin");
  }
  const { kind, name, options } = plugin as Record<string, unknown>;
  if (typeof kind !== "string" || typeof name !== "string" || !isSchema(options)) {
    fail("exports by default something that is not a plugin: it needs kind, name and a zod options schema");
  }
  if (!(PLUGIN_KINDS as readonly unknown[]).includes(kind)) {
    fail(`has kind '${kind}', which is not one of ${PLUGIN_KINDS.join(", ")}`);
  }
  if (kind !== expected) {
    fail(
      `is ${article(kind as string)} ${kind} plugin ('${name}'), but ${stage} takes ${
        article(expected)
      } ${expected} plugin`,
    );
  }
  const entry = ENTRY_POINTS[expected];
  if (typeof (plugin as Record<string, unknown>)[entry] !== "function") {
    fail(`is ${article(expected)} ${expected} plugin without its ${entry}() function`);
  }
  return plugin as PluginFor<S>;
}

/** A zod schema, known by its parse functions so that another copy of zod passes too. */
function isSchema(value: unknown): boolean {
  return value !== null && typeof value === "object" &&
    typeof (value as { safeParse?: unknown }).safeParse === "function";
}

function article(word: string): string {
  return /^[aeiou]/.test(word) ? "an" : "a";
}
