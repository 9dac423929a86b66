// Pipelines and scripts over rank processes, run through the CLI as users run them.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { join } from "node:path";
import { killRankOneDuringGeneration, moved, rankflow, rankZero, withTempDir } from "./rank_processes.ts";

const ROOT = new URL("../../..", import.meta.url).pathname;
const SCRIPT = join(ROOT, "test/fixtures/launch/sum_ranks.ts");

Deno.test("quickstart-tp: two rank processes generate the single-rank quickstart's tokens", async () => {
  await withTempDir(async (dir) => {
    const single = await rankflow(["run", "pipelines/quickstart.yaml", ...moved(dir)]);
    strictEqual(single.code, 0, single.stderr);
    const expected = single.stdout.split("\n").find((line) => line.startsWith("ids: "));
    ok(expected, single.stdout);
    const tp = await rankflow(["run", "pipelines/quickstart-tp.yaml", ...moved(dir)]);
    strictEqual(tp.code, 0, tp.stderr);
    ok(tp.stdout.includes("starting 2 ranks: dp 1 × tp 2"), tp.stdout);
    deepStrictEqual(rankZero(tp.stdout, "ids: "), [expected.slice("ids: ".length)]);
    ok(/^\[rank 1\] {3}serve {4}generate/m.test(tp.stdout), "rank 1 followed the serve stage");
    const manifest = JSON.parse(await Deno.readTextFile(join(dir, "engines", "manifest.json")));
    deepStrictEqual([manifest.worldSize, manifest.mesh, manifest.files.length], [2, { dp: 1, tp: 2 }, 2]);
  });
});

Deno.test("dp 2 × tp 2: four ranks, each replica generating its share, equal one rank's batch", async () => {
  await withTempDir(async (dir) => {
    const pipeline = "pipelines/quickstart-dp-tp.yaml";
    const four = await rankflow(["run", pipeline, ...moved(dir), "--set", "serve.max_tokens=6"]);
    strictEqual(four.code, 0, four.stderr);
    ok(four.stdout.includes("[rank 0] replica 0: prompts 0..2"), four.stdout);
    ok(four.stdout.includes("[rank 2] replica 1: prompts 3..4"), four.stdout);
    const one = await rankflow([
      "run",
      pipeline,
      ...moved(dir),
      "--set",
      "serve.max_tokens=6",
      "--set",
      "world.dp=1",
      "--set",
      "world.tp=1",
    ]);
    strictEqual(one.code, 0, one.stderr);
    const single = one.stdout.split("\n").filter((line) => /^\[\d\] ids: /.test(line));
    strictEqual(single.length, 5, one.stdout);
    deepStrictEqual(rankZero(four.stdout, "").filter((line) => /^\[\d\] ids: /.test(line)), single);
  });
});

Deno.test("launch runs a script per rank; the same script joins from torchrun's variables alone", async () => {
  const launched = await rankflow(["launch", "--nproc-per-node", "3", SCRIPT]);
  strictEqual(launched.code, 0, launched.stderr);
  for (const rank of [0, 1, 2]) {
    ok(launched.stdout.includes(`[rank ${rank}] rank ${rank} of 3: sum 6`), launched.stdout);
  }

  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const ranks = [0, 1].map((rank) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SCRIPT],
      env: {
        RANK: String(rank),
        LOCAL_RANK: String(rank),
        WORLD_SIZE: "2",
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
      },
      stdout: "piped",
      stderr: "piped",
    }).output()
  );
  const outputs = await Promise.all(ranks);
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  outputs.forEach((out, rank) => {
    strictEqual(out.code, 0, text(out.stderr));
    strictEqual(text(out.stdout), `rank ${rank} of 2: sum 3\n`);
  });
  ok(text(outputs[0].stderr).includes("RANKFLOW_TOKEN is not set"), text(outputs[0].stderr));
});

Deno.test("a rank killed during generation stops the job within seconds, named, with no rank left", async () => {
  await killRankOneDuringGeneration("pipelines/quickstart-tp.yaml", ["--set", "serve.max_tokens=480"]);
});

Deno.test("launch over two nodes (two controllers on this machine) makes one world of four", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const node = (rank: number) =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "main.ts",
        "launch",
        "--nproc-per-node",
        "2",
        "--nnodes",
        "2",
        "--node-rank",
        String(rank),
        "--rdzv-endpoint",
        `127.0.0.1:${port}`,
        SCRIPT,
      ],
      cwd: ROOT,
      env: { NO_COLOR: "1", RANKFLOW_TOKEN: "a-token-both-nodes-share" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  const outputs = await Promise.all([node(0), node(1)]);
  const text = outputs.map((out) => new TextDecoder().decode(out.stdout)).join("");
  outputs.forEach((out) => strictEqual(out.code, 0, new TextDecoder().decode(out.stderr)));
  for (const rank of [0, 1, 2, 3]) ok(text.includes(`[rank ${rank}] rank ${rank} of 4: sum 10`), text);
});
