// The tcp collective backend: CPU tensors moved between rank processes over a full mesh of TCP
// connections, found through the rendezvous store. Every member sends its part straight to every
// other member and reduces locally in group-rank order, so all members get bit-identical results.

import {
  type CollectiveBackend,
  DistError,
  type Mesh,
  meshGroups,
  type ProcessGroup,
} from "../../core/dist/group.ts";
import { FramedConnection, newToken, type StoreClient } from "../../core/dist/store.ts";
import { reduceTensors } from "../../core/dist/reduce.ts";
import type { Reduction } from "../../core/ir/ops/collective.ts";
import { concatTensors, sliceTensor } from "../../core/ir/ops/shape.ts";
import { BYTES_PER_ELEMENT, type DType, DTYPES, type Tensor, tensor } from "../../core/ir/tensor.ts";
import { z } from "zod";
import { definePlugin } from "../../core/pipeline/plugin.ts";

export interface TcpBackendOptions {
  /** This process's global rank. */
  rank: number;
  worldSize: number;
  /** The dp × tp shape of the job; default one replica of `worldSize` tensor-parallel ranks. */
  mesh?: Mesh;
  /** The job's rendezvous store; the backend uses it only while connecting and does not close it. */
  store: StoreClient;
  /** Interface this rank listens on for its peers. Default 127.0.0.1; "0.0.0.0" across hosts. */
  host?: string;
  /** The host peers dial to reach this rank. Default `host`, or this machine's name for 0.0.0.0. */
  advertiseHost?: string;
  /** Store keys are put under this prefix; backends of one job sharing a store use distinct ones. */
  prefix?: string;
  /** How long to wait for every peer to connect, in ms. Default 60 000. */
  connectTimeoutMs?: number;
}

const GROUP_NAMES = ["world", "tp", "dp"] as const;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const options = z.object({
  host: z.string().default("127.0.0.1").describe(
    "interface each rank listens on for its peers; 0.0.0.0 when ranks span several hosts",
  ),
  connect_timeout: z.number().positive().default(60).describe("seconds to wait for every peer to connect"),
}).strict();

export default definePlugin({
  kind: "collective",
  name: "tcp",
  description: "collectives over TCP between CPU processes",
  options,
  create: (opts: z.infer<typeof options>, init) =>
    createTcpBackend({ ...init, host: opts.host, connectTimeoutMs: opts.connect_timeout * 1000 }),
});

/** Creates the world, tp and dp groups of `rank` once every peer is connected. */
export async function createTcpBackend(options: TcpBackendOptions): Promise<TcpBackend> {
  const { rank, worldSize } = options;
  const mesh = options.mesh ?? { dp: 1, tp: worldSize };
  if (mesh.dp * mesh.tp !== worldSize) {
    throw new DistError(`mesh dp ${mesh.dp} × tp ${mesh.tp} does not make a world of ${worldSize}`);
  }
  const groups = meshGroups(mesh, rank);
  const transport = new Transport(rank);
  if (worldSize > 1) {
    try {
      await transport.connect(worldSize, options);
    } catch (error) {
      await transport.close();
      throw error;
    }
  }
  return new TcpBackend(transport, groups);
}

export class TcpBackend implements CollectiveBackend {
  readonly name = "tcp";
  readonly #transport: Transport;
  readonly #groups: Map<string, TcpGroup>;

  constructor(transport: Transport, groups: Record<"world" | "tp" | "dp", number[]>) {
    this.#transport = transport;
    this.#groups = new Map(
      GROUP_NAMES.map((name, index) => [name, new TcpGroup(name, index, groups[name], transport)]),
    );
  }

  group(name: string): ProcessGroup {
    const group = this.#groups.get(name);
    if (!group) {
      throw new DistError(
        `no process group "${name}": the tcp backend has ${[...this.#groups.keys()].join(", ")}`,
      );
    }
    return group;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.#transport.close();
  }
}

interface Peer {
  rank: number;
  connection: FramedConnection;
  /** Why the connection ended; set once it has. */
  closedReason?: string;
}

interface Receiver {
  resolve(body: Uint8Array): void;
  reject(error: Error): void;
}

/** The connections to every other rank, and the messages that arrived before anyone asked for them. */
class Transport {
  readonly #peers = new Map<number, Peer>();
  readonly #arrived = new Map<string, Uint8Array>();
  readonly #receivers = new Map<string, Receiver>();
  readonly #loops: Promise<void>[] = [];
  #listener: Deno.TcpListener | undefined;
  /** An accepted connection whose hello is still being read; the connect timeout closes it. */
  #handshake: FramedConnection | undefined;
  #closed = false;

  constructor(readonly rank: number) {}

  async connect(worldSize: number, options: TcpBackendOptions): Promise<void> {
    const { store, rank } = options;
    const prefix = options.prefix ?? "tcp";
    const timeoutMs = options.connectTimeoutMs ?? 60_000;
    const host = options.host ?? "127.0.0.1";
    this.#listener = Deno.listen({ hostname: host, port: 0 });
    const advertised = options.advertiseHost ?? (host === "0.0.0.0" ? Deno.hostname() : host);
    // Peer connections carry a secret shared through the store, so a stray client cannot pose as a rank.
    if (rank === 0) await store.set(`${prefix}/secret`, newToken());
    const secret = await store.getText(`${prefix}/secret`, timeoutMs);
    await store.set(`${prefix}/addr/${rank}`, `${advertised}:${this.#listener.addr.port}`);
    const higher = Array.from({ length: worldSize - rank - 1 }, (_, i) => rank + 1 + i);
    const timer = setTimeout(() => {
      this.#closeListener();
      this.#handshake?.close();
    }, timeoutMs);
    try {
      await Promise.all([
        this.#acceptFrom(higher, secret, timeoutMs),
        ...Array.from({ length: rank }, (_, peer) => this.#dial(peer, store, prefix, secret, timeoutMs)),
      ]);
    } finally {
      clearTimeout(timer);
      this.#closeListener();
    }
  }

  send(to: number, header: Uint8Array, body?: Uint8Array): Promise<void> {
    const peer = this.#peer(to);
    if (peer.closedReason) return Promise.reject(this.#lost(peer));
    const parts = body ? [header, body] : [header];
    return peer.connection.send(...parts).catch((error) => {
      throw new DistError(`rank ${this.rank} could not send to rank ${to}: ${message(error)}`, {
        cause: error,
      });
    });
  }

  /** The body of the message tagged `tag` from rank `from`, once it arrives. */
  receive(from: number, tag: string): Promise<Uint8Array> {
    const key = `${from}/${tag}`;
    const body = this.#arrived.get(key);
    if (body) {
      this.#arrived.delete(key);
      return Promise.resolve(body);
    }
    const peer = this.#peer(from);
    if (peer.closedReason) return Promise.reject(this.#lost(peer));
    return new Promise((resolve, reject) => this.#receivers.set(key, { resolve, reject }));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeListener();
    for (const peer of this.#peers.values()) {
      peer.closedReason ??= "the tcp backend was closed";
      peer.connection.close();
    }
    await Promise.all(this.#loops);
  }

  #peer(rank: number): Peer {
    const peer = this.#peers.get(rank);
    if (!peer) throw new DistError(`rank ${this.rank} has no connection to rank ${rank}`);
    return peer;
  }

  #lost(peer: Peer): DistError {
    return new DistError(`rank ${this.rank} lost its connection to rank ${peer.rank}: ${peer.closedReason}`);
  }

  async #dial(
    peer: number,
    store: StoreClient,
    prefix: string,
    secret: string,
    timeoutMs: number,
  ): Promise<void> {
    const address = await store.getText(`${prefix}/addr/${peer}`, timeoutMs);
    const colon = address.lastIndexOf(":");
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({
        hostname: address.slice(0, colon),
        port: Number(address.slice(colon + 1)),
      });
    } catch (error) {
      throw new DistError(
        `rank ${this.rank} cannot connect to rank ${peer} at ${address}: ${message(error)}`,
        {
          cause: error,
        },
      );
    }
    const connection = new FramedConnection(conn);
    this.#add(peer, connection);
    await connection.send(hello(this.rank, secret));
  }

  async #acceptFrom(ranks: number[], secret: string, timeoutMs: number): Promise<void> {
    const missing = new Set(ranks);
    while (missing.size > 0) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener!.accept();
      } catch (error) {
        throw new DistError(
          `rank ${this.rank} waited ${timeoutMs} ms for ranks ${[...missing].join(", ")} to connect`,
          { cause: error },
        );
      }
      const connection = new FramedConnection(conn);
      this.#handshake = connection;
      const peer = await readHello(connection, secret).catch(() => undefined);
      this.#handshake = undefined;
      if (peer === undefined || !missing.has(peer)) {
        connection.close();
        continue;
      }
      missing.delete(peer);
      this.#add(peer, connection);
    }
  }

  #closeListener(): void {
    try {
      this.#listener?.close();
    } catch {
      // Closed by the connect timeout.
    }
    this.#listener = undefined;
  }

  #add(rank: number, connection: FramedConnection): void {
    const peer: Peer = { rank, connection };
    this.#peers.set(rank, peer);
    this.#loops.push(this.#read(peer));
  }

  async #read(peer: Peer): Promise<void> {
    try {
      while (true) {
        const frame = await peer.connection.read();
        if (frame === null) break;
        const tagLength = frame[0];
        const key = `${peer.rank}/${decoder.decode(frame.subarray(1, 1 + tagLength))}`;
        const body = frame.subarray(1 + tagLength);
        const receiver = this.#receivers.get(key);
        if (receiver) {
          this.#receivers.delete(key);
          receiver.resolve(body);
        } else {
          this.#arrived.set(key, body);
        }
      }
      peer.closedReason ??= "it closed the connection";
    } catch (error) {
      peer.closedReason ??= message(error);
    }
    peer.connection.close();
    const prefix = `${peer.rank}/`;
    for (const [key, receiver] of this.#receivers) {
      if (!key.startsWith(prefix)) continue;
      this.#receivers.delete(key);
      receiver.reject(this.#lost(peer));
    }
  }
}

function hello(rank: number, secret: string): Uint8Array {
  return encoder.encode(`${rank} ${secret}`);
}

async function readHello(connection: FramedConnection, secret: string): Promise<number | undefined> {
  const frame = await connection.read(1024);
  if (frame === null) return undefined;
  const [rank, presented] = decoder.decode(frame).split(" ");
  return presented === secret && /^\d+$/.test(rank) ? Number(rank) : undefined;
}

/** The first bytes of every message: the tag that says which collective of which group it belongs to. */
function tagHeader(tag: string): Uint8Array {
  const bytes = encoder.encode(tag);
  const header = new Uint8Array(1 + bytes.length);
  header[0] = bytes.length;
  header.set(bytes, 1);
  return header;
}

/** A tensor on the wire: dtype index, rank of the shape, the dims as u32, then the raw elements. */
function encodeTensor(t: Tensor): Uint8Array {
  const head = 2 + 4 * t.shape.length;
  const bytes = new Uint8Array(head + t.data.byteLength);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, DTYPES.indexOf(t.dtype));
  view.setUint8(1, t.shape.length);
  t.shape.forEach((d, i) => view.setUint32(2 + 4 * i, d));
  bytes.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), head);
  return bytes;
}

function decodeTensor(bytes: Uint8Array): Tensor {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dtype: DType = DTYPES[view.getUint8(0)];
  const shape = Array.from({ length: view.getUint8(1) }, (_, i) => view.getUint32(2 + 4 * i));
  // slice() copies into a fresh buffer, so the typed array below starts aligned.
  const raw = bytes.slice(2 + 4 * shape.length).buffer;
  const count = raw.byteLength / BYTES_PER_ELEMENT[dtype];
  switch (dtype) {
    case "f32":
      return tensor(dtype, shape, new Float32Array(raw, 0, count));
    case "f16":
    case "bf16":
      return tensor(dtype, shape, new Uint16Array(raw, 0, count));
    case "i32":
      return tensor(dtype, shape, new Int32Array(raw, 0, count));
    case "i64":
      return tensor(dtype, shape, new BigInt64Array(raw, 0, count));
  }
}

function typeText(t: Tensor): string {
  return `${t.dtype}[${t.shape.join(", ")}]`;
}

class TcpGroup implements ProcessGroup {
  readonly rank: number;
  readonly size: number;
  #sequence = 0;

  constructor(
    readonly name: string,
    readonly index: number,
    readonly ranks: number[],
    readonly transport: Transport,
  ) {
    this.rank = ranks.indexOf(transport.rank);
    this.size = ranks.length;
  }

  async allReduce(t: Tensor, reduce: Reduction): Promise<Tensor> {
    if (this.size === 1) return t;
    const parts = await this.#exchange("allReduce", () => t);
    this.#checkSame("allReduce", parts, (a, b) => sameShape(a.shape, b.shape));
    return reduceTensors(parts, reduce);
  }

  async allGather(t: Tensor, axis: number): Promise<Tensor> {
    const at = this.#axis("allGather", t, axis);
    if (this.size === 1) return t;
    const parts = await this.#exchange("allGather", () => t);
    this.#checkSame("allGather", parts, (a, b) => sameShape(a.shape, b.shape, at));
    return concatTensors(parts, at);
  }

  async reduceScatter(t: Tensor, axis: number, reduce: Reduction): Promise<Tensor> {
    const at = this.#axis("reduceScatter", t, axis);
    if (t.shape[at] % this.size !== 0) {
      throw new DistError(
        `reduceScatter in group ${this.name}: axis ${at} of ${
          typeText(t)
        } does not split into ${this.size} equal shares`,
      );
    }
    if (this.size === 1) return t;
    const share = t.shape[at] / this.size;
    const parts = await this.#exchange(
      "reduceScatter",
      (member) => sliceTensor(t, at, member * share, (member + 1) * share),
    );
    this.#checkSame("reduceScatter", parts, (a, b) => sameShape(a.shape, b.shape));
    return reduceTensors(parts, reduce);
  }

  async broadcast(t: Tensor, root: number): Promise<Tensor> {
    if (!Number.isInteger(root) || root < 0 || root >= this.size) {
      throw new DistError(`broadcast in group ${this.name}: root ${root} is outside a group of ${this.size}`);
    }
    if (this.size === 1) return t;
    const tag = this.#nextTag();
    if (this.rank !== root) return decodeTensor(await this.transport.receive(this.ranks[root], tag));
    const header = tagHeader(tag);
    const body = encodeTensor(t);
    await Promise.all(this.#others().map((member) => this.transport.send(this.ranks[member], header, body)));
    return t;
  }

  async barrier(): Promise<void> {
    if (this.size === 1) return;
    const tag = this.#nextTag();
    const header = tagHeader(tag);
    await Promise.all(
      this.#others().flatMap((member) => [
        this.transport.send(this.ranks[member], header),
        this.transport.receive(this.ranks[member], tag),
      ]),
    );
  }

  /** Sends `partFor(member)` to each other member; returns each member's part for this one, by group rank. */
  async #exchange(op: string, partFor: (member: number) => Tensor): Promise<Tensor[]> {
    const tag = this.#nextTag();
    const header = tagHeader(tag);
    const received = await Promise.all(
      Array.from({ length: this.size }, (_, member) => {
        if (member === this.rank) return undefined;
        return Promise.all([
          this.transport.send(this.ranks[member], header, encodeTensor(partFor(member))),
          this.transport.receive(this.ranks[member], tag),
        ]);
      }),
    ).catch((error) => {
      throw new DistError(`${op} in group ${this.name}: ${message(error)}`, { cause: error });
    });
    return received.map((pair, member) => (pair ? decodeTensor(pair[1]) : partFor(member)));
  }

  /** Tags are taken when a collective is called, so calls in flight together stay in call order. */
  #nextTag(): string {
    return `${this.index}:${this.#sequence++}`;
  }

  #others(): number[] {
    return Array.from({ length: this.size }, (_, member) => member).filter((member) => member !== this.rank);
  }

  #axis(op: string, t: Tensor, axis: number): number {
    const at = axis < 0 ? axis + t.shape.length : axis;
    if (!Number.isInteger(at) || at < 0 || at >= t.shape.length) {
      throw new DistError(`${op} in group ${this.name}: axis ${axis} is outside ${typeText(t)}`);
    }
    return at;
  }

  #checkSame(op: string, parts: Tensor[], fits: (a: Tensor, b: Tensor) => boolean): void {
    const own = parts[this.rank];
    parts.forEach((part, member) => {
      if (part.dtype !== own.dtype || !fits(part, own)) {
        throw new DistError(
          `${op} in group ${this.name}: rank ${this.ranks[member]} sent ${typeText(part)}, ` +
            `which does not fit rank ${this.ranks[this.rank]}'s ${typeText(own)}`,
        );
      }
    });
  }
}

function sameShape(a: number[], b: number[], except = -1): boolean {
  return a.length === b.length && a.every((d, i) => i === except || d === b[i]);
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
