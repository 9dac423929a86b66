// pipelines/serve-tp.yaml as users run it: the server on rank 0 of two tensor-parallel ranks, its
// answers those of one rank, and a rank killed while serving ends the job instead of hanging clients.

import { ok, strictEqual } from "node:assert";
import { join } from "node:path";
import { loadTokenizer } from "../../../plugins/export/hf_tokenizer.ts";
import { postJson, startServingRun } from "./helpers.ts";
import { type ModelInfo, replicaPort } from "../../../core/pipeline/plugin.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;

async function rankflow(args: string[]): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", "main.ts", ...args], cwd: ROOT })
    .output();
  strictEqual(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

Deno.test("serve-tp: rank 0 serves for two ranks; answers equal one rank's; killing rank 1 ends the job", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rankflow-serve-tp-" });
  await rankflow(["init-model", `${dir}/model`, "--preset", "quickstart", "--seed", "7"]);
  const prompt = [76, 105, 107, 101];
  const expected = JSON.parse(
    await rankflow(["generate", `${dir}/model`, "--ids", prompt.join(","), "--max-tokens", "6"]),
  );
  try {
    await using run = await startServingRun([
      "pipelines/serve-tp.yaml",
      "--set",
      `export.path=${dir}/model`,
      "--set",
      "serve.port=0",
    ]);
    const { child: controller, url, stderr } = run;
    const answer = await postJson(`${url}/v1/completions`, {
      model: "quickstart",
      prompt,
      max_tokens: 6,
      temperature: 0,
    });
    strictEqual(answer.status, 200, JSON.stringify(answer.body));
    const tokenizer = loadTokenizer(join(dir, "model"));
    strictEqual(answer.body.choices[0].text, tokenizer.decode(expected.ids));

    // A long request is in flight when rank 1 dies: it must end, not hang.
    const inFlight = postJson(`${url}/v1/completions`, { model: "quickstart", prompt, max_tokens: 400 })
      .then((reply) => `status ${reply.status}`, (error) => `failed: ${error.message}`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const rank1 = rankPid(controller.pid, 1);
    ok(rank1, "rank 1 is running");
    const killedAt = performance.now();
    Deno.kill(rank1, "SIGKILL");
    const status = await controller.status;
    const seconds = (performance.now() - killedAt) / 1000;
    const client = await inFlight;
    strictEqual(status.success, false);
    ok(seconds < 10, `the job took ${seconds.toFixed(1)} s to stop`);
    ok(/rank 1 .*SIGKILL/.test(await stderr), await stderr);
    ok(client === "status 500" || client === "status 503" || client.startsWith("failed"), client);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The pid of the controller's child whose RANK is `rank` (Linux /proc). */
function rankPid(parent: number, rank: number): number | undefined {
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) !== parent) continue;
      if (Deno.readTextFileSync(`/proc/${entry.name}/environ`).split("\0").includes(`RANK=${rank}`)) {
        return Number(entry.name);
      }
    } catch {
      // The process ended while we looked.
    }
  }
  return undefined;
}

Deno.test("serve: replica r of a data-parallel job listens on port + r; port 0 stays a free port", () => {
  const ctx = (rank?: number) => ({
    baseDir: "/",
    rank: 0,
    worldSize: 1,
    log: () => {},
    model: {} as ModelInfo,
    replicas: rank === undefined ? undefined : { rank, size: 2, gather: () => Promise.resolve(undefined) },
  });
  strictEqual(replicaPort(8000, ctx()), 8000);
  strictEqual(replicaPort(8000, ctx(1)), 8001);
  strictEqual(replicaPort(0, ctx(1)), 0);
});
