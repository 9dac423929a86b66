// Server-sent events as OpenAI streams them: one `data: <json>` event per chunk, then `data: [DONE]`.
// The events are pulled as the client reads, and a client that goes away cancels the source, which
// ends the generations behind it.

const HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  "connection": "keep-alive",
};

/**
 * Streams `events`; `onCancel` runs when the client goes away, to end the work behind the events
 * at once (closing the iterator alone would wait for its next value).
 */
export function sseResponse(events: AsyncIterable<unknown>, onCancel: () => void): Response {
  const encoder = new TextEncoder();
  const iterator = events[Symbol.asyncIterator]();
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await iterator.next();
      if (done) {
        controller.enqueue(encoder.encode("data: [DONE]\n\n"));
        controller.close();
        return;
      }
      controller.enqueue(encoder.encode(`data: ${JSON.stringify(value)}\n\n`));
    },
    cancel() {
      onCancel();
      iterator.return?.(undefined).catch(() => {});
    },
  });
  return new Response(body, { headers: HEADERS });
}

/** Yields the values of several async iterables as each comes; leaving early closes them all. */
export async function* merge<T>(sources: AsyncIterable<T>[]): AsyncGenerator<T> {
  const iterators = sources.map((source) => source[Symbol.asyncIterator]());
  const pending = new Map<number, Promise<{ index: number; result: IteratorResult<T> }>>();
  const next = (index: number) =>
    pending.set(index, iterators[index].next().then((result) => ({ index, result })));
  iterators.forEach((_, index) => next(index));
  try {
    while (pending.size > 0) {
      const { index, result } = await Promise.race(pending.values());
      if (result.done) {
        pending.delete(index);
        continue;
      }
      next(index);
      yield result.value;
    }
  } finally {
    await Promise.all(iterators.map((iterator) => iterator.return?.(undefined)));
  }
}
