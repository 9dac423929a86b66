// The OpenAI request bodies this server takes, as zod schemas, and their parsing into plain
// parameters. A field the server does not implement is refused by name rather than ignored, so a
// client never gets an answer made differently from what it asked. top_k is an extension, not
// OpenAI's (vLLM takes it too); OpenAI clients send it through extra_body.

import { z } from "zod";
import type { ChatMessage } from "../runtime/tokenizer.ts";
import { ServeError } from "./errors.ts";

const tokenId = z.number().int().nonnegative();
const stop = z.union([z.string().min(1), z.array(z.string().min(1)).max(4)]).nullish()
  .describe("up to 4 strings; the text ends before the first one generated");

const sampling = {
  model: z.string().describe("the served model's name, as GET /v1/models lists it"),
  temperature: z.number().min(0).max(2).nullish().describe("0 is greedy; default 1"),
  top_p: z.number().gt(0).max(1).nullish().describe("nucleus sampling mass; default 1"),
  top_k: z.number().int().nonnegative().nullish()
    .describe(
      "keeps the k likeliest tokens, 0 all; a rankflow extension, sent in extra_body by OpenAI clients",
    ),
  n: z.number().int().min(1).max(16).nullish().describe("completions per prompt; default 1"),
  seed: z.number().int().nullish().describe("makes sampling reproducible"),
  stop,
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  user: z.string().nullish(),
};

export const completionRequestSchema = z.looseObject({
  ...sampling,
  prompt: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(tokenId).min(1),
    z.array(z.array(tokenId).min(1)).min(1),
  ]).describe("a text, texts, token ids, or lists of token ids"),
  max_tokens: z.number().int().positive().nullish(),
});

const contentPart = z.looseObject({ type: z.literal("text"), text: z.string() });
const message = z.looseObject({
  role: z.enum(["system", "developer", "user", "assistant"]),
  content: z.union([z.string(), z.array(contentPart)]).describe("text, or parts of type text"),
});

export const chatRequestSchema = z.looseObject({
  ...sampling,
  messages: z.array(message).min(1),
  max_tokens: z.number().int().positive().nullish(),
  max_completion_tokens: z.number().int().positive().nullish(),
});

/** What every generation request asks for, with OpenAI's defaults filled in. */
export interface GenerationParams {
  model: string;
  /** Undefined: the server's default, cut to what the context leaves. */
  maxTokens?: number;
  temperature: number;
  /** top_k, a rankflow extension; 0 keeps every token. */
  topK: number;
  topP: number;
  n: number;
  seed?: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
}

export interface CompletionParams extends GenerationParams {
  prompts: (string | number[])[];
}

export interface ChatParams extends GenerationParams {
  messages: ChatMessage[];
}

/** Fields OpenAI defines that this server does not implement, and the value that means "not used". */
const UNSUPPORTED: [string, (value: unknown) => boolean][] = [
  ["logprobs", (value) => value === false || value === 0],
  ["top_logprobs", (value) => value === 0],
  ["echo", (value) => value === false],
  ["best_of", (value) => value === 1],
  ["suffix", (value) => value === ""],
  ["logit_bias", (value) => typeof value === "object" && Object.keys(value ?? {}).length === 0],
  ["presence_penalty", (value) => value === 0],
  ["frequency_penalty", (value) => value === 0],
  ["tools", (value) => Array.isArray(value) && value.length === 0],
  ["tool_choice", (value) => value === "none"],
  ["functions", (value) => Array.isArray(value) && value.length === 0],
  ["response_format", (value) => (value as { type?: unknown })?.type === "text"],
];

export function parseCompletionRequest(body: Record<string, unknown>): CompletionParams {
  const request = parse(completionRequestSchema, body);
  const prompt = request.prompt;
  const prompts = typeof prompt === "string"
    ? [prompt]
    : prompt.every((item) => typeof item === "number")
    ? [prompt as number[]]
    : prompt as (string | number[])[];
  return { ...generationParams(request, request.max_tokens), prompts };
}

export function parseChatRequest(body: Record<string, unknown>): ChatParams {
  const request = parse(chatRequestSchema, body);
  const messages = request.messages.map((m) => ({
    role: m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((part) => part.text).join(""),
  }));
  return { ...generationParams(request, request.max_completion_tokens ?? request.max_tokens), messages };
}

function generationParams(
  request: z.infer<typeof completionRequestSchema> | z.infer<typeof chatRequestSchema>,
  maxTokens: number | null | undefined,
): GenerationParams {
  return {
    model: request.model,
    maxTokens: maxTokens ?? undefined,
    temperature: request.temperature ?? 1,
    topK: request.top_k ?? 0,
    topP: request.top_p ?? 1,
    n: request.n ?? 1,
    seed: request.seed ?? undefined,
    stop: typeof request.stop === "string" ? [request.stop] : request.stop ?? [],
    stream: request.stream ?? false,
    includeUsage: request.stream_options?.include_usage ?? false,
  };
}

function parse<S extends z.ZodType>(schema: S, body: Record<string, unknown>): z.infer<S> {
  for (const [name, unused] of UNSUPPORTED) {
    if (body[name] !== undefined && body[name] !== null && !unused(body[name])) {
      throw new ServeError(400, `${name} is not supported by this server`, "unsupported_parameter", name);
    }
  }
  const parsed = schema.safeParse(body);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const path = issue.path.join(".");
  const message = issue.code === "invalid_union" ? `${path}: is not of an accepted form` : issue.message;
  throw new ServeError(
    400,
    `${path || "body"}: ${message}${describeAt(schema, issue.path)}`,
    "invalid_request",
    path || undefined,
  );
}

/** The schema's description of the field at `path`, as a hint after the error. */
function describeAt(schema: z.ZodType, path: PropertyKey[]): string {
  const shape = (schema as unknown as { shape?: Record<string, z.ZodType> }).shape;
  const field = typeof path[0] === "string" ? shape?.[path[0]] : undefined;
  return field?.description ? ` (${field.description})` : "";
}
