// Where the time of one batch-1 decode step goes, block by block, from a kernels library built with
// RF_TRACE (diagnosis only; the records add a barrier and an atomic to every block):
//   cmake -S . -B build/trace -DRANKFLOW_TRACE=ON && cmake --build build/trace --target rankflow_kernels
//   RANKFLOW_KERNELS_PATH=$PWD/build/trace/librankflow_kernels.so deno task trace:gpu [checkpoint dir]
// It prints each launch of the step (its first block's start, the first and last return from its
// wait, its first and last block's end), the gaps of an average layer, where qkv's and attention's
// blocks ran, and the phases of the decode-attention blocks. RANKFLOW_TRACE_JSON=prefix also writes
// every block (with its multiprocessor in marks[7]) to prefix.<context>.json. The checkpoint is the
// bench's (bench/make_llama.py).

import { exportCheckpoint } from "../plugins/export/hf.ts";
import { readGraphWeights } from "../core/ir/weights.ts";
import { cudaBackend } from "../plugins/engines/cuda.ts";
import type { CudaEngine } from "../plugins/engines/cuda/engine.ts";
import { deviceAlloc, deviceFree, download, upload } from "../ffi/cuda.ts";

const KINDS = ["", "product", "attention", "attention", "attention", "gather", "argmax"];
const MERGING = 3; // the attention block that merged its token's chunks
const IDLE = 4; // an attention block past its token's keys
const RECORD = 12; // u64 a record
const CAPACITY = 1 << 16;

type Block = {
  start: number;
  waited: number;
  end: number;
  kind: number;
  extra: number;
  grid: number;
  marks: number[];
};
type Launch = {
  name: string;
  blocks: Block[];
  start: number;
  waitFirst: number;
  waitLast: number;
  end: number;
};

/** Products by their sizes: n / 16 in the low 16 bits of `extra`, k / 256 above. */
function productName(extra: number): string {
  const n = (extra & 0xffff) * 16;
  const k = (extra >> 16) * 256;
  return n > 65536 ? "head" : n === 3072 ? "qkv" : n === 16384 ? "gate-up" : k > 4096 ? "down" : `o`;
}

function readBlocks(buffer: bigint): Block[] {
  const head = new BigUint64Array(8);
  download(head, buffer);
  const count = Number(head[0]);
  if (count > CAPACITY) throw new Error(`${count} blocks recorded, more than the buffer's ${CAPACITY}`);
  const raw = new BigUint64Array(8 + RECORD * count);
  download(raw, buffer);
  // Times count from the first block's start: the timer's nanoseconds since 1970 need 61 bits,
  // more than a double holds exactly (it would round them to 256 ns). 0 stays 0 (a mark not taken).
  let base = -1n;
  for (let i = 0; i < count; i++) {
    const start = raw[8 + RECORD * i];
    if (base < 0n || start < base) base = start;
  }
  const time = (t: bigint) => t === 0n ? 0 : Number(t - base) + 1;
  return Array.from({ length: count }, (_, i) => {
    const at = 8 + RECORD * i;
    const tag = raw[at + 3];
    return {
      start: time(raw[at]),
      waited: time(raw[at + 1]),
      end: time(raw[at + 2]),
      kind: Number(tag >> 56n),
      extra: Number((tag >> 32n) & 0xffffffn),
      grid: Number((tag >> 16n) & 0xffffn),
      // marks 0 to 6 are times, 7 the multiprocessor
      marks: [4, 5, 6, 7, 8, 9, 10, 11].map((j, m) => m < 7 ? time(raw[at + j]) : Number(raw[at + j])),
    };
  });
}

/** Blocks grouped into launches: by kind and size, then in time order a grid's worth at a time. */
function launches(blocks: Block[]): Launch[] {
  const groups = new Map<string, Block[]>();
  for (const b of blocks) {
    const name = KINDS[b.kind] === "product" ? productName(b.extra) : KINDS[b.kind] ?? `kind ${b.kind}`;
    const key = `${name} ${b.grid}`;
    groups.set(key, [...(groups.get(key) ?? []), b]);
  }
  const out: Launch[] = [];
  for (const [key, list] of groups) {
    list.sort((a, b) => a.start - b.start);
    const grid = list[0].grid;
    for (let i = 0; i < list.length; i += grid) {
      const part = list.slice(i, i + grid);
      const waits = part.map((b) => b.waited);
      out.push({
        name: key.split(" ")[0],
        blocks: part,
        start: Math.min(...part.map((b) => b.start)),
        waitFirst: Math.min(...waits),
        waitLast: Math.max(...waits),
        end: Math.max(...part.map((b) => b.end)),
      });
    }
  }
  return out.sort((a, b) => a.waitFirst - b.waitFirst);
}

const us = (ns: number) => (ns / 1000).toFixed(2).padStart(8);
const median = (xs: number[]) => xs.length ? xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] : NaN;

function report(list: Launch[]): void {
  const zero = Math.min(...list.map((l) => l.start));
  console.log("Launches, µs from the step's first block:");
  console.log("| launch | blocks | start | first wait | last wait | end |");
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const l of list) {
    const cells = [l.start, l.waitFirst, l.waitLast, l.end].map((t) => us(t - zero));
    console.log(`| ${l.name.padEnd(9)} | ${String(l.blocks.length).padStart(4)} | ${cells.join(" | ")} |`);
  }
  const order = ["qkv", "attention", "o", "gate-up", "down"];
  const layers = list.filter((l) => l.name === "qkv").length;
  const byName = new Map(order.map((n) => [n, list.filter((l) => l.name === n)]));
  if (layers === 0 || order.some((n) => byName.get(n)!.length !== layers)) return;
  console.log(
    `\nAn average layer (of ${layers}), µs: the gap from the launch before's end to this one's first wait,`,
  );
  console.log(`its first wait to its end, and its first to its last block's wait`);
  for (const [i, name] of order.entries()) {
    const mean = (f: (layer: number) => number) =>
      (Array.from({ length: layers }, (_, l) => f(l)).reduce((a, b) => a + b, 0) / layers / 1000).toFixed(2);
    const at = (n: string, l: number) => byName.get(n)![l];
    const gap = i === 0
      ? mean((l) => l === 0 ? 0 : at("qkv", l).waitFirst - at("down", l - 1).end)
      : mean((l) => at(name, l).waitFirst - at(order[i - 1], l).end);
    console.log(
      `  ${name.padEnd(9)} gap ${gap}, run ${mean((l) => at(name, l).end - at(name, l).waitFirst)}, ` +
        `waits spread ${mean((l) => at(name, l).waitLast - at(name, l).waitFirst)}`,
    );
  }
  // Where the blocks ran (%smid, mark 7): how many multiprocessors qkv took and how many of them
  // hold two of its blocks; how many attention blocks started beside a qkv block still running, and
  // how many on a multiprocessor qkv did not use.
  const per = (f: (l: number) => number) =>
    (Array.from({ length: layers }, (_, l) => f(l)).reduce((a, b) => a + b, 0) / layers).toFixed(1);
  const qkvEnds = Array.from({ length: layers }, (_, l) => {
    const ends = new Map<number, number[]>();
    for (const b of byName.get("qkv")![l].blocks) {
      ends.set(b.marks[7], [...(ends.get(b.marks[7]) ?? []), b.end]);
    }
    return ends;
  });
  const attentionAt = (l: number) => byName.get("attention")![l].blocks.filter((b) => b.kind !== IDLE);
  console.log(
    `  qkv's blocks on ${per((l) => qkvEnds[l].size)} multiprocessors, ` +
      `${per((l) => [...qkvEnds[l].values()].filter((e) => e.length > 1).length)} with two; of ` +
      `${per((l) => attentionAt(l).length)} attention blocks ${
        per((l) =>
          attentionAt(l).filter((b) => (qkvEnds[l].get(b.marks[7]) ?? []).some((e) => e > b.start)).length
        )
      } started beside a running qkv block, ${
        per((l) => attentionAt(l).filter((b) => !qkvEnds[l].has(b.marks[7])).length)
      } where qkv did not run`,
  );
  const attention = list.filter((l) => l.name === "attention").flatMap((l) => l.blocks).filter((b) =>
    b.marks[0] > 0
  );
  const phase = (label: string, f: (b: Block) => number, blocks = attention) =>
    console.log(`  ${label.padEnd(46)} ${(median(blocks.map(f)) / 1000).toFixed(2)} µs`);
  const merging = attention.filter((b) => b.kind === MERGING);
  console.log("\nDecode-attention blocks, medians:");
  phase("start to the wait's return (cache rows loaded)", (b) => b.waited - b.start);
  phase("to q, k and v loaded, rotated and written", (b) => b.marks[0] - b.waited);
  phase("to the scores", (b) => b.marks[1] - b.marks[0]);
  phase("to the softmax", (b) => b.marks[2] - b.marks[1]);
  phase("to the weighted values", (b) => b.marks[3] - b.marks[2]);
  phase("to the end, not merging", (b) => b.end - b.marks[3], attention.filter((b) => b.kind !== MERGING));
  phase("merging: to the merge's start (barrier or count)", (b) => b.marks[4] - b.marks[3], merging);
  phase("merging: to every chunk's words read and added", (b) => b.marks[5] - b.marks[4], merging);
  phase("merging: to the merged values stored", (b) => b.marks[6] - b.marks[5], merging);
  phase("merging: to the end (clearing, state)", (b) => b.end - b.marks[6], merging);
}

const dir = Deno.args[0] ?? "/tmp/rankflow-llama1b";
const library = Deno.env.get("RANKFLOW_KERNELS_PATH");
if (!library) {
  throw new Error("set RANKFLOW_KERNELS_PATH to a kernels library built with -DRANKFLOW_TRACE=ON");
}
const traced = Deno.dlopen(library, { rf_trace_set: { parameters: ["u64"], result: "i32" } });
using model = exportCheckpoint(dir, "bf16");
using engine = await cudaBackend().build(
  model.graph,
  readGraphWeights(model.graph, model.weights),
) as CudaEngine;
const vocab = model.model.vocabSize;
const buffer = deviceAlloc(8 * (8 + RECORD * CAPACITY));
try {
  for (const context of [128, 1024]) {
    using pool = engine.sequences({ slots: 1, maxLength: context + 64 });
    const prompt = Array.from({ length: context }, (_, i) => (i * 7919 + 13) % vocab);
    let tokens = await pool.greedy([{ slot: 0, ids: prompt, start: 0 }]);
    for (let n = 0; n < 4; n++) {
      tokens = await pool.greedy([{ slot: 0, ids: [tokens[0]], start: context + n }]);
    }
    console.log(
      `\n## Context ${context}: ${pool.replayDecodeMs(1, 20).toFixed(3)} ms a step, replayed back to back\n`,
    );
    upload(buffer, new BigUint64Array(8));
    if (traced.symbols.rf_trace_set(buffer) !== 0) throw new Error("rf_trace_set failed");
    pool.replayDecodeMs(1, 1);
    if (traced.symbols.rf_trace_set(0n) !== 0) throw new Error("rf_trace_set failed");
    const list = launches(readBlocks(buffer));
    report(list);
    const dump = Deno.env.get("RANKFLOW_TRACE_JSON");
    if (dump) Deno.writeTextFileSync(`${dump}.${context}.json`, JSON.stringify(list));
  }
} finally {
  deviceFree(buffer);
  traced.close();
}
