// Tokenizers turn text into token ids and back.

export interface Tokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
}
