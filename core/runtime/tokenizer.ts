// Tokenizers turn text into token ids and back.

export interface Tokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
  /** The files it was read from, by name, so that a saved engine set can carry it along. */
  files?: Record<string, string>;
}
