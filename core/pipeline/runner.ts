// The stage runner: runPipeline runs a loaded pipeline's stages in order (export → lower →
// compile → save → load → serve) and prints each stage's wall time; over several ranks it starts
// them first (see ranks.ts).

import { unknownProfileDims } from "../runtime/profiles.ts";
import { compileEngine } from "./build.ts";
import { type Graph, verifyGraph } from "../ir/graph.ts";
import { closestName } from "../ir/registry.ts";
import type { Engine, EngineBackend } from "../runtime/engine.ts";
import type { Tokenizer } from "../runtime/tokenizer.ts";
import { PipelineError } from "./errors.ts";
import type { EnginePlugin, ExportedModel, ModelInfo, PassContext, StageContext } from "./plugin.ts";
import { builtinNames, resolvePlugin } from "./resolve.ts";
import { bindToJob, joinPipelineJob, launchPipeline, onFrontRanks, worldSizeOf } from "./ranks.ts";
import { hasRankEnv } from "../dist/env.ts";
import type { Job } from "../dist/context.ts";
import type { StageName } from "./schema.ts";
import { type Pipeline, type PipelineStage, pipelineStages } from "./pipeline.ts";

export interface RunOptions {
  /** Where progress lines go; console.log unless given. */
  log?: (message: string) => void;
  /** Build engines even where the build cache has them. */
  rebuild?: boolean;
}

/**
 * A progress callback for one stage that prints `  stage    plugin: what done/total (n%)` at most
 * once a second, and nothing in the stage's first second (short work stays quiet).
 */
export function progressLines(
  log: (message: string) => void,
  label: string,
  clock: () => number = () => performance.now(),
): (what: string, done: number, total: number) => void {
  const start = clock();
  let last = start;
  return (what, done, total) => {
    const now = clock();
    if (now - start < 1000 || now - last < 1000) return;
    last = now;
    log(`${label}: ${what} ${done}/${total} (${Math.round((100 * done) / total)}%)`);
  };
}

/**
 * Runs every stage in order, printing one line per stage with its wall time, then the total. A
 * pipeline over several ranks started by hand is launched: one process per rank runs it again.
 */
export async function runPipeline(pipeline: Pipeline, options: RunOptions = {}): Promise<void> {
  const log = options.log ?? console.log;
  const rebuild = options.rebuild;
  if (worldSizeOf(pipeline) > 1 && !hasRankEnv()) {
    if (pipeline.export) await checkPlan(pipeline);
    return await launchPipeline(pipeline, log, rebuild);
  }
  await using job = worldSizeOf(pipeline) > 1 ? await joinPipelineJob(pipeline, log) : undefined;
  const ctx = stageContext(pipeline, log, job);
  const width = Math.max(10, ...pipelineStages(pipeline).map((stage) => stage.plugin.name.length + 2));
  const started = performance.now();
  const timed = async <T>(
    stage: Exclude<StageName, "collectives">,
    name: string,
    work: () => Promise<T> | T,
    note: () => string = () => "",
  ) => {
    const start = performance.now();
    const result = await withTimeout(work, pipeline.timeouts[stage], stage);
    log(`  ${stage.padEnd(9)}${name.padEnd(width)}${formatMs(performance.now() - start)}${note()}`);
    return result;
  };

  using stack = new DisposableStack();
  const backend = pipeline.compile ? pipeline.compile.plugin.backend(pipeline.compile.options) : undefined;
  let exported: ExportedModel | undefined;
  let engine: Engine | undefined;
  if (pipeline.export) {
    const { plugin, options } = pipeline.export;
    exported = stack.use(await timed("export", plugin.name, () => plugin.export(options, ctx)));
    let graph = exported.graph;
    for (const [index, pass] of pipeline.lower.entries()) {
      graph = await timed(
        "lower",
        pass.plugin.name,
        () => runPass(pass, index, graph, { ...ctx, engine: backend, tp: job?.tp }),
      );
    }
    if (pipeline.compile && backend) {
      const { weights } = exported;
      const { plugin, options: engineOptions } = pipeline.compile;
      const unknown = unknownProfileDims(pipeline.build.profiles, graph.inputs);
      if (unknown.length > 0) throw new PipelineError(`compile.${unknown[0]}`, pipeline.compile.at);
      let how = "";
      const reportCompile = progressLines(log, `  compile  ${plugin.name}`);
      engine = stack.use(
        await timed("compile", plugin.name, async () => {
          const { engine, cached } = await compileEngine({
            backend,
            options: engineOptions,
            settings: pipeline.build,
            graph,
            weights,
            cacheDir: pipeline.cache,
            rebuild,
            pipeline: pipeline.file,
            progress: (done, total) => reportCompile("reading weights", done, total),
          });
          how = cached ? " (cached)" : pipeline.build.jit ? " (at the first request)" : "";
          return engine;
        }, () => how),
      );
    }
  }
  if (pipeline.save && engine && exported) {
    const { plugin, options } = pipeline.save;
    const built = engine;
    const { model, tokenizer } = exported;
    await timed("save", plugin.name, async () => {
      await plugin.save(built, options, {
        ...ctx,
        model,
        tokenizer,
        progress: progressLines(log, `  save     ${plugin.name}`),
      });
      // No rank loads the set before every rank has written its file and rank 0 the manifest.
      await job?.barrier();
    });
  }
  let model: ModelInfo | undefined = exported?.model;
  let tokenizer: Tokenizer | undefined = exported?.tokenizer;
  if (pipeline.load) {
    const { plugin, options } = pipeline.load;
    const backends = await engineBackends(pipeline);
    const loaded = await timed(
      "load",
      plugin.name,
      () =>
        plugin.load(options, { ...ctx, backends, progress: progressLines(log, `  load     ${plugin.name}`) }),
    );
    engine = stack.use(loaded.engine);
    model = loaded.model;
    tokenizer = loaded.tokenizer ?? tokenizer;
  }
  if (pipeline.serve && engine && model) {
    const { plugin, options } = pipeline.serve;
    const serving = bindToJob(engine, job);
    const serveCtx = { ...ctx, model, tokenizer };
    await timed(
      "serve",
      plugin.name,
      () =>
        onFrontRanks(
          serving,
          job,
          (front, replicas) => plugin.serve(front, options, { ...serveCtx, replicas }),
        ),
    );
  }
  log(`  ${"total".padEnd(9 + width)}${formatMs(performance.now() - started)}`);
}

/** Runs work, failing with the stage's name when it takes longer than its timeout in seconds. */
async function withTimeout<T>(
  work: () => Promise<T> | T,
  seconds: number | undefined,
  stage: string,
): Promise<T> {
  if (seconds === undefined) return await work();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(new PipelineError(`stage ${stage} ran past its timeout of ${seconds} s (timeouts.${stage})`)),
      seconds * 1000,
    );
  });
  try {
    return await Promise.race([Promise.resolve().then(work), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Exports and lowers the first rank's shard on the controller: a plan that cannot work fails before ranks start. */
async function checkPlan(pipeline: Pipeline): Promise<void> {
  const { exported } = await exportAndLower(pipeline, {
    log: () => {},
    tp: { rank: 0, size: pipeline.world.tp },
  });
  exported[Symbol.dispose]();
}

/** Exports the model and, unless `lower` is false, runs the passes: what `rankflow graph` prints. */
export async function exportAndLower(
  pipeline: Pipeline,
  options: RunOptions & { lower?: boolean; tp?: { rank: number; size: number }; dryRun?: boolean } = {},
): Promise<{ exported: ExportedModel; graph: Graph }> {
  if (!pipeline.export) {
    throw new PipelineError(`${pipeline.file}: the pipeline starts at load, so it has no graph to show`);
  }
  const ctx = { ...stageContext(pipeline, options.log ?? console.log), dryRun: options.dryRun };
  const backend = pipeline.compile ? pipeline.compile.plugin.backend(pipeline.compile.options) : undefined;
  const exported = await pipeline.export.plugin.export(pipeline.export.options, ctx);
  let graph = exported.graph;
  try {
    if (options.lower !== false) {
      for (const [index, pass] of pipeline.lower.entries()) {
        graph = runPass(pass, index, graph, { ...ctx, engine: backend, tp: options.tp });
      }
    }
  } catch (error) {
    exported[Symbol.dispose]();
    throw error;
  }
  return { exported, graph };
}

/** Runs one pass and verifies its output, naming the pass when it fails or breaks the graph. */
export function runPass(pass: PipelineStage<"lower">, index: number, graph: Graph, ctx: PassContext): Graph {
  const label = `lower.${index} (${pass.plugin.name})`;
  let result: Graph;
  try {
    result = pass.plugin.run(graph, pass.options, ctx);
  } catch (error) {
    throw new PipelineError(`${label} failed: ${messageOf(error)}`, pass.at, { cause: error });
  }
  if (!result || !Array.isArray(result.nodes) || !(result.types instanceof Map)) {
    throw new PipelineError(`${label} did not return a graph`, pass.at);
  }
  try {
    verifyGraph(result);
  } catch (error) {
    throw new PipelineError(`${label} broke the graph: ${messageOf(error)}`, pass.at, { cause: error });
  }
  return result;
}

function stageContext(pipeline: Pipeline, log: (message: string) => void, job?: Job): StageContext {
  const { dp, tp } = pipeline.world;
  return {
    baseDir: pipeline.baseDir,
    rank: job?.rank ?? 0,
    worldSize: job?.worldSize ?? 1,
    mesh: { dp, tp },
    log,
    job,
  };
}

/**
 * The engine backends a load plugin may ask for by name, each built with its default options.
 * Every built-in engine is imported first, since `backends` answers synchronously.
 */
async function engineBackends(pipeline: Pipeline): Promise<(name: string) => EngineBackend> {
  const engines = new Map<string, EnginePlugin | PipelineError>();
  if (pipeline.compile) engines.set(pipeline.compile.plugin.name, pipeline.compile.plugin);
  for (const name of await builtinNames("compile") ?? []) {
    if (engines.has(name)) continue;
    try {
      engines.set(name, await resolvePlugin("compile", name, { baseDir: pipeline.baseDir }));
    } catch (error) {
      if (!(error instanceof PipelineError)) throw error;
      engines.set(name, error);
    }
  }
  const at = pipeline.load?.at;
  return function backendNamed(name: string): EngineBackend {
    const engine = engines.get(name);
    if (engine instanceof PipelineError) {
      throw new PipelineError(
        `load: the engine file needs backend '${name}', which cannot be loaded: ${engine.issues[0].message}`,
        at,
      );
    }
    if (!engine) {
      const near = closestName(name, [...engines.keys()]);
      const hint = near
        ? ` (did you mean '${near}'?)`
        : `; known: ${[...engines.keys()].join(", ") || "none"}`;
      throw new PipelineError(
        `load: the engine file needs backend '${name}', which rankflow does not have${hint}`,
        at,
      );
    }
    return engine.backend(engine.options.parse({}));
  };
}

function formatMs(ms: number): string {
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`.padStart(9);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
