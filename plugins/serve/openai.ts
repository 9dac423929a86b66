// The serve plugin "openai": an HTTP server speaking OpenAI's completions API (POST /v1/completions,
// POST /v1/chat/completions, GET /v1/models) over continuous batching, with /metrics for Prometheus.
// startOpenAIServer runs it and hands back a way to stop it; the plugin's serve() runs it until
// SIGINT or SIGTERM.

import { z } from "zod";
import { definePlugin, replicaPort, type ServeContext } from "../../core/pipeline/plugin.ts";
import { PipelineError } from "../../core/pipeline/errors.ts";
import type { Engine } from "../../core/runtime/engine.ts";
import { openSequences } from "../../core/runtime/sequences.ts";
import { asServeError, openAIErrorType, ServeError } from "../../core/serve/errors.ts";
import { startChoices } from "../../core/serve/generation.ts";
import {
  jsonResponse,
  listen,
  readJsonBody,
  type RunningServer,
  serverOptionFields,
  serveUntilStopped,
} from "../../core/serve/http.ts";
import { METRICS_CONTENT_TYPE, MetricsRegistry } from "../../core/serve/metrics.ts";
import {
  type GenerationParams,
  parseChatRequest,
  parseCompletionRequest,
} from "../../core/serve/openai_protocol.ts";
import { Scheduler } from "../../core/serve/scheduler.ts";
import { completeAll, now, renderChat, streamChoices, usage } from "../../core/serve/openai_responses.ts";

export const options = z.object({
  ...serverOptionFields({ timeoutSeconds: 120, maxBodyBytes: 1 << 20 }),
  model: z.string().min(1).default("rankflow").describe("the model name clients send and /v1/models lists"),
  max_batch: z.number().int().positive().default(16)
    .describe("most sequences in one engine step (the sequence slots)"),
  max_prefill_tokens: z.number().int().positive().default(2048)
    .describe("most prompt tokens that join the batch in one step"),
  default_max_tokens: z.number().int().positive().default(128)
    .describe("max_tokens of a request that gives none (cut to what the context leaves)"),
}).strict();
export type Options = z.infer<typeof options>;

export default definePlugin({
  kind: "serve",
  name: "openai",
  description: "OpenAI-compatible completions and chat over HTTP, continuously batched",
  options,
  serve: serveOpenAI,
});

async function serveOpenAI(engine: Engine, opts: Options, ctx: ServeContext): Promise<void> {
  const server = startOpenAIServer(engine, { ...opts, port: replicaPort(opts.port, ctx) }, ctx);
  ctx.log(`openai: serving ${opts.model} on ${server.url}/v1 (Ctrl-C stops)`);
  await serveUntilStopped("openai", server, ctx.log);
}

/** Starts the server; options not given take their defaults. */
export function startOpenAIServer(
  engine: Engine,
  opts: Partial<Options>,
  ctx: Pick<ServeContext, "model" | "tokenizer" | "log">,
): RunningServer & {
  metrics: MetricsRegistry;
  scheduler: Scheduler;
  engineFailure(): ServeError | undefined;
} {
  const config = options.parse(opts);
  const tokenizer = ctx.tokenizer;
  if (!tokenizer) {
    throw new PipelineError("serve openai: the model has no tokenizer.json, so text cannot be served");
  }
  if (!tokenizer.renderChat) {
    ctx.log("openai: the tokenizer has no chat_template; chat prompts are plain 'role: content' lines");
  }
  const maxLength = ctx.model.maxPositions;
  const pool = openSequences(engine, { slots: config.max_batch, maxLength });
  const metrics = new MetricsRegistry();
  const requests = metrics.counter("rankflow_requests_total", "HTTP requests answered, by route and status");
  const scheduler = new Scheduler(pool, {
    maxQueue: config.max_queue,
    maxPrefillTokens: config.max_prefill_tokens,
    timeoutMs: config.timeout_s * 1000,
    onEngineError: stopOnEngineError,
  }, metrics);
  const limits = { maxLength, defaultMaxTokens: config.default_max_tokens };
  const created = Math.floor(Date.now() / 1000);
  const modelCard = { id: config.model, object: "model", created, owned_by: "rankflow" };

  const checkModel = (params: GenerationParams) => {
    if (params.model !== config.model) {
      throw new ServeError(
        404,
        `the model '${params.model}' does not exist; this server serves '${config.model}'`,
        "model_not_found",
        "model",
      );
    }
  };
  const completions = async (request: Request): Promise<Response> => {
    const params = parseCompletionRequest(await readJsonBody(request, config.max_body_bytes));
    checkModel(params);
    const prompts = params.prompts.map((prompt) =>
      typeof prompt === "string" ? tokenizer.encode(prompt, { addSpecialTokens: true }) : prompt
    );
    const outOfVocab = prompts.flat().find((id) => id >= ctx.model.vocabSize);
    if (outOfVocab !== undefined) {
      throw new ServeError(
        400,
        `prompt: token id ${outOfVocab} is outside the vocabulary of ${ctx.model.vocabSize}`,
        "invalid_request",
        "prompt",
      );
    }
    const choices = startChoices(scheduler, tokenizer, prompts, params, limits);
    const head = {
      id: `cmpl-${crypto.randomUUID()}`,
      object: "text_completion",
      created: now(),
      model: config.model,
    };
    if (params.stream) {
      return streamChoices(
        choices,
        params,
        head,
        request.signal,
        (choice, text, done) =>
          text === undefined && !done ? undefined : {
            index: choice.index,
            text: text ?? "",
            logprobs: null,
            finish_reason: done ? choice.finishReason : null,
          },
      );
    }
    await completeAll(choices, request.signal);
    return jsonResponse({
      ...head,
      choices: choices.map((c) => ({
        index: c.index,
        text: c.text,
        logprobs: null,
        finish_reason: c.finishReason,
      })),
      usage: usage(choices, params.n),
    });
  };
  const chat = async (request: Request): Promise<Response> => {
    const params = parseChatRequest(await readJsonBody(request, config.max_body_bytes));
    checkModel(params);
    const prompt = tokenizer.encode(renderChat(tokenizer, params.messages));
    const choices = startChoices(scheduler, tokenizer, [prompt], params, limits);
    const head = { id: `chatcmpl-${crypto.randomUUID()}`, created: now(), model: config.model };
    if (params.stream) {
      return streamChoices(
        choices,
        params,
        { ...head, object: "chat.completion.chunk" },
        request.signal,
        (choice, text, done) => ({
          index: choice.index,
          delta: done ? {} : text === undefined ? { role: "assistant", content: "" } : { content: text },
          logprobs: null,
          finish_reason: done ? choice.finishReason : null,
        }),
      );
    }
    await completeAll(choices, request.signal);
    return jsonResponse({
      ...head,
      object: "chat.completion",
      choices: choices.map((c) => ({
        index: c.index,
        message: { role: "assistant", content: c.text },
        logprobs: null,
        finish_reason: c.finishReason,
      })),
      usage: usage(choices, 1),
    });
  };

  const route = (request: Request): Promise<Response> | Response => {
    const { pathname } = new URL(request.url);
    const method = request.method;
    if (pathname === "/v1/completions" && method === "POST") return completions(request);
    if (pathname === "/v1/chat/completions" && method === "POST") return chat(request);
    if (pathname === "/v1/models" && method === "GET") {
      return jsonResponse({ object: "list", data: [modelCard] });
    }
    if (pathname.startsWith("/v1/models/") && method === "GET") {
      const name = decodeURIComponent(pathname.slice("/v1/models/".length));
      if (name === config.model) return jsonResponse(modelCard);
      throw new ServeError(
        404,
        `the model '${name}' does not exist; this server serves '${config.model}'`,
        "model_not_found",
      );
    }
    if (pathname === "/metrics" && method === "GET") {
      return new Response(metrics.text(), { headers: { "content-type": METRICS_CONTENT_TYPE } });
    }
    if (pathname === "/health" && method === "GET") return jsonResponse({ status: "ok" });
    throw new ServeError(404, `no route for ${method} ${pathname}`, "unknown_route");
  };
  const handler = async (request: Request): Promise<Response> => {
    const path = new URL(request.url).pathname;
    const label = path.startsWith("/v1/models/") ? "/v1/models/{id}" : path;
    let response: Response;
    try {
      response = await route(request);
    } catch (thrown) {
      const error = asServeError(thrown);
      if (error.status >= 500) ctx.log(`openai: ${request.method} ${path}: ${error.message}`);
      response = jsonResponse({
        error: {
          message: error.message,
          type: openAIErrorType(error.status),
          param: error.param ?? null,
          code: error.code ?? null,
        },
      }, error.status);
    }
    requests.inc({ route: label, status: String(response.status) });
    return response;
  };
  const server = listen(handler, { port: config.port, hostname: config.host }, async () => {
    await scheduler.close();
    pool[Symbol.dispose]();
  });
  let failure: ServeError | undefined;
  function stopOnEngineError(error: ServeError): void {
    if (config.on_engine_error === "continue" || failure) return;
    failure = error;
    ctx.log(`openai: stopping the server, since ${error.message}`);
    void server.shutdown();
  }
  return Object.assign(server, { metrics, scheduler, engineFailure: () => failure });
}
