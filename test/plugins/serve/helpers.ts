// Shared by the serve tests: small random checkpoints with the byte tokenizer, compiled for the
// cpu engine, with their model info and tokenizer as a load stage would hand them to serve.

import { join } from "node:path";
import { exportCheckpoint } from "../../../plugins/export/hf.ts";
import { initModel, type Preset } from "../../../plugins/export/hf_random.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { readGraphWeights } from "../../../core/ir/weights.ts";
import type { Engine } from "../../../core/runtime/engine.ts";
import type { ModelInfo } from "../../../core/pipeline/plugin.ts";
import type { Tokenizer } from "../../../core/runtime/tokenizer.ts";

export interface ServedModel {
  engine: Engine;
  model: ModelInfo;
  tokenizer: Tokenizer;
}

const temporaryDirs: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of temporaryDirs) Deno.removeSync(dir, { recursive: true });
});

/** A random checkpoint of the preset (seed 7) with tokenizer_config.json as given, compiled for the cpu. */
export async function servedModel(
  preset: Preset,
  tokenizerConfig?: Record<string, unknown>,
): Promise<ServedModel> {
  const root = await Deno.makeTempDir({ prefix: "rankflow-serve-" });
  temporaryDirs.push(root);
  const dir = join(root, preset);
  await initModel(dir, { preset, seed: 7 });
  if (tokenizerConfig) {
    await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(tokenizerConfig));
  }
  using exported = exportCheckpoint(dir);
  const engine = await cpuBackend().build(exported.graph, readGraphWeights(exported.graph, exported.weights));
  return { engine, model: exported.model, tokenizer: exported.tokenizer! };
}

export const quiet = { log: () => {} };

/** The value of one sample in Prometheus text: `name` with its labels as written, e.g. `x{reason="stop"}`. */
export function metricValue(text: string, name: string): number {
  const line = text.split("\n").find((line) => line.startsWith(`${name} `));
  if (!line) return 0;
  return Number(line.slice(name.length + 1));
}

/** An engine whose every run first waits for `before()`: to hold steps back, or slow them down. */
export function delayedEngine(engine: Engine, before: () => Promise<void>): Engine {
  return {
    backend: engine.backend,
    backendVersion: engine.backendVersion,
    inputs: engine.inputs,
    outputs: engine.outputs,
    async run(inputs) {
      await before();
      return await engine.run(inputs);
    },
    serialize: () => engine.serialize(),
    [Symbol.dispose]: () => {},
  };
}

/** POSTs JSON; returns the status and the parsed body. */
// deno-lint-ignore no-explicit-any -- response bodies are checked field by field
export async function postJson(url: string, body: unknown): Promise<{ status: number; body: any }> {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

/** A `rankflow run` of a serving pipeline, started and waited on until it says where it serves. */
export interface ServingRun extends AsyncDisposable {
  child: Deno.ChildProcess;
  /** `http://host:port`, from the server's "serving … on URL/v1" line. */
  url: string;
  /** Reads standard output to its end; returns all of it. */
  output(): Promise<string>;
  stderr: Promise<string>;
}

/** Starts `main.ts run ARGS` in the repository root; disposing kills it and waits for it. */
export async function startServingRun(args: string[]): Promise<ServingRun> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "run", ...args],
    cwd: new URL("../../../", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const stop = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await child.status;
    await lines.cancel().catch(() => {});
    await stderr;
  };
  let url: string | undefined;
  while (!url) {
    const { value, done } = await lines.read();
    if (done) {
      await stop();
      throw new Error(`the run ended before serving:\n${text}\n${await stderr}`);
    }
    text += value;
    url = text.match(/serving \S+ on (http:\/\/[\d.]+:\d+)\/v\d/)?.[1];
  }
  return {
    child,
    url,
    stderr,
    async output() {
      while (true) {
        const { value, done } = await lines.read();
        if (done) return text;
        text += value;
      }
    },
    [Symbol.asyncDispose]: stop,
  };
}
