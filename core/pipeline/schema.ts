// The pipeline file's schema, and how zod's findings read as errors that point into the file.
// The stages' own options are not checked here: each plugin's zod schema checks them once the
// plugin is resolved (see pipeline.ts); here a stage is `use:` plus whatever sits beside it.

import { z } from "zod";
import { closestName } from "../ir/registry.ts";
import type { PipelineIssue } from "./errors.ts";
import type { KeyPath, PipelineSource } from "./load.ts";

/** The stages in the order they run. */
export const STAGES = ["collectives", "export", "lower", "compile", "save", "load", "serve"] as const;
export type StageName = typeof STAGES[number];

/** A stage as written: the plugin to use, its options beside it. */
export const stageSpec = z.looseObject({
  use: z.string().min(1).describe(
    "a built-in plugin name (`use: cpu`) or a module path (`use: ./my_pass.ts`)",
  ),
});
export type StageSpec = z.infer<typeof stageSpec>;

const count = z.number().int().positive();
const seconds = z.number().positive().optional();

export const worldSchema = z.strictObject({
  tp: count.default(1).describe("tensor-parallel ranks per replica"),
  dp: count.default(1).describe("data-parallel replicas"),
});
export type World = z.infer<typeof worldSchema>;

export const timeoutsSchema = z.strictObject({
  export: seconds,
  lower: seconds,
  compile: seconds,
  save: seconds,
  load: seconds,
  serve: seconds,
  rendezvous: seconds.describe("how long ranks wait for each other to start"),
});
export type Timeouts = z.infer<typeof timeoutsSchema>;

export const pipelineFileSchema = z.strictObject({
  name: z.string().min(1).optional().describe("shown in logs; defaults to the file's name"),
  world: worldSchema.default({ tp: 1, dp: 1 }),
  timeouts: timeoutsSchema.default({}).describe("seconds per stage"),
  collectives: stageSpec.optional().describe("the collective backend between ranks; default tcp"),
  cache: z.string().min(1).optional().describe(
    "folder of the build cache: engines are rebuilt only when what they are built from changed",
  ),
  export: stageSpec.optional(),
  lower: z.array(stageSpec).nullish().transform((passes) => passes ?? []),
  compile: stageSpec.optional(),
  save: stageSpec.optional(),
  load: stageSpec.optional(),
  serve: stageSpec.optional(),
});
export type PipelineFile = z.infer<typeof pipelineFileSchema>;

/** Which stages a pipeline needs given which it has: it starts at `export` or at `load`. */
export function stageOrderIssues(file: PipelineFile, source: PipelineSource): PipelineIssue[] {
  const issues: PipelineIssue[] = [];
  const has = (stage: StageName) => stage === "lower" ? file.lower.length > 0 : file[stage] !== undefined;
  const compile = file.compile as Record<string, unknown> | undefined;
  if (compile?.jit === true && has("save")) {
    issues.push(source.issue(
      ["compile", "jit"],
      "compile.jit: a just-in-time engine is built at the first request, so it cannot be saved; remove save or jit",
    ));
  }
  const need = (stage: StageName, why: string) => {
    if (!has(stage)) issues.push({ message: `missing stage '${stage}': ${why}`, at: source.locate([]) });
  };
  if (!file.load) {
    for (const stage of ["export", "compile", "serve"] as const) {
      need(stage, "a pipeline needs export, compile and serve unless it starts at load");
    }
    return issues;
  }
  const needing = (stage: StageName, needed: StageName, why: string) => {
    if (has(stage) && !has(needed)) {
      issues.push(source.issue([stage], `stage '${stage}' needs '${needed}' ${why}`, "key"));
    }
  };
  needing("lower", "export", "to make the graph it lowers");
  needing("compile", "export", "to make the graph it compiles");
  needing("export", "compile", "to build an engine for load to replace");
  needing("save", "compile", "to build the engine it saves");
  return issues;
}

/** zod's issues as pipeline issues: `compile.dtype: expected one of f32|f16|bf16, got "f8"`. */
export function describeIssues(
  error: z.ZodError,
  schema: z.ZodType,
  source: PipelineSource,
  base: KeyPath = [],
): PipelineIssue[] {
  return error.issues.flatMap((issue) => {
    const path = [
      ...base,
      ...issue.path.map((segment) => typeof segment === "symbol" ? String(segment) : segment),
    ];
    if (issue.code === "unrecognized_keys") {
      const known = knownKeys(schema, issue.path);
      return issue.keys.map((key) => {
        const near = closestName(key, known);
        const what = path.length === 0
          ? `unknown stage or key '${key}'`
          : `${dotted(path)}: unknown option '${key}'`;
        const hint = near
          ? ` (did you mean '${near}'?)`
          : known.length > 0
          ? `; expected one of ${known.join(", ")}`
          : "";
        return source.issue([...path, key], `${what}${hint}`, "key");
      });
    }
    const prefix = path.length > 0 ? `${dotted(path)}: ` : "";
    return [source.issue(path, `${prefix}${explain(issue)}`)];
  });
}

/** The reason, in the words of the file: what was expected and what was found. */
function explain(issue: z.core.$ZodIssue): string {
  const input = (issue as { input?: unknown }).input;
  switch (issue.code) {
    case "invalid_type":
      if (input === undefined) return `required, expected ${typeName(issue.expected)}`;
      return `expected ${typeName(issue.expected)}, got ${show(input)}`;
    case "invalid_value": {
      const values = issue.values.map((value) => typeof value === "string" ? value : JSON.stringify(value));
      const expected = values.length === 1 ? values[0] : `one of ${values.join("|")}`;
      return `expected ${expected}, got ${show(input)}`;
    }
    case "too_small":
    case "too_big": {
      const bound = issue.code === "too_small" ? issue.minimum : issue.maximum;
      const inclusive = issue.inclusive ?? true;
      const comparison = issue.code === "too_small" ? (inclusive ? ">=" : ">") : (inclusive ? "<=" : "<");
      const least = issue.code === "too_small" ? "at least" : "at most";
      if (issue.origin === "string") return `expected ${least} ${bound} characters, got ${show(input)}`;
      if (issue.origin === "array") {
        return `expected ${least} ${bound} items, got ${Array.isArray(input) ? input.length : show(input)}`;
      }
      return `expected a number ${comparison} ${bound}, got ${show(input)}`;
    }
    case "invalid_union": {
      const expected = issue.errors.flatMap((branch) =>
        branch.length === 1 && branch[0].code === "invalid_type" && branch[0].path.length === 0
          ? [typeName(branch[0].expected)]
          : []
      );
      if (expected.length === issue.errors.length) {
        return `expected ${expected.join(" or ")}, got ${show(input)}`;
      }
      return `${issue.message}, got ${show(input)}`;
    }
    default:
      return issue.message;
  }
}

function typeName(expected: string): string {
  const names: Record<string, string> = {
    string: "a string",
    number: "a number",
    int: "an integer",
    boolean: "true or false",
    object: "a mapping",
    array: "a list",
  };
  return names[expected] ?? expected;
}

/** A found value as the message shows it. */
function show(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value !== null && typeof value === "object") return "a mapping";
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** `lower.1.eps`: the same spelling `--set` takes. */
function dotted(path: KeyPath): string {
  return path.join(".");
}

/** The keys the object schema at `path` inside `schema` knows, for did-you-mean. */
function knownKeys(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let node: z.ZodType | undefined = unwrap(schema);
  for (const segment of path) {
    if (node instanceof z.ZodObject) node = unwrap(node.shape[String(segment)] as z.ZodType | undefined);
    else if (node instanceof z.ZodArray) node = unwrap(node.element as z.ZodType);
    else return [];
  }
  return node instanceof z.ZodObject ? Object.keys(node.shape) : [];
}

function unwrap(schema: z.ZodType | undefined): z.ZodType | undefined {
  let node = schema;
  while (
    node instanceof z.ZodOptional || node instanceof z.ZodNullable || node instanceof z.ZodDefault ||
    node instanceof z.ZodPrefault || node instanceof z.ZodReadonly || node instanceof z.ZodCatch ||
    node instanceof z.ZodNonOptional
  ) {
    node = node._zod.def.innerType as z.ZodType;
  }
  if (node instanceof z.ZodPipe) return unwrap(node._zod.def.in as z.ZodType);
  return node;
}

/**
 * The plugin's options schema with unknown keys rejected: every plain `z.object` inside it (also
 * under optional, nullable, default and list) becomes strict. A schema that chose `looseObject`
 * or a catchall keeps its choice.
 */
export function strictOptions(schema: z.ZodType): z.ZodType {
  if (schema instanceof z.ZodObject) {
    const def = schema._zod.def;
    const shape = Object.fromEntries(
      Object.entries(schema.shape).map(([key, value]) => [key, strictOptions(value as z.ZodType)]),
    );
    return schema.clone(changeDef(def, { shape, catchall: def.catchall ?? z.never() }));
  }
  // Each wrapper is cloned with only its inner schema changed, so defaults and checks stay.
  if (schema instanceof z.ZodOptional) {
    const def = schema._zod.def;
    return schema.clone(changeDef(def, { innerType: strictOptions(def.innerType as z.ZodType) }));
  }
  if (schema instanceof z.ZodNullable) {
    const def = schema._zod.def;
    return schema.clone(changeDef(def, { innerType: strictOptions(def.innerType as z.ZodType) }));
  }
  if (schema instanceof z.ZodDefault) {
    const def = schema._zod.def;
    return schema.clone(changeDef(def, { innerType: strictOptions(def.innerType as z.ZodType) }));
  }
  if (schema instanceof z.ZodArray) {
    const def = schema._zod.def;
    return schema.clone(changeDef(def, { element: strictOptions(def.element as z.ZodType) }));
  }
  return schema;
}

/** A copy of a schema definition with some fields replaced; getters (a default's value) stay getters. */
function changeDef<D extends object>(def: D, changes: Partial<D>): D {
  const descriptors: PropertyDescriptorMap = Object.getOwnPropertyDescriptors(def);
  for (const [key, value] of Object.entries(changes)) {
    descriptors[key] = { value, enumerable: true, writable: true, configurable: true };
  }
  return Object.defineProperties({}, descriptors) as D;
}
