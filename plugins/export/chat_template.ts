// A checkpoint's chat template: the Jinja text in tokenizer_config.json's `chat_template`, rendered
// with @huggingface/jinja the way transformers' apply_chat_template renders it (the special tokens
// by name, add_generation_prompt on, so the prompt ends where the assistant's reply begins).

import { Template } from "@huggingface/jinja";
import type { ChatMessage } from "../../core/runtime/tokenizer.ts";

/** The text of a special token as tokenizer_config.json gives it: a string, `{content}`, or null. */
export function specialTokenText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return undefined;
}

/**
 * The template's source: `chat_template` is a string, or a list of named templates of which the one
 * named "default" is used. Undefined where the config has none.
 */
export function chatTemplateSource(config: Record<string, unknown>): string | undefined {
  const value = config.chat_template;
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value.find((entry) => entry?.name === "default") ?? value[0];
    return typeof named?.template === "string" ? named.template : undefined;
  }
  return undefined;
}

/** Compiles the template once; the function renders a conversation with the config's special tokens. */
export function compileChatTemplate(
  source: string,
  config: Record<string, unknown>,
): (messages: ChatMessage[]) => string {
  let template: Template;
  try {
    template = new Template(source);
  } catch (error) {
    throw new SyntaxError(
      `tokenizer_config.json: chat_template does not parse: ${(error as Error).message}`,
      { cause: error },
    );
  }
  const tokens: Record<string, string> = {};
  for (const name of ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token"]) {
    const text = specialTokenText(config[name]);
    if (text !== undefined) tokens[name] = text;
  }
  return function renderChat(messages: ChatMessage[]): string {
    return template.render({ ...tokens, messages, add_generation_prompt: true });
  };
}
