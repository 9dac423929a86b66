import { deepStrictEqual, ok, rejects } from "node:assert";
import { distributedContext, joinJob } from "../../../core/dist/context.ts";
import { memoryGroups } from "../../../core/dist/memory.ts";
import { createTcpBackend } from "../../../plugins/collectives/tcp.ts";
import { f32, GraphBuilder, type Tensor, toF32 } from "../../../mod.ts";
import { buildSegmented } from "../../../core/runtime/segments.ts";
import { cpuBackend } from "../../../plugins/engines/cpu.ts";

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** The variables torchrun would set: no RANKFLOW_TOKEN. */
function torchrunEnv(rank: number, worldSize: number, port: number) {
  return {
    RANK: String(rank),
    LOCAL_RANK: String(rank),
    WORLD_SIZE: String(worldSize),
    MASTER_ADDR: "127.0.0.1",
    MASTER_PORT: String(port),
  };
}

Deno.test("joinJob: ranks from another launcher (no token) meet at a store rank 0 runs; dp × tp groups", async () => {
  const port = freePort();
  const warnings: string[] = [];
  const mesh = { dp: 2, tp: 2 };
  const jobs = await Promise.all([0, 1, 2, 3].map((rank) =>
    joinJob({
      mesh,
      env: torchrunEnv(rank, 4, port),
      backend: (init) => createTcpBackend(init),
      warn: (message) => warnings.push(message),
      rendezvousTimeoutMs: 10_000,
    })
  ));
  try {
    deepStrictEqual(warnings.length, 1);
    ok(warnings[0].includes(`rank 0 runs the rendezvous store at 127.0.0.1:${port}`), warnings[0]);
    deepStrictEqual(jobs.map((job) => [job.tp.rank, job.replica.rank]), [[0, 0], [1, 0], [0, 1], [1, 1]]);
    const sums = await Promise.all(
      jobs.map((job) => job.group("tp").allReduce(f32([1], [job.rank + 1]), "sum")),
    );
    deepStrictEqual(sums.map((t) => toF32(t)[0]), [3, 3, 7, 7]);
    const gathered = await Promise.all(jobs.map((job) =>
      job.gather("answers", `rank ${job.rank}`, [0, 2])
        .catch((error) => error.message)
    ));
    deepStrictEqual(gathered, [
      ["rank 0", "rank 2"],
      "gather answers: rank 1 is not a member",
      undefined,
      "gather answers: rank 3 is not a member",
    ]);
    const agreed = await Promise.all(jobs.map((job) => job.agree("id", () => `chosen by ${job.rank}`)));
    deepStrictEqual(agreed, ["chosen by 0", "chosen by 0", "chosen by 0", "chosen by 0"]);
  } finally {
    await Promise.all(jobs.map((job) => job[Symbol.asyncDispose]()));
  }
});

Deno.test("joinJob: a world that does not match the pipeline's mesh is refused before connecting", async () => {
  await rejects(
    joinJob({ mesh: { dp: 1, tp: 2 }, env: torchrunEnv(0, 4, freePort()), backend: () => Promise.reject() }),
    /dp 1 × tp 2 = 2 ranks, but WORLD_SIZE is 4/,
  );
});

function allReduceGraph() {
  const b = new GraphBuilder("reduce");
  const x = b.input("x", "f32", [2]);
  const y = b.op1("fused_all_reduce", [b.op1("mul", [x, x])], { group: "tp", size: 2, reduce: "sum" });
  b.output(b.op1("add", [y, x], {}, "out"));
  return b.finish();
}

Deno.test("distributedContext: engines pinned to one group run over it; disposing releases them", async () => {
  const groups = memoryGroups(2, "replica-tp");
  const graph = allReduceGraph();
  const engines = await Promise.all(
    [0, 1].map(() => buildSegmented(cpuBackend(), graph, new Map<string, Tensor>())),
  );
  const contexts = await Promise.all(engines.map((engine, rank) => distributedContext(groups[rank], engine)));
  const outputs = await Promise.all(
    engines.map((engine, rank) => engine.run({ x: f32([2], [rank + 1, rank + 2]) })),
  );
  // (1² + 2²) + x and (2² + 3²) + x, summed over both ranks: [5, 13] + x
  deepStrictEqual(outputs.map((out) => [...toF32(out.out)]), [[6, 15], [7, 16]]);
  for (const context of contexts) await context[Symbol.asyncDispose]();
});
