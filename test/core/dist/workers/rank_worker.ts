// A rank for the launcher tests: `allreduce` reports its place and sums over the tcp backend,
// `fail` makes rank 1 exit 3 after one collective while the others wait, `hang` never ends
// (rank 2 even ignores SIGTERM, so only SIGKILL stops it).

import { readRankEnv } from "../../../../core/dist/env.ts";
import { StoreClient } from "../../../../core/dist/store.ts";
import { tensor } from "../../../../core/ir/tensor.ts";
import { createTcpBackend } from "../../../../plugins/collectives/tcp.ts";

const mode = Deno.args[0];
const place = readRankEnv();
console.log(
  `place ${JSON.stringify({ ...place, localWorldSize: Deno.env.get("LOCAL_WORLD_SIZE"), pid: Deno.pid })}`,
);

if (mode === "hang") {
  if (place.rank === 2) Deno.addSignalListener("SIGTERM", () => console.error("ignoring SIGTERM"));
  console.error("hanging");
  setInterval(() => {}, 1000);
} else {
  await using store = await StoreClient.connect({
    hostname: place.masterAddr,
    port: place.masterPort,
    token: place.token!,
  });
  await using backend = await createTcpBackend({ rank: place.rank, worldSize: place.worldSize, store });
  const world = backend.group("world");
  const sum = await world.allReduce(tensor("i32", [1], Int32Array.of(place.rank + 1)), "sum");
  console.log(`sum ${sum.data[0]}`);
  if (mode === "fail") {
    if (place.rank === 1) {
      console.error("rank 1 is about to fail");
      console.error(`failing on purpose at ${Date.now()}`);
      Deno.exit(3);
    }
    await store.get("never-set", 60_000);
  }
}
