import { deepStrictEqual, equal, ok as assert, rejects } from "node:assert";
import { DistError } from "../../../core/dist/group.ts";
import { newToken, StoreClient, StoreServer } from "../../../core/dist/store.ts";

const token = newToken();

function connect(
  server: StoreServer,
  options: { token?: string; timeoutMs?: number } = {},
): Promise<StoreClient> {
  return StoreClient.connect({
    hostname: "127.0.0.1",
    port: server.port,
    token: options.token ?? token,
    timeoutMs: options.timeoutMs,
    connectTimeoutMs: 2000,
  });
}

Deno.test("store: a client with a wrong token is refused with a DistError", async () => {
  await using server = StoreServer.listen({ token });
  await rejects(connect(server, { token: newToken() }), (error: Error) => {
    assert(error instanceof DistError, `expected DistError, got ${error}`);
    assert(/refused this client/.test(error.message) && /token/.test(error.message), error.message);
    return true;
  });
  // The server still serves the right token after refusing a wrong one.
  await using client = await connect(server);
  await client.set("k", "v");
  equal(await client.getText("k"), "v");
});

Deno.test("store: get waits for a later set from another client", async () => {
  await using server = StoreServer.listen({ token });
  await using reader = await connect(server);
  await using writer = await connect(server);
  const value = reader.get("later", 5000);
  await new Promise((resolve) => setTimeout(resolve, 50));
  await writer.set("later", new Uint8Array([1, 2, 3]));
  deepStrictEqual([...await value], [1, 2, 3]);
});

Deno.test("store: get times out with a DistError naming the key", async () => {
  await using server = StoreServer.listen({ token });
  await using client = await connect(server);
  await rejects(
    client.get("never", 50),
    (error: Error) => error instanceof DistError && /"never"/.test(error.message),
  );
});

Deno.test("store: add is an atomic counter across clients", async () => {
  await using server = StoreServer.listen({ token });
  const clients = await Promise.all([0, 1, 2, 3].map(() => connect(server)));
  try {
    const results = await Promise.all(
      clients.flatMap((client) => [1, 2, 3, 4, 5].map(() => client.add("count"))),
    );
    deepStrictEqual(results.sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
    equal(await clients[0].add("count", -20), 0);
    equal(await clients[0].getText("count"), "0");
  } finally {
    await Promise.all(clients.map((client) => client.close()));
  }
});

Deno.test("store: wait returns once every key is set", async () => {
  await using server = StoreServer.listen({ token });
  await using client = await connect(server);
  let done = false;
  const waiting = client.wait(["a", "b"], 5000).then(() => done = true);
  await client.set("a", "1");
  await new Promise((resolve) => setTimeout(resolve, 20));
  equal(done, false);
  await client.set("b", "2");
  await waiting;
  equal(done, true);
  await rejects(client.wait(["a", "c"], 30), /"c"/);
});

Deno.test("store: barrier releases all members together and can be reused", async () => {
  await using server = StoreServer.listen({ token });
  const clients = await Promise.all([0, 1, 2].map(() => connect(server)));
  try {
    for (let round = 0; round < 3; round++) {
      await Promise.all(clients.map((client) => client.barrier("step", 3, 5000)));
    }
    await rejects(clients[0].barrier("lonely", 2, 50), /1 of 2 arrived/);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
  }
});

Deno.test("store: pending requests fail clearly when the server closes", async () => {
  const server = StoreServer.listen({ token });
  await using client = await connect(server);
  const pending = client.get("never", 60_000);
  await server.close();
  await rejects(pending, (error: Error) => error instanceof DistError);
  await rejects(client.set("x", "y"), DistError);
});

Deno.test("store: connecting retries until the store is up", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  const connecting = StoreClient.connect({ hostname: "127.0.0.1", port, token, connectTimeoutMs: 5000 });
  await new Promise((resolve) => setTimeout(resolve, 100));
  await using _server = StoreServer.listen({ token, port });
  await using client = await connecting;
  await client.set("up", "yes");
  equal(await client.getText("up"), "yes");
});
