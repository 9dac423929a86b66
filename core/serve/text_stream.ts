// From tokens to the text a client sees, as they come: the whole continuation is decoded each time
// and only what is new and final is passed on. Held back are half a character (a trailing U+FFFD
// that the next byte completes) and any ending that could still grow into a stop string; a stop
// string found ends the text just before it.

import type { Tokenizer } from "../runtime/tokenizer.ts";

export class TextStream {
  #tokens: number[] = [];
  #shown = "";
  #stopped = false;

  constructor(readonly tokenizer: Tokenizer, readonly stop: readonly string[]) {}

  /** True once a stop string was found; no text comes after it. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** All text passed on so far. */
  get text(): string {
    return this.#shown;
  }

  /** Adds a token; returns the text that is now final (often "", never past a stop string). */
  push(token: number): string {
    if (this.#stopped) return "";
    this.#tokens.push(token);
    let decoded = this.tokenizer.decode(this.#tokens);
    if (decoded.endsWith("\uFFFD")) decoded = decoded.slice(0, -1);
    const found = this.#firstStop(decoded);
    if (found !== undefined) {
      this.#stopped = true;
      return this.#show(decoded.slice(0, found));
    }
    return this.#show(decoded.slice(0, decoded.length - this.#heldBack(decoded)));
  }

  /** The text still held back, once no more tokens will come. */
  end(): string {
    if (this.#stopped) return "";
    return this.#show(this.tokenizer.decode(this.#tokens));
  }

  #show(text: string): string {
    // A decoding that rewrites what was already shown cannot be taken back; it waits for the end.
    if (!text.startsWith(this.#shown) || text.length <= this.#shown.length) return "";
    const added = text.slice(this.#shown.length);
    this.#shown = text;
    return added;
  }

  /** Where the first stop string begins in `text`; only the part after what was shown can hold one new. */
  #firstStop(text: string): number | undefined {
    let first: number | undefined;
    const longest = Math.max(0, ...this.stop.map((stop) => stop.length));
    const from = Math.max(0, this.#shown.length - longest + 1);
    for (const stop of this.stop) {
      const index = text.indexOf(stop, from);
      if (index >= 0 && (first === undefined || index < first)) first = index;
    }
    return first;
  }

  /** How many characters at the end of `text` begin some stop string. */
  #heldBack(text: string): number {
    let held = 0;
    for (const stop of this.stop) {
      for (let n = Math.min(stop.length - 1, text.length); n > held; n--) {
        if (text.endsWith(stop.slice(0, n))) {
          held = n;
          break;
        }
      }
    }
    return held;
  }
}
