// The nccl backend at world size 1 (NCCL will not put two ranks on one GPU): communicators made
// through the store, the host ProcessGroup calls, the device communicator on a caller's stream,
// and the cuda engine bound to it. Several ranks wait for a machine with several GPUs.

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { join } from "node:path";
import { gpu } from "../../ffi/gpu.ts";
import { StoreClient, StoreServer } from "../../../core/dist/store.ts";
import { createNcclBackend, type NcclGroup } from "../../../plugins/collectives/nccl.ts";
import { f32, tensor, toF32 } from "../../../core/ir/tensor.ts";
import { createStream, deviceAlloc, deviceFree, download, synchronize, upload } from "../../../ffi/cuda.ts";
import { ncclVersion } from "../../../ffi/nccl.ts";
import { distributedContext } from "../../../core/dist/context.ts";
import { exportCheckpoint } from "../../../plugins/export/hf.ts";
import { readGraphWeights } from "../../../core/ir/weights.ts";
import { cudaBackend } from "../../../plugins/engines/cuda.ts";
import tensorParallel from "../../../plugins/passes/tensor_parallel.ts";
import { generateGreedy } from "../../../core/runtime/generate.ts";
import { isDeviceGroup } from "../../../plugins/engines/cuda/communicator.ts";

const FIXTURES = new URL("../../fixtures/", import.meta.url).pathname;
const token = "nccl-test";

Deno.test({
  name: "gpu: nccl backend at world size 1: groups, host collectives and device collectives",
  ignore: !gpu,
  async fn() {
    console.log(`NCCL ${ncclVersion()}`);
    await using server = StoreServer.listen({ token });
    await using store = await StoreClient.connect({ hostname: "127.0.0.1", port: server.port, token });
    await using backend = await createNcclBackend({ rank: 0, worldSize: 1, store });
    for (const name of ["world", "tp", "dp"]) {
      const group = backend.group(name) as NcclGroup;
      strictEqual(group.size, 1);
      ok(isDeviceGroup(group));
    }
    const world = backend.group("world");
    const x = f32([2, 3], [1, -2, 3, 4.5, 5, -6]);
    deepStrictEqual(Array.from(toF32(await world.allReduce(x, "sum"))), [1, -2, 3, 4.5, 5, -6]);
    const gathered = await world.allGather(x, 1);
    deepStrictEqual(gathered.shape, [2, 3]);
    deepStrictEqual(Array.from(toF32(await world.broadcast(x, 0))), Array.from(toF32(x)));
    const scattered = await world.reduceScatter(x, 0, "max");
    deepStrictEqual(scattered.shape, [2, 3]);
    await world.barrier();

    // The device path the cuda engine uses: out-of-place on a stream of the caller's.
    const communicator = (world as NcclGroup).communicator;
    const stream = createStream();
    const values = Float32Array.from({ length: 1024 }, (_, i) => Math.sin(i));
    const send = deviceAlloc(values.byteLength);
    const recv = deviceAlloc(values.byteLength);
    try {
      upload(send, values);
      upload(recv, new Float32Array(1024).fill(Number.NaN));
      communicator.allReduce(send, recv, values.length, "f32", "sum", stream);
      synchronize(stream);
      const out = new Float32Array(1024);
      download(out, recv);
      deepStrictEqual(Array.from(out), Array.from(values));
      upload(recv, new Float32Array(1024).fill(Number.NaN));
      communicator.allGather(send, recv, values.length, "f32", stream);
      synchronize(stream);
      download(out, recv);
      deepStrictEqual(Array.from(out), Array.from(values));
    } finally {
      deviceFree(send);
      deviceFree(recv);
    }
    const i32 = tensor("i32", [4], new Int32Array([7, 8, 9, 10]));
    deepStrictEqual(Array.from((await world.allReduce(i32, "sum")).data as Int32Array), [7, 8, 9, 10]);
  },
});

Deno.test({
  name:
    "gpu: tensor-parallel graph at tp 1 on the cuda engine bound to the nccl backend matches transformers",
  ignore: !gpu,
  async fn() {
    await using server = StoreServer.listen({ token });
    await using store = await StoreClient.connect({ hostname: "127.0.0.1", port: server.port, token });
    const backend = await createNcclBackend({ rank: 0, worldSize: 1, store, prefix: "tp1" });
    using model = exportCheckpoint(join(FIXTURES, "tiny-llama"), "f32");
    const ctx = { baseDir: FIXTURES, rank: 0, worldSize: 1, log: () => {}, tp: { rank: 0, size: 1 } };
    const sharded = tensorParallel.run(model.graph, tensorParallel.options.parse({}), ctx);
    const engine = await cudaBackend().build(sharded, readGraphWeights(sharded, model.weights));
    await using dist = await distributedContext(backend, engine);
    const oracle = JSON.parse(Deno.readTextFileSync(join(FIXTURES, "tiny-llama", "oracle.json")));
    const [greedy] = await generateGreedy(dist.engines[0], [oracle.prompt_ids], { maxTokens: 32 });
    deepStrictEqual(greedy, oracle.greedy_ids);
  },
});
