// A rank for the peer all-reduce test (run by `rankflow launch` on a machine with several GPUs):
// sums of small integers, exact in every float dtype, over messages of one to eight blocks, in
// place and not, eagerly and replayed from a captured graph. Rank 0 prints what it checked; any
// wrong element exits 1.

import { readRankEnv } from "../../../../core/dist/env.ts";
import { joinJob } from "../../../../core/dist/context.ts";
import { castTensor, f32, tensor, toF32 } from "../../../../core/ir/tensor.ts";
import {
  captureGraph,
  createStream,
  destroyGraph,
  deviceAlloc,
  deviceFree,
  download,
  synchronize,
  upload,
} from "../../../../ffi/cuda.ts";
import { check, kernels } from "../../../../ffi/kernels.ts";
import { createNcclBackend, type NcclGroup } from "../../../../plugins/collectives/nccl.ts";

const place = readRankEnv();
await using job = await joinJob({
  mesh: { dp: 1, tp: place.worldSize },
  backend: (init) => createNcclBackend({ ...init, peerBytes: 64 * 1024 }),
});
const communicator = (job.group("tp") as NcclGroup).communicator;
if (!communicator.peer) {
  console.error(`no peer path: ${communicator.peerOff}`);
  Deno.exit(1);
}
const world = job.worldSize;
const stream = createStream();
const value = (rank: number, i: number, call: number) => ((i * 7 + rank * 3 + call) % 11) - 5;
const send = deviceAlloc(64 * 1024);
const recv = deviceAlloc(64 * 1024);
let checks = 0;

/** Fills `send` with this rank's values of call `call`, as `dtype`. */
function fill(dtype: "f32" | "f16" | "bf16", count: number, call: number): void {
  const values = f32([count], Array.from({ length: count }, (_, i) => value(job.rank, i, call)));
  synchronize(stream);
  upload(send, castTensor(values, dtype).data);
}

function expect(dtype: "f32" | "f16" | "bf16", count: number, call: number, at: bigint, what: string): void {
  synchronize(stream);
  const out = tensor(dtype, [count]);
  download(out.data, at);
  const got = toF32(out);
  for (let i = 0; i < count; i++) {
    let sum = 0;
    for (let r = 0; r < world; r++) sum += value(r, i, call);
    if (got[i] !== sum) {
      console.error(`${what}: ${dtype} × ${count}, call ${call}: element ${i} is ${got[i]}, not ${sum}`);
      Deno.exit(1);
    }
  }
  checks++;
}

// Messages of 16 bytes (one block), 24 KB (three blocks) and 64 KB (eight), in turn, so that
// calls of different grids follow each other.
let call = 0;
for (const dtype of ["bf16", "f16", "f32"] as const) {
  const size = dtype === "f32" ? 4 : 2;
  for (const bytes of [16, 24 * 1024, 64 * 1024, 16, 64 * 1024, 24 * 1024]) {
    const count = bytes / size;
    fill(dtype, count, ++call);
    communicator.allReduce(send, recv, count, dtype, "sum", stream);
    expect(dtype, count, call, recv, "out of place");
    fill(dtype, count, ++call);
    communicator.allReduce(send, send, count, dtype, "sum", stream);
    expect(dtype, count, call, send, "in place");
  }
}

// A captured graph of two all-reduces, replayed with new inputs: the call counter lives on the device.
const count = 3000;
synchronize(stream);
const graph = captureGraph(stream, () => {
  communicator.allReduce(send, recv, count, "bf16", "sum", stream);
  communicator.allReduce(send, recv, 8, "bf16", "sum", stream);
});
for (let replay = 0; replay < 20; replay++) {
  fill("bf16", count, ++call);
  check(kernels().rf_graph_launch_sync(graph.exec, stream), "graph replay");
  expect("bf16", count, call, recv, "graph replay");
}
destroyGraph(graph);
deviceFree(send);
deviceFree(recv);
if (job.rank === 0) console.log(`peer all-reduce: ${world} ranks, ${checks} results exact`);
