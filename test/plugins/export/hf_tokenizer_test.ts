import { deepStrictEqual, strictEqual, throws } from "node:assert";
import { byteAlphabet, byteTokenizerJson } from "../../../plugins/export/byte_tokenizer.ts";
import { tokenizerFromFiles } from "../../../plugins/export/hf_tokenizer.ts";

// A byte-level BPE small enough to work out by hand: the 256 byte symbols, five merges in rank
// order, and one special token. GPT-2's pre-tokenizer regex splits " the" off as its own word.
const MERGES = ["Ġ t", "h e", "Ġt he", "i n", "in g"];
const [GT, HE, GTHE, IN, ING, END] = [256, 257, 258, 259, 260, 261];

function handMadeBpe(config?: Record<string, unknown>) {
  const json = byteTokenizerJson() as { model: Record<string, unknown> } & Record<string, unknown>;
  const vocab = Object.fromEntries(byteAlphabet().map((char, byte) => [char, byte]));
  MERGES.forEach((merge, rank) => (vocab[merge.replace(" ", "")] = 256 + rank));
  json.model = { ...json.model, vocab, merges: MERGES };
  json.pre_tokenizer = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  json.added_tokens = [{
    id: END,
    content: "<|end|>",
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }];
  const files: Record<string, string> = { "tokenizer.json": JSON.stringify(json) };
  if (config) files["tokenizer_config.json"] = JSON.stringify(config);
  return tokenizerFromFiles(files, "hand-made");
}

Deno.test("hf tokenizer: byte-level BPE applies merges by rank, per pre-tokenized word", () => {
  const tokenizer = handMadeBpe();
  const t = "t".charCodeAt(0), h = "h".charCodeAt(0);
  // "the" → t h e → t he (Ġt he needs Ġ); " the" → Ġ t h e → Ġt h e → Ġt he → Ġthe.
  deepStrictEqual(tokenizer.encode("the"), [t, HE]);
  deepStrictEqual(tokenizer.encode(" the"), [GTHE]);
  // " thing" → Ġt h i n g → Ġt h in g → Ġt h ing: no merge joins h to its neighbours.
  deepStrictEqual(tokenizer.encode(" thing"), [GT, h, ING]);
  deepStrictEqual(tokenizer.encode("in"), [IN]);
  deepStrictEqual(tokenizer.encode("the thing"), [t, HE, GT, h, ING]);
  for (const text of ["the thing", " the in-thing, é 世", "a<|end|>b"]) {
    strictEqual(tokenizer.decode(tokenizer.encode(text)), text);
  }
});

Deno.test("hf tokenizer: special tokens in text are one id, and eos_token names the stop id", () => {
  const tokenizer = handMadeBpe({ eos_token: { content: "<|end|>" } });
  deepStrictEqual(tokenizer.encode("in<|end|>"), [IN, END]);
  deepStrictEqual(tokenizer.stopIds, [END]);
  strictEqual(handMadeBpe().stopIds, undefined);
  strictEqual(handMadeBpe().renderChat, undefined);
});

Deno.test("hf tokenizer: the chat template renders with the special tokens and the assistant's turn opened", () => {
  const chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}" +
    "{% if add_generation_prompt %}<|assistant|>{% endif %}";
  const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }];
  const expected = "<|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>";
  const tokenizer = handMadeBpe({ eos_token: "<|end|>", chat_template });
  strictEqual(tokenizer.renderChat!(messages), expected);
  // A list of named templates: the one named "default" is used.
  const listed = handMadeBpe({
    eos_token: "<|end|>",
    chat_template: [{ name: "tool_use", template: "tools" }, { name: "default", template: chat_template }],
  });
  strictEqual(listed.renderChat!(messages), expected);
});

Deno.test("hf tokenizer: broken files are named in the error", () => {
  throws(
    () => tokenizerFromFiles({ "tokenizer.json": "{" }, "/m"),
    /\/m\/tokenizer\.json: is not valid JSON/,
  );
  throws(
    () => handMadeBpe({ chat_template: "{% for m in messages %}" }),
    /tokenizer_config\.json: chat_template does not parse/,
  );
});
