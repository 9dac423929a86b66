// Tensor parallel over the GPUs of one machine (needs two or more):
//   collectives: all-reduce, all-gather and reduce-scatter of 8 KB to 256 MB through rankflow's
//     nccl backend, beside torch.distributed with NCCL on the same GPUs (bench/torch_collectives.py),
//     and all-reduces up to 4 MB through the backend's peer path (peer_all_reduce.ts);
//   agreement: each tp's 32 greedy ids and first logits against tp 1's, on random bf16 Llamas;
//   scaling: decode ms per step at batch 1 and 16 (context 128) and prefill of 2048 tokens for
//     tp = 1, 2, 4, 8 (as many as there are GPUs), all-reduces through NCCL alone and with the
//     peer path, with the speed-up over tp 1.
// The models are Llama-3.2-1B and Llama-3.1-8B shapes, written by bench/make_llama.py when missing.
//   deno task bench:multi-gpu [--models 1b,8b] [--only collectives|models] [--f32-reference 1b]
//                             [--paths nccl,peer]
// (--f32-reference: the models whose bf16 logits are also compared with tp 1 in f32; --paths: how
// the all-reduces of tp > 1 run, each a row)
// Each case runs as its own job of rank processes (this file again, `rank …`); rank 0 reports.

import { join } from "node:path";
import { parseArgs } from "node:util";
import { launch } from "../core/dist/launcher.ts";
import { distributedContext, joinJob } from "../core/dist/context.ts";
import { readRankEnv } from "../core/dist/env.ts";
import { readGraphWeights } from "../core/ir/weights.ts";
import { buildEngine } from "../core/pipeline/ranks.ts";
import {
  check,
  createEvent,
  createStream,
  cudart,
  deviceAlloc,
  deviceFree,
  elapsedMs,
  probeDevices,
  synchronize,
} from "../ffi/cuda.ts";
import { createNcclBackend, type NcclGroup, options } from "../plugins/collectives/nccl.ts";
import { cudaBackend } from "../plugins/engines/cuda.ts";
import type { CudaEngine } from "../plugins/engines/cuda/engine.ts";
import { exportCheckpoint } from "../plugins/export/hf.ts";
import fuse from "../plugins/passes/fuse_distributed_ops.ts";
import { shardGraph } from "../plugins/passes/tensor_parallel.ts";
import { decodeMs, ensureLlama, prefillMs, randomIds } from "./gpu.ts";

const BENCH_DIR = new URL(".", import.meta.url).pathname;
const SELF = new URL(import.meta.url).pathname;
const OPS = ["all-reduce", "all-gather", "reduce-scatter"] as const;
type Op = typeof OPS[number];
/** 8 KB to 256 MB: the whole buffer (all-reduce's, all-gather's output, reduce-scatter's input). */
const SIZES = [8, 64, 512, 1024, 4096, 32768, 262144].map((kb) => kb * 1024);
const ITERS = [200, 200, 100, 100, 50, 20, 10];
/** The capacity of the peer path in the collective benchmark, to show where it meets NCCL. */
const PEER_BYTES = 4 << 20;
const MODELS: Record<string, string> = { "1b": "/tmp/rankflow-llama1b", "8b": "/tmp/rankflow-llama8b" };
const AGREE_STEPS = 32;
const PROMPT = 64;

/** bus bandwidth = algorithm bandwidth × this (the bytes each link carries, as nccl-tests counts them). */
function busFactor(op: Op, ranks: number): number {
  return op === "all-reduce" ? (2 * (ranks - 1)) / ranks : (ranks - 1) / ranks;
}

// ---- rank side ----

async function rankCollectives(): Promise<void> {
  const place = readRankEnv();
  await using job = await joinJob({
    mesh: { dp: 1, tp: place.worldSize },
    backend: (init) => createNcclBackend({ ...init, peerBytes: 0 }),
  });
  // A second backend whose all-reduces up to PEER_BYTES take the peer path.
  await using peers = await createNcclBackend({
    rank: job.rank,
    worldSize: job.worldSize,
    store: job.store,
    prefix: "peer",
    peerBytes: PEER_BYTES,
  });
  const nccl = (job.group("world") as NcclGroup).communicator;
  const peer = (peers.group("world") as NcclGroup).communicator;
  if (job.rank === 0 && !peer.peer) console.error(`no peer path: ${peer.peerOff}`);
  const n = job.worldSize;
  const stream = createStream();
  const largest = Math.max(...SIZES);
  const send = deviceAlloc(largest);
  const recv = deviceAlloc(largest);
  const c = cudart();
  const call = (op: Op | "peer all-reduce", bytes: number) => {
    const count = bytes / 2; // bf16
    if (op === "peer all-reduce") peer.allReduce(send, recv, count, "bf16", "sum", stream);
    else if (op === "all-reduce") nccl.allReduce(send, recv, count, "bf16", "sum", stream);
    else if (op === "all-gather") nccl.allGather(send, recv, count / n, "bf16", stream);
    else nccl.reduceScatter(send, recv, count / n, "bf16", "sum", stream);
  };
  const start = createEvent();
  const end = createEvent();
  for (const op of [...OPS, ...(peer.peer ? ["peer all-reduce" as const] : [])]) {
    for (const [i, bytes] of SIZES.entries()) {
      if (op === "peer all-reduce" && bytes > PEER_BYTES) continue;
      for (let w = 0; w < 5; w++) call(op, bytes);
      synchronize(stream);
      await job.barrier();
      check(c.cudaEventRecord(start, stream), "cudaEventRecord");
      for (let k = 0; k < ITERS[i]; k++) call(op, bytes);
      check(c.cudaEventRecord(end, stream), "cudaEventRecord");
      const us = (elapsedMs(start, end) * 1000) / ITERS[i];
      if (job.rank === 0) console.log(`result ${JSON.stringify({ op, bytes, us })}`);
    }
  }
  synchronize(stream);
  deviceFree(send);
  deviceFree(recv);
  check(c.cudaStreamDestroy(stream), "cudaStreamDestroy");
}

/** One rank of a model run: logits and greedy ids, then (bf16 only) the timings. */
async function rankModel(
  dir: string,
  logitsFile: string,
  dtype: "bf16" | "f32",
  peerBytes: number,
): Promise<void> {
  const place = readRankEnv();
  const loadStart = performance.now();
  const job = await joinJob({
    mesh: { dp: 1, tp: place.worldSize },
    backend: (init) => createNcclBackend({ ...init, peerBytes }),
    rendezvousTimeoutMs: 600_000,
  });
  using model = exportCheckpoint(dir, dtype);
  const graph = job.worldSize > 1
    ? fuse.run(shardGraph(model.graph, { plan: "auto", group: "tp" }, job.tp))
    : model.graph;
  const engine = await buildEngine(
    cudaBackend(),
    graph,
    readGraphWeights(graph, model.weights),
  ) as CudaEngine;
  await using _context = await distributedContext(job, engine);
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const vocab = model.model.vocabSize;
  // Agreement: the logits after a prompt, then greedy steps from them.
  const prompt = randomIds(PROMPT, vocab, 1);
  let ids: number[];
  {
    using pool = engine.sequences({ slots: 1, maxLength: PROMPT + AGREE_STEPS + 8 });
    const logits = (await pool.step([{ slot: 0, ids: prompt, start: 0 }])).data as Float32Array;
    const row = logits.subarray(logits.length - vocab);
    if (job.rank === 0) await Deno.writeFile(logitsFile, new Uint8Array(row.slice().buffer));
    let first = 0;
    for (let v = 1; v < vocab; v++) if (row[v] > row[first]) first = v;
    const rest = await pool.decodeGreedy([{ slot: 0, ids: [first], start: PROMPT }], AGREE_STEPS - 1);
    ids = [first, ...rest.map((step) => step[0])];
  }
  if (dtype === "f32") {
    if (job.rank === 0) console.log(`result ${JSON.stringify({ ids })}`);
    return;
  }
  const decode: Record<number, { wall: number; device: number; chained: number }> = {};
  for (const batch of [1, 16]) decode[batch] = await decodeMs(engine, batch, 128, vocab);
  const prefill = await prefillMs(engine, 2048, vocab);
  if (job.rank === 0) {
    console.log(
      `result ${JSON.stringify({ ids, decode, prefill, loadSeconds, weightBytes: engine.weights.bytes })}`,
    );
  }
}

// ---- controller side ----

interface Launched {
  results: Record<string, unknown>[];
  seconds: number;
}

/** Runs `ranks` processes of this file with `args`; returns rank 0's `result` lines. */
async function onRanks(ranks: number, args: string[]): Promise<Launched> {
  const results: Record<string, unknown>[] = [];
  const start = performance.now();
  await launch({
    entry: ["run", "-A", SELF, "rank", ...args],
    nprocPerNode: ranks,
    timeoutSeconds: 580,
    output(line) {
      if (line.rank === 0 && line.text.startsWith("result ")) results.push(JSON.parse(line.text.slice(7)));
      else if (line.stream === "stderr") console.error(`[rank ${line.rank}] ${line.text}`);
    },
  });
  return { results, seconds: (performance.now() - start) / 1000 };
}

/** torch.distributed's times, `${op} ${bytes}` → µs, or an empty map when it failed. */
async function torchCollectives(ranks: number): Promise<Map<string, number>> {
  const out = await new Deno.Command(Deno.env.get("RANKFLOW_PYTHON") ?? "python3", {
    args: [
      "-m",
      "torch.distributed.run",
      "--standalone",
      `--nproc-per-node=${ranks}`,
      join(BENCH_DIR, "torch_collectives.py"),
      SIZES.join(","),
      ITERS.join(","),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const times = new Map<string, number>();
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    if (!line.startsWith("torch ")) continue;
    const row = JSON.parse(line.slice(6));
    times.set(`${row.op} ${row.bytes}`, row.us);
  }
  if (!out.success) {
    console.error(`torch_collectives.py failed (exit ${out.code}):\n${new TextDecoder().decode(out.stderr)}`);
  }
  return times;
}

function formatBytes(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes / (1 << 20)} MB` : `${bytes / 1024} KB`;
}

async function benchCollectives(ranks: number): Promise<void> {
  const ours = new Map<string, number>();
  for (const row of (await onRanks(ranks, ["collectives"])).results) {
    ours.set(`${row.op} ${row.bytes}`, row.us as number);
  }
  const theirs = await torchCollectives(ranks);
  console.log(
    `\nCollectives over ${ranks} GPUs, bf16, µs per call (back-to-back calls on one stream, CUDA events) ` +
      "and bus bandwidth in GB/s (nccl-tests' definition)",
  );
  console.log(
    "| op | size | rankflow nccl µs | rankflow peer µs | torch.distributed µs | rankflow bus GB/s | " +
      "torch bus GB/s |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|");
  const show = (value: number | undefined, digits: number) =>
    value === undefined ? "—" : value.toFixed(digits);
  for (const op of OPS) {
    for (const bytes of SIZES) {
      const us = ours.get(`${op} ${bytes}`);
      const them = theirs.get(`${op} ${bytes}`);
      const bus = (t: number | undefined) =>
        t === undefined ? undefined : (bytes / (t * 1e-6)) / 1e9 * busFactor(op, ranks);
      console.log(
        `| ${op} | ${formatBytes(bytes)} | ${show(us, 1)} | ${show(ours.get(`peer ${op} ${bytes}`), 1)} | ${
          show(them, 1)
        } | ${show(bus(us), 1)} | ${show(bus(them), 1)} |`,
      );
    }
  }
}

interface ModelRun {
  tp: number;
  /** How all-reduces ran: "nccl" alone, or "peer" up to the default size; "" at tp 1. */
  path: string;
  ids: number[];
  logits: Float32Array;
  decode: Record<string, { wall: number; device: number; chained: number }>;
  prefill: number;
  loadSeconds: number;
  weightBytes: number;
}

/** Rank 0's result and logits of one job of `tp` ranks over the model in `dtype`. */
async function modelRun(dir: string, tp: number, dtype: "bf16" | "f32", path = ""): Promise<ModelRun> {
  const logitsFile = await Deno.makeTempFile({ prefix: "rankflow-logits-" });
  const peerBytes = path === "peer" ? options.shape.peer_all_reduce_bytes.parse(undefined) : 0;
  try {
    const { results } = await onRanks(tp, ["model", dir, logitsFile, dtype, String(peerBytes)]);
    const logits = new Float32Array((await Deno.readFile(logitsFile)).buffer);
    return { tp, path, logits, ...(results[0] as Omit<ModelRun, "tp" | "path" | "logits">) };
  } finally {
    await Deno.remove(logitsFile);
  }
}

async function benchModel(
  name: string,
  dir: string,
  gpus: number,
  reference: boolean,
  paths: string[],
): Promise<{ runs: ModelRun[]; f32?: ModelRun }> {
  const runs: ModelRun[] = [];
  let f32: ModelRun | undefined;
  try {
    if (reference) f32 = await modelRun(dir, 1, "f32");
  } catch (error) {
    console.log(`${name} tp 1 in f32 (the reference logits) failed: ${(error as Error).message}`);
  }
  for (const tp of [1, 2, 4, 8].filter((tp) => tp <= gpus)) {
    for (const path of tp === 1 ? [""] : paths) {
      try {
        const run = await modelRun(dir, tp, "bf16", path);
        runs.push(run);
        console.error(
          `${name} tp ${tp} ${path}: decode ${JSON.stringify(run.decode)} prefill ${run.prefill}`,
        );
      } catch (error) {
        console.log(`${name} tp ${tp} ${path} failed: ${(error as Error).message}`);
      }
    }
  }
  return { runs, f32 };
}

/** ‖a − b‖ / ‖b‖ and the largest |a − b|. */
function compare(a: Float32Array, b: Float32Array): string {
  let diff = 0, norm = 0, largest = 0;
  a.forEach((v, i) => {
    diff += (v - b[i]) ** 2;
    norm += b[i] ** 2;
    largest = Math.max(largest, Math.abs(v - b[i]));
  });
  return `${Math.sqrt(diff / norm).toExponential(2)} | ${largest.toExponential(2)}`;
}

function printModel(name: string, { runs, f32 }: { runs: ModelRun[]; f32?: ModelRun }): void {
  const one = runs.find((run) => run.tp === 1);
  console.log(
    `\n${name}: each tp in bf16 after a ${PROMPT}-token prompt: its ${AGREE_STEPS} greedy ids against tp 1's, ` +
      "and the logits of the prompt's last position against tp 1's and against tp 1 in f32 (relative error " +
      "‖a − b‖ / ‖b‖ | largest difference)",
  );
  console.log(
    "| tp, all-reduce | ids equal to tp 1 | first differing step | ids equal to f32 | against tp 1 | | against f32 | |",
  );
  console.log("|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const run of runs) {
    if (!one) break;
    const same = run.ids.filter((id, i) => id === one.ids[i]).length;
    const first = run.ids.findIndex((id, i) => id !== one.ids[i]);
    const sameF32 = f32 ? `${run.ids.filter((id, i) => id === f32.ids[i]).length} of ${AGREE_STEPS}` : "—";
    console.log(
      `| ${run.tp}${run.path ? ` ${run.path}` : ""} | ${same} of ${AGREE_STEPS} | ${
        first < 0 ? "—" : first
      } | ${sameF32} | ${compare(run.logits, one.logits)} | ${
        f32 ? compare(run.logits, f32.logits) : "— | —"
      } |`,
    );
  }
  console.log(
    `\n${name}: ms per decode step at context 128 (chained: decodeGreedy calls, their median; host: each step waits ` +
      "for its ids) and prefill of 2048 tokens; speed-up over tp 1 in brackets",
  );
  console.log(
    "| tp, all-reduce | weights per GPU GB | batch 1 chained | batch 1 host | batch 16 chained | batch 16 host | " +
      "prefill 2048 | load s |",
  );
  console.log("|---:|---:|---:|---:|---:|---:|---:|---:|");
  const cell = (ms: number, base: number | undefined) =>
    `${ms.toFixed(3)}${base === undefined ? "" : ` (${(base / ms).toFixed(2)}×)`}`;
  for (const run of runs) {
    const d = run.decode;
    console.log(
      `| ${run.tp}${run.path ? ` ${run.path}` : ""} | ${(run.weightBytes / 1e9).toFixed(2)} | ${
        cell(d[1].chained, one?.decode[1].chained)
      } | ${cell(d[1].wall, one?.decode[1].wall)} | ${cell(d[16].chained, one?.decode[16].chained)} | ${
        cell(d[16].wall, one?.decode[16].wall)
      } | ${cell(run.prefill, one?.prefill)} | ${run.loadSeconds.toFixed(1)} |`,
    );
  }
}

async function controller(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      models: { type: "string", default: "1b,8b" },
      only: { type: "string" },
      "f32-reference": { type: "string", default: "1b" },
      paths: { type: "string", default: "nccl,peer" },
    },
  });
  const gpus = probeDevices().count;
  if (gpus < 2) {
    console.log(`bench:multi-gpu needs two GPUs or more; this machine has ${gpus}`);
    return;
  }
  if (values.only !== "models") await benchCollectives(gpus);
  if (values.only === "collectives") return;
  for (const name of String(values.models).split(",")) {
    const dir = MODELS[name];
    if (!dir) throw new Error(`--models: expected 1b or 8b, got ${name}`);
    await ensureLlama(dir, name);
    const reference = String(values["f32-reference"]).split(",").includes(name);
    printModel(
      `Llama ${name.toUpperCase()}-shaped, random bf16`,
      await benchModel(name, dir, gpus, reference, String(values.paths).split(",")),
    );
  }
}

if (Deno.args[0] === "rank") {
  if (Deno.args[1] === "collectives") await rankCollectives();
  else {await rankModel(
      Deno.args[2],
      Deno.args[3],
      Deno.args[4] === "f32" ? "f32" : "bf16",
      Number(Deno.args[5]),
    );}
} else {
  await controller(Deno.args);
}
