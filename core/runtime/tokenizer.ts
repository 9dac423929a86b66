// Tokenizers turn text into token ids and back. A checkpoint's tokenizer may also know which ids end
// a sequence and how its chat template renders a conversation as one prompt.

/** One turn of a conversation, as chat templates take it. */
export interface ChatMessage {
  role: string;
  content: string;
}

export interface EncodeOptions {
  /** Adds what the tokenizer's post-processor adds around a text (a BOS token, say); off unless asked. */
  addSpecialTokens?: boolean;
}

export interface Tokenizer {
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: number[]): string;
  /** The files it was read from, by name, so that a saved engine set can carry it along. */
  files?: Record<string, string>;
  /** Ids that end generation (the end-of-sequence token), where the checkpoint names them. */
  stopIds?: number[];
  /**
   * Renders a conversation with the checkpoint's chat template, ending with the assistant's turn
   * opened; absent where the checkpoint has no chat template.
   */
  renderChat?(messages: ChatMessage[]): string;
}
