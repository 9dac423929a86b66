// The rankflow command line: run and check pipelines, print a model's graph, and the small
// commands tests and scripts use to compare against reference outputs (logits, generate).

import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { printGraph } from "./core/ir/text.ts";
import { closestName } from "./core/ir/registry.ts";
import type { ExportedModel, Replicas, StageContext } from "./core/pipeline/plugin.ts";
import { exportAndLower, runPipeline } from "./core/pipeline/runner.ts";
import { loadPipeline, pipelineStages } from "./core/pipeline/pipeline.ts";
import type { Engine } from "./core/runtime/engine.ts";
import { generateGreedy, logitsOf } from "./core/runtime/generate.ts";
import hf from "./plugins/export/hf.ts";
import {
  checkRankDevices,
  isRankEngineKind,
  RANK_ENGINES,
  rankEngine,
  runOnRanks,
  singleEngine,
} from "./plugins/launch/tensor_parallel_ranks.ts";
import { shareOf } from "./plugins/serve/generate.ts";
import { onFrontRanks } from "./core/pipeline/ranks.ts";
import { describePlan, planMemory } from "./core/pipeline/plan.ts";
import { featureReport, formatFeatures } from "./plugins/engines/features.ts";
import { describeTensorRt, probeCollectives } from "./plugins/engines/tensorrt/capabilities.ts";
import { distributedContext } from "./core/dist/context.ts";
import { launch } from "./core/dist/launcher.ts";
import { shardGraph } from "./plugins/passes/tensor_parallel.ts";
import { hasRankEnv } from "./core/dist/env.ts";
import { initModel, type Preset, PRESETS } from "./plugins/export/hf_random.ts";
import { isDirectory } from "./core/runtime/files.ts";

const PROGRAM_HELP = `rankflow: compile a model into inference engines and run them, from a YAML pipeline

usage: rankflow COMMAND [ARGS] [--help]

commands:
  run PIPELINE        run every stage of a pipeline file
  check PIPELINE      validate a pipeline file and list its stages; runs nothing
  graph SOURCE        print a model's graph in IR text (a pipeline file, or a checkpoint folder)
  logits DIR          print the logits of a Hugging Face checkpoint for given token ids, as JSON
  generate DIR        greedy-generate from a checkpoint and print the new ids, as JSON
  launch SCRIPT       run a script once per rank, like torchrun
  features            what this machine offers: GPUs, native libraries, collective paths
  init-model DIR      write a random-weight checkpoint to DIR

"rankflow COMMAND --help" describes a command. Set RANKFLOW_DEBUG=1 for stack traces.`;

const ENGINE_HELP =
  "  --engine NAME  cpu (default), or cuda: one GPU per rank (LOCAL_RANK), nccl between ranks\n" +
  "  --dtype DTYPE  f32 (default), f16 or bf16";
const ENGINE_OPTIONS = {
  engine: { type: "string", default: "cpu" },
  dtype: { type: "string", default: "f32" },
} as const;

const SET_HELP = "  --set KEY.PATH=VALUE  override one value of the file before validation (repeatable),\n" +
  "                       e.g. --set compile.dtype=f16 --set lower.0.factor=2";

interface Command {
  usage: string;
  help: string;
  options: Record<string, { type: "string" | "boolean"; multiple?: boolean; default?: string }>;
  /** How many positional arguments; -1: one or more. */
  positionals: number;
  run(args: string[], values: Record<string, unknown>): Promise<void>;
}

const commands: Record<string, Command> = {
  run: {
    usage: "rankflow run PIPELINE [--rebuild] [--set KEY.PATH=VALUE ...]",
    help: `Validates the pipeline, then runs its stages in order, one line per stage with its time.\n` +
      `A pipeline with world: {tp, dp} starts one process per rank and supervises them.\n\n` +
      `  --rebuild     build engines even where the pipeline's build cache has them\n${SET_HELP}`,
    options: { set: { type: "string", multiple: true }, rebuild: { type: "boolean" } },
    positionals: 1,
    async run([file], values) {
      const pipeline = await loadPipeline(file, sets(values));
      console.log(`${pipeline.name}: ${file}`);
      await runPipeline(pipeline, { rebuild: values.rebuild === true });
    },
  },
  check: {
    usage: "rankflow check PIPELINE [--set KEY.PATH=VALUE ...]",
    help: `Validates the pipeline: its schema, every plugin it names and every plugin's options.\n` +
      `Prints "ok: N stages", the stages, and each rank's memory plan (parameters, KV cache at the\n` +
      `largest profile, an activation estimate); nothing is built and nothing is written.\n\n${SET_HELP}`,
    options: { set: { type: "string", multiple: true } },
    positionals: 1,
    async run([file], values) {
      const pipeline = await loadPipeline(file, sets(values));
      const stages = pipelineStages(pipeline);
      console.log(`ok: ${stages.length} stages`);
      for (const stage of stages) {
        const module = stage.use === stage.plugin.name ? "" : `  (${stage.use})`;
        console.log(`  ${stage.stage.padEnd(13)}${stage.plugin.name}${module}`);
      }
      const plan = await planMemory(pipeline);
      if (!plan) return;
      const device = featureReport();
      const deviceBytes = device.gpus.length > 0 && device.memoryGiB ? device.memoryGiB * 2 ** 30 : undefined;
      for (const line of describePlan(pipeline, plan, deviceBytes)) console.log(line);
    },
  },
  graph: {
    usage: "rankflow graph PIPELINE|CHECKPOINT_DIR [--before-lower] [--dtype f32] [--set KEY.PATH=VALUE ...]",
    help: `Prints the graph in IR text. For a pipeline: after its export and lower stages\n` +
      `(--before-lower: after export only). For a checkpoint folder: as the hf export makes it.\n\n` +
      `  --before-lower  skip the pipeline's passes\n` +
      `  --dtype DTYPE   for a checkpoint folder: f32 (default), f16 or bf16\n${SET_HELP}`,
    options: {
      "before-lower": { type: "boolean" },
      dtype: { type: "string", default: "f32" },
      set: { type: "string", multiple: true },
    },
    positionals: 1,
    async run([source], values) {
      if (isDirectory(source)) {
        using exported = await exportCheckpoint(source, String(values.dtype));
        writeOut(printGraph(exported.graph));
        return;
      }
      const pipeline = await loadPipeline(source, sets(values));
      const { exported, graph } = await exportAndLower(pipeline, {
        lower: !values["before-lower"],
        log: console.error,
        dryRun: true,
      });
      using _exported = exported;
      writeOut(printGraph(graph));
    },
  },
  logits: {
    usage: "rankflow logits DIR --ids 5,17,42 [--tp N] [--engine cpu|cuda] [--dtype f32|f16|bf16]",
    help: `Exports the Hugging Face checkpoint in DIR, builds an engine and prints\n` +
      `{"logits": [[…], …]}: one row of vocabulary logits per given id.\n\n` +
      `  --ids IDS  comma-separated token ids\n` +
      `  --tp N     compute with N tensor-parallel rank processes (default 1)\n${ENGINE_HELP}`,
    options: { ids: { type: "string" }, tp: { type: "string", default: "1" }, ...ENGINE_OPTIONS },
    positionals: 1,
    async run([dir], values) {
      const ids = parseIds(values.ids);
      await onRanks(values, ["logits", dir, "--ids", ids.join(",")], async (engine) => ({
        logits: await logitsOf(engine, ids),
      }));
    },
  },
  generate: {
    usage: "rankflow generate DIR --ids 5,17,42 [--ids 8,9 ...] [--max-tokens 16] [--tp N] [--dp N] " +
      "[--engine cpu|cuda] [--dtype f32|f16|bf16]",
    help: `Greedy generation from the checkpoint in DIR; prints {"ids": […]},\n` +
      `the new ids only (one list per prompt when --ids is given more than once).\n\n` +
      `  --ids IDS         comma-separated prompt token ids; repeat for a batch of prompts\n` +
      `  --max-tokens N    how many tokens to generate (default 16)\n` +
      `  --tp N            split the model over N tensor-parallel rank processes (default 1)\n` +
      `  --dp N            N data-parallel replicas, each generating a share of the prompts (default 1)\n` +
      ENGINE_HELP,
    options: {
      ids: { type: "string", multiple: true },
      "max-tokens": { type: "string", default: "16" },
      tp: { type: "string", default: "1" },
      dp: { type: "string", default: "1" },
      ...ENGINE_OPTIONS,
    },
    positionals: 1,
    async run([dir], values) {
      const prompts = ((values.ids as string[] | undefined) ?? [undefined]).map(parseIds);
      const maxTokens = parseCount(String(values["max-tokens"]), "--max-tokens");
      const args = ["generate", dir, ...prompts.flatMap((ids) => ["--ids", ids.join(",")])];
      await onRanks(values, [...args, "--max-tokens", String(maxTokens)], async (engine, replicas) => {
        const share = shareOf(prompts.length, replicas?.rank ?? 0, replicas?.size ?? 1);
        const mine = prompts.slice(share.start, share.end);
        const generated = mine.length > 0 ? await generateGreedy(engine, mine, { maxTokens }) : [];
        const all = replicas ? await replicas.gather(generated) : [generated];
        if (!all) return undefined;
        return { ids: prompts.length === 1 ? all.flat()[0] : all.flat() };
      });
    },
  },
  launch: {
    usage:
      "rankflow launch --nproc-per-node N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] SCRIPT [ARGS...]",
    help:
      `Runs \`deno run -A SCRIPT ARGS\` once per rank, with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,\n` +
      `MASTER_PORT and RANKFLOW_TOKEN set, and a rendezvous store on node 0. If a rank fails or the\n` +
      `job runs past --timeout, every rank is stopped and the failing rank's last lines are shown.\n\n` +
      `  --nproc-per-node N     ranks on this machine\n` +
      `  --nnodes M             machines in the job (default 1)\n` +
      `  --node-rank R          this machine's index, 0..M-1 (default 0)\n` +
      `  --rdzv-endpoint H:P    node 0's store address; every node gives the same (needed when M > 1)\n` +
      `  --timeout SECONDS      stop the job after this long (default: no limit)\n\n` +
      `Across machines every node needs the same RANKFLOW_TOKEN in its environment.`,
    options: {
      "nproc-per-node": { type: "string" },
      nnodes: { type: "string", default: "1" },
      "node-rank": { type: "string", default: "0" },
      "rdzv-endpoint": { type: "string" },
      timeout: { type: "string" },
    },
    positionals: -1,
    async run([script, ...args], values) {
      if (values["nproc-per-node"] === undefined) throw new UsageError("--nproc-per-node is required");
      await launch({
        entry: ["run", "-A", script, ...args],
        nprocPerNode: parseCount(String(values["nproc-per-node"]), "--nproc-per-node"),
        nnodes: parseCount(String(values.nnodes), "--nnodes"),
        nodeRank: parseCount(String(values["node-rank"]), "--node-rank", 0),
        rdzvEndpoint: values["rdzv-endpoint"] as string | undefined,
        timeoutSeconds: values.timeout === undefined
          ? undefined
          : parseCount(String(values.timeout), "--timeout"),
      });
    },
  },
  features: {
    usage: "rankflow features [--tp N]",
    help: `Prints what this machine offers: GPUs, driver and CUDA runtime, the native libraries\n` +
      `(where each was found, or where it was looked for), and which collective path a job of --tp\n` +
      `ranks would take, for the cuda and the tensorrt engines.\n\n` +
      `  --tp N   the ranks of the job to choose collectives for (default 1)`,
    options: { tp: { type: "string", default: "1" } },
    positionals: 0,
    run(_args, values) {
      const tp = parseCount(String(values.tp), "--tp");
      writeOut(formatFeatures(featureReport()) + "\n");
      for (const line of describeTensorRt(probeCollectives(tp))) console.log(line);
      return Promise.resolve();
    },
  },
  "init-model": {
    usage: "rankflow init-model DIR [--preset quickstart] [--seed 0]",
    help: `Writes a random-weight Llama checkpoint (config.json, model.safetensors, tokenizer.json)\n` +
      `to DIR, which must not exist or be empty.\n\n` +
      `  --preset NAME  ${PRESETS.join(" or ")} (default quickstart)\n` +
      `  --seed N       seed of the random weights (default 0)`,
    options: { preset: { type: "string", default: "quickstart" }, seed: { type: "string", default: "0" } },
    positionals: 1,
    async run([dir], values) {
      const preset = String(values.preset);
      if (!(PRESETS as readonly string[]).includes(preset)) {
        throw new UsageError(
          `--preset: expected one of ${PRESETS.join(", ")}, got ${JSON.stringify(preset)}`,
        );
      }
      const seed = parseCount(String(values.seed), "--seed", 0);
      await initModel(dir, { preset: preset as Preset, seed });
      console.log(`wrote a random ${preset} checkpoint (seed ${seed}) to ${dir}`);
    },
  },
};

/** A mistake in how the command was called; answered with the command's usage. */
class UsageError extends Error {
  override name = "UsageError";
}

function sets(values: Record<string, unknown>): string[] {
  return (values.set as string[] | undefined) ?? [];
}

function parseIds(text: unknown): number[] {
  if (typeof text !== "string" || text.trim() === "") {
    throw new UsageError("--ids is required, e.g. --ids 5,17,42");
  }
  return text.split(",").map((part) => parseCount(part.trim(), "--ids", 0));
}

function parseCount(text: string, flag: string, least = 1): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < least) {
    throw new UsageError(`${flag}: expected an integer >= ${least}, got ${JSON.stringify(text)}`);
  }
  return value;
}

/**
 * Computes `work` on an engine of the checkpoint and prints its JSON: in this process, or with
 * --tp/--dp over rank processes (this process then starts them, and each rank runs this again;
 * the front rank of each replica does the work, its tensor-parallel followers keep in step).
 */
async function onRanks(
  values: Record<string, unknown>,
  args: string[],
  work: (engine: Engine, replicas: Replicas | undefined) => Promise<unknown>,
): Promise<void> {
  const mesh = {
    tp: parseCount(String(values.tp), "--tp"),
    dp: parseCount(String(values.dp ?? "1"), "--dp"),
  };
  const kind = String(values.engine);
  if (!isRankEngineKind(kind)) {
    throw new UsageError(`--engine: expected one of ${RANK_ENGINES.join(", ")}, got ${JSON.stringify(kind)}`);
  }
  const dtype = String(values.dtype);
  const ranks = mesh.tp * mesh.dp;
  const dir = args[1];
  const worldArgs = [
    "--tp",
    String(mesh.tp),
    ...(values.dp === undefined ? [] : ["--dp", String(mesh.dp)]),
    "--engine",
    kind,
    "--dtype",
    dtype,
  ];
  if (ranks > 1 && !hasRankEnv()) {
    // A plan that does not fit the model, or the machine, fails here, before any rank starts.
    checkRankDevices(kind, ranks);
    using exported = await exportCheckpoint(dir, dtype);
    shardGraph(exported.graph, { plan: "auto", group: "tp" }, { rank: 0, size: mesh.tp });
    writeOut(await runOnRanks(ranks, [...args, ...worldArgs]) + "\n");
    return;
  }
  using exported = await exportCheckpoint(dir, dtype);
  if (ranks === 1) {
    using engine = await singleEngine(exported, kind);
    console.log(JSON.stringify(await work(engine, undefined)));
    return;
  }
  const { engine, job } = await rankEngine(exported, mesh, kind);
  await using _context = await distributedContext(job, engine);
  let result: unknown;
  await onFrontRanks(engine, job, async (front, replicas) => {
    result = await work(front, replicas);
  });
  if (job.rank === 0) console.log(JSON.stringify(result));
}

/** The checkpoint's graph and weights through the hf export; its progress goes to stderr. */
function exportCheckpoint(dir: string, dtype: string): Promise<ExportedModel> {
  const ctx: StageContext = { baseDir: Deno.cwd(), rank: 0, worldSize: 1, log: console.error };
  const parsed = hf.options.safeParse({ path: resolve(dir), dtype });
  if (!parsed.success) {
    throw new UsageError(`--dtype: expected f32, f16 or bf16, got ${JSON.stringify(dtype)}`);
  }
  return hf.export(parsed.data, ctx);
}

function writeOut(text: string): void {
  const bytes = new TextEncoder().encode(text);
  let written = 0;
  while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
}

/** Errors users read as they are: our layers' (PipelineError, EngineError, …) and the file system's. */
function isUserFacing(error: unknown): error is Error {
  if (!(error instanceof Error)) return false;
  const builtIn = [
    "Error",
    "TypeError",
    "RangeError",
    "SyntaxError",
    "ReferenceError",
    "EvalError",
    "URIError",
  ];
  if (error.name.endsWith("Error") && !builtIn.includes(error.name)) return true;
  return error instanceof Deno.errors.NotFound || error instanceof Deno.errors.AlreadyExists ||
    error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.IsADirectory ||
    error instanceof Deno.errors.NotADirectory;
}

function reportError(error: unknown): void {
  if (Deno.env.get("RANKFLOW_DEBUG") === "1") console.error(error);
  const message = error instanceof Error ? error.message : String(error);
  for (const line of message.split("\n")) console.error(`error: ${line}`);
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(PROGRAM_HELP);
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    const near = closestName(name, Object.keys(commands));
    console.error(
      `error: unknown command '${name}'${near ? ` (did you mean '${near}'?)` : ""}; see rankflow --help`,
    );
    return 2;
  }
  try {
    const { values, positionals } = parseArgs({
      args: rest,
      options: { ...command.options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      console.log(`usage: ${command.usage}\n\n${command.help}`);
      return 0;
    }
    if (command.positionals === -1 ? positionals.length === 0 : positionals.length !== command.positionals) {
      const expected = command.positionals === -1 ? "at least 1" : command.positionals;
      throw new UsageError(`expected ${expected} argument, got ${positionals.length}`);
    }
    await command.run(positionals, values);
    return 0;
  } catch (error) {
    if (
      error instanceof UsageError || String((error as { code?: unknown }).code).startsWith("ERR_PARSE_ARGS")
    ) {
      console.error(`error: ${(error as Error).message}\nusage: ${command.usage}`);
      return 2;
    }
    if (!isUserFacing(error)) throw error;
    reportError(error);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
