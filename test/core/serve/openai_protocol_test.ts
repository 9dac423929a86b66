import { strictEqual, throws } from "node:assert";
import type { ServeError } from "../../../core/serve/errors.ts";
import { parseChatRequest, parseCompletionRequest } from "../../../core/serve/openai_protocol.ts";

const completion = { model: "tiny", prompt: "Hi" };
const chat = { model: "tiny", messages: [{ role: "user", content: "Hi" }] };

Deno.test("openai protocol: top_k is taken as topK, 0 where absent or null", () => {
  strictEqual(parseCompletionRequest({ ...completion, top_k: 40 }).topK, 40);
  strictEqual(parseCompletionRequest({ ...completion, top_k: 0 }).topK, 0);
  strictEqual(parseCompletionRequest(completion).topK, 0);
  strictEqual(parseCompletionRequest({ ...completion, top_k: null }).topK, 0);
  strictEqual(parseChatRequest({ ...chat, top_k: 3, top_p: 0.5 }).topK, 3);
  strictEqual(parseChatRequest(chat).topK, 0);
});

Deno.test("openai protocol: a top_k that is negative or not whole is refused with a 400 naming it", () => {
  for (const [parse, body] of [[parseCompletionRequest, completion], [parseChatRequest, chat]] as const) {
    for (const topK of [-1, 2.5, "5"]) {
      throws(
        () => parse({ ...body, top_k: topK }),
        (error: ServeError) =>
          error.status === 400 && error.param === "top_k" && /^top_k: .*likeliest tokens/.test(error.message),
      );
    }
  }
});
