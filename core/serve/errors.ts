// The serving layer's error: what a client did wrong (or what the server could not do), with the
// HTTP status it is answered with. Every route turns a ServeError into a JSON body in its protocol's
// shape; any other error is a 500 whose message is still shown, so the client can report it.

export class ServeError extends Error {
  override name = "ServeError";

  constructor(
    /** The HTTP status: 4xx for the client's mistakes, 429 when full, 5xx for the server's. */
    readonly status: number,
    message: string,
    /** A short machine-readable word (OpenAI's `code`): "model_not_found", "context_length_exceeded". */
    readonly code?: string,
    /** The request field the error is about, where there is one. */
    readonly param?: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Any thrown value as a ServeError: itself, or a 500 carrying its message. */
export function asServeError(error: unknown): ServeError {
  if (error instanceof ServeError) return error;
  const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return new ServeError(500, `internal error: ${message}`, "internal_error", undefined, { cause: error });
}

/** OpenAI's error type names by status. */
export function openAIErrorType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 404) return "not_found_error";
  if (status === 429) return "rate_limit_error";
  if (status === 408 || status === 504) return "timeout_error";
  return status < 500 ? "invalid_request_error" : "server_error";
}
