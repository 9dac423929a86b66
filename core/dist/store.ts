// The rendezvous store: a small TCP key-value server the controller runs for one job, and the
// client every rank uses to find its peers, count arrivals and wait at barriers. Clients must
// present the job's random token first; frames are length-prefixed binary (framing shared with
// the tcp collective backend through `FramedConnection`).

import { DistError } from "./group.ts";

/** A fresh job token: 16 random bytes as hex, passed to ranks in RANKFLOW_TOKEN. */
export function newToken(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
}

const READ_CHUNK = 64 * 1024;

/**
 * One TCP connection carrying frames of `u32 length (big-endian) | body`. Sends are queued so that
 * frames from concurrent callers never interleave.
 */
export class FramedConnection {
  readonly #conn: Deno.Conn;
  readonly #maxFrameBytes: number;
  #pending: Uint8Array = new Uint8Array(0);
  #writing: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(conn: Deno.Conn, maxFrameBytes = 0xffffffff) {
    this.#conn = conn;
    this.#maxFrameBytes = maxFrameBytes;
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends one frame made of `parts`, after every frame sent before it. */
  send(...parts: Uint8Array[]): Promise<void> {
    let length = 0;
    for (const part of parts) length += part.byteLength;
    const frame = new Uint8Array(4 + length);
    new DataView(frame.buffer).setUint32(0, length);
    let offset = 4;
    for (const part of parts) {
      frame.set(part, offset);
      offset += part.byteLength;
    }
    const written = this.#writing.then(() => this.#writeAll(frame));
    this.#writing = written.catch(() => {});
    return written;
  }

  /** The next frame's body, or null when the peer closed the connection between frames. */
  async read(maxBytes = this.#maxFrameBytes): Promise<Uint8Array | null> {
    const header = await this.#take(4);
    if (header === null) return null;
    const length = new DataView(header.buffer).getUint32(0);
    if (length > maxBytes) {
      throw new DistError(`received a frame of ${length} bytes, more than the ${maxBytes} allowed`);
    }
    const body = await this.#take(length);
    if (body === null) throw new DistError("the connection closed in the middle of a frame");
    return body;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed by the runtime after a failed read or write.
    }
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) offset += await this.#conn.write(bytes.subarray(offset));
  }

  /** Exactly `count` bytes; null at end of stream before any byte of them. */
  async #take(count: number): Promise<Uint8Array | null> {
    const out = new Uint8Array(count);
    let filled = Math.min(count, this.#pending.length);
    out.set(this.#pending.subarray(0, filled));
    this.#pending = this.#pending.subarray(filled);
    while (filled < count) {
      const wanted = count - filled;
      // Large bodies are read in place; small ones through a chunk whose rest is kept for later.
      const target = wanted >= READ_CHUNK ? out.subarray(filled) : new Uint8Array(READ_CHUNK);
      const read = await this.#conn.read(target);
      if (read === null) {
        if (filled === 0) return null;
        throw new DistError(`the connection closed after ${filled} of ${count} bytes`);
      }
      if (target.buffer === out.buffer) {
        filled += read;
      } else {
        const used = Math.min(read, wanted);
        out.set(target.subarray(0, used), filled);
        filled += used;
        this.#pending = target.slice(used, read);
      }
    }
    return out;
  }
}

enum Op {
  Hello = 1,
  Set = 2,
  Get = 3,
  Add = 4,
  Wait = 5,
}

enum Status {
  Ok = 0,
  Error = 1,
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MAX_STORE_FRAME = 256 * 1024 * 1024;
// setTimeout overflows above this; longer waits are unbounded.
const MAX_TIMER_MS = 0x7fffffff;

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value);
  return bytes;
}

function f64(value: number): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setFloat64(0, value);
  return bytes;
}

/** A length-prefixed byte string. */
function blob(value: Uint8Array | string): Uint8Array[] {
  const bytes = typeof value === "string" ? encoder.encode(value) : value;
  return [u32(bytes.byteLength), bytes];
}

class FrameReader {
  #view: DataView;
  #offset = 0;
  constructor(readonly bytes: Uint8Array) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  u8(): number {
    return this.#view.getUint8(this.#offset++);
  }
  u32(): number {
    const value = this.#view.getUint32(this.#offset);
    this.#offset += 4;
    return value;
  }
  f64(): number {
    const value = this.#view.getFloat64(this.#offset);
    this.#offset += 8;
    return value;
  }
  blob(): Uint8Array {
    const length = this.u32();
    if (this.#offset + length > this.bytes.length) throw new RangeError("truncated frame");
    const value = this.bytes.slice(this.#offset, this.#offset + length);
    this.#offset += length;
    return value;
  }
  text(): string {
    return decoder.decode(this.blob());
  }
  rest(): Uint8Array {
    const value = this.bytes.slice(this.#offset);
    this.#offset = this.bytes.length;
    return value;
  }
}

function sameToken(a: string, b: string): boolean {
  // Compares every character so the time taken does not tell how much of a guess was right.
  let difference = a.length ^ b.length;
  for (let i = 0; i < Math.max(a.length, b.length); i++) difference |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return difference === 0;
}

interface Waiter {
  keys: string[];
  finish(found: boolean): void;
}

export interface StoreServerOptions {
  /** The job's token; a client presenting another one is refused. */
  token: string;
  /** Interface to listen on; "0.0.0.0" for a multi-node job. Default 127.0.0.1. */
  hostname?: string;
  /** Port to listen on; 0 (the default) picks a free one. */
  port?: number;
}

/** The store server, run by the controller on node 0 for the job's lifetime. */
export class StoreServer implements AsyncDisposable {
  readonly hostname: string;
  readonly port: number;
  readonly #token: string;
  readonly #listener: Deno.TcpListener;
  readonly #values = new Map<string, Uint8Array>();
  readonly #waiters = new Set<Waiter>();
  readonly #connections = new Set<FramedConnection>();
  readonly #sessions = new Set<Promise<void>>();
  readonly #accepting: Promise<void>;
  #closed = false;

  private constructor(options: StoreServerOptions) {
    if (!options.token) throw new DistError("the rendezvous store needs a non-empty token");
    this.#token = options.token;
    this.#listener = Deno.listen({ hostname: options.hostname ?? "127.0.0.1", port: options.port ?? 0 });
    this.hostname = this.#listener.addr.hostname;
    this.port = this.#listener.addr.port;
    this.#accepting = this.#accept();
  }

  static listen(options: StoreServerOptions): StoreServer {
    return new StoreServer(options);
  }

  /** `host:port`, as ranks receive it in MASTER_ADDR and MASTER_PORT. */
  get address(): string {
    return `${this.hostname}:${this.port}`;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch {
      // The accept loop already ended.
    }
    for (const waiter of [...this.#waiters]) waiter.finish(false);
    for (const connection of this.#connections) connection.close();
    await this.#accepting;
    await Promise.all(this.#sessions);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #accept(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // closed
      }
      if (this.#closed) {
        conn.close();
        return;
      }
      const session = this.#serve(new FramedConnection(conn, MAX_STORE_FRAME));
      this.#sessions.add(session);
      session.finally(() => this.#sessions.delete(session));
    }
  }

  async #serve(connection: FramedConnection): Promise<void> {
    this.#connections.add(connection);
    const owned = new Set<Waiter>();
    const requests = new Set<Promise<void>>();
    try {
      const hello = await connection.read();
      if (hello === null) return;
      if (!this.#accepts(hello)) {
        await connection.send(u32(0), new Uint8Array([Status.Error]), encoder.encode("wrong token"));
        return;
      }
      await connection.send(u32(0), new Uint8Array([Status.Ok]));
      while (true) {
        const frame = await connection.read();
        if (frame === null) return;
        // Requests run concurrently: a get that waits must not hold up the set that ends its wait.
        const request = this.#handle(connection, frame, owned).catch(() => connection.close());
        requests.add(request);
        request.finally(() => requests.delete(request));
      }
    } catch {
      // A broken or hostile client loses its own connection and nothing else.
    } finally {
      connection.close();
      this.#connections.delete(connection);
      for (const waiter of [...owned]) waiter.finish(false);
      await Promise.all(requests);
    }
  }

  #accepts(hello: Uint8Array): boolean {
    try {
      const reader = new FrameReader(hello);
      return reader.u32() === 0 && reader.u8() === Op.Hello && sameToken(reader.text(), this.#token);
    } catch {
      return false;
    }
  }

  async #handle(connection: FramedConnection, frame: Uint8Array, owned: Set<Waiter>): Promise<void> {
    const reader = new FrameReader(frame);
    const id = reader.u32();
    const ok = (...payload: Uint8Array[]) =>
      connection.send(u32(id), new Uint8Array([Status.Ok]), ...payload);
    const fail = (message: string) =>
      connection.send(u32(id), new Uint8Array([Status.Error]), encoder.encode(message));
    const op = reader.u8();
    switch (op) {
      case Op.Set: {
        const key = reader.text();
        this.#put(key, reader.blob());
        return ok();
      }
      case Op.Get: {
        const key = reader.text();
        const timeoutMs = reader.f64();
        if (await this.#waitFor([key], timeoutMs, owned)) return ok(this.#values.get(key)!);
        return fail(`timed out after ${timeoutMs} ms waiting for key "${key}"`);
      }
      case Op.Add: {
        const key = reader.text();
        const amount = reader.f64();
        const current = this.#values.get(key);
        const value = (current ? Number(decoder.decode(current)) : 0) + amount;
        if (!Number.isFinite(value)) return fail(`key "${key}" does not hold a counter`);
        this.#put(key, encoder.encode(String(value)));
        return ok(f64(value));
      }
      case Op.Wait: {
        const count = reader.u32();
        const keys = Array.from({ length: count }, () => reader.text());
        const timeoutMs = reader.f64();
        if (await this.#waitFor(keys, timeoutMs, owned)) return ok();
        const missing = keys.filter((key) => !this.#values.has(key));
        return fail(
          `timed out after ${timeoutMs} ms waiting for keys ${missing.map((k) => `"${k}"`).join(", ")}`,
        );
      }
      default:
        return fail(`unknown request ${op}`);
    }
  }

  #put(key: string, value: Uint8Array): void {
    this.#values.set(key, value);
    for (const waiter of [...this.#waiters]) {
      if (waiter.keys.includes(key) && waiter.keys.every((k) => this.#values.has(k))) waiter.finish(true);
    }
  }

  #waitFor(keys: string[], timeoutMs: number, owned: Set<Waiter>): Promise<boolean> {
    if (keys.every((key) => this.#values.has(key))) return Promise.resolve(true);
    if (this.#closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waiter: Waiter = {
        keys,
        finish: (found) => {
          clearTimeout(timer);
          this.#waiters.delete(waiter);
          owned.delete(waiter);
          resolve(found);
        },
      };
      if (timeoutMs <= MAX_TIMER_MS) timer = setTimeout(() => waiter.finish(false), Math.max(0, timeoutMs));
      this.#waiters.add(waiter);
      owned.add(waiter);
    });
  }
}

export interface StoreClientOptions {
  hostname: string;
  port: number;
  /** The job's token (RANKFLOW_TOKEN). */
  token: string;
  /** Default wait of get, wait and barrier, in ms. Default 300 000. */
  timeoutMs?: number;
  /** How long to keep retrying a refused connection (the store may not be up yet), in ms. Default 30 000. */
  connectTimeoutMs?: number;
}

interface PendingRequest {
  resolve(payload: Uint8Array): void;
  reject(error: Error): void;
}

/** A rank's connection to the store. Requests may be issued concurrently. */
export class StoreClient implements AsyncDisposable {
  readonly address: string;
  readonly timeoutMs: number;
  readonly #connection: FramedConnection;
  readonly #pending = new Map<number, PendingRequest>();
  readonly #reading: Promise<void>;
  #nextId = 1;
  #closedReason: string | undefined;

  private constructor(connection: FramedConnection, address: string, timeoutMs: number) {
    this.#connection = connection;
    this.address = address;
    this.timeoutMs = timeoutMs;
    this.#reading = this.#read();
  }

  static async connect(options: StoreClientOptions): Promise<StoreClient> {
    const address = `${options.hostname}:${options.port}`;
    const connectTimeoutMs = options.connectTimeoutMs ?? 30_000;
    const conn = await connectWithRetry(options.hostname, options.port, connectTimeoutMs);
    const connection = new FramedConnection(conn, MAX_STORE_FRAME);
    // A server that never answers the hello (not a rankflow store) must not hang the rank.
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      connection.close();
    }, connectTimeoutMs);
    let reply: Uint8Array | null;
    try {
      await connection.send(u32(0), new Uint8Array([Op.Hello]), ...blob(options.token));
      reply = await connection.read();
    } catch (error) {
      connection.close();
      if (timedOut) {
        throw new DistError(
          `the rendezvous store at ${address} did not answer within ${connectTimeoutMs} ms`,
        );
      }
      throw new DistError(`the rendezvous store at ${address} broke the connection: ${message(error)}`, {
        cause: error,
      });
    } finally {
      clearTimeout(timer);
    }
    if (reply === null || reply[4] !== Status.Ok) {
      connection.close();
      throw new DistError(
        `the rendezvous store at ${address} refused this client: its token does not match the job's ` +
          "(RANKFLOW_TOKEN must be the one the launcher generated for this job)",
      );
    }
    return new StoreClient(connection, address, options.timeoutMs ?? 300_000);
  }

  async set(key: string, value: Uint8Array | string): Promise<void> {
    await this.#request(Op.Set, ...blob(key), ...blob(value));
  }

  /** The value of `key`, waiting until some client sets it. */
  get(key: string, timeoutMs = this.timeoutMs): Promise<Uint8Array> {
    return this.#request(Op.Get, ...blob(key), f64(timeoutMs));
  }

  async getText(key: string, timeoutMs = this.timeoutMs): Promise<string> {
    return decoder.decode(await this.get(key, timeoutMs));
  }

  /** Adds `amount` to the counter at `key` (absent counts as 0) and returns the new value. */
  async add(key: string, amount = 1): Promise<number> {
    const reply = await this.#request(Op.Add, ...blob(key), f64(amount));
    return new DataView(reply.buffer, reply.byteOffset).getFloat64(0);
  }

  /** Waits until every key is set. */
  async wait(keys: string[], timeoutMs = this.timeoutMs): Promise<void> {
    await this.#request(Op.Wait, u32(keys.length), ...keys.flatMap((key) => blob(key)), f64(timeoutMs));
  }

  /**
   * Waits until `size` clients have reached the barrier `name`. A name may be reused: every
   * `size` arrivals make one generation of it.
   */
  async barrier(name: string, size: number, timeoutMs = this.timeoutMs): Promise<void> {
    const counter = `barrier/${name}`;
    const arrived = await this.add(counter);
    const generation = Math.floor((arrived - 1) / size);
    const done = `${counter}/${generation}`;
    if (arrived % size === 0) await this.set(done, "");
    try {
      await this.get(done, timeoutMs);
    } catch (error) {
      if (this.#closedReason) throw error;
      const count = Number(await this.getText(counter, 0)) - generation * size;
      throw new DistError(
        `barrier "${name}" timed out after ${timeoutMs} ms with ${count} of ${size} arrived`,
        {
          cause: error,
        },
      );
    }
  }

  async close(): Promise<void> {
    this.#closedReason ??= "the client was closed";
    this.#connection.close();
    await this.#reading;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #request(op: Op, ...body: Uint8Array[]): Promise<Uint8Array> {
    if (this.#closedReason) {
      return Promise.reject(new DistError(`rendezvous store at ${this.address}: ${this.#closedReason}`));
    }
    const id = this.#nextId++;
    const reply = new Promise<Uint8Array>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    this.#connection.send(u32(id), new Uint8Array([op]), ...body).catch((error) => {
      this.#pending.get(id)?.reject(new DistError(`rendezvous store at ${this.address}: ${message(error)}`));
      this.#pending.delete(id);
    });
    return reply;
  }

  async #read(): Promise<void> {
    try {
      while (true) {
        const frame = await this.#connection.read();
        if (frame === null) break;
        const reader = new FrameReader(frame);
        const id = reader.u32();
        const status = reader.u8();
        const payload = reader.rest();
        const request = this.#pending.get(id);
        this.#pending.delete(id);
        if (status === Status.Ok) request?.resolve(payload);
        else {request?.reject(
            new DistError(`rendezvous store at ${this.address}: ${decoder.decode(payload)}`),
          );}
      }
      this.#closedReason ??= "the store closed the connection";
    } catch (error) {
      this.#closedReason ??= `the connection broke: ${message(error)}`;
    }
    this.#connection.close();
    for (const request of this.#pending.values()) {
      request.reject(new DistError(`rendezvous store at ${this.address}: ${this.#closedReason}`));
    }
    this.#pending.clear();
  }
}

async function connectWithRetry(hostname: string, port: number, timeoutMs: number): Promise<Deno.TcpConn> {
  const deadline = Date.now() + timeoutMs;
  let delay = 20;
  while (true) {
    try {
      return await Deno.connect({ hostname, port });
    } catch (error) {
      if (!(error instanceof Deno.errors.ConnectionRefused) || Date.now() + delay > deadline) {
        throw new DistError(`cannot reach the rendezvous store at ${hostname}:${port}: ${message(error)}`, {
          cause: error,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 500);
    }
  }
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
