// Tensor parallel over GPUs: rank processes, one GPU each, whose cuda engines meet at NCCL
// collectives on their own streams. Run through the CLI as users run it; needs two GPUs or more.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { join } from "node:path";
import { gpus } from "../../ffi/gpu.ts";
import {
  killRankOneDuringGeneration,
  moved,
  rankflow,
  rankZero,
  withTempDir,
} from "../../core/pipeline/rank_processes.ts";
import { FIXTURES, oracleOf, relativeError } from "../../oracle.ts";

const TP = 2;
const ignore = gpus < TP;
if (ignore && gpus > 0) console.log(`multi-GPU tests skipped: ${gpus} GPU here, they need ${TP}`);

async function cli(args: string[]): Promise<Record<string, unknown>> {
  const run = await rankflow(args);
  strictEqual(run.code, 0, run.stderr);
  return JSON.parse(run.stdout);
}

for (const name of ["tiny-llama", "tiny-qwen2", "tiny-gpt2"]) {
  Deno.test({
    name: `gpu: ${name} over ${TP} GPUs (f32) gives transformers' 32 greedy ids and logits`,
    ignore,
    async fn() {
      const oracle = oracleOf(name);
      const engine = ["--tp", String(TP), "--engine", "cuda", "--dtype", "f32"];
      const dir = join(FIXTURES, name);
      const steps = 32;
      ok(oracle.greedy_ids.length >= steps, `${name}'s oracle has ${oracle.greedy_ids.length} greedy ids`);
      const { ids } = await cli([
        "generate",
        dir,
        "--ids",
        oracle.prompt_ids.join(","),
        "--max-tokens",
        String(steps),
        ...engine,
      ]);
      deepStrictEqual(ids, oracle.greedy_ids.slice(0, steps));
      const { logits } = await cli(["logits", dir, "--ids", oracle.logit_ids.join(","), ...engine]);
      const error = relativeError(logits as number[][], oracle.logits).relative;
      console.log(
        `${name} tp ${TP} f32: relative logit error ${error.toExponential(2)} against transformers`,
      );
      ok(error <= 1e-4, `relative logit error ${error} > 1e-4`);
    },
  });
}

Deno.test({
  name: `gpu: tiny-qwen2 in bf16 over ${TP} GPUs stays within the bf16 tolerance of one GPU`,
  ignore,
  async fn() {
    const oracle = oracleOf("tiny-qwen2");
    const dir = join(FIXTURES, "tiny-qwen2");
    const args = ["logits", dir, "--ids", oracle.logit_ids.join(","), "--engine", "cuda", "--dtype", "bf16"];
    const one = await cli([...args, "--tp", "1"]);
    const split = await cli([...args, "--tp", String(TP)]);
    const error = relativeError(split.logits as number[][], one.logits as number[][]).relative;
    const againstHf = relativeError(split.logits as number[][], oracle.logits).relative;
    console.log(
      `tiny-qwen2 bf16: tp ${TP} against tp 1 ${error.toExponential(2)}, against transformers (f32) ` +
        againstHf.toExponential(2),
    );
    ok(error <= 3e-2, `tp ${TP} against tp 1: relative logit error ${error} > 3e-2`);
    ok(againstHf <= 3e-2, `tp ${TP} against transformers: relative logit error ${againstHf} > 3e-2`);
  },
});

Deno.test({
  name: `gpu: quickstart-cuda-tp saves ${TP} engines; a fresh job loads them and prints the same ids`,
  ignore,
  async fn() {
    await withTempDir(async (dir) => {
      // In f32 the tokens must equal the cpu quickstart's; bf16 rounding could part them.
      const single = await rankflow(["run", "pipelines/quickstart.yaml", ...moved(dir)]);
      strictEqual(single.code, 0, single.stderr);
      const expected = single.stdout.split("\n").find((line) => line.startsWith("ids: "));
      ok(expected, single.stdout);
      const f32 = ["--set", "compile.dtype=f32"];
      const saved = await rankflow(["run", "pipelines/quickstart-cuda-tp.yaml", ...moved(dir), ...f32]);
      strictEqual(saved.code, 0, saved.stderr);
      deepStrictEqual(rankZero(saved.stdout, "ids: "), [expected.slice("ids: ".length)]);
      const manifest = JSON.parse(await Deno.readTextFile(join(dir, "engines", "manifest.json")));
      deepStrictEqual([manifest.worldSize, manifest.files.length], [TP, TP]);
      const loading = join(dir, "load.yaml");
      await Deno.writeTextFile(
        loading,
        [
          "name: load-cuda-tp",
          `world: { tp: ${TP} }`,
          "collectives: { use: nccl }",
          `load: { use: engine-file, dir: ${join(dir, "engines")} }`,
          'serve: { use: generate, prompt: "Once upon a time", max_tokens: 24 }',
        ].join("\n"),
      );
      const loaded = await rankflow(["run", loading]);
      strictEqual(loaded.code, 0, loaded.stderr);
      deepStrictEqual(rankZero(loaded.stdout, "ids: "), rankZero(saved.stdout, "ids: "));
    });
  },
});

Deno.test({
  name: `gpu: a rank killed while ${TP} GPUs generate stops the job within seconds, named`,
  ignore,
  async fn() {
    await killRankOneDuringGeneration(
      "pipelines/quickstart-cuda-tp.yaml",
      ["--set", "serve.max_tokens=480"],
      0,
    );
  },
});

Deno.test({
  name: `gpu: the peer all-reduce over ${TP} GPUs sums exactly, in place, across grids and in graph replays`,
  ignore,
  async fn() {
    const script = join(new URL(".", import.meta.url).pathname, "workers", "peer_all_reduce_rank.ts");
    const run = await rankflow(["launch", "--nproc-per-node", String(TP), "--timeout", "120", script]);
    strictEqual(run.code, 0, run.stderr);
    const line = rankZero(run.stdout, "peer all-reduce: ");
    deepStrictEqual(line, [`${TP} ranks, 56 results exact`], run.stdout);
  },
});

Deno.test({
  name: `gpu: dp ${TP} over ${TP} GPUs: each replica generates its share on its own GPU, as one GPU does all`,
  ignore,
  async fn() {
    await withTempDir(async (dir) => {
      const pipeline = "pipelines/quickstart-dp-tp.yaml";
      const sets = ["compile.use=cuda", "collectives.use=nccl", "world.tp=1", "serve.max_tokens=6"]
        .flatMap((set) => ["--set", set]);
      const split = await rankflow(["run", pipeline, ...moved(dir), ...sets, "--set", `world.dp=${TP}`]);
      strictEqual(split.code, 0, split.stderr);
      ok(split.stdout.includes(`starting ${TP} ranks: dp ${TP} × tp 1`), split.stdout);
      ok(split.stdout.includes("[rank 1] replica 1: prompts"), split.stdout);
      const one = await rankflow(["run", pipeline, ...moved(dir), ...sets, "--set", "world.dp=1"]);
      strictEqual(one.code, 0, one.stderr);
      const expected = one.stdout.split("\n").filter((line) => /^\[\d\] ids: /.test(line));
      strictEqual(expected.length, 5, one.stdout);
      deepStrictEqual(rankZero(split.stdout, "").filter((line) => /^\[\d\] ids: /.test(line)), expected);
    });
  },
});
