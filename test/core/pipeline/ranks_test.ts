// Pipelines and scripts over rank processes, run through the CLI as users run them.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { join } from "node:path";

const ROOT = new URL("../../..", import.meta.url).pathname;
const SCRIPT = join(ROOT, "test/fixtures/launch/sum_ranks.ts");

async function rankflow(args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, stdout: new TextDecoder().decode(stdout), stderr: new TextDecoder().decode(stderr) };
}

/** The lines rank 0 printed with the given prefix, the prefix removed. */
function rankZero(stdout: string, prefix: string): string[] {
  return stdout.split("\n").filter((line) => line.startsWith(`[rank 0] ${prefix}`))
    .map((line) => line.slice(`[rank 0] ${prefix}`.length));
}

async function withTempDir(work: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-ranks-" });
  try {
    await work(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function moved(dir: string): string[] {
  return [`export.path=${dir}/model`, `save.dir=${dir}/engines`, `load.dir=${dir}/engines`]
    .flatMap((set) => ["--set", set]);
}

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
  await withTempDir(async (dir) => {
    const controller = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "main.ts",
        "run",
        "pipelines/quickstart-tp.yaml",
        ...moved(dir),
        "--set",
        "serve.max_tokens=480",
      ],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const [forOutput, forLines] = controller.stdout.tee();
    const output = new Response(forOutput).text();
    const lines = forLines.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!/\[rank 1\] {3}load /.test(seen)) {
      const { value, done } = await lines.read();
      if (done) break;
      seen += value;
    }
    await lines.cancel();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const ranks = rankPids(controller.pid);
    strictEqual(ranks.size, 2, `rank processes: ${[...ranks]}`);
    const killedAt = performance.now();
    Deno.kill(ranks.get(1)!, "SIGKILL");
    const [status, stderr] = await Promise.all([controller.status, new Response(controller.stderr).text()]);
    await output;
    const seconds = (performance.now() - killedAt) / 1000;
    strictEqual(status.success, false);
    ok(seconds < 10, `the job took ${seconds.toFixed(1)} s to stop`);
    ok(/rank 1 .*(SIGKILL|signal)/.test(stderr), stderr);
    for (const pid of ranks.values()) ok(!isAlive(pid), `rank pid ${pid} is still alive`);
  });
});

/** The controller's child processes by their RANK variable (Linux /proc). */
function rankPids(parent: number): Map<number, number> {
  const pids = new Map<number, number>();
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid !== parent) continue;
      const env = Deno.readTextFileSync(`/proc/${entry.name}/environ`).split("\0");
      const rank = env.find((line) => line.startsWith("RANK="));
      if (rank) pids.set(Number(rank.slice(5)), Number(entry.name));
    } catch {
      // The process ended while we looked.
    }
  }
  return pids;
}

function isAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return false;
  }
}

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
