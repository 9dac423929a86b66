// A local load test of the openai server: the CPU quickstart model served in-process, N requests
// sent by C concurrent clients over HTTP, each at temperature 0. Prints one table row per
// concurrency: requests/s, p50/p99 latency and generated tokens/s.
//   deno run -A bench/serve_load.ts [--requests 64] [--concurrency 1,8,32] [--max-tokens 16]

import { parseArgs } from "node:util";
import { join } from "node:path";
import { readGraphWeights } from "../core/ir/weights.ts";
import { exportCheckpoint } from "../plugins/export/hf.ts";
import { initModel } from "../plugins/export/hf_random.ts";
import { cpuBackend } from "../plugins/engines/cpu.ts";
import { startOpenAIServer } from "../plugins/serve/openai.ts";

const { values } = parseArgs({
  options: {
    requests: { type: "string", default: "64" },
    concurrency: { type: "string", default: "1,8,32" },
    "max-tokens": { type: "string", default: "16" },
  },
});
const requests = Number(values.requests);
const levels = values.concurrency.split(",").map(Number);
const maxTokens = Number(values["max-tokens"]);

const dir = join(await Deno.makeTempDir(), "quickstart");
await initModel(dir, { preset: "quickstart", seed: 7 });
using exported = exportCheckpoint(dir);
using engine = await cpuBackend().build(exported.graph, readGraphWeights(exported.graph, exported.weights));

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const rows: string[][] = [];
for (const concurrency of levels) {
  await using server = startOpenAIServer(engine, {
    port: 0,
    model: "quickstart",
    max_batch: Math.max(concurrency, 1),
  }, {
    model: exported.model,
    tokenizer: exported.tokenizer,
    log: () => {},
  });
  const latencies: number[] = [];
  let tokens = 0;
  let next = 0;
  const client = async () => {
    while (next < requests) {
      const index = next++;
      const began = performance.now();
      const response = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "quickstart",
          prompt: `Request ${index}: once upon a time`,
          max_tokens: maxTokens,
          temperature: 0,
        }),
      });
      const body = await response.json();
      if (response.status !== 200) {
        throw new Error(`request ${index}: ${response.status} ${JSON.stringify(body)}`);
      }
      latencies.push(performance.now() - began);
      tokens += body.usage.completion_tokens;
    }
  };
  const began = performance.now();
  await Promise.all(Array.from({ length: concurrency }, client));
  const seconds = (performance.now() - began) / 1000;
  latencies.sort((a, b) => a - b);
  rows.push([
    String(concurrency),
    String(requests),
    (requests / seconds).toFixed(2),
    percentile(latencies, 50).toFixed(0),
    percentile(latencies, 99).toFixed(0),
    (tokens / seconds).toFixed(1),
    String(server.scheduler.maxBatch),
  ]);
}

console.log(
  `openai server, cpu engine, quickstart model (f32), ${maxTokens} tokens per request, ` +
    `prompts of 27-28 tokens, ${navigator.hardwareConcurrency} CPU threads`,
);
console.log("| concurrency | requests | requests/s | p50 ms | p99 ms | tokens/s | max batch |");
console.log("|---:|---:|---:|---:|---:|---:|---:|");
for (const row of rows) console.log(`| ${row.join(" | ")} |`);
