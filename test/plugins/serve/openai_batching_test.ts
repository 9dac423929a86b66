// 200 concurrent requests against the CPU quickstart model: every answer equals the single-request
// greedy continuation, and /metrics shows that engine steps ran many sequences at once.

import { ok, strictEqual } from "node:assert";
import { generateGreedy } from "../../../core/runtime/generate.ts";
import { startOpenAIServer } from "../../../plugins/serve/openai.ts";
import { metricValue, quiet, servedModel } from "./helpers.ts";

const served = await servedModel("quickstart");
const MAX_TOKENS = 5;

Deno.test("openai batching: 200 concurrent requests are each answered with their own greedy text", async () => {
  const prompts = Array.from({ length: 20 }, (_, i) => `#${i} ${"tale of ".slice(0, i % 7)}x`);
  const expected = new Map<string, string>();
  for (const prompt of prompts) {
    const [ids] = await generateGreedy(served.engine, [served.tokenizer.encode(prompt)], {
      maxTokens: MAX_TOKENS,
    });
    expected.set(prompt, served.tokenizer.decode(ids));
  }
  await using server = startOpenAIServer(served.engine, { port: 0, model: "quickstart", max_batch: 64 }, {
    ...served,
    ...quiet,
  });
  const requests = Array.from({ length: 200 }, (_, i) => prompts[(i * 7) % prompts.length]);
  const answers = await Promise.all(requests.map(async (prompt) => {
    const response = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "quickstart", prompt, max_tokens: MAX_TOKENS, temperature: 0 }),
    });
    strictEqual(response.status, 200, await response.clone().text());
    return { prompt, body: await response.json() };
  }));
  for (const { prompt, body } of answers) {
    strictEqual(body.choices[0].text, expected.get(prompt), `prompt ${JSON.stringify(prompt)}`);
    strictEqual(body.usage.completion_tokens, MAX_TOKENS);
  }
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  strictEqual(metricValue(metrics, "rankflow_generated_tokens_total"), 200 * MAX_TOKENS);
  strictEqual(metricValue(metrics, "rankflow_queue_depth"), 0);
  strictEqual(metricValue(metrics, "rankflow_running_sequences"), 0);
  const steps = metricValue(metrics, "rankflow_step_batch_size_count");
  const sequenceSteps = metricValue(metrics, "rankflow_step_batch_size_sum");
  strictEqual(sequenceSteps, 200 * MAX_TOKENS, "each sequence is in one step per token");
  ok(
    steps <= 200 * MAX_TOKENS / 16,
    `${steps} steps for ${sequenceSteps} sequence-steps: batches averaged >= 16`,
  );
  ok(server.scheduler.maxBatch >= 32, `the largest step ran ${server.scheduler.maxBatch} sequences`);
});
