// The tokenizer of the random checkpoints rankflow makes itself: one id per UTF-8 byte (vocab 256),
// written as an HF tokenizer.json (byte-level BPE without merges) so that any HF tool reads it,
// and loaded, like every checkpoint's tokenizer.json, by hf_tokenizer.ts.

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

/** Loading lives with every other checkpoint's tokenizer; importers of this module keep finding it here. */
export { loadTokenizer } from "./hf_tokenizer.ts";
