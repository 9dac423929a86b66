// The cuda engine on the GPU against HF transformers' outputs for the fixture models, against the
// reference engine, and against itself (CUDA-graph decode vs eager decode).

import { deepStrictEqual, ok } from "node:assert";
import { join } from "node:path";
import { gpu } from "../../ffi/gpu.ts";
import { exportCheckpoint } from "../../../plugins/export/hf.ts";
import { readGraphWeights } from "../../../core/ir/weights.ts";
import { cudaBackend } from "../../../plugins/engines/cuda.ts";
import type { CudaEngine } from "../../../plugins/engines/cuda/engine.ts";
import { CHAIN_STEPS, MIN_SPAN } from "../../../plugins/engines/cuda/sequences.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { initModel } from "../../../plugins/export/hf_random.ts";
import { emptyCaches, generateGreedy, logitsOf, step } from "../../../core/runtime/generate.ts";
import { type DType, toF32 } from "../../../core/ir/tensor.ts";
import { makeSampler, sampleLogits } from "../../../core/serve/sampling.ts";
import { Scheduler } from "../../../core/serve/scheduler.ts";
import { MetricsRegistry } from "../../../core/serve/metrics.ts";
import type { Sequences } from "../../../core/runtime/sequences.ts";
import { FIXTURES, oracleOf, relativeError } from "../../oracle.ts";

/** Relative error ‖out − ref‖ / ‖ref‖ that each compute dtype must stay under against f32 HF logits. */
const TOLERANCE: Record<string, number> = { f32: 1e-4, f16: 5e-3, bf16: 3e-2 };

async function build(name: string, dtype: DType, options = {}): Promise<CudaEngine> {
  using model = exportCheckpoint(join(FIXTURES, name), dtype);
  const weights = readGraphWeights(model.graph, model.weights);
  return await cudaBackend(options).build(model.graph, weights) as CudaEngine;
}

const CASES: [string, DType][] = [["tiny-llama", "f32"], ["tiny-qwen2", "bf16"], ["tiny-gpt2", "f16"]];

for (const [name, dtype] of CASES) {
  for (const compute of new Set<DType>(["f32", dtype])) {
    Deno.test({
      name: `gpu: cuda engine ${name} (${compute}) logits match transformers within ${TOLERANCE[compute]}`,
      ignore: !gpu,
      async fn() {
        using engine = await build(name, compute);
        const oracle = oracleOf(name);
        const logits = await logitsOf(engine, oracle.logit_ids);
        const { relative, maxAbs } = relativeError(logits, oracle.logits);
        console.log(
          `${name} ${compute}: relative error ${relative.toExponential(2)}, max abs ${
            maxAbs.toExponential(2)
          }`,
        );
        ok(
          relative <= TOLERANCE[compute],
          `${name}: relative logit error ${relative} > ${TOLERANCE[compute]}`,
        );
      },
    });
  }

  // transformers' oracle computes in f32; f16 rounding keeps GPT-2's ids, bf16 rounding changes
  // tiny-qwen2's from the third token on (the reference engine rounding to bf16 picks the same
  // ids as this engine; see the next test).
  for (const compute of dtype === "bf16" ? ["f32" as const] : new Set<DType>(["f32", dtype])) {
    Deno.test({
      name:
        `gpu: cuda engine ${name} (${compute}) 32 greedy ids match transformers (device KV cache, CUDA graphs)`,
      ignore: !gpu,
      async fn() {
        using engine = await build(name, compute);
        const oracle = oracleOf(name);
        const [greedy] = await generateGreedy(engine, [oracle.prompt_ids], { maxTokens: 32 });
        deepStrictEqual(greedy, oracle.greedy_ids);
      },
    });
  }
}

Deno.test({
  name:
    "gpu: cuda engine tiny-qwen2 in bf16 picks the 32 greedy ids of the reference engine rounding to bf16",
  ignore: !gpu,
  async fn() {
    using model = exportCheckpoint(join(FIXTURES, "tiny-qwen2"), "bf16");
    const weights = readGraphWeights(model.graph, model.weights);
    using engine = await cudaBackend().build(model.graph, weights);
    using reference = await cpuBackend().build(model.graph, weights);
    const oracle = oracleOf("tiny-qwen2");
    const [ours] = await generateGreedy(engine, [oracle.prompt_ids], { maxTokens: 32 });
    const [theirs] = await generateGreedy(reference, [oracle.prompt_ids], { maxTokens: 32 });
    deepStrictEqual(ours, theirs);
  },
});

Deno.test({
  name: "gpu: cuda engine functional run with a batch and past caches equals the reference engine",
  ignore: !gpu,
  async fn() {
    using model = exportCheckpoint(join(FIXTURES, "tiny-llama"), "f32");
    const weights = readGraphWeights(model.graph, model.weights);
    using engine = await cudaBackend().build(model.graph, weights);
    using reference = await cpuBackend().build(model.graph, weights);
    const prompt = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]];
    const gpuFirst = await step(engine, prompt, 0, emptyCaches(engine, 2));
    const cpuFirst = await step(reference, prompt, 0, emptyCaches(reference, 2));
    const gpuNext = await step(engine, [[46], [26]], 5, gpuFirst.caches);
    const cpuNext = await step(reference, [[46], [26]], 5, cpuFirst.caches);
    for (const [ours, theirs] of [[gpuFirst, cpuFirst], [gpuNext, cpuNext]] as const) {
      const a = Array.from(toF32(ours.logits));
      const b = Array.from(toF32(theirs.logits));
      const { relative } = relativeError([a], [b]);
      ok(relative < 1e-4, `logits differ from the reference engine: ${relative}`);
      for (const key of Object.keys(theirs.caches)) {
        const { relative: cache } = relativeError([Array.from(toF32(ours.caches[key]))], [
          Array.from(toF32(theirs.caches[key])),
        ]);
        ok(cache < 1e-4, `${key} differs from the reference engine: ${cache}`);
      }
    }
  },
});

Deno.test({
  name: "gpu: CUDA-graph decode equals eager decode, for sequences of different lengths in one batch",
  ignore: !gpu,
  async fn() {
    for (const [name, dtype] of CASES) {
      using engine = await build(name, dtype);
      const prompts = [[10, 200, 33, 71], [5, 17], [42, 99, 3, 250, 7, 128, 1]];
      const run = async (graphs: boolean) => {
        using pool = engine.sequences({ slots: 4, maxLength: 48, graphs });
        let tokens = await pool.greedy(prompts.map((ids, slot) => ({ slot, ids, start: 0 })));
        const out: number[][] = [tokens];
        for (let n = 0; n < 24; n++) {
          tokens = await pool.greedy(
            tokens.map((id, slot) => ({ slot, ids: [id], start: prompts[slot].length + n })),
          );
          out.push(tokens);
        }
        const last = await pool.step(tokens.map((id, slot) => ({
          slot,
          ids: [id],
          start: prompts[slot].length + 24,
        })));
        return { out, last: Array.from(toF32(last)) };
      };
      const graphed = await run(true);
      const eager = await run(false);
      deepStrictEqual(graphed.out, eager.out, `${name}: graph and eager decode picked different ids`);
      deepStrictEqual(graphed.last, eager.last, `${name}: graph and eager logits differ`);
    }
  },
});

Deno.test({
  name: "gpu: decodeGreedy chains steps on the device and picks the ids of step-by-step greedy decode",
  ignore: !gpu,
  async fn() {
    for (const [name, dtype] of CASES) {
      using engine = await build(name, dtype);
      // three sequences in a bucket of four (a padding row); more steps than one chain holds
      const prompts = [[10, 200, 33, 71], [5, 17], [42, 99, 3, 250, 7, 128, 1]];
      const steps = CHAIN_STEPS + 6;
      const run = async (chained: boolean, graphs: boolean) => {
        using pool = engine.sequences({ slots: 3, maxLength: 96, graphs });
        const first = await pool.greedy(prompts.map((ids, slot) => ({ slot, ids, start: 0 })));
        const entries = first.map((id, slot) => ({ slot, ids: [id], start: prompts[slot].length }));
        if (chained) {
          const ids = await pool.decodeGreedy(entries, steps);
          // the pool's lengths moved on: one more greedy step continues where the chain ended
          const next = await pool.greedy(
            ids.at(-1)!.map((id, slot) => ({ slot, ids: [id], start: prompts[slot].length + steps })),
          );
          return [...ids, next];
        }
        const out: number[][] = [];
        let tokens = first;
        for (let n = 0; n <= steps; n++) {
          tokens = await pool.greedy(
            tokens.map((id, slot) => ({ slot, ids: [id], start: prompts[slot].length + n })),
          );
          out.push(tokens);
        }
        return out;
      };
      const stepwise = await run(false, true);
      deepStrictEqual(await run(true, true), stepwise, `${name}: chained decode picked other ids`);
      deepStrictEqual(
        await run(true, false),
        stepwise,
        `${name}: chained decode without graphs picked other ids`,
      );
      ok(new Set(stepwise.flat()).size > 5, `${name}: the decode makes more than a few distinct tokens`);
    }
  },
});

Deno.test({
  name: "gpu: served greedy requests decode in chained runs and get the ids of step-by-step serving",
  ignore: !gpu,
  async fn() {
    using engine = await build("tiny-llama", "f32");
    const requests = [[10, 200, 33, 71], [5, 17], [42, 99, 3, 250, 7, 128, 1]].map((prompt, i) => ({
      prompt,
      maxTokens: [21, 14, 4][i], // ends fall on the runs' ends, so both ways run the same batches
      sampler: makeSampler({ temperature: 0, topP: 1 }),
    }));
    const serve = async (chain: boolean) => {
      using cuda = engine.sequences({ slots: 3, maxLength: 64 });
      let runs = 0;
      const pool: Sequences = {
        slots: cuda.slots,
        maxLength: cuda.maxLength,
        step: (batch) => cuda.step(batch),
        greedy: (batch) => cuda.greedy(batch),
        release: (slot) => cuda.release(slot),
        decodeGreedy: chain
          ? (batch, steps) => {
            runs++;
            return cuda.decodeGreedy(batch, steps);
          }
          : undefined,
        [Symbol.dispose]() {},
      };
      await using scheduler = new Scheduler(
        pool,
        { maxQueue: 8, maxPrefillTokens: 100, timeoutMs: 60_000 },
        new MetricsRegistry(),
      );
      const streams = requests.map((request) => scheduler.submit(request));
      const tokens = await Promise.all(streams.map(async (stream) => {
        const out: number[] = [];
        for await (const token of stream) out.push(token);
        return out;
      }));
      return { tokens, runs };
    };
    const stepwise = await serve(false);
    const chained = await serve(true);
    deepStrictEqual(chained.tokens, stepwise.tokens);
    deepStrictEqual(chained.tokens.map((t) => t.length), [21, 14, 4]);
    ok(chained.runs >= 3, `${chained.runs} chained runs`);
  },
});

Deno.test({
  name: "gpu: decode graphs of a long pool cover the span their positions reach, across the span's end",
  ignore: !gpu,
  async fn() {
    using engine = await build("tiny-llama", "f32");
    const base = oracleOf("tiny-llama").prompt_ids;
    // position 256 is the first past the smallest span: step by step across it, then chained
    // steps (one graph for a chain that ends in the next span), then a step's logits
    const prompt = Array.from({ length: MIN_SPAN - 16 }, (_, i) => base[(i * 5) % base.length]);
    const run = async (maxLength: number, graphs: boolean) => {
      using pool = engine.sequences({ slots: 1, maxLength, graphs });
      let [id] = await pool.greedy([{ slot: 0, ids: prompt, start: 0 }]);
      const ids = [id];
      for (let start = prompt.length; start < MIN_SPAN + 4; start++) {
        [id] = await pool.greedy([{ slot: 0, ids: [id], start }]);
        ids.push(id);
      }
      const chained = await pool.decodeGreedy([{ slot: 0, ids: [id], start: MIN_SPAN + 4 }], 40);
      ids.push(...chained.map(([next]) => next));
      const logits = await pool.step([{ slot: 0, ids: [ids.at(-1)!], start: MIN_SPAN + 44 }]);
      return { ids, logits: Array.from(toF32(logits)) };
    };
    // a pool just long enough, without graphs, against a pool of 4096 positions with them
    const exact = await run(MIN_SPAN + 48, false);
    const long = await run(16 * MIN_SPAN, true);
    deepStrictEqual(long.ids, exact.ids, "a pool of 4096 positions picked other ids");
    deepStrictEqual(long.logits, exact.logits, "a pool of 4096 positions gave other logits");
  },
});

Deno.test({
  name: "gpu: one-launch decode attention over several key chunks equals the functional run's last row",
  ignore: !gpu,
  async fn() {
    for (const [name, dtype] of [["tiny-llama", "f32"], ["tiny-qwen2", "bf16"]] as [string, DType][]) {
      using engine = await build(name, dtype);
      const base = oracleOf(name).prompt_ids;
      const repeat = (length: number) => Array.from({ length }, (_, i) => base[(i * 7) % base.length]);
      // 3 sequences take 64-key chunks; 16 (16 × kv heads ≥ 32 blocks' worth) take 128-key chunks.
      const lengths = [200, 130, 64, ...Array.from({ length: 13 }, (_, i) => 70 + 9 * i)];
      const prompts = lengths.map(repeat);
      const next = prompts.map((_, i) => base[(i + 1) % base.length]);
      for (const count of [3, 16]) {
        using pool = engine.sequences({ slots: count, maxLength: 256 });
        await pool.step(prompts.slice(0, count).map((ids, slot) => ({ slot, ids, start: 0 })));
        const decoded = toF32(
          await pool.step(
            next.slice(0, count).map((id, slot) => ({ slot, ids: [id], start: prompts[slot].length })),
          ),
        );
        const vocab = decoded.length / count;
        for (const [slot, prompt] of prompts.slice(0, count).entries()) {
          const reference = (await logitsOf(engine, [...prompt, next[slot]])).at(-1)!;
          const row = Array.from(decoded.subarray(slot * vocab, (slot + 1) * vocab));
          const { relative } = relativeError([row], [reference]);
          if (slot < 3) {
            console.log(
              `${name} ${dtype}, ${count} sequences, context ${prompt.length + 1}: ` +
                `decode vs functional ${relative.toExponential(2)}`,
            );
          }
          ok(
            relative <= (dtype === "f32" ? 1e-5 : TOLERANCE[dtype] / 4),
            `${name} slot ${slot}: ${relative}`,
          );
        }
      }
    }
  },
});

Deno.test({
  name: "gpu: at real models' widths past 512 positions, decode equals the functional run",
  ignore: !gpu,
  async fn() {
    // 2048 wide with 64-dimension heads: decode attention takes 128-key chunks once the span passes
    // 512 positions, and the one-row products leave room for its blocks (rf_set_attention_room).
    const dir = await Deno.makeTempDir({ prefix: "rankflow-wide-" });
    try {
      await initModel(join(dir, "model"), {
        preset: "tiny-llama",
        seed: 5,
        shape: { hidden: 2048, heads: 32, kvHeads: 8, layers: 2, intermediate: 256, maxPositions: 1024 },
        matrixStd: 0.02,
      });
      using model = exportCheckpoint(join(dir, "model"), "bf16");
      using engine = await cudaBackend().build(
        model.graph,
        readGraphWeights(model.graph, model.weights),
      ) as CudaEngine;
      const ids = Array.from({ length: 703 }, (_, i) => (i * 37 + 11) % 256);
      using pool = engine.sequences({ slots: 1, maxLength: 1024 });
      await pool.step([{ slot: 0, ids: ids.slice(0, 700), start: 0 }]);
      for (let at = 700; at < ids.length; at++) {
        const decoded = Array.from(toF32(await pool.step([{ slot: 0, ids: [ids[at]], start: at }])));
        const reference = (await logitsOf(engine, ids.slice(0, at + 1))).at(-1)!;
        const { relative } = relativeError([decoded], [reference]);
        console.log(`context ${at + 1}: decode vs functional ${relative.toExponential(2)}`);
        ok(relative <= TOLERANCE.bf16 / 4, `context ${at + 1}: ${relative}`);
      }
      const launches = pool.profileStep([{ slot: 0, ids: [ids[0]], start: ids.length }]);
      deepStrictEqual(launches.get("attention")?.launches, 2, "an attention launch a layer");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "gpu: a batch of prompts of different lengths gives each prompt's own greedy ids",
  ignore: !gpu,
  async fn() {
    using engine = await build("tiny-llama", "f32");
    const prompts = [[10, 200, 33, 71], [5, 17], [42, 99, 3, 250, 7, 128, 1]];
    const together = await generateGreedy(engine, prompts, { maxTokens: 16 });
    for (const [i, prompt] of prompts.entries()) {
      const [alone] = await generateGreedy(engine, [prompt], { maxTokens: 16 });
      deepStrictEqual(together[i], alone, `prompt ${i}`);
    }
    const oracle = oracleOf("tiny-llama");
    deepStrictEqual(together[0], oracle.greedy_ids.slice(0, 16));
  },
});

Deno.test({
  name: "gpu: a prompt longer than one prefill run goes in chunks and gives the same ids",
  ignore: !gpu,
  async fn() {
    using whole = await build("tiny-llama", "f32");
    using chunked = await build("tiny-llama", "f32", { prefill_chunk: 3 });
    const oracle = oracleOf("tiny-llama");
    const [a] = await generateGreedy(whole, [oracle.prompt_ids], { maxTokens: 8 });
    const [b] = await generateGreedy(chunked, [oracle.prompt_ids], { maxTokens: 8 });
    deepStrictEqual(a, oracle.greedy_ids.slice(0, 8));
    deepStrictEqual(b, a);
  },
});

Deno.test({
  name: "gpu: decode products through rankflow's few-row kernel agree with cuBLASLt",
  ignore: !gpu,
  async fn() {
    for (const [name, dtype] of CASES) {
      using kernel = await build(name, dtype, { kernel_rows: 8 });
      using cublas = await build(name, dtype, { kernel_rows: 0 });
      const oracle = oracleOf(name);
      const a = await logitsOf(kernel, oracle.logit_ids.slice(0, 3));
      const b = await logitsOf(cublas, oracle.logit_ids.slice(0, 3));
      const { relative } = relativeError(a, b);
      console.log(`${name} ${dtype}: kernel vs cuBLASLt relative difference ${relative.toExponential(2)}`);
      ok(relative <= TOLERANCE[dtype] / 4, `${name}: ${relative}`);
      if (dtype !== "bf16") {
        const [x] = await generateGreedy(kernel, [oracle.prompt_ids], { maxTokens: 32 });
        const [y] = await generateGreedy(cublas, [oracle.prompt_ids], { maxTokens: 32 });
        deepStrictEqual(x, y);
      }
    }
  },
});

Deno.test({
  name: "gpu: programmatic launch changes no logit and no id of CUDA-graph decode",
  ignore: !gpu,
  async fn() {
    const [name, dtype] = ["tiny-qwen2", "bf16" as DType];
    const oracle = oracleOf(name);
    const run = async (programmatic_launch: boolean) => {
      // Built and run one after the other: the switch is the kernel library's, set by the last engine built.
      using engine = await build(name, dtype, { programmatic_launch, kernel_rows: 8 });
      const logits = await logitsOf(engine, oracle.logit_ids.slice(0, 2));
      const ids = await generateGreedy(engine, [oracle.prompt_ids, oracle.prompt_ids.slice(0, 3)], {
        maxTokens: 24,
      });
      return { logits, ids };
    };
    const on = await run(true);
    const off = await run(false);
    deepStrictEqual(on.ids, off.ids);
    deepStrictEqual(on.logits, off.logits);
  },
});

Deno.test({
  name: "gpu: a serialized cuda engine loads back and generates the same ids",
  ignore: !gpu,
  async fn() {
    using engine = await build("tiny-gpt2", "f16");
    const payload = engine.serialize();
    using loaded = await cudaBackend().deserialize(payload);
    const oracle = oracleOf("tiny-gpt2");
    const [a] = await generateGreedy(engine, [oracle.prompt_ids], { maxTokens: 16 });
    const [b] = await generateGreedy(loaded, [oracle.prompt_ids], { maxTokens: 16 });
    deepStrictEqual(b, a);
    deepStrictEqual(a, oracle.greedy_ids.slice(0, 16));
  },
});

Deno.test({
  name: "gpu: tensor-core prefill attention (f16, bf16) agrees with the CUDA-core kernel over 120 tokens, " +
    "and over two prompts in one run",
  ignore: !gpu,
  async fn() {
    // tiny-llama has head_dim 16: a run of more than 64 tokens goes to the tensor-core kernel, a
    // pool that prefills in runs of 32 tokens keeps to the CUDA-core one. Both round everything
    // else alike, so they differ by attention's rounding (P in the dtype on tensor cores) and the
    // products' summation order; a masking or slot mistake would be off by far more than the
    // dtype's tolerance against transformers.
    const ids = Array.from({ length: 120 }, (_, i) => (i * 37 + 11) % 256);
    const prompts = [ids.slice(0, 70), ids.slice(70)];
    const lastRows = async (engine: CudaEngine, batch: number[][]) => {
      using pool = engine.sequences({ slots: batch.length, maxLength: 128 });
      const logits = toF32(await pool.step(batch.map((prompt, slot) => ({ slot, ids: prompt, start: 0 }))));
      const vocab = logits.length / batch.length;
      return batch.map((_, row) => Array.from(logits.subarray(row * vocab, (row + 1) * vocab)));
    };
    for (const dtype of ["f16", "bf16"] as const) {
      using tensorCores = await build("tiny-llama", dtype);
      using cudaCores = await build("tiny-llama", dtype, { prefill_chunk: 32 });
      const functional = (await logitsOf(tensorCores, ids)).at(-1)!;
      const [alone] = await lastRows(cudaCores, [ids]);
      const { relative: single } = relativeError([functional], [alone]);
      const { relative: pair } = relativeError(
        await lastRows(tensorCores, prompts),
        await lastRows(cudaCores, prompts),
      );
      console.log(
        `tiny-llama ${dtype}: tensor cores vs CUDA cores, relative difference ${single.toExponential(2)} ` +
          `(120 tokens), ${pair.toExponential(2)} (prompts of 70 and 50 in one run)`,
      );
      ok(single <= TOLERANCE[dtype], `${dtype}, 120 tokens: ${single}`);
      ok(pair <= TOLERANCE[dtype], `${dtype}, two prompts: ${pair}`);
    }
  },
});

Deno.test({
  name: "gpu: cuda sequences draw on the device the token the host rule draws from the step's logits",
  ignore: !gpu,
  async fn() {
    using engine = await build("tiny-llama", "f32");
    // two pools of one engine: one hands back logits for the host rule, the other samples on the device
    using host = engine.sequences({ slots: 4, maxLength: 64 });
    using device = engine.sequences({ slots: 4, maxLength: 64 });
    let entries = [[1, 5, 9, 2], [3, 3], [7, 8, 9, 10, 11]].map((ids, slot) => ({ slot, ids, start: 0 }));
    const choices = [
      { temperature: 0.8, topK: 0, topP: 0.9, uniform: 0.42 },
      { temperature: 1.3, topK: 5, topP: 1, uniform: 0.9 },
      { temperature: 1, topK: 0, topP: 1, uniform: 0.05 },
    ];
    const drawnAll: number[] = [];
    for (let step = 0; step < 8; step++) {
      const logits = await host.step(entries);
      const drawn = await device.sample(entries, choices);
      const vocab = logits.shape[1];
      const values = logits.data as Float32Array;
      const want = choices.map((choice, r) =>
        sampleLogits(values.subarray(r * vocab, (r + 1) * vocab), choice, choice.uniform)
      );
      deepStrictEqual(drawn, want, `step ${step}`);
      drawnAll.push(...drawn);
      entries = entries.map((entry, r) => ({
        slot: entry.slot,
        ids: [drawn[r]],
        start: entry.start + entry.ids.length,
      }));
      for (const choice of choices) choice.uniform = (choice.uniform * 7.31 + 0.17) % 1;
    }
    ok(new Set(drawnAll).size > 3, "the draws vary");
  },
});
