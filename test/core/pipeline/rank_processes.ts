// Running the CLI over rank processes from tests, as users run it: the command, a scratch folder
// for a pipeline's model and engines, rank 0's lines, and a rank killed while the job generates.

import { ok, strictEqual } from "node:assert";

const ROOT = new URL("../../..", import.meta.url).pathname;

export async function rankflow(args: string[]) {
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
export function rankZero(stdout: string, prefix: string): string[] {
  return stdout.split("\n").filter((line) => line.startsWith(`[rank 0] ${prefix}`))
    .map((line) => line.slice(`[rank 0] ${prefix}`.length));
}

export async function withTempDir(work: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-ranks-" });
  try {
    await work(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `--set`s that put a quickstart pipeline's model and engines under `dir`. */
export function moved(dir: string): string[] {
  return [`export.path=${dir}/model`, `save.dir=${dir}/engines`, `load.dir=${dir}/engines`]
    .flatMap((set) => ["--set", set]);
}

/**
 * Runs a two-rank pipeline, SIGKILLs rank 1 `afterLoadMs` after it has loaded its engine, and checks
 * that generation had not ended, that the job stops within seconds, fails naming rank 1, and leaves
 * no rank process behind.
 */
export async function killRankOneDuringGeneration(
  pipeline: string,
  sets: string[],
  afterLoadMs = 500,
): Promise<void> {
  await withTempDir(async (dir) => {
    const controller = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts", "run", pipeline, ...moved(dir), ...sets],
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
    await new Promise((resolve) => setTimeout(resolve, afterLoadMs));
    const ranks = rankPids(controller.pid);
    strictEqual(ranks.size, 2, `rank processes: ${[...ranks]} (the job had printed:\n${seen})`);
    const killedAt = performance.now();
    Deno.kill(ranks.get(1)!, "SIGKILL");
    const [status, stderr] = await Promise.all([controller.status, new Response(controller.stderr).text()]);
    const printed = await output;
    const seconds = (performance.now() - killedAt) / 1000;
    console.log(`the job stopped ${seconds.toFixed(1)} s after rank 1 was killed`);
    strictEqual(status.success, false);
    ok(!/\[rank 0\] ids: /.test(printed), `generation had ended before rank 1 was killed:\n${printed}`);
    ok(seconds < 10, `the job took ${seconds.toFixed(1)} s to stop`);
    ok(/rank 1 .*(SIGKILL|signal)/.test(stderr), stderr);
    for (const pid of ranks.values()) ok(!isAlive(pid), `rank pid ${pid} is still alive`);
  });
}

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
