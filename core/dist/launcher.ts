// The controller: starts the rendezvous store (on node 0), spawns one Deno process per local rank
// with its place in the environment, prefixes their output, and supervises them. When one rank
// fails or the job runs too long, every other rank is stopped and the error names the culprit.

import { DistError } from "./group.ts";
import { newToken, StoreServer } from "./store.ts";

export interface LaunchOptions {
  /** The Deno arguments of every rank, e.g. ["run", "-A", "main.ts", "worker"]. */
  entry: string[];
  nprocPerNode: number;
  /** Default 1. */
  nnodes?: number;
  /** This node's index in 0..nnodes-1. Default 0. */
  nodeRank?: number;
  /** `host:port` of the rendezvous store; node 0 listens on its port. Required when nnodes > 1. */
  rdzvEndpoint?: string;
  /** Wall-clock limit of the whole job; ranks still running then are killed. Default: none. */
  timeoutSeconds?: number;
  /** Extra environment for every rank. */
  env?: Record<string, string>;
  /** The job token, the same on every node. Default: a new one on one node, RANKFLOW_TOKEN on many. */
  token?: string;
  /** Seconds between SIGTERM and SIGKILL when ranks are stopped. Default 3. */
  graceSeconds?: number;
  /** Receives every line the ranks print; default: the controller's stdout/stderr, prefixed `[rank N]`. */
  output?: (line: RankLine) => void;
}

export interface RankLine {
  rank: number;
  stream: "stdout" | "stderr";
  text: string;
}

export interface RankExit {
  rank: number;
  pid: number;
  code: number;
  signal: Deno.Signal | null;
}

export interface LaunchResult {
  worldSize: number;
  ranks: RankExit[];
}

/** Why a job failed: the rank that failed first (or ran past the timeout), with its last stderr lines. */
export class LaunchError extends DistError {
  override name = "LaunchError";
  constructor(
    message: string,
    readonly rank: number | undefined,
    readonly code: number | undefined,
    readonly stderrTail: string[],
    readonly ranks: RankExit[],
  ) {
    super(message);
  }
}

const STDERR_TAIL_LINES = 10;
const PIPE_DRAIN_MS = 2000;

interface Rank {
  rank: number;
  process: Deno.ChildProcess;
  exit?: Deno.CommandStatus;
  stderrTail: string[];
}

type Failure =
  | { kind: "exit"; rank: number; status: Deno.CommandStatus }
  | { kind: "timeout"; running: number[] }
  | { kind: "signal"; signal: Deno.Signal };

/** Runs this node's ranks to completion; throws `LaunchError` when any fails. */
export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const nnodes = options.nnodes ?? 1;
  const nodeRank = options.nodeRank ?? 0;
  const perNode = options.nprocPerNode;
  if (!Number.isInteger(perNode) || perNode < 1) {
    throw new DistError(`nprocPerNode must be ≥ 1, got ${perNode}`);
  }
  if (!Number.isInteger(nnodes) || nnodes < 1) throw new DistError(`nnodes must be ≥ 1, got ${nnodes}`);
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) {
    throw new DistError(`nodeRank ${nodeRank} is outside 0..${nnodes - 1}`);
  }
  if (options.timeoutSeconds !== undefined && !(options.timeoutSeconds > 0)) {
    throw new DistError(`timeoutSeconds must be > 0, got ${options.timeoutSeconds}`);
  }
  if (nnodes > 1 && !options.rdzvEndpoint) {
    throw new DistError("a multi-node launch needs rdzvEndpoint (host:port)");
  }
  const token = options.token ?? (nnodes > 1 ? Deno.env.get("RANKFLOW_TOKEN") : newToken());
  if (!token) {
    throw new DistError(
      "a multi-node launch needs the same token on every node: pass token or set RANKFLOW_TOKEN",
    );
  }
  const endpoint = options.rdzvEndpoint ? parseEndpoint(options.rdzvEndpoint) : undefined;
  const worldSize = nnodes * perNode;

  await using store = nodeRank === 0
    ? StoreServer.listen({ token, hostname: nnodes > 1 ? "0.0.0.0" : "127.0.0.1", port: endpoint?.port ?? 0 })
    : undefined;
  const masterAddr = endpoint?.host ?? "127.0.0.1";
  const masterPort = store?.port ?? endpoint!.port;

  const passThrough = worldSize === 1 && !options.output;
  const output = options.output ?? (passThrough ? writeBare : writePrefixed);
  const ranks: Rank[] = [];
  const pumps: LinePump[] = [];
  try {
    for (let localRank = 0; localRank < perNode; localRank++) {
      const rank = nodeRank * perNode + localRank;
      const process = new Deno.Command(Deno.execPath(), {
        args: options.entry,
        env: {
          ...options.env,
          RANK: String(rank),
          LOCAL_RANK: String(localRank),
          WORLD_SIZE: String(worldSize),
          LOCAL_WORLD_SIZE: String(perNode),
          NODE_RANK: String(nodeRank),
          MASTER_ADDR: masterAddr,
          MASTER_PORT: String(masterPort),
          RANKFLOW_TOKEN: token,
        },
        stdin: "null",
        stdout: passThrough ? "inherit" : "piped",
        stderr: "piped",
      }).spawn();
      const entry: Rank = { rank, process, stderrTail: [] };
      ranks.push(entry);
      if (!passThrough) {
        pumps.push(pumpLines(process.stdout, (text) => output({ rank, stream: "stdout", text })));
      }
      pumps.push(pumpLines(process.stderr, (text) => {
        entry.stderrTail.push(text);
        if (entry.stderrTail.length > STDERR_TAIL_LINES) entry.stderrTail.shift();
        output({ rank, stream: "stderr", text });
      }));
    }
  } catch (error) {
    for (const entry of ranks) kill(entry, "SIGKILL");
    await Promise.all(ranks.map((entry) => entry.process.status));
    await drain(pumps);
    throw new DistError(`could not start rank ${ranks.length + nodeRank * perNode}: ${String(error)}`, {
      cause: error,
    });
  }

  const failure = await supervise(ranks, options.timeoutSeconds, options.graceSeconds ?? 3);
  await drain(pumps);
  const exits = ranks.map((entry) => ({
    rank: entry.rank,
    pid: entry.process.pid,
    code: entry.exit!.code,
    signal: entry.exit!.signal,
  }));
  if (!failure) return { worldSize, ranks: exits };
  throw failureError(failure, ranks, exits, options.timeoutSeconds);
}

/** Waits for every rank; on the first failure, timeout or signal, stops the rest. */
async function supervise(
  ranks: Rank[],
  timeoutSeconds: number | undefined,
  graceSeconds: number,
): Promise<Failure | undefined> {
  let failure: Failure | undefined;
  let killTimer: ReturnType<typeof setTimeout> | undefined;
  const stop = (signal: Deno.Signal) => {
    for (const entry of ranks) if (!entry.exit) kill(entry, signal);
    killTimer ??= setTimeout(() => {
      for (const entry of ranks) if (!entry.exit) kill(entry, "SIGKILL");
    }, graceSeconds * 1000);
  };
  const timeoutTimer = timeoutSeconds === undefined ? undefined : setTimeout(() => {
    failure ??= { kind: "timeout", running: ranks.filter((entry) => !entry.exit).map((entry) => entry.rank) };
    stop("SIGTERM");
  }, timeoutSeconds! * 1000);
  const forward = (signal: Deno.Signal) => () => {
    failure ??= { kind: "signal", signal };
    stop(signal);
  };
  const listeners = (["SIGINT", "SIGTERM"] as const).map((signal) => [signal, forward(signal)] as const);
  for (const [signal, listener] of listeners) Deno.addSignalListener(signal, listener);
  try {
    await Promise.all(ranks.map(async (entry) => {
      entry.exit = await entry.process.status;
      if (!entry.exit.success && !failure) {
        failure = { kind: "exit", rank: entry.rank, status: entry.exit };
        stop("SIGTERM");
      }
    }));
  } finally {
    clearTimeout(timeoutTimer);
    clearTimeout(killTimer);
    for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
  }
  return failure;
}

function failureError(
  failure: Failure,
  ranks: Rank[],
  exits: RankExit[],
  timeoutSeconds: number | undefined,
): LaunchError {
  const tail = (rank: number) => ranks.find((entry) => entry.rank === rank)!.stderrTail;
  const withTail = (headline: string, rank: number) => {
    const lines = tail(rank);
    const shown = lines.length > 0
      ? `\nlast stderr lines of rank ${rank}:\n${lines.map((line) => `  ${line}`).join("\n")}`
      : `\nrank ${rank} wrote nothing to stderr`;
    return headline + shown;
  };
  switch (failure.kind) {
    case "exit": {
      const { rank, status } = failure;
      const how = status.signal ? `was killed by ${status.signal}` : `exited with code ${status.code}`;
      return new LaunchError(
        withTail(`rank ${rank} ${how}; the other ranks were stopped`, rank),
        rank,
        status.code,
        tail(rank),
        exits,
      );
    }
    case "timeout": {
      const rank = failure.running[0];
      return new LaunchError(
        withTail(
          `ranks ${failure.running.join(", ")} ran past the timeout of ${timeoutSeconds} s and were killed`,
          rank,
        ),
        rank,
        undefined,
        tail(rank),
        exits,
      );
    }
    case "signal":
      return new LaunchError(
        `the launcher received ${failure.signal} and passed it on to every rank`,
        undefined,
        undefined,
        [],
        exits,
      );
  }
}

function kill(entry: Rank, signal: Deno.Signal): void {
  try {
    entry.process.kill(signal);
  } catch {
    // It exited in the meantime.
  }
}

interface LinePump {
  done: Promise<void>;
  cancel(): void;
}

/** Calls `onLine` with each line of `stream` (without its newline), the last one even if unterminated. */
function pumpLines(stream: ReadableStream<Uint8Array>, onLine: (text: string) => void): LinePump {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  const done = (async () => {
    let rest = "";
    try {
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        const lines = (rest + decoder.decode(value, { stream: true })).split("\n");
        rest = lines.pop()!;
        for (const line of lines) onLine(line.endsWith("\r") ? line.slice(0, -1) : line);
      }
    } catch {
      // Cancelled: a process the rank started still holds the pipe.
    }
    rest += decoder.decode();
    if (rest) onLine(rest);
  })();
  return { done, cancel: () => void reader.cancel().catch(() => {}) };
}

/** Output still open after every rank exited belongs to their children; it is cut off after a moment. */
async function drain(pumps: LinePump[]): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<void>((resolve) => timer = setTimeout(resolve, PIPE_DRAIN_MS));
  await Promise.race([Promise.all(pumps.map((pump) => pump.done)), late]);
  clearTimeout(timer);
  for (const pump of pumps) pump.cancel();
  await Promise.all(pumps.map((pump) => pump.done));
}

const encoder = new TextEncoder();

function writeAll(file: typeof Deno.stdout, text: string): void {
  const bytes = encoder.encode(text);
  let offset = 0;
  while (offset < bytes.length) offset += file.writeSync(bytes.subarray(offset));
}

function writePrefixed(line: RankLine): void {
  writeAll(line.stream === "stdout" ? Deno.stdout : Deno.stderr, `[rank ${line.rank}] ${line.text}\n`);
}

function writeBare(line: RankLine): void {
  writeAll(line.stream === "stdout" ? Deno.stdout : Deno.stderr, `${line.text}\n`);
}

function parseEndpoint(endpoint: string): { host: string; port: number } {
  const colon = endpoint.lastIndexOf(":");
  const host = endpoint.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
  const port = Number(endpoint.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new DistError(`rdzvEndpoint must be host:port, got "${endpoint}"`);
  }
  return { host, port };
}
