// pipelines/serve.yaml as users run it: `rankflow run` starts the server, a completion is answered,
// and SIGTERM stops the server and ends the run cleanly with the stage timings.

import { ok, strictEqual } from "node:assert";
import { join } from "node:path";
import { postJson, startServingRun } from "./helpers.ts";

Deno.test({
  name: "serve pipeline: rankflow run serves completions until SIGTERM, then exits 0",
  ignore: Deno.build.os === "windows",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "rankflow-serve-pipeline-" });
    try {
      await using run = await startServingRun([
        "pipelines/serve.yaml",
        "--set",
        `export.path=${dir}/model`,
        "--set",
        `save.dir=${dir}/engines`,
        "--set",
        `load.dir=${dir}/engines`,
        "--set",
        "serve.port=0",
      ]);
      const { child, url, stderr } = run;
      const answer = await postJson(`${url}/v1/completions`, {
        model: "quickstart",
        prompt: "Once upon a time",
        max_tokens: 4,
        temperature: 0,
      });
      strictEqual(answer.status, 200, JSON.stringify(answer.body));
      strictEqual(answer.body.usage.completion_tokens, 4);
      child.kill("SIGTERM");
      const output = await run.output();
      const status = await child.status;
      strictEqual(status.code, 0, `${output}\n${await stderr}`);
      ok(/SIGTERM received, shutting down/.test(output), output);
      ok(/^ {2}serve .* ms$/m.test(output) && /^ {2}total .* ms$/m.test(output), output);
    } finally {
      await Deno.remove(join(dir), { recursive: true });
    }
  },
});
