// A pipeline as the runner takes it: loadPipeline turns a file into a Pipeline whose every plugin
// is imported and whose every option is checked, reporting all problems at once.

import { basename, resolve as resolvePath } from "node:path";
import type { z } from "zod";
import { BUILD_SETTING_KEYS, type BuildSettings, buildSettingsSchema } from "./build.ts";
import { PipelineError, type PipelineIssue, type SourceLocation } from "./errors.ts";
import { type KeyPath, readPipeline } from "./load.ts";
import { applyOverrides } from "./overrides.ts";
import { type PluginFor, resolvePlugin } from "./resolve.ts";
import {
  describeIssues,
  pipelineFileSchema,
  type StageName,
  stageOrderIssues,
  stageSpec,
  strictOptions,
  type Timeouts,
  type World,
} from "./schema.ts";

/** One stage as it will run: its plugin and its parsed options. */
export interface PipelineStage<S extends StageName = StageName> {
  stage: S;
  /** As written after `use:`. */
  use: string;
  plugin: PluginFor<S>;
  /** The plugin's options, parsed by its schema (defaults filled in). */
  options: z.infer<PluginFor<S>["options"]>;
  /** Where the stage's `use:` is. */
  at: SourceLocation;
}

/** Any one stage, narrowed by its `stage` field. */
export type AnyStage = { [S in StageName]: PipelineStage<S> }[StageName];

/** A validated pipeline: nothing in it can fail to parse or resolve any more. */
export interface Pipeline {
  name: string;
  /** The file as the user named it. */
  file: string;
  /** The file's folder: relative paths in options resolve against it. */
  baseDir: string;
  world: World & { at: SourceLocation };
  timeouts: Timeouts;
  /** The --set overrides it was loaded with, so that rank processes load it the same way. */
  overrides: string[];
  /** The compile stage's own settings: just in time or not, and the dynamic-shape profiles. */
  build: BuildSettings;
  /** The build cache's folder, where the pipeline names one. */
  cache?: string;
  collectives?: PipelineStage<"collectives">;
  export?: PipelineStage<"export">;
  lower: PipelineStage<"lower">[];
  compile?: PipelineStage<"compile">;
  save?: PipelineStage<"save">;
  load?: PipelineStage<"load">;
  serve?: PipelineStage<"serve">;
}

/** Reads, overrides and validates a pipeline file, importing every plugin it names. */
export async function loadPipeline(path: string, overrides: readonly string[] = []): Promise<Pipeline> {
  const source = await readPipeline(path);
  applyOverrides(source, overrides);
  const raw = source.toJS() as Record<string, unknown>;
  const parsed = pipelineFileSchema.safeParse(raw, { reportInput: true });
  const issues: PipelineIssue[] = parsed.success
    ? stageOrderIssues(parsed.data, source)
    : describeIssues(parsed.error, pipelineFileSchema, source);

  // Each well-formed stage is resolved and its options checked even where others are broken.
  const specs: { stage: StageName; path: KeyPath; use: string; options: Record<string, unknown> }[] = [];
  const addSpec = (stage: StageName, path: KeyPath, value: unknown) => {
    const spec = stageSpec.safeParse(value);
    if (!spec.success) return;
    const { use, ...options } = spec.data;
    specs.push({ stage, path, use, options });
  };
  for (const stage of ["collectives", "export", "compile", "save", "load", "serve"] as const) {
    addSpec(stage, [stage], raw[stage]);
  }
  if (Array.isArray(raw.lower)) raw.lower.forEach((pass, index) => addSpec("lower", ["lower", index], pass));

  let build: BuildSettings = buildSettingsSchema.parse({});
  const stages = await Promise.all(specs.map(async ({ stage, path, use, options }) => {
    const at = source.locate([...path, "use"]);
    try {
      const plugin = await resolvePlugin(stage, use, { baseDir: source.baseDir, at });
      if (stage === "compile") {
        const settings = Object.fromEntries(BUILD_SETTING_KEYS.map((key) => [key, options[key]]));
        for (const key of BUILD_SETTING_KEYS) delete options[key];
        const parsedSettings = buildSettingsSchema.safeParse(settings, { reportInput: true });
        if (parsedSettings.success) build = parsedSettings.data;
        else issues.push(...describeIssues(parsedSettings.error, buildSettingsSchema, source, path));
      }
      const schema = strictOptions(plugin.options);
      const checked = schema.safeParse(options, { reportInput: true });
      if (!checked.success) {
        issues.push(...describeIssues(checked.error, schema, source, path));
        return undefined;
      }
      return { stage, use, plugin, options: checked.data, at } as AnyStage;
    } catch (error) {
      if (!(error instanceof PipelineError)) throw error;
      issues.push(...error.issues);
      return undefined;
    }
  }));
  if (issues.length > 0 || !parsed.success) throw PipelineError.of(sortByPlace(issues));

  const file = parsed.data;
  const pipeline: Pipeline = {
    name: file.name ?? basename(path).replace(/\.ya?ml$/, ""),
    file: path,
    baseDir: source.baseDir,
    world: { ...file.world, at: source.locate(["world"]) },
    timeouts: file.timeouts,
    overrides: [...overrides],
    build,
    cache: file.cache === undefined ? undefined : resolvePath(source.baseDir, file.cache),
    lower: [],
  };
  for (const entry of stages) {
    switch (entry?.stage) {
      case "collectives":
        pipeline.collectives = entry;
        break;
      case "export":
        pipeline.export = entry;
        break;
      case "lower":
        pipeline.lower.push(entry);
        break;
      case "compile":
        pipeline.compile = entry;
        break;
      case "save":
        pipeline.save = entry;
        break;
      case "load":
        pipeline.load = entry;
        break;
      case "serve":
        pipeline.serve = entry;
        break;
    }
  }
  return pipeline;
}

/** The stages of a pipeline in the order they run. */
export function pipelineStages(pipeline: Pipeline): AnyStage[] {
  const { collectives, export: exportStage, lower, compile, save, load, serve } = pipeline;
  return [collectives, exportStage, ...lower, compile, save, load, serve].filter((stage) =>
    stage !== undefined
  );
}

function sortByPlace(issues: PipelineIssue[]): PipelineIssue[] {
  const key = (issue: PipelineIssue) => issue.at ? issue.at.line * 1e6 + issue.at.column : 0;
  return issues.map((issue, order) => ({ issue, order }))
    .sort((a, b) => key(a.issue) - key(b.issue) || a.order - b.order)
    .map(({ issue }) => issue);
}
