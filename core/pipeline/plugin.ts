// The plugin contract. Every stage of a pipeline is a plugin: a module whose default export is
// made by definePlugin, with a zod schema for its options. Built-ins and user modules are alike.

import type { z } from "zod";
import type { Graph } from "../ir/graph.ts";
import type { WeightStore } from "../ir/weights.ts";
import type { Engine, EngineBackend } from "../runtime/engine.ts";
import type { Tokenizer } from "../runtime/tokenizer.ts";
import type { CollectiveBackend, Mesh } from "../dist/group.ts";
import type { BackendInit, JobChannel } from "../dist/context.ts";

export const PLUGIN_KINDS = [
  "export",
  "pass",
  "engine",
  "collective",
  "save",
  "load",
  "serve",
  "launch",
] as const;
export type PluginKind = typeof PLUGIN_KINDS[number];

/** What every stage may know about where it runs. */
export interface StageContext {
  /** The folder of the pipeline file: relative paths in options are resolved against it. */
  baseDir: string;
  rank: number;
  worldSize: number;
  /** Prints a line on the controller's terminal, prefixed with the rank where there are several. */
  log(message: string): void;
  /** The dp × tp shape of the job (one replica of one rank when there is no job). */
  mesh?: Mesh;
  /** Where there are several ranks: the way to gather values from them and agree with them. */
  job?: JobChannel;
  /** Set by `rankflow check` and `graph`: the stage must not write anything. */
  dryRun?: boolean;
  /** Reports progress of long work (`reading rank-0.engine, MiB`, 120, 800); printed at most once a second. */
  progress?: (what: string, done: number, total: number) => void;
}

/** What a pass may know: the stage context plus the target engine's abilities. */
export interface PassContext extends StageContext {
  engine?: EngineBackend;
  /** This rank's place in its tensor-parallel group (rank 0 of 1 when there is none). */
  tp?: { rank: number; size: number };
}

/** Facts about the exported model that later stages need beyond the graph. */
export interface ModelInfo {
  architecture: string;
  vocabSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  hidden: number;
  maxPositions: number;
}

export interface ExportedModel extends Disposable {
  graph: Graph;
  weights: WeightStore;
  model: ModelInfo;
  tokenizer?: Tokenizer;
}

interface PluginBase<K extends PluginKind, O extends z.ZodType> {
  kind: K;
  /** The name YAML uses (`use: tensor-parallel`). */
  name: string;
  /** One line for `rankflow --help` and error messages. */
  description: string;
  options: O;
}

export interface ExportPlugin<O extends z.ZodType = z.ZodType> extends PluginBase<"export", O> {
  export(options: z.infer<O>, ctx: StageContext): Promise<ExportedModel>;
}

export interface PassPlugin<O extends z.ZodType = z.ZodType> extends PluginBase<"pass", O> {
  run(graph: Graph, options: z.infer<O>, ctx: PassContext): Graph;
}

export interface EnginePlugin<O extends z.ZodType = z.ZodType> extends PluginBase<"engine", O> {
  backend(options: z.infer<O>): EngineBackend;
}

export interface SavePlugin<O extends z.ZodType = z.ZodType> extends PluginBase<"save", O> {
  save(
    engine: Engine,
    options: z.infer<O>,
    ctx: StageContext & { model: ModelInfo; tokenizer?: Tokenizer },
  ): Promise<string>;
}

/** What a load stage gives the stages after it: the engine and what serving it needs to know. */
export interface LoadedEngine {
  engine: Engine;
  model: ModelInfo;
  tokenizer?: Tokenizer;
}

export interface LoadPlugin<O extends z.ZodType = z.ZodType> extends PluginBase<"load", O> {
  load(
    options: z.infer<O>,
    ctx: StageContext & { backends: (name: string) => EngineBackend },
  ): Promise<LoadedEngine>;
}

export interface ServeContext extends StageContext {
  model: ModelInfo;
  tokenizer?: Tokenizer;
  /** Where there are several data-parallel replicas: which one serves here, and the way to the others. */
  replicas?: Replicas;
}

/** The port replica r of a data-parallel job listens on: port + r (0 stays 0, a free port). */
export function replicaPort(port: number, ctx: ServeContext): number {
  return port === 0 ? 0 : port + (ctx.replicas?.rank ?? 0);
}

/** The data-parallel replicas of a job, as the front rank of one of them sees them. */
export interface Replicas {
  rank: number;
  size: number;
  /** Every replica calls this once with its result; replica 0 gets all results in replica order. */
  gather<T>(value: T): Promise<T[] | undefined>;
}

export interface ServePlugin<O extends z.ZodType = z.ZodType> extends PluginBase<"serve", O> {
  serve(engine: Engine, options: z.infer<O>, ctx: ServeContext): Promise<void>;
}

export interface CollectivePlugin<O extends z.ZodType = z.ZodType> extends PluginBase<"collective", O> {
  /** Connects this rank to its peers and makes the world, tp and dp groups. */
  create(options: z.infer<O>, init: BackendInit): Promise<CollectiveBackend>;
}

export type Plugin =
  | CollectivePlugin
  | ExportPlugin
  | PassPlugin
  | EnginePlugin
  | SavePlugin
  | LoadPlugin
  | ServePlugin;

/** Marks a module's default export as a plugin; the identity, typed. */
export function definePlugin<O extends z.ZodType, P extends Plugin & { options: O }>(plugin: P): P {
  return plugin;
}
