// The rankflow command line: run and check pipelines, print a model's graph, and the small
// commands tests and scripts use to compare against reference outputs (logits, generate).

import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { printGraph } from "./core/ir/text.ts";
import { closestName } from "./core/ir/registry.ts";
import { readGraphWeights } from "./core/ir/weights.ts";
import type { ExportedModel, StageContext } from "./core/pipeline/plugin.ts";
import { exportAndLower, loadPipeline, pipelineStages, runPipeline } from "./core/pipeline/runner.ts";
import type { Engine } from "./core/runtime/engine.ts";
import { generateGreedy, logitsOf } from "./core/runtime/generate.ts";
import cpu from "./plugins/engines/cpu.ts";
import hf from "./plugins/export/hf.ts";
import { runOnRanks, tensorParallelRankEngine } from "./plugins/launch/tensor_parallel_ranks.ts";
import { shardGraph } from "./plugins/passes/tensor_parallel.ts";
import { hasRankEnv, readRankEnv } from "./core/dist/env.ts";
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
  init-model DIR      write a random-weight checkpoint to DIR

"rankflow COMMAND --help" describes a command. Set RANKFLOW_DEBUG=1 for stack traces.`;

const SET_HELP = "  --set KEY.PATH=VALUE  override one value of the file before validation (repeatable),\n" +
  "                       e.g. --set compile.dtype=f16 --set lower.0.factor=2";

interface Command {
  usage: string;
  help: string;
  options: Record<string, { type: "string" | "boolean"; multiple?: boolean; default?: string }>;
  positionals: number;
  run(args: string[], values: Record<string, unknown>): Promise<void>;
}

const commands: Record<string, Command> = {
  run: {
    usage: "rankflow run PIPELINE [--set KEY.PATH=VALUE ...]",
    help:
      `Validates the pipeline, then runs its stages in order, one line per stage with its time.\n\n${SET_HELP}`,
    options: { set: { type: "string", multiple: true } },
    positionals: 1,
    async run([file], values) {
      const pipeline = await loadPipeline(file, sets(values));
      console.log(`${pipeline.name}: ${file}`);
      await runPipeline(pipeline);
    },
  },
  check: {
    usage: "rankflow check PIPELINE [--set KEY.PATH=VALUE ...]",
    help: `Validates the pipeline: its schema, every plugin it names and every plugin's options.\n` +
      `Prints "ok: N stages" and the stages; nothing runs and nothing is written.\n\n${SET_HELP}`,
    options: { set: { type: "string", multiple: true } },
    positionals: 1,
    async run([file], values) {
      const pipeline = await loadPipeline(file, sets(values));
      const stages = pipelineStages(pipeline);
      console.log(`ok: ${stages.length} stages`);
      for (const stage of stages) {
        const module = stage.use === stage.plugin.name ? "" : `  (${stage.use})`;
        console.log(`  ${stage.stage.padEnd(9)}${stage.plugin.name}${module}`);
      }
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
      });
      using _exported = exported;
      writeOut(printGraph(graph));
    },
  },
  logits: {
    usage: "rankflow logits DIR --ids 5,17,42 [--tp N]",
    help: `Exports the Hugging Face checkpoint in DIR in f32, builds a cpu engine and prints\n` +
      `{"logits": [[…], …]}: one row of vocabulary logits per given id.\n\n` +
      `  --ids IDS  comma-separated token ids\n` +
      `  --tp N     compute with N tensor-parallel rank processes (default 1)`,
    options: { ids: { type: "string" }, tp: { type: "string", default: "1" } },
    positionals: 1,
    async run([dir], values) {
      const ids = parseIds(values.ids);
      await onRanks(values, ["logits", dir, "--ids", ids.join(",")], async (engine) => ({
        logits: await logitsOf(engine, ids),
      }));
    },
  },
  generate: {
    usage: "rankflow generate DIR --ids 5,17,42 [--max-tokens 16] [--tp N]",
    help: `Greedy generation on a cpu engine from the checkpoint in DIR (f32); prints {"ids": […]},\n` +
      `the new ids only.\n\n` +
      `  --ids IDS         comma-separated prompt token ids\n` +
      `  --max-tokens N    how many tokens to generate (default 16)\n` +
      `  --tp N            compute with N tensor-parallel rank processes (default 1)`,
    options: {
      ids: { type: "string" },
      "max-tokens": { type: "string", default: "16" },
      tp: { type: "string", default: "1" },
    },
    positionals: 1,
    async run([dir], values) {
      const ids = parseIds(values.ids);
      const maxTokens = parseCount(String(values["max-tokens"]), "--max-tokens");
      const args = ["generate", dir, "--ids", ids.join(","), "--max-tokens", String(maxTokens)];
      await onRanks(values, args, async (engine) => {
        const [generated] = await generateGreedy(engine, [ids], { maxTokens });
        return { ids: generated };
      });
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
 * Computes `work` on a cpu engine of the checkpoint and prints its JSON: in this process, or with
 * --tp N over N rank processes (this process then starts them, and each rank runs this again).
 */
async function onRanks(
  values: Record<string, unknown>,
  args: string[],
  work: (engine: Engine) => Promise<unknown>,
): Promise<void> {
  const tp = parseCount(String(values.tp), "--tp");
  const dir = args[1];
  if (tp > 1 && !hasRankEnv()) {
    // A plan that does not fit the model fails here, before any rank starts.
    using exported = await exportCheckpoint(dir, "f32");
    shardGraph(exported.graph, { plan: "auto", group: "tp" }, { rank: 0, size: tp });
    writeOut(await runOnRanks(tp, [...args, "--tp", String(tp)]) + "\n");
    return;
  }
  using exported = await exportCheckpoint(dir, "f32");
  if (tp === 1) {
    using engine = await cpuEngine(exported);
    console.log(JSON.stringify(await work(engine)));
    return;
  }
  await using engine = await tensorParallelRankEngine(exported, tp);
  const result = await work(engine);
  if (readRankEnv().rank === 0) console.log(JSON.stringify(result));
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

function cpuEngine(exported: ExportedModel): Promise<Engine> {
  const { graph, weights } = exported;
  return cpu.backend(cpu.options.parse({})).build(graph, readGraphWeights(graph, weights));
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
    if (positionals.length !== command.positionals) {
      throw new UsageError(`expected ${command.positionals} argument, got ${positionals.length}`);
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
