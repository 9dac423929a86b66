// The CLI as users meet it: a spawned `deno run -A main.ts …`, its exit code and its output.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { join } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;
const TINY_LLAMA = join(ROOT, "test/fixtures/tiny-llama");
const ORACLE = JSON.parse(await Deno.readTextFile(join(TINY_LLAMA, "oracle.json")));

async function rankflow(args: string[], env: Record<string, string> = {}) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
}

async function withTempDir(work: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-cli-" });
  try {
    await work(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("--help describes the program and each command", async () => {
  const program = await rankflow(["--help"]);
  strictEqual(program.code, 0);
  for (const command of ["run", "check", "graph", "logits", "generate", "init-model"]) {
    ok(program.stdout.includes(`  ${command} `), command);
    const help = await rankflow([command, "--help"]);
    strictEqual(help.code, 0);
    ok(help.stdout.startsWith(`usage: rankflow ${command} `), help.stdout);
  }
});

Deno.test("check on a good pipeline prints ok and the stages", async () => {
  const { code, stdout, stderr } = await rankflow(["check", "pipelines/quickstart.yaml"]);
  strictEqual(code, 0, stderr);
  const lines = stdout.trimEnd().split("\n");
  const planAt = lines.findIndex((line) => line.startsWith("plan: "));
  strictEqual(lines[0], `ok: ${planAt - 1} stages`);
  const stages = lines.slice(1, planAt).map((line) => line.trim().split(/\s+/)[0]).filter((stage) =>
    stage !== "lower"
  );
  deepStrictEqual(stages, ["export", "compile", "save", "load", "serve"]);
  ok(/^ {2}0 +[\d.]+ MiB +[\d.]+ MiB +[\d.]+ MiB +[\d.]+ MiB$/.test(lines[planAt + 2]), lines[planAt + 2]);
});

Deno.test("a bad pipeline prints error: lines, exits 1, shows no stack and writes nothing", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "bad.yaml");
    await Deno.writeTextFile(
      path,
      [
        `export: { use: hf, path: ./model, init: { preset: tiny-llama, seed: 1 } }`,
        `compile: { use: cpux }`,
        `save: { use: engine-file, dir: ./engines }`,
        `serve: { use: generate, ids: [1], max_tokens: "x" }`,
      ].join("\n"),
    );
    const { code, stdout, stderr } = await rankflow(["run", path]);
    strictEqual(code, 1);
    strictEqual(stdout, "");
    deepStrictEqual(stderr.trimEnd().split("\n"), [
      `error: ${path}:2:17: compile: unknown engine plugin 'cpux' (did you mean 'cpu'?)`,
      `error: ${path}:4:47: serve.max_tokens: expected a number, got "x"`,
    ]);
    deepStrictEqual([...Deno.readDirSync(dir)].map((entry) => entry.name), ["bad.yaml"]);

    const debug = await rankflow(["check", path], { RANKFLOW_DEBUG: "1" });
    strictEqual(debug.code, 1);
    ok(debug.stderr.includes("    at "), "RANKFLOW_DEBUG=1 shows the stack");
  });
});

Deno.test("a missing pipeline file and a bad --set are one error line each", async () => {
  const missing = await rankflow(["check", "no/such.yaml"]);
  strictEqual(missing.code, 1);
  strictEqual(missing.stderr, "error: pipeline file no/such.yaml does not exist\n");
  const badSet = await rankflow(["check", "pipelines/quickstart.yaml", "--set", "lower.9.factor=2"]);
  strictEqual(badSet.code, 1);
  ok(
    /^error: pipelines\/quickstart\.yaml:\d+:\d+: --set lower\.9\.factor=2: lower has \d+ items?; index 9 is out of range\n$/
      .test(badSet.stderr),
    badSet.stderr,
  );
});

Deno.test("usage mistakes exit 2 with the command's usage", async () => {
  const unknown = await rankflow(["chek", "x.yaml"]);
  strictEqual(unknown.code, 2);
  strictEqual(unknown.stderr, "error: unknown command 'chek' (did you mean 'check'?); see rankflow --help\n");
  const noIds = await rankflow(["logits", TINY_LLAMA]);
  strictEqual(noIds.code, 2);
  strictEqual(
    noIds.stderr,
    "error: --ids is required, e.g. --ids 5,17,42\n" +
      "usage: rankflow logits DIR --ids 5,17,42 [--tp N] [--engine cpu|cuda] [--dtype f32|f16|bf16]\n",
  );
});

Deno.test("run executes the quickstart, with --set moving its files", async () => {
  await withTempDir(async (dir) => {
    const { code, stdout, stderr } = await rankflow([
      "run",
      "pipelines/quickstart.yaml",
      "--set",
      `export.path=${dir}/model`,
      "--set",
      `save.dir=${dir}/engines`,
      "--set",
      `load.dir=${dir}/engines`,
      "--set",
      "serve.max_tokens=4",
    ]);
    strictEqual(code, 0, stderr);
    for (const stage of ["export", "compile", "save", "load", "serve", "total"]) {
      ok(new RegExp(`^  ${stage} .* ms$`, "m").test(stdout), `${stage} line in\n${stdout}`);
    }
    ok(/^4 tokens in /m.test(stdout), stdout);
    ok((await Deno.stat(join(dir, "engines", "manifest.json"))).isFile);
  });
});

Deno.test("logits and generate reproduce the Hugging Face oracle", async () => {
  const logits = await rankflow(["logits", TINY_LLAMA, "--ids", ORACLE.logit_ids.join(",")]);
  strictEqual(logits.code, 0, logits.stderr);
  const rows: number[][] = JSON.parse(logits.stdout).logits;
  strictEqual(rows.length, ORACLE.logit_ids.length);
  const worst = Math.max(
    ...rows.flatMap((row, i) => row.map((value, j) => Math.abs(value - ORACLE.logits[i][j]))),
  );
  ok(worst < 1e-3, `largest difference ${worst}`);

  const generate = await rankflow([
    "generate",
    TINY_LLAMA,
    "--ids",
    ORACLE.prompt_ids.join(","),
    "--max-tokens",
    "8",
  ]);
  strictEqual(generate.code, 0, generate.stderr);
  deepStrictEqual(JSON.parse(generate.stdout), { ids: ORACLE.greedy_ids.slice(0, 8) });
});

Deno.test("graph prints IR text for a checkpoint folder and for a pipeline", async () => {
  const checkpoint = await rankflow(["graph", TINY_LLAMA]);
  strictEqual(checkpoint.code, 0, checkpoint.stderr);
  ok(checkpoint.stdout.startsWith("graph "), checkpoint.stdout.slice(0, 100));
  ok(checkpoint.stdout.trimEnd().endsWith("}"));
  await withTempDir(async (dir) => {
    const path = join(dir, "p.yaml");
    await Deno.writeTextFile(
      path,
      `export: { use: hf, path: ${TINY_LLAMA} }\ncompile: { use: cpu }\nserve: { use: generate, ids: [1] }\n`,
    );
    const lowered = await rankflow(["graph", path]);
    const before = await rankflow(["graph", path, "--before-lower"]);
    strictEqual(lowered.code, 0, lowered.stderr);
    strictEqual(lowered.stdout, checkpoint.stdout);
    strictEqual(before.stdout, checkpoint.stdout);
  });
});

Deno.test("init-model writes a checkpoint that logits can read", async () => {
  await withTempDir(async (dir) => {
    const model = join(dir, "model");
    const init = await rankflow(["init-model", model, "--preset", "tiny-llama", "--seed", "3"]);
    strictEqual(init.code, 0, init.stderr);
    const logits = await rankflow(["logits", model, "--ids", "1,2"]);
    strictEqual(logits.code, 0, logits.stderr);
    strictEqual(JSON.parse(logits.stdout).logits.length, 2);
    const again = await rankflow(["init-model", model]);
    strictEqual(again.code, 1);
    ok(again.stderr.startsWith("error: "), again.stderr);
  });
});
