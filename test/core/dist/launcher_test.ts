import { deepStrictEqual, equal, ok as assert, rejects, throws } from "node:assert";
import { DistError } from "../../../core/dist/group.ts";
import { hasRankEnv, readRankEnv } from "../../../core/dist/env.ts";
import { launch, LaunchError, type RankLine } from "../../../core/dist/launcher.ts";

const worker = new URL("./workers/rank_worker.ts", import.meta.url).pathname;

function entry(mode: string): string[] {
  return ["run", "-A", "--no-lock", worker, mode];
}

function alive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

function collect(): { lines: RankLine[]; output: (line: RankLine) => void } {
  const lines: RankLine[] = [];
  return { lines, output: (line) => lines.push(line) };
}

Deno.test("launcher: 3 ranks see their place and all-reduce over tcp", async () => {
  const { lines, output } = collect();
  const result = await launch({ entry: entry("allreduce"), nprocPerNode: 3, timeoutSeconds: 60, output });
  equal(result.worldSize, 3);
  deepStrictEqual(result.ranks.map((exit) => [exit.rank, exit.code]), [[0, 0], [1, 0], [2, 0]]);
  for (const rank of [0, 1, 2]) {
    const own = lines.filter((line) => line.rank === rank && line.stream === "stdout").map((line) =>
      line.text
    );
    const place = JSON.parse(own.find((text) => text.startsWith("place "))!.slice("place ".length));
    equal(place.rank, rank);
    equal(place.localRank, rank);
    equal(place.worldSize, 3);
    equal(place.localWorldSize, "3");
    equal(place.masterAddr, "127.0.0.1");
    assert(place.masterPort > 0);
    assert(/^[0-9a-f]{32}$/.test(place.token), `token ${place.token}`);
    assert(own.includes("sum 6"), `rank ${rank} printed ${own.join(" | ")}`);
  }
});

Deno.test("launcher: a rank exiting 3 stops the job quickly, named with its stderr", async () => {
  const { output } = collect();
  await rejects(
    launch({ entry: entry("fail"), nprocPerNode: 3, timeoutSeconds: 60, graceSeconds: 2, output }),
    (error: Error) => {
      assert(error instanceof LaunchError, String(error));
      equal(error.rank, 1);
      equal(error.code, 3);
      assert(/rank 1 exited with code 3/.test(error.message), error.message);
      assert(error.message.includes("rank 1 is about to fail"), error.message);
      const failedAt = Number(/failing on purpose at (\d+)/.exec(error.stderrTail.join("\n"))![1]);
      assert(Date.now() - failedAt < 5000, `took ${Date.now() - failedAt} ms after the rank failed`);
      for (const exit of error.ranks) {
        assert(!alive(exit.pid), `rank ${exit.rank} (pid ${exit.pid}) is still alive`);
      }
      return true;
    },
  );
});

Deno.test("launcher: ranks past the timeout are killed, SIGKILL for one that ignores SIGTERM", async () => {
  const { lines, output } = collect();
  const started = Date.now();
  await rejects(
    launch({ entry: entry("hang"), nprocPerNode: 3, timeoutSeconds: 2, graceSeconds: 0.5, output }),
    (error: Error) => {
      assert(error instanceof LaunchError, String(error));
      assert(/ranks 0, 1, 2 ran past the timeout of 2 s/.test(error.message), error.message);
      deepStrictEqual(error.ranks.map((exit) => exit.signal), ["SIGTERM", "SIGTERM", "SIGKILL"]);
      for (const exit of error.ranks) {
        assert(!alive(exit.pid), `rank ${exit.rank} (pid ${exit.pid}) is still alive`);
      }
      return true;
    },
  );
  assert(Date.now() - started < 6000, `took ${Date.now() - started} ms`);
  assert(lines.some((line) => line.rank === 2 && line.text === "ignoring SIGTERM"));
});

Deno.test("launcher: SIGTERM to the controller reaches every rank, prefixed output names them", async () => {
  const controller = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-lock", new URL("./workers/controller.ts", import.meta.url).pathname, worker],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const pids = new Map<number, number>();
  const reader = controller.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (pids.size < 3) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
    for (const match of text.matchAll(/^\[rank (\d)\] place (.*)$/gm)) {
      pids.set(Number(match[1]), JSON.parse(match[2]).pid);
    }
  }
  equal(pids.size, 3, text);
  // Rank 2 installs its SIGTERM listener after printing its place; give it a moment.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const signalled = Date.now();
  controller.kill("SIGTERM");
  const [status, stderr] = await Promise.all([
    controller.status,
    new Response(controller.stderr).text(),
    reader.cancel(),
  ]);
  assert(Date.now() - signalled < 4000, `took ${Date.now() - signalled} ms`);
  equal(status.code, 1, stderr);
  assert(/received SIGTERM/.test(stderr), stderr);
  for (const [rank, pid] of pids) assert(!alive(pid), `rank ${rank} (pid ${pid}) is still alive`);
});

// The launcher's contract with its ranks, as core/dist/env.ts reads it.
Deno.test("env: torchrun and mpirun variables give a rank its place; gaps are listed", () => {
  const store = { MASTER_ADDR: "10.0.0.1", MASTER_PORT: "29500" };
  deepStrictEqual(
    readRankEnv({ RANK: "5", LOCAL_RANK: "1", WORLD_SIZE: "8", RANKFLOW_TOKEN: "ab", ...store }),
    {
      rank: 5,
      localRank: 1,
      worldSize: 8,
      masterAddr: "10.0.0.1",
      masterPort: 29500,
      token: "ab",
      source: "torchrun",
    },
  );
  const mpi = {
    OMPI_COMM_WORLD_RANK: "2",
    OMPI_COMM_WORLD_LOCAL_RANK: "0",
    OMPI_COMM_WORLD_SIZE: "4",
    ...store,
  };
  deepStrictEqual(readRankEnv(mpi), {
    rank: 2,
    localRank: 0,
    worldSize: 4,
    masterAddr: "10.0.0.1",
    masterPort: 29500,
    token: undefined,
    source: "mpirun",
  });
  equal(hasRankEnv({}), false);
  equal(hasRankEnv(mpi), true);
  throws(() => readRankEnv({ RANK: "0", MASTER_ADDR: "h" }), (error: Error) => {
    assert(error instanceof DistError);
    assert(
      /missing environment variables LOCAL_RANK, WORLD_SIZE, MASTER_PORT:/.test(error.message),
      error.message,
    );
    return true;
  });
  throws(
    () => readRankEnv({ RANK: "4", LOCAL_RANK: "x", WORLD_SIZE: "4", ...store }),
    /RANK="4" is not an integer in 0..3; LOCAL_RANK="x"/,
  );
});
