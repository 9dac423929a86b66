// logits and generate over tensor-parallel rank processes, through the CLI as a user runs them.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { gpus } from "../../ffi/gpu.ts";

const main = new URL("../../../main.ts", import.meta.url).pathname;
const fixtures = new URL("../../fixtures/", import.meta.url).pathname;

async function cli(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-lock", main, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

async function oracle(model: string) {
  return JSON.parse(await Deno.readTextFile(`${fixtures}${model}/oracle.json`));
}

Deno.test("logits --tp 2 over two rank processes gives the transformers logits", async () => {
  const expected = await oracle("tiny-qwen2");
  const run = await cli(
    "logits",
    `${fixtures}tiny-qwen2`,
    "--ids",
    expected.logit_ids.join(","),
    "--tp",
    "2",
  );
  strictEqual(run.code, 0, run.stderr);
  const { logits } = JSON.parse(run.stdout);
  let worst = 0;
  logits.forEach((row: number[], i: number) =>
    row.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - expected.logits[i][j]))))
  );
  ok(worst <= 1e-4, `max logit error ${worst}`);
});

Deno.test("generate --tp 4 over four rank processes gives the transformers tokens", async () => {
  const expected = await oracle("tiny-llama");
  const run = await cli(
    "generate",
    `${fixtures}tiny-llama`,
    "--ids",
    expected.prompt_ids.join(","),
    "--max-tokens",
    "16",
    "--tp",
    "4",
  );
  strictEqual(run.code, 0, run.stderr);
  deepStrictEqual(JSON.parse(run.stdout).ids, expected.greedy_ids.slice(0, 16));
});

Deno.test("a tensor-parallel size the model's heads do not allow fails before any rank starts", async () => {
  const run = await cli("generate", `${fixtures}tiny-llama`, "--ids", "1,2", "--tp", "3");
  strictEqual(run.code, 1);
  ok(
    /^error: tensor-parallel: .*q_proj has 4 heads, which do not split over 3 ranks/.test(run.stderr),
    run.stderr,
  );
  ok(!run.stderr.includes("[rank"), "no rank printed anything: none was started");
});

Deno.test({
  name: "--engine cuda over more ranks than this machine has GPUs fails before any rank starts",
  ignore: gpus >= 2,
  async fn() {
    const run = await cli(
      "generate",
      `${fixtures}tiny-llama`,
      "--ids",
      "1,2",
      "--engine",
      "cuda",
      "--tp",
      "2",
    );
    strictEqual(run.code, 1);
    ok(
      new RegExp(`^error: --engine cuda runs one rank per GPU: 2 ranks need 2 GPUs, this machine has ${gpus}`)
        .test(run.stderr),
      run.stderr,
    );
    ok(!run.stderr.includes("[rank"), "no rank printed anything: none was started");
  },
});
