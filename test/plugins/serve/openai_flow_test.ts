// Flow control over HTTP: a full queue answers 429, a timed-out request 504, and a stream whose
// client goes away frees its slot for the next request. Engine steps are held back or slowed
// down so that each state is reached on purpose, not by timing luck.

import { ok, strictEqual } from "node:assert";
import { PipelineError } from "../../../core/pipeline/errors.ts";
import openai, { options, startOpenAIServer } from "../../../plugins/serve/openai.ts";
import { delayedEngine, metricValue, postJson, quiet, servedModel } from "./helpers.ts";

const served = await servedModel("tiny-llama");
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function waitForMetric(url: string, name: string, value: number): Promise<void> {
  for (let tries = 0; tries < 500; tries++) {
    if (metricValue(await (await fetch(`${url}/metrics`)).text(), name) === value) return;
    await sleep(5);
  }
  throw new Error(`${name} never reached ${value}`);
}

Deno.test("openai flow: past the queue bound the server answers 429, and the queued are still served", async () => {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const engine = delayedEngine(served.engine, () => gate);
  await using server = startOpenAIServer(engine, { port: 0, model: "tiny", max_batch: 1, max_queue: 1 }, {
    ...served,
    ...quiet,
  });
  const url = `${server.url}/v1/completions`;
  const request = { model: "tiny", prompt: "Hi", max_tokens: 2, temperature: 0 };
  const first = postJson(url, request);
  await waitForMetric(server.url, "rankflow_running_sequences", 1);
  const second = postJson(url, request);
  await waitForMetric(server.url, "rankflow_queue_depth", 1);
  const third = await postJson(url, request);
  strictEqual(third.status, 429);
  ok(/busy: 1 requests are already waiting/.test(third.body.error.message), third.body.error.message);
  strictEqual(third.body.error.type, "rate_limit_error");
  open();
  strictEqual((await first).status, 200);
  strictEqual((await second).status, 200);
});

Deno.test("openai flow: a request that takes too long is answered 504 and leaves its slot", async () => {
  const engine = delayedEngine(served.engine, () => sleep(20));
  await using server = startOpenAIServer(engine, { port: 0, model: "tiny", max_batch: 1, timeout_s: 0.15 }, {
    ...served,
    ...quiet,
  });
  const slow = await postJson(`${server.url}/v1/completions`, {
    model: "tiny",
    prompt: "Hi",
    max_tokens: 100,
  });
  strictEqual(slow.status, 504);
  ok(/timed out after 0\.1 s|timed out after 0\.2 s/.test(slow.body.error.message), slow.body.error.message);
  const quick = await postJson(`${server.url}/v1/completions`, {
    model: "tiny",
    prompt: "Hi",
    max_tokens: 2,
  });
  strictEqual(quick.status, 200);
  strictEqual(metricValue(server.metrics.text(), 'rankflow_sequences_finished_total{reason="failed"}'), 1);
});

Deno.test("openai flow: a stream whose client goes away frees its slot at once", async () => {
  const engine = delayedEngine(served.engine, () => sleep(10));
  await using server = startOpenAIServer(engine, { port: 0, model: "tiny", max_batch: 1 }, {
    ...served,
    ...quiet,
  });
  const client = new AbortController();
  const response = await fetch(`${server.url}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({ model: "tiny", prompt: "Hi", max_tokens: 100, stream: true }),
    signal: client.signal,
  });
  const reader = response.body!.getReader();
  await reader.read();
  client.abort();
  await reader.cancel().catch(() => {});
  await waitForMetric(server.url, 'rankflow_sequences_finished_total{reason="cancelled"}', 1);
  const generated = metricValue(server.metrics.text(), "rankflow_generated_tokens_total");
  ok(generated < 100, `the cancelled stream stopped after ${generated} of 100 tokens`);
  const next = await postJson(`${server.url}/v1/completions`, { model: "tiny", prompt: "Hi", max_tokens: 3 });
  strictEqual(next.status, 200);
  strictEqual(metricValue(server.metrics.text(), "rankflow_running_sequences"), 0);
});

Deno.test("openai flow: a failed engine step stops the server with a clear log line, and serve() rejects", async () => {
  let runs = 0;
  const engine = delayedEngine(served.engine, async () => {
    if (++runs > 1) throw new Error("rank 1 is gone");
    await sleep(0);
  });
  const lines: string[] = [];
  let listening!: (url: string) => void;
  const url = new Promise<string>((resolve) => (listening = resolve));
  const log = (line: string) => {
    lines.push(line);
    const found = line.match(/on (http\S+)\/v1/);
    if (found) listening(found[1]);
  };
  const serving = openai.serve(engine, options.parse({ port: 0, model: "tiny" }), {
    ...served,
    log,
    baseDir: ".",
    rank: 0,
    worldSize: 1,
  });
  // serve() may reject while the request is answered; the outcome is looked at after.
  const outcome = serving.then(() => new Error("serve() resolved"), (error: Error) => error);
  const answer = await postJson(`${await url}/v1/completions`, {
    model: "tiny",
    prompt: "Hi",
    max_tokens: 5,
  });
  strictEqual(answer.status, 500);
  ok(/the engine step failed: rank 1 is gone/.test(answer.body.error.message), answer.body.error.message);
  const error = await outcome;
  ok(error instanceof PipelineError, String(error));
  ok(
    /serve openai: the server stopped: the engine step failed: rank 1 is gone/.test(error.message),
    error.message,
  );
  ok(
    lines.includes("openai: stopping the server, since the engine step failed: rank 1 is gone"),
    lines.join("\n"),
  );
});
