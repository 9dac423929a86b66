// HTTP plumbing shared by the servers: JSON answers, reading a JSON body with a size bound, and
// starting Deno.serve so that it can be stopped (tests start on port 0 and shut down; the serve
// plugins also stop on SIGINT/SIGTERM).

import { z } from "zod";
import { ServeError } from "./errors.ts";
import { PipelineError } from "../pipeline/errors.ts";

export function jsonResponse(body: unknown, status = 200, headers: HeadersInit = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** The request's body parsed as JSON; a ServeError (400, 413) for what is not a bounded JSON object. */
export async function readJsonBody(request: Request, maxBytes: number): Promise<Record<string, unknown>> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) {
    throw new ServeError(413, `the request body has ${declared} bytes; at most ${maxBytes} are accepted`);
  }
  const bytes = new Uint8Array(await request.arrayBuffer());
  if (bytes.length > maxBytes) {
    throw new ServeError(413, `the request body has ${bytes.length} bytes; at most ${maxBytes} are accepted`);
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    throw new ServeError(
      400,
      `the request body is not valid JSON: ${(error as Error).message}`,
      "invalid_json",
    );
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ServeError(400, "the request body must be a JSON object", "invalid_json");
  }
  return value as Record<string, unknown>;
}

/** A running server: where it listens and how to stop it. */
export interface RunningServer extends AsyncDisposable {
  port: number;
  /** http://host:port, without a trailing slash. */
  url: string;
  /** Stops taking requests, ends what is in flight, and resolves once everything is closed. */
  shutdown(): Promise<void>;
  /** Resolves when the server has stopped, however it was stopped. */
  finished: Promise<void>;
}

export interface ListenOptions {
  port: number;
  hostname: string;
}

/**
 * Starts Deno.serve with `handler`; `close` runs once the listener has stopped taking requests and
 * before `finished` resolves (the serve plugins end their schedulers there).
 */
export function listen(
  handler: (request: Request) => Promise<Response> | Response,
  options: ListenOptions,
  close: () => Promise<void> | void,
): RunningServer {
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ port: options.port, hostname: options.hostname, onListen: () => {} }, handler);
  } catch (error) {
    if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    throw new Error(
      `cannot listen on ${options.hostname}:${options.port}: the address is in use (set another port)`,
      { cause: error },
    );
  }
  const address = server.addr;
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
  let closing: Promise<void> | undefined;
  const closeOnce = () => (closing ??= Promise.resolve().then(close));
  const finished = server.finished.then(closeOnce);
  let stopping: Promise<void> | undefined;
  const shutdown = () => {
    stopping ??= (async () => {
      // server.shutdown() waits for responses in flight; close() ends the open streams (it cancels
      // their sequences), so it starts first.
      const closed = closeOnce();
      await server.shutdown();
      await closed;
      await finished;
    })();
    return stopping;
  };
  return {
    port: address.port,
    url: `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${address.port}`,
    shutdown,
    finished,
    [Symbol.asyncDispose]: shutdown,
  };
}

/** Resolves on the first SIGINT or SIGTERM, or when `until` settles; removes its listeners after. */
export async function waitForSignal(until: Promise<void>, log: (message: string) => void): Promise<void> {
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  let resolve!: () => void;
  const received = new Promise<void>((r) => (resolve = r));
  const listeners = signals.map((signal) => {
    const listener = () => {
      log(`serve: ${signal} received, shutting down`);
      resolve();
    };
    Deno.addSignalListener(signal, listener);
    return [signal, listener] as const;
  });
  try {
    await Promise.race([received, until]);
  } finally {
    for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
  }
}

/** What a running server offers the loop that keeps it until a signal or a failed engine step. */
export interface StoppableServer {
  finished: Promise<void>;
  shutdown(): Promise<void>;
  engineFailure(): Error | undefined;
}

/**
 * Keeps the server until SIGINT/SIGTERM or until it stops by itself, then shuts it down; a server
 * that stopped because an engine step failed (a rank gone, say) fails the serve stage.
 */
export async function serveUntilStopped(
  plugin: string,
  server: StoppableServer,
  log: (message: string) => void,
): Promise<void> {
  await waitForSignal(server.finished, log);
  await server.shutdown();
  const failure = server.engineFailure();
  if (failure) {
    throw new PipelineError(`serve ${plugin}: the server stopped: ${failure.message}`, undefined, {
      cause: failure,
    });
  }
}

/** The options every HTTP serve plugin has; each plugin adds its own and picks the defaults that differ. */
export function serverOptionFields(defaults: { timeoutSeconds: number; maxBodyBytes: number }) {
  return {
    port: z.number().int().min(0).max(65535).default(8000).describe(
      "TCP port to listen on; 0 picks a free one; replica r of a data-parallel job listens on port + r",
    ),
    host: z.string().default("127.0.0.1").describe("address to listen on; 0.0.0.0 for every interface"),
    max_queue: z.number().int().nonnegative().default(256)
      .describe("requests that may wait for the engine; past it the server answers 429"),
    timeout_s: z.number().positive().default(defaults.timeoutSeconds)
      .describe("seconds a request may take, waiting included"),
    max_body_bytes: z.number().int().positive().default(defaults.maxBodyBytes)
      .describe("largest request body accepted"),
    on_engine_error: z.enum(["stop", "continue"]).default("stop")
      .describe("after a failed engine step (a rank gone, say): stop the server, or keep serving"),
  };
}
