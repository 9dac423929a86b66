// The tokenizer of the random checkpoints rankflow makes itself: one id per UTF-8 byte (vocab 256),
// written as an HF tokenizer.json (byte-level BPE without merges) so that any HF tool reads it,
// and loaded, like every checkpoint's tokenizer.json, through @huggingface/tokenizers.

import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { join } from "node:path";
import type { Tokenizer } from "../../core/runtime/tokenizer.ts";
import { isFile } from "../../core/runtime/files.ts";

/** GPT-2's printable stand-in for each byte, the alphabet of byte-level BPE vocabularies. */
export function byteAlphabet(): string[] {
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const chars: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) chars.push(String.fromCodePoint(printable(b) ? b : next++));
  return chars;
}

/** The tokenizer.json of the byte tokenizer: token id = byte value. */
export function byteTokenizerJson(): Record<string, unknown> {
  const vocab = Object.fromEntries(byteAlphabet().map((char, byte) => [char, byte]));
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

/** Loads dir/tokenizer.json (and dir/tokenizer_config.json when present). */
export function loadTokenizer(dir: string): Tokenizer {
  const files: Record<string, string> = {
    "tokenizer.json": Deno.readTextFileSync(join(dir, "tokenizer.json")),
  };
  const configPath = join(dir, "tokenizer_config.json");
  if (isFile(configPath)) files["tokenizer_config.json"] = Deno.readTextFileSync(configPath);
  const json = JSON.parse(files["tokenizer.json"]);
  const config = files["tokenizer_config.json"] ? JSON.parse(files["tokenizer_config.json"]) : {};
  const tokenizer = new HfTokenizer(json, config);
  // The package cleans up spaces before punctuation unless told not to; transformers 5 does not.
  const cleanUp = config.clean_up_tokenization_spaces === true;
  return {
    files,
    encode: (text) => tokenizer.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) =>
      ids.length === 0
        ? ""
        : tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: cleanUp }),
  };
}
