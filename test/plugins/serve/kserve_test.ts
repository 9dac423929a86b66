// The KServe v2 server with plain fetch, on a small graph from tensors to tensors: metadata,
// inference equal to running the engine directly, concurrent requests stacked into one engine run,
// and a 4xx with a JSON error body for each malformed request.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert";
import { GraphBuilder } from "../../../core/ir/graph.ts";
import { f32, i32, type Tensor, toF32 } from "../../../core/ir/tensor.ts";
import { seededRandom } from "../../../core/testing/passes.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";
import { startKServeServer } from "../../../plugins/serve/kserve.ts";
import { delayedEngine, postJson, quiet } from "./helpers.ts";

/** logits[batch, 3, 5] = linear(rmsnorm(embed[ids] + x)): two inputs sharing the size "batch". */
async function smallEngine(dtype?: "f16") {
  const b = new GraphBuilder("small");
  const ids = b.input("ids", "i32", ["batch", 3]);
  const x = b.input("x", "f32", ["batch", 3, 4]);
  const embedded = b.op1("embedding", [b.weight("embed", "f32", [10, 4]), ids]);
  const normed = b.op1("rmsnorm", [b.op1("add", [embedded, x]), b.weight("norm", "f32", [4])], { eps: 1e-6 });
  b.output(b.op1("linear", [normed, b.weight("proj", "f32", [5, 4])], {}, "logits"));
  const graph = b.finish();
  const next = seededRandom(11);
  const weights = new Map<string, Tensor>();
  for (const weight of graph.weights) {
    const shape = weight.type.shape as number[];
    weights.set(
      weight.name,
      f32(shape, Array.from({ length: shape.reduce((a, c) => a * c, 1) }, () => next() - 0.5)),
    );
  }
  return await cpuBackend({ dtype }).build(graph, weights);
}

const engine = await smallEngine();

function request(batch: number, seed: number) {
  const next = seededRandom(seed);
  const ids = Array.from({ length: batch * 3 }, () => Math.floor(next() * 10));
  const x = Array.from({ length: batch * 12 }, () => Math.round((next() - 0.5) * 100) / 100);
  return {
    id: `r${seed}`,
    inputs: [
      { name: "ids", shape: [batch, 3], datatype: "INT32", data: ids },
      { name: "x", shape: [batch, 3, 4], datatype: "FP32", data: x },
    ],
  };
}

async function direct(body: ReturnType<typeof request>): Promise<number[]> {
  const [ids, x] = body.inputs;
  const outputs = await engine.run({ ids: i32(ids.shape, ids.data), x: f32(x.shape, x.data) });
  return Array.from(toF32(outputs.logits));
}

Deno.test("kserve: health, metadata and an inference equal to running the engine", async () => {
  await using server = startKServeServer(engine, { port: 0, model: "small" }, quiet);
  deepStrictEqual(await (await fetch(`${server.url}/v2/health/live`)).json(), { live: true });
  deepStrictEqual(await (await fetch(`${server.url}/v2/health/ready`)).json(), { ready: true });
  const metadata = await (await fetch(`${server.url}/v2/models/small`)).json();
  deepStrictEqual(metadata.inputs, [
    { name: "ids", datatype: "INT32", shape: [-1, 3] },
    { name: "x", datatype: "FP32", shape: [-1, 3, 4] },
  ]);
  deepStrictEqual(metadata.outputs, [{ name: "logits", datatype: "FP32", shape: [-1, 3, 5] }]);
  const body = request(2, 1);
  const answer = await postJson(`${server.url}/v2/models/small/infer`, body);
  strictEqual(answer.status, 200, JSON.stringify(answer.body));
  strictEqual(answer.body.model_name, "small");
  strictEqual(answer.body.id, "r1");
  const [logits] = answer.body.outputs;
  deepStrictEqual([logits.name, logits.datatype, logits.shape], ["logits", "FP32", [2, 3, 5]]);
  deepStrictEqual(logits.data, await direct(body));
});

Deno.test("kserve: concurrent requests are stacked into one engine run and cut apart again", async () => {
  await using server = startKServeServer(engine, { port: 0, model: "small", max_batch: 16 }, quiet);
  const bodies = Array.from({ length: 12 }, (_, i) => request(1 + (i % 3), 100 + i));
  const answers = await Promise.all(
    bodies.map((body) => postJson(`${server.url}/v2/models/small/infer`, body)),
  );
  for (const [i, answer] of answers.entries()) {
    strictEqual(answer.status, 200);
    deepStrictEqual(answer.body.outputs[0].shape, [1 + (i % 3), 3, 5]);
    const expected = await direct(bodies[i]);
    const error = Math.max(...expected.map((value, k) => Math.abs(value - answer.body.outputs[0].data[k])));
    ok(error < 1e-6, `request ${i}: max error ${error}`);
  }
  ok(server.batcher.maxBatch > 1, `the largest engine run took ${server.batcher.maxBatch} requests`);
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  ok(/rankflow_step_batch_size_count \d+/.test(metrics));
  ok(metrics.includes('rankflow_requests_total{route="/v2/models/{name}/infer",status="200"} 12'), metrics);
});

Deno.test("kserve: an f16 engine takes and gives FP16 tensors", async () => {
  using half = await smallEngine("f16");
  await using server = startKServeServer(half, { port: 0, model: "half" }, quiet);
  const body = request(1, 3);
  body.inputs[1].datatype = "FP16";
  const answer = await postJson(`${server.url}/v2/models/half/infer`, body);
  strictEqual(answer.status, 200, JSON.stringify(answer.body));
  strictEqual(answer.body.outputs[0].datatype, "FP16");
  const expected = await direct(request(1, 3));
  const error = Math.max(...expected.map((value, k) => Math.abs(value - answer.body.outputs[0].data[k])));
  ok(error < 0.05, `f16 against f32: max error ${error}`);
});

Deno.test("kserve: each malformed request gets a 4xx JSON error, and the server keeps serving", async () => {
  await using server = startKServeServer(engine, { port: 0, model: "small" }, quiet);
  const infer = `${server.url}/v2/models/small/infer`;
  const good = request(1, 5);
  const [ids, x] = good.inputs;
  const cases: [string, string, unknown, number, RegExp][] = [
    ["malformed JSON", infer, '{"inputs": [', 400, /not valid JSON/],
    ["an unknown model", `${server.url}/v2/models/big/infer`, good, 404, /model 'big' does not exist/],
    ["no inputs", infer, { inputs: [] }, 400, /non-empty list of tensors/],
    ["a missing input", infer, { inputs: [ids] }, 400, /input x is missing/],
    [
      "an unknown input",
      infer,
      { inputs: [ids, x, { ...x, name: "y" }] },
      400,
      /input y is not an input of the model/,
    ],
    [
      "a wrong datatype",
      infer,
      { inputs: [ids, { ...x, datatype: "FP16" }] },
      400,
      /datatype FP16 given; the model takes FP32/,
    ],
    [
      "a wrong fixed size",
      infer,
      { inputs: [ids, { ...x, shape: [1, 4, 3] }] },
      400,
      /shape \[1,4,3\] given; the model takes \[batch, 3, 4\]/,
    ],
    ["a wrong rank", infer, { inputs: [ids, { ...x, shape: [12] }] }, 400, /shape \[12\] given/],
    [
      "batch sizes that disagree",
      infer,
      { inputs: [{ ...ids, shape: [2, 3], data: [...ids.data, ...ids.data] }, x] },
      400,
      /size 'batch' is 1 here but 2 in input ids/,
    ],
    [
      "too few values",
      infer,
      { inputs: [ids, { ...x, data: x.data.slice(1) }] },
      400,
      /needs 12 values, 11 given/,
    ],
    [
      "a fraction in INT32 data",
      infer,
      { inputs: [{ ...ids, data: [1.5, 2, 3] }, x] },
      400,
      /data\[0\] = 1\.5; expected INT32 integers/,
    ],
    ["an unknown output", infer, { ...good, outputs: [{ name: "probs" }] }, 400, /"probs" is not an output/],
  ];
  for (const [what, url, body, status, message] of cases) {
    const answer = await postJson(url, body);
    strictEqual(answer.status, status, `${what}: ${JSON.stringify(answer.body)}`);
    ok(message.test(answer.body.error), `${what}: ${answer.body.error}`);
  }
  const answer = await postJson(infer, good);
  strictEqual(answer.status, 200);
  deepStrictEqual(answer.body.outputs[0].data, await direct(good));
});

Deno.test("kserve: a failed engine run answers 500 and stops the server, unless told to continue", async () => {
  const broken = delayedEngine(engine, () => Promise.reject(new Error("rank 3 is gone")));
  const lines: string[] = [];
  const server = startKServeServer(broken, { port: 0, model: "small" }, { log: (line) => lines.push(line) });
  const answer = await postJson(`${server.url}/v2/models/small/infer`, request(1, 1));
  strictEqual(answer.status, 500);
  ok(/the engine run failed: rank 3 is gone/.test(answer.body.error), answer.body.error);
  await server.finished;
  ok(/rank 3 is gone/.test(server.engineFailure()?.message ?? ""));
  ok(
    lines.includes("kserve: stopping the server, since the engine run failed: rank 3 is gone"),
    lines.join("\n"),
  );
  await using lenient = startKServeServer(
    broken,
    { port: 0, model: "small", on_engine_error: "continue" },
    quiet,
  );
  for (let n = 0; n < 2; n++) {
    strictEqual((await postJson(`${lenient.url}/v2/models/small/infer`, request(1, 1))).status, 500);
  }
  deepStrictEqual(await (await fetch(`${lenient.url}/v2/health/live`)).json(), { live: true });
});

Deno.test("kserve: a port already taken is named in the error", async () => {
  await using first = startKServeServer(engine, { port: 0 }, quiet);
  throws(
    () => startKServeServer(engine, { port: first.port }, quiet),
    /cannot listen on 127\.0\.0\.1:\d+: the address is in use/,
  );
});
