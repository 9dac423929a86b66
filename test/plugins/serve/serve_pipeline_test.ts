// pipelines/serve.yaml as users run it: `rankflow run` starts the server, a completion is answered,
// and SIGTERM stops the server and ends the run cleanly with the stage timings.

import { ok, strictEqual } from "node:assert";
import { join } from "node:path";
import { postJson } from "./helpers.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;

Deno.test({
  name: "serve pipeline: rankflow run serves completions until SIGTERM, then exits 0",
  ignore: Deno.build.os === "windows",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "rankflow-serve-pipeline-" });
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "main.ts",
        "run",
        "pipelines/serve.yaml",
        "--set",
        `export.path=${dir}/model`,
        "--set",
        `save.dir=${dir}/engines`,
        "--set",
        `load.dir=${dir}/engines`,
        "--set",
        "serve.port=0",
      ],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let output = "";
    try {
      let url: string | undefined;
      while (!url) {
        const { value, done } = await lines.read();
        if (done) throw new Error(`the run ended before serving:\n${output}\n${await stderr}`);
        output += value;
        url = output.match(/serving quickstart on (http:\/\/[\d.]+:\d+)\/v1/)?.[1];
      }
      const answer = await postJson(`${url}/v1/completions`, {
        model: "quickstart",
        prompt: "Once upon a time",
        max_tokens: 4,
        temperature: 0,
      });
      strictEqual(answer.status, 200, JSON.stringify(answer.body));
      strictEqual(answer.body.usage.completion_tokens, 4);
      child.kill("SIGTERM");
      while (true) {
        const { value, done } = await lines.read();
        if (done) break;
        output += value;
      }
      const status = await child.status;
      strictEqual(status.code, 0, `${output}\n${await stderr}`);
      ok(/SIGTERM received, shutting down/.test(output), output);
      ok(/^ {2}serve .* ms$/m.test(output) && /^ {2}total .* ms$/m.test(output), output);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
      await child.status;
      await stderr;
      await Deno.remove(join(dir), { recursive: true });
    }
  },
});
