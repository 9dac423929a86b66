// The openai server's answers over plain HTTP: every bad request gets a 4xx with a JSON error body
// while the server keeps serving; seeds, stop strings and n behave as OpenAI documents them.

import { deepStrictEqual, notStrictEqual, ok, strictEqual } from "node:assert";
import OpenAI from "openai";
import { generateGreedy } from "../../../core/runtime/generate.ts";
import { startOpenAIServer } from "../../../plugins/serve/openai.ts";
import { postJson, quiet, servedModel } from "./helpers.ts";

const served = await servedModel("tiny-llama");
const MAX_POSITIONS = served.model.maxPositions;

function start() {
  return startOpenAIServer(served.engine, { port: 0, model: "tiny", max_body_bytes: 4096 }, {
    ...served,
    ...quiet,
  });
}

Deno.test("openai requests: each bad request gets a 4xx JSON error, and good ones are still answered", async () => {
  await using server = start();
  const completions = `${server.url}/v1/completions`;
  const chat = `${server.url}/v1/chat/completions`;
  const good = { model: "tiny", prompt: "Hello", max_tokens: 3, temperature: 0 };
  const cases: [string, string, unknown, number, RegExp][] = [
    ["malformed JSON", completions, '{"model": "tiny", "prompt": ', 400, /not valid JSON/],
    ["a body that is not an object", completions, "[1, 2]", 400, /must be a JSON object/],
    ["an unknown model", completions, { ...good, model: "gpt-9" }, 404, /model 'gpt-9' does not exist/],
    [
      "an oversized prompt",
      completions,
      { ...good, prompt: "x".repeat(MAX_POSITIONS) },
      400,
      /prompt has 128 tokens/,
    ],
    [
      "huge max_tokens",
      completions,
      { ...good, max_tokens: 1_000_000 },
      400,
      /max_tokens 1000000 need 1000005 positions/,
    ],
    ["max_tokens of the wrong type", completions, { ...good, max_tokens: "ten" }, 400, /^max_tokens: /],
    ["a negative max_tokens", completions, { ...good, max_tokens: -1 }, 400, /^max_tokens: /],
    ["temperature out of range", completions, { ...good, temperature: 7 }, 400, /^temperature: .*2/],
    ["a negative top_k", completions, { ...good, top_k: -1 }, 400, /^top_k: .*likeliest/],
    ["no prompt", completions, { model: "tiny" }, 400, /^prompt: /],
    [
      "a token id outside the vocabulary",
      completions,
      { ...good, prompt: [1, 999] },
      400,
      /token id 999 is outside/,
    ],
    ["an unsupported parameter", completions, { ...good, logprobs: 3 }, 400, /logprobs is not supported/],
    ["too many stop strings", completions, { ...good, stop: ["a", "b", "c", "d", "e"] }, 400, /^stop: /],
    [
      "a body over the size limit",
      completions,
      { ...good, prompt: "y".repeat(5000) },
      413,
      /at most 4096 are accepted/,
    ],
    ["no messages", chat, { model: "tiny", messages: [] }, 400, /^messages: /],
    [
      "a message with an unknown role",
      chat,
      { model: "tiny", messages: [{ role: "robot", content: "hi" }] },
      400,
      /^messages\.0\.role: /,
    ],
  ];
  for (const [what, url, body, status, message] of cases) {
    const answer = await postJson(url, body);
    strictEqual(answer.status, status, `${what}: ${JSON.stringify(answer.body)}`);
    ok(message.test(answer.body.error?.message), `${what}: ${answer.body.error?.message}`);
    strictEqual(typeof answer.body.error.type, "string", what);
  }
  const unknownRoute = await fetch(`${server.url}/v1/embeddings`, { method: "POST", body: "{}" });
  strictEqual(unknownRoute.status, 404);
  ok(/no route for POST \/v1\/embeddings/.test((await unknownRoute.json()).error.message));
  const answer = await postJson(completions, good);
  strictEqual(answer.status, 200);
  strictEqual(answer.body.choices[0].text.length > 0, true);
});

Deno.test("openai requests: the openai package reports the server's errors with their status", async () => {
  await using server = start();
  const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  try {
    await openai.completions.create({ model: "nope", prompt: "Hi", max_tokens: 2 });
    throw new Error("expected a NotFoundError");
  } catch (error) {
    ok(error instanceof OpenAI.NotFoundError, String(error));
    ok(/model 'nope' does not exist/.test(error.message), error.message);
  }
});

Deno.test("openai requests: a seed makes sampling repeat, and n samples per prompt differ", async () => {
  await using server = start();
  const url = `${server.url}/v1/completions`;
  const request = { model: "tiny", prompt: "Once", max_tokens: 12, temperature: 1.5, top_p: 0.95, seed: 42 };
  const [a, b] = await Promise.all([postJson(url, request), postJson(url, request)]);
  strictEqual(a.body.choices[0].text, b.body.choices[0].text);
  const samples = await postJson(url, { ...request, n: 4 });
  deepStrictEqual(samples.body.choices.map((c: { index: number }) => c.index), [0, 1, 2, 3]);
  strictEqual(samples.body.choices[0].text, a.body.choices[0].text, "choice 0 uses the seed itself");
  const distinct = new Set(samples.body.choices.map((c: { text: string }) => c.text));
  ok(distinct.size > 1, "samples with seeds 42..45 are not all the same");
  strictEqual(samples.body.usage.prompt_tokens, 4, "the prompt counts once");
  strictEqual(samples.body.usage.completion_tokens, 48);
  const greedy = await postJson(url, { ...request, temperature: 0 });
  const [ids] = await generateGreedy(served.engine, [served.tokenizer.encode("Once")], { maxTokens: 12 });
  strictEqual(greedy.body.choices[0].text, served.tokenizer.decode(ids));
  notStrictEqual(a.body.choices[0].text, greedy.body.choices[0].text);
  const topOne = await postJson(url, { ...request, top_k: 1 });
  strictEqual(topOne.body.choices[0].text, greedy.body.choices[0].text, "top_k 1 keeps only the argmax");
});

Deno.test("openai requests: the text ends before the first stop string, streamed or not", async () => {
  await using server = start();
  const prompt = "Hello";
  const [ids] = await generateGreedy(served.engine, [served.tokenizer.encode(prompt)], { maxTokens: 24 });
  const full = served.tokenizer.decode(ids);
  // A stop string of two printable characters from the middle of the greedy text.
  const at = [...full].findIndex((_, i) =>
    i > 2 && /^[ -~]{2}$/.test(full.slice(i, i + 2)) && full.indexOf(full.slice(i, i + 2)) === i
  );
  ok(at > 0, `no printable pair in ${JSON.stringify(full)}`);
  const stop = full.slice(at, at + 2);
  const request = { model: "tiny", prompt, max_tokens: 24, temperature: 0, stop: ["never here", stop] };
  const answer = await postJson(`${server.url}/v1/completions`, request);
  strictEqual(answer.body.choices[0].text, full.slice(0, at));
  strictEqual(answer.body.choices[0].finish_reason, "stop");
  ok(answer.body.usage.completion_tokens < 24, "generation stopped early");
  const response = await fetch(`${server.url}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({ ...request, stream: true }),
  });
  let streamed = "";
  let finish;
  for (const line of (await response.text()).split("\n")) {
    if (!line.startsWith("data: {")) continue;
    const chunk = JSON.parse(line.slice("data: ".length));
    streamed += chunk.choices[0].text;
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  strictEqual(streamed, full.slice(0, at));
  strictEqual(finish, "stop");
});

Deno.test("openai requests: without a chat template, chat prompts are plain 'role: content' lines", async () => {
  await using server = start();
  const messages = [{ role: "user", content: "Hi" }, { role: "assistant", content: "Yo" }, {
    role: "user",
    content: "?",
  }];
  const answer = await postJson(`${server.url}/v1/chat/completions`, {
    model: "tiny",
    messages,
    max_completion_tokens: 5,
    temperature: 0,
  });
  const rendered = "user: Hi\nassistant: Yo\nuser: ?\nassistant:";
  const [ids] = await generateGreedy(served.engine, [served.tokenizer.encode(rendered)], { maxTokens: 5 });
  strictEqual(answer.body.choices[0].message.content, served.tokenizer.decode(ids));
  strictEqual(answer.body.usage.prompt_tokens, rendered.length);
});
