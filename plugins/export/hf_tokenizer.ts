// Loads a checkpoint's Hugging Face tokenizer (tokenizer.json, and tokenizer_config.json when present)
// through the maintained @huggingface/tokenizers package: byte-level BPE, SentencePiece-style
// Metaspace and the other tokenizer.json components it implements. The config adds the
// end-of-sequence id that stops generation and the chat template.

import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { join } from "node:path";
import type { Tokenizer } from "../../core/runtime/tokenizer.ts";
import { isFile } from "../../core/runtime/files.ts";
import { chatTemplateSource, compileChatTemplate, specialTokenText } from "./chat_template.ts";

/** Loads dir/tokenizer.json (and dir/tokenizer_config.json when present). */
export function loadTokenizer(dir: string): Tokenizer {
  const files: Record<string, string> = {
    "tokenizer.json": Deno.readTextFileSync(join(dir, "tokenizer.json")),
  };
  const configPath = join(dir, "tokenizer_config.json");
  if (isFile(configPath)) files["tokenizer_config.json"] = Deno.readTextFileSync(configPath);
  return tokenizerFromFiles(files, dir);
}

/** A tokenizer from the files' texts by name; `where` names them in errors. */
export function tokenizerFromFiles(files: Record<string, string>, where = "tokenizer"): Tokenizer {
  const json = parseJson(files["tokenizer.json"], `${where}/tokenizer.json`);
  const config = files["tokenizer_config.json"] === undefined
    ? {}
    : parseJson(files["tokenizer_config.json"], `${where}/tokenizer_config.json`);
  const tokenizer = new HfTokenizer(json, config);
  // The package cleans up spaces before punctuation unless told not to; transformers 5 does not.
  const cleanUp = config.clean_up_tokenization_spaces === true;
  const eos = specialTokenText(config.eos_token);
  const eosId = eos === undefined ? undefined : tokenizer.token_to_id(eos);
  const source = chatTemplateSource(config);
  return {
    files,
    encode: (text, options) =>
      tokenizer.encode(text, { add_special_tokens: options?.addSpecialTokens ?? false }).ids,
    decode: (ids) =>
      ids.length === 0
        ? ""
        : tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: cleanUp }),
    stopIds: eosId === undefined ? undefined : [eosId],
    renderChat: source === undefined ? undefined : compileChatTemplate(source, config),
  };
}

function parseJson(text: string, where: string): Record<string, unknown> {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`${where}: is not valid JSON: ${(error as Error).message}`, { cause: error });
  }
}
