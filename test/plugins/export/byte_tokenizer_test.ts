import { deepStrictEqual, strictEqual } from "node:assert";
import { join } from "node:path";
import { byteTokenizerJson, loadTokenizer } from "../../../plugins/export/byte_tokenizer.ts";

function byteTokenizer() {
  const dir = Deno.makeTempDirSync();
  Deno.writeTextFileSync(join(dir, "tokenizer.json"), JSON.stringify(byteTokenizerJson()));
  return loadTokenizer(dir);
}

Deno.test("byte tokenizer: one id per UTF-8 byte, and decoding gives the text back", () => {
  const tokenizer = byteTokenizer();
  const texts = [
    "",
    "Hello, world",
    "  two  spaces , before . punctuation ' s n't ",
    "héllo 世界 🎉\n\ttabs\r\n",
    "nul \u0000 and del \u007f and nbsp \u00a0 and soft hyphen \u00ad",
  ];
  for (const text of texts) {
    const ids = tokenizer.encode(text);
    deepStrictEqual(ids, [...new TextEncoder().encode(text)], JSON.stringify(text));
    strictEqual(tokenizer.decode(ids), text);
  }
});

Deno.test("byte tokenizer: random strings of any code points round-trip", () => {
  const tokenizer = byteTokenizer();
  let state = 12345;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
  for (let n = 0; n < 200; n++) {
    const points = Array.from({ length: next() % 40 }, () => {
      const point = next() % 0x110000;
      return point >= 0xd800 && point <= 0xdfff ? 0x20 : point; // lone surrogates are not UTF-8
    });
    const text = String.fromCodePoint(...points);
    const ids = tokenizer.encode(text);
    deepStrictEqual(ids, [...new TextEncoder().encode(text)]);
    strictEqual(tokenizer.decode(ids), text);
  }
});
