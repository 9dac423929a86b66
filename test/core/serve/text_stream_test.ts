import { deepStrictEqual, strictEqual } from "node:assert";
import type { Tokenizer } from "../../../core/runtime/tokenizer.ts";
import { TextStream } from "../../../core/serve/text_stream.ts";

/** One id per UTF-8 byte, decoded as transformers does: invalid sequences become U+FFFD. */
const bytes: Tokenizer = {
  encode: (text) => [...new TextEncoder().encode(text)],
  decode: (ids) => new TextDecoder().decode(new Uint8Array(ids)),
};

function run(text: string, stop: string[]): { pieces: string[]; end: string; stream: TextStream } {
  const stream = new TextStream(bytes, stop);
  const pieces = bytes.encode(text).map((id) => stream.push(id));
  return { pieces, end: stream.end(), stream };
}

Deno.test("text stream: a character split across tokens comes out whole, once", () => {
  const { pieces, end } = run("a€b", []);
  deepStrictEqual(pieces, ["a", "", "", "€", "b"]);
  strictEqual(end, "");
});

Deno.test("text stream: text that may begin a stop string is held back, then let go or cut", () => {
  const letGo = run("ab-c", ["-x"]);
  deepStrictEqual(letGo.pieces, ["a", "b", "", "-c"]);
  strictEqual(letGo.stream.stopped, false);
  const cut = run("ab-xyz", ["yy", "-x"]);
  deepStrictEqual(cut.pieces, ["a", "b", "", "", "", ""]);
  strictEqual(cut.stream.text, "ab");
  strictEqual(cut.stream.stopped, true);
  // The earliest stop string wins, whichever is listed first.
  strictEqual(run("one two three", ["three", "two"]).stream.text, "one ");
  // What is held back at the end is let go.
  const held = run("ab-", ["-x"]);
  deepStrictEqual([held.pieces.join(""), held.end], ["ab", "-"]);
});
