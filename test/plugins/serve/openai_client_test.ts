// The openai npm package, unchanged, against the server on a tiny random model: completions, chat,
// and streams, each checked against greedy generation run directly on the engine.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import OpenAI from "openai";
import { generateGreedy } from "../../../core/runtime/generate.ts";
import { startOpenAIServer } from "../../../plugins/serve/openai.ts";
import { quiet, servedModel } from "./helpers.ts";

const CHAT_TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}" +
  "{% if add_generation_prompt %}[assistant] {% endif %}";
const served = await servedModel("tiny-llama", { chat_template: CHAT_TEMPLATE });

async function greedyText(prompt: string, maxTokens: number): Promise<string> {
  const [ids] = await generateGreedy(served.engine, [served.tokenizer.encode(prompt)], { maxTokens });
  return served.tokenizer.decode(ids);
}

function client(url: string): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
}

Deno.test("openai client: a completion at temperature 0 is the greedy continuation, with usage", async () => {
  await using server = startOpenAIServer(served.engine, { port: 0, model: "tiny" }, { ...served, ...quiet });
  const openai = client(server.url);
  const prompt = "Once upon a time";
  const completion = await openai.completions.create({
    model: "tiny",
    prompt,
    max_tokens: 12,
    temperature: 0,
  });
  strictEqual(completion.object, "text_completion");
  strictEqual(completion.model, "tiny");
  strictEqual(completion.choices[0].text, await greedyText(prompt, 12));
  strictEqual(completion.choices[0].finish_reason, "length");
  deepStrictEqual(completion.usage, {
    prompt_tokens: prompt.length,
    completion_tokens: 12,
    total_tokens: prompt.length + 12,
  });
  const models = await openai.models.list();
  deepStrictEqual(models.data.map((model) => model.id), ["tiny"]);
});

Deno.test("openai client: chat renders the checkpoint's template and answers as the assistant", async () => {
  await using server = startOpenAIServer(served.engine, { port: 0, model: "tiny" }, { ...served, ...quiet });
  const messages = [{ role: "system" as const, content: "Be brief." }, {
    role: "user" as const,
    content: "Hi",
  }];
  const chat = await client(server.url).chat.completions.create({
    model: "tiny",
    messages,
    max_tokens: 8,
    temperature: 0,
  });
  const rendered = "[system] Be brief.\n[user] Hi\n[assistant] ";
  strictEqual(chat.object, "chat.completion");
  strictEqual(chat.choices[0].message.role, "assistant");
  strictEqual(chat.choices[0].message.content, await greedyText(rendered, 8));
  strictEqual(chat.usage?.prompt_tokens, rendered.length);
});

Deno.test("openai client: streamed completion and chat give the same text as unstreamed, then usage", async () => {
  await using server = startOpenAIServer(served.engine, { port: 0, model: "tiny" }, { ...served, ...quiet });
  const openai = client(server.url);
  const prompt = "The cat";
  const stream = await openai.completions.create({
    model: "tiny",
    prompt,
    max_tokens: 10,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let chunks = 0;
  let finish: string | null = null;
  let usage;
  for await (const chunk of stream) {
    chunks++;
    for (const choice of chunk.choices) {
      text += choice.text;
      finish ??= choice.finish_reason;
    }
    usage ??= chunk.usage ?? undefined;
  }
  strictEqual(text, await greedyText(prompt, 10));
  ok(chunks > 3, `${chunks} chunks: the text came in pieces`);
  strictEqual(finish, "length");
  strictEqual(usage?.completion_tokens, 10);

  const chat = await openai.chat.completions.create({
    model: "tiny",
    messages: [{ role: "user", content: "Hi" }],
    max_tokens: 6,
    temperature: 0,
    stream: true,
  });
  let content = "";
  const roles: string[] = [];
  for await (const chunk of chat) {
    content += chunk.choices[0]?.delta.content ?? "";
    if (chunk.choices[0]?.delta.role) roles.push(chunk.choices[0].delta.role);
  }
  deepStrictEqual(roles, ["assistant"]);
  strictEqual(content, await greedyText("[user] Hi\n[assistant] ", 6));
});
