// The cuda engine on a Llama-3.2-1B-shaped model (random bf16 weights written on the GPU machine
// by bench/make_llama.py): decode ms per step at batch 1 and 8 with 128 and 1024 tokens of
// context, prefill of 512 and 2048 tokens; beside it PyTorch eager and torch.compile with a static
// KV cache and CUDA graphs (bench/torch_decode.py, same weights), and the memory-bandwidth floor of
// a decode step: the weight bytes over the device's measured copy bandwidth.
// RANKFLOW_BENCH_QUICK=1 runs rankflow's decode only, =prefill its prefill of 2048 tokens with a
// profile by kind of launch: for comparing settings of the kernels' environment variables.

import { join } from "node:path";
import { exportCheckpoint } from "../plugins/export/hf.ts";
import { readGraphWeights } from "../core/ir/weights.ts";
import { cudaBackend } from "../plugins/engines/cuda.ts";
import type { CudaEngine } from "../plugins/engines/cuda/engine.ts";
import { check, createEvent, cudart, deviceName, elapsedMs, MEMCPY } from "../ffi/cuda.ts";
import { sampleLogits, seededUniform } from "../core/serve/sampling.ts";
import type { SampleChoice } from "../core/runtime/sequences.ts";

const DECODE_STEPS = 40;
/** decodeGreedy calls of DECODE_STEPS steps each, from the same position, whose median is `chained`. */
const CHAINED_CALLS = 5;
const BENCH_DIR = new URL(".", import.meta.url).pathname;

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written. */
export function copyBandwidth(engine: CudaEngine): number {
  const bytes = 2 ** 31;
  const ctx = engine.ctx;
  const a = ctx.alloc(bytes);
  const b = ctx.alloc(bytes);
  const start = createEvent();
  const end = createEvent();
  const c = cudart();
  const times: number[] = [];
  for (let i = 0; i < 12; i++) {
    check(c.cudaEventRecord(start, ctx.stream), "cudaEventRecord");
    check(
      c.cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, BigInt(bytes), MEMCPY.deviceToDevice, ctx.stream),
      "copy",
    );
    check(c.cudaEventRecord(end, ctx.stream), "cudaEventRecord");
    const ms = elapsedMs(start, end);
    if (i >= 2) times.push(ms);
  }
  ctx.free(a);
  ctx.free(b);
  return (2 * bytes) / (median(times) / 1000);
}

export function randomIds(count: number, vocab: number, seed: number): number[] {
  let state = seed;
  return Array.from({ length: count }, () => {
    state = (state * 1103515245 + 12345) & 0x7fffffff;
    return state % vocab;
  });
}

/**
 * Greedy decode, ms per step: `wall` as the host sees it (each step waits for its ids), `device` the
 * step's graph replayed back to back (the device's own time, without the host's wait), `chained`
 * the steps of a decodeGreedy call (the ids fed back on the device, read once at the end), the
 * median of CHAINED_CALLS calls from the same position.
 * The pool holds `poolLength` positions a slot: by default just what the run needs.
 */
export async function decodeMs(
  engine: CudaEngine,
  batch: number,
  context: number,
  vocab: number,
  poolLength = context + DECODE_STEPS + 16,
): Promise<{ wall: number; device: number; chained: number }> {
  const prompts = Array.from({ length: batch }, (_, slot) => randomIds(context, vocab, 7 + slot));
  const times: number[] = [];
  let device: number;
  {
    using pool = engine.sequences({ slots: batch, maxLength: poolLength });
    let tokens = await pool.greedy(prompts.map((ids, slot) => ({ slot, ids, start: 0 })));
    for (let n = 0; n < DECODE_STEPS + 5; n++) {
      const start = performance.now();
      tokens = await pool.greedy(tokens.map((id, slot) => ({ slot, ids: [id], start: context + n })));
      if (n >= 5) times.push(performance.now() - start);
    }
    device = pool.replayDecodeMs(batch, DECODE_STEPS);
  }
  using pool = engine.sequences({ slots: batch, maxLength: poolLength });
  const tokens = await pool.greedy(prompts.map((ids, slot) => ({ slot, ids, start: 0 })));
  const warm = await pool.decodeGreedy(tokens.map((id, slot) => ({ slot, ids: [id], start: context })), 5);
  const chained: number[] = [];
  for (let call = 0; call < CHAINED_CALLS; call++) {
    const start = performance.now();
    await pool.decodeGreedy(
      warm.at(-1)!.map((id, slot) => ({ slot, ids: [id], start: context + 5 })),
      DECODE_STEPS,
    );
    chained.push((performance.now() - start) / DECODE_STEPS);
  }
  return { wall: median(times), device, chained: median(chained) };
}

/** A server's pool: as many positions a slot as a long-context model takes (decode in a long pool). */
const LONG_POOL = 32768;

/** The sampled decode that serving runs: top_p 0.9 at temperature 0.8, drawn on the device or the host. */
const SAMPLED = { temperature: 0.8, topK: 0, topP: 0.9 };

async function sampledMs(
  engine: CudaEngine,
  batch: number,
  context: number,
  vocab: number,
  where: "device" | "host",
): Promise<number> {
  using pool = engine.sequences({ slots: batch, maxLength: context + DECODE_STEPS + 16 });
  const prompts = Array.from({ length: batch }, (_, slot) => randomIds(context, vocab, 7 + slot));
  let tokens = await pool.greedy(prompts.map((ids, slot) => ({ slot, ids, start: 0 })));
  const uniform = seededUniform(5);
  const times: number[] = [];
  for (let n = 0; n < DECODE_STEPS + 5; n++) {
    const entries = tokens.map((id, slot) => ({ slot, ids: [id], start: context + n }));
    const start = performance.now();
    if (where === "device") {
      const choices: SampleChoice[] = entries.map(() => ({ ...SAMPLED, uniform: uniform() }));
      tokens = await pool.sample!(entries, choices);
    } else {
      const logits = await pool.step(entries);
      const values = logits.data as Float32Array;
      tokens = entries.map((_, row) =>
        sampleLogits(values.subarray(row * vocab, (row + 1) * vocab), SAMPLED, uniform())
      );
    }
    if (n >= 5) times.push(performance.now() - start);
  }
  return median(times);
}

/** Device time per kind of launch of one decode step at batch 1, context 1024. */
async function profileDecode(
  engine: CudaEngine,
  vocab: number,
  batch: number,
): Promise<Map<string, { ms: number; launches: number }>> {
  using pool = engine.sequences({ slots: batch, maxLength: 1024 + 16 });
  const prompts = Array.from({ length: batch }, (_, slot) => randomIds(1024, vocab, 11 + slot));
  const tokens = await pool.greedy(prompts.map((ids, slot) => ({ slot, ids, start: 0 })));
  pool.profileStep(tokens.map((id, slot) => ({ slot, ids: [id], start: 1024 })));
  return pool.profileStep(tokens.map((id, slot) => ({ slot, ids: [id], start: 1025 })));
}

/** Device time per kind of launch of one prefill of `length` tokens. */
async function profilePrefill(
  engine: CudaEngine,
  vocab: number,
  length: number,
): Promise<Map<string, { ms: number; launches: number }>> {
  using pool = engine.sequences({ slots: 1, maxLength: length + 8, prefillChunk: length });
  const ids = randomIds(length, vocab, 3);
  await pool.greedy([{ slot: 0, ids, start: 0 }]); // chooses the products' algorithms
  return pool.profileStep([{ slot: 0, ids, start: 0 }]);
}

/** A profile as a table, its kinds by time. */
function printProfile(title: string, profile: Map<string, { ms: number; launches: number }>): void {
  console.log(
    `\n${title} by kind of launch: device time between events captured with the launches in a CUDA graph ` +
      "(each event adds about 2 µs)",
  );
  console.log("| launch | count | ms | share |");
  console.log("|---|---:|---:|---:|");
  const total = [...profile.values()].reduce((sum, entry) => sum + entry.ms, 0);
  for (const [kind, entry] of [...profile].sort((a, b) => b[1].ms - a[1].ms)) {
    console.log(
      `| ${kind} | ${entry.launches} | ${entry.ms.toFixed(3)} | ${(100 * entry.ms / total).toFixed(1)}% |`,
    );
  }
  console.log(
    `| total | ${[...profile.values()].reduce((n, e) => n + e.launches, 0)} | ${total.toFixed(3)} | |`,
  );
}

export async function prefillMs(engine: CudaEngine, length: number, vocab: number): Promise<number> {
  using pool = engine.sequences({ slots: 1, maxLength: length + 8, prefillChunk: length });
  const ids = randomIds(length, vocab, 3);
  const times: number[] = [];
  for (let i = 0; i < 6; i++) {
    const start = performance.now();
    await pool.greedy([{ slot: 0, ids, start: 0 }]);
    if (i >= 1) times.push(performance.now() - start);
  }
  return median(times);
}

interface TorchRow {
  mode: string;
  what: string;
  batch: number;
  context: number;
  ms: number;
}

/** PyTorch's rows, each echoed to stderr as it arrives (a run cut short still shows those it made). */
async function torchRows(dir: string): Promise<TorchRow[]> {
  const python = Deno.env.get("RANKFLOW_PYTHON") ?? "python3";
  const child = new Deno.Command(python, {
    args: [join(BENCH_DIR, "torch_decode.py"), dir],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const rows: TorchRow[] = [];
  let pending = "";
  for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
    const lines = (pending + text).split("\n");
    pending = lines.pop()!;
    for (const line of lines.filter((line) => line.startsWith("torch "))) {
      console.error(line);
      rows.push(JSON.parse(line.slice("torch ".length)));
    }
  }
  const status = await child.status;
  if (!status.success) {
    console.error(`torch_decode.py failed (exit ${status.code}); its rows so far are shown`);
  }
  return rows;
}

/** Writes a random Llama of the shape ("1b" or "8b") to `dir` with bench/make_llama.py, unless it is there. */
export async function ensureLlama(dir: string, shape: string): Promise<void> {
  if (isFile(join(dir, "config.json"))) return;
  console.log(`writing a random Llama-${shape}-shaped checkpoint to ${dir}`);
  const made = await new Deno.Command(Deno.env.get("RANKFLOW_PYTHON") ?? "python3", {
    args: [join(BENCH_DIR, "make_llama.py"), dir, "0", "--shape", shape],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!made.success) throw new Error("bench/make_llama.py failed");
}

export async function benchGpu(dirArg?: string): Promise<void> {
  const dir = dirArg ?? "/tmp/rankflow-llama1b";
  await ensureLlama(dir, "1b");
  const loadStart = performance.now();
  using model = exportCheckpoint(dir, "bf16");
  const weights = readGraphWeights(model.graph, model.weights);
  using engine = await cudaBackend().build(model.graph, weights) as CudaEngine;
  const vocab = model.model.vocabSize;
  console.log(
    `${deviceName(engine.ctx.device)}: ${
      (engine.weights.bytes / 1e9).toFixed(3)
    } GB of bf16 weights on the device ` +
      `(loaded in ${((performance.now() - loadStart) / 1000).toFixed(1)} s)`,
  );
  const bandwidth = copyBandwidth(engine);
  const floorMs = (engine.weights.bytes / bandwidth) * 1000;
  if (Deno.env.get("RANKFLOW_BENCH_QUICK") === "prefill") {
    // prefill only, with where its time goes
    console.log(`prefill of 2048 tokens: ${(await prefillMs(engine, 2048, vocab)).toFixed(3)} ms`);
    printProfile("One prefill of 2048 tokens", await profilePrefill(engine, vocab, 2048));
    return;
  }
  if (Deno.env.get("RANKFLOW_BENCH_QUICK") === "1") {
    // decode only, for comparing settings of the kernels' environment variables
    for (const batch of [1, 8]) {
      for (const context of [128, 1024]) {
        const { wall, device, chained } = await decodeMs(engine, batch, context, vocab);
        console.log(
          `batch ${batch} context ${context}: ${wall.toFixed(3)} ms, ${(wall / floorMs).toFixed(2)}× floor ` +
            `(device ${device.toFixed(3)} ms a step back to back; chained ${chained.toFixed(3)} ms, ` +
            `${(chained / floorMs).toFixed(2)}× floor)`,
        );
      }
    }
    // last: in one run the device time of the batch-8 pool measured right after a long pool came out
    // at twice its usual (its wall and chained times did not; the cause is not known)
    for (const batch of [1, 8]) {
      const long = await decodeMs(engine, batch, 128, vocab, LONG_POOL);
      console.log(
        `batch ${batch} context 128 in a pool of ${LONG_POOL} positions: ${long.wall.toFixed(3)} ms ` +
          `(device ${long.device.toFixed(3)}; chained ${long.chained.toFixed(3)})`,
      );
    }
    return;
  }
  const ours: TorchRow[] = [];
  const deviceMs = new Map<string, number>(); // "batch context": the step's device time
  const chainedMs = new Map<string, number>(); // "batch context": a step of decodeGreedy
  for (const batch of [1, 8]) {
    for (const context of [128, 1024]) {
      const { wall, device, chained } = await decodeMs(engine, batch, context, vocab);
      ours.push({ mode: "rankflow", what: "decode", batch, context, ms: wall });
      deviceMs.set(`${batch} ${context}`, device);
      chainedMs.set(`${batch} ${context}`, chained);
      console.error(`rankflow ${JSON.stringify(ours.at(-1))}`);
    }
  }
  for (const length of [512, 2048]) {
    ours.push({
      mode: "rankflow",
      what: "prefill",
      batch: 1,
      context: length,
      ms: await prefillMs(engine, length, vocab),
    });
    console.error(`rankflow ${JSON.stringify(ours.at(-1))}`);
  }
  // Context 128 again, in a pool as long as a server's
  const longPool = new Map<number, { wall: number; device: number; chained: number }>();
  for (const batch of [1, 8]) longPool.set(batch, await decodeMs(engine, batch, 128, vocab, LONG_POOL));
  // Batch 8 again with its products on rankflow's few-row kernel instead of cuBLASLt.
  const fewRows = new Map<number, number>();
  {
    using kernel = await cudaBackend({ kernel_rows: 8 }).build(model.graph, weights) as CudaEngine;
    for (const context of [128, 1024]) fewRows.set(context, (await decodeMs(kernel, 8, context, vocab)).wall);
  }
  const sampledRows: { batch: number; device: number; host: number }[] = [];
  for (const batch of [1, 8]) {
    const device = await sampledMs(engine, batch, 128, vocab, "device");
    sampledRows.push({ batch, device, host: await sampledMs(engine, batch, 128, vocab, "host") });
  }
  const profiles = new Map<number, Map<string, { ms: number; launches: number }>>();
  for (const batch of [1, 8]) {
    try {
      profiles.set(batch, await profileDecode(engine, vocab, batch));
    } catch (error) {
      console.log(`no per-launch profile: ${(error as Error).message}`);
    }
  }
  let prefillProfile: Map<string, { ms: number; launches: number }> | undefined;
  try {
    prefillProfile = await profilePrefill(engine, vocab, 2048);
  } catch (error) {
    console.log(`no per-launch profile of prefill: ${(error as Error).message}`);
  }
  const theirs = Deno.env.get("RANKFLOW_BENCH_TORCH") === "0" ? [] : await torchRows(dir);
  const find = (mode: string, what: string, batch: number, context: number) =>
    [...ours, ...theirs].find((r) =>
      r.mode === mode && r.what === what && r.batch === batch && r.context === context
    )
      ?.ms;
  const show = (ms: number | undefined) => (ms === undefined ? "—" : ms.toFixed(3));
  console.log(
    `\ncopy bandwidth ${(bandwidth / 1e12).toFixed(2)} TB/s (read + write); decode floor = ` +
      `${(engine.weights.bytes / 1e9).toFixed(3)} GB / bandwidth = ${floorMs.toFixed(3)} ms per step`,
  );
  console.log(
    `\nDecode, ms per step (median of ${DECODE_STEPS}; a step makes one token per sequence; rankflow cuda: ` +
      `each step waits for its ids; chained: decodeGreedy calls of ${DECODE_STEPS} steps, the ids fed back on ` +
      `the device, median of ${CHAINED_CALLS} calls; device: the step's graph replayed back to back)`,
  );
  console.log(
    "| batch | context | rankflow cuda | chained | device | PyTorch eager | torch.compile | floor | " +
      "rankflow / floor | chained / floor | rankflow / compile |",
  );
  console.log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const batch of [1, 8]) {
    for (const context of [128, 1024]) {
      const r = find("rankflow", "decode", batch, context)!;
      const chained = chainedMs.get(`${batch} ${context}`)!;
      const compiled = find("compile", "decode", batch, context);
      console.log(
        `| ${batch} | ${context} | ${show(r)} | ${show(chained)} | ${
          show(deviceMs.get(`${batch} ${context}`))
        } | ${show(find("eager", "decode", batch, context))} | ${show(compiled)} | ` +
          `${floorMs.toFixed(3)} | ${(r / floorMs).toFixed(2)}× | ${(chained / floorMs).toFixed(2)}× | ${
            compiled ? (r / compiled).toFixed(2) + "×" : "—"
          } |`,
      );
    }
  }
  console.log(
    `\nDecode at context 128 in a pool of ${LONG_POOL} positions a slot (a server's pool), ms per step, ` +
      `beside the pool of ${128 + DECODE_STEPS + 16} above`,
  );
  console.log(`| batch | rankflow cuda | chained | device | device, pool of ${128 + DECODE_STEPS + 16} |`);
  console.log("|---:|---:|---:|---:|---:|");
  for (const [batch, r] of longPool) {
    console.log(
      `| ${batch} | ${r.wall.toFixed(3)} | ${r.chained.toFixed(3)} | ${r.device.toFixed(3)} | ${
        show(deviceMs.get(`${batch} 128`))
      } |`,
    );
  }
  console.log(
    "\nBatch-8 decode, ms per step: products on cuBLASLt (the default) and on rankflow's few-row kernel",
  );
  console.log("| context | cuBLASLt | few-row kernel (kernel_rows: 8) |");
  console.log("|---:|---:|---:|");
  for (const [context, ms] of fewRows) {
    console.log(`| ${context} | ${show(find("rankflow", "decode", 8, context))} | ${show(ms)} |`);
  }
  console.log(
    `\nSampled decode (context 128, temperature ${SAMPLED.temperature}, top_p ${SAMPLED.topP}), ms per step: ` +
      "the token drawn on the device (rf_sample) or from the logits copied to the host",
  );
  console.log("| batch | greedy | drawn on the device | drawn on the host |");
  console.log("|---:|---:|---:|---:|");
  for (const row of sampledRows) {
    console.log(
      `| ${row.batch} | ${show(find("rankflow", "decode", row.batch, 128))} | ${row.device.toFixed(3)} | ${
        row.host.toFixed(3)
      } |`,
    );
  }
  for (const [batch, profile] of profiles) {
    printProfile(`One decode step (batch ${batch}, context 1024)`, profile);
  }
  console.log("\nPrefill, ms (batch 1, median of 5)");
  console.log("| tokens | rankflow cuda | PyTorch eager | rankflow tokens/s |");
  console.log("|---:|---:|---:|---:|");
  for (const length of [512, 2048]) {
    const r = find("rankflow", "prefill", 1, length)!;
    console.log(
      `| ${length} | ${show(r)} | ${show(find("eager", "prefill", 1, length))} | ${
        (length / r * 1000).toFixed(0)
      } |`,
    );
  }
  if (prefillProfile) printProfile("One prefill of 2048 tokens", prefillProfile);
}
