import { deepStrictEqual, equal, ok as assert, rejects } from "node:assert";
import { DistError, type Mesh } from "../../../core/dist/group.ts";
import { newToken, StoreClient, StoreServer } from "../../../core/dist/store.ts";
import { type Reduction, REDUCTIONS } from "../../../core/ir/ops/collective.ts";
import {
  castTensor,
  type DType,
  DTYPES,
  isFloat,
  numel,
  type Tensor,
  tensor,
  toF32,
} from "../../../core/ir/tensor.ts";
import { seededRandom } from "../../../core/testing/passes.ts";
import { createTcpBackend, type TcpBackend } from "../../../plugins/collectives/tcp.ts";

/** N ranks as N backends in this process, each with its own store client and sockets. */
async function withRanks(
  worldSize: number,
  mesh: Mesh,
  body: (backends: TcpBackend[]) => Promise<void>,
): Promise<void> {
  const token = newToken();
  await using server = StoreServer.listen({ token });
  const stores = await Promise.all(
    Array.from(
      { length: worldSize },
      () => StoreClient.connect({ hostname: "127.0.0.1", port: server.port, token }),
    ),
  );
  try {
    const backends = await Promise.all(
      stores.map((store, rank) => createTcpBackend({ rank, worldSize, mesh, store, connectTimeoutMs: 5000 })),
    );
    try {
      await body(backends);
    } finally {
      await Promise.all(backends.map((backend) => backend[Symbol.asyncDispose]()));
    }
  } finally {
    await Promise.all(stores.map((store) => store.close()));
  }
}

/** Random values of `dtype`: floats in [-4, 4), integers spread wide (i64 past 2^53, to test exactness). */
function randomTensor(dtype: DType, shape: number[], seed: number): Tensor {
  const next = seededRandom(seed);
  const count = numel(shape);
  switch (dtype) {
    case "i32":
      return tensor("i32", shape, Int32Array.from({ length: count }, () => Math.floor((next() - 0.5) * 2e8)));
    case "i64":
      return tensor(
        "i64",
        shape,
        BigInt64Array.from(
          { length: count },
          () => BigInt(Math.floor((next() - 0.5) * 2e6)) * 10_000_000_007n,
        ),
      );
    default:
      return castTensor(
        tensor("f32", shape, Float32Array.from({ length: count }, () => (next() - 0.5) * 8)),
        dtype,
      );
  }
}

/** Values as numbers or bigints, exactly as the tensor holds them. */
function values(t: Tensor): (number | bigint)[] {
  return isFloat(t.dtype) ? Array.from(toF32(t)) : Array.from(t.data as ArrayLike<number | bigint>);
}

/** The reduction of `parts` computed directly: floats in f64, integers exactly. */
function expectedReduce(parts: Tensor[], reduce: Reduction): (number | bigint)[] {
  const columns = parts.map(values);
  return columns[0].map((_, i) => {
    const column = columns.map((c) => c[i]);
    if (typeof column[0] === "bigint") {
      const big = column as bigint[];
      if (reduce === "max") return big.reduce((a, b) => (a > b ? a : b));
      if (reduce === "min") return big.reduce((a, b) => (a < b ? a : b));
      const sum = big.reduce((a, b) => a + b);
      return reduce === "avg" ? sum / BigInt(big.length) : sum;
    }
    const numbers = column as number[];
    if (reduce === "max") return Math.max(...numbers);
    if (reduce === "min") return Math.min(...numbers);
    const sum = numbers.reduce((a, b) => a + b);
    if (reduce === "sum") return sum;
    return isFloat(parts[0].dtype) ? sum / numbers.length : Math.trunc(sum / numbers.length);
  });
}

const TOLERANCE: Record<DType, number> = { f32: 1e-5, f16: 4e-3, bf16: 1.6e-2, i32: 0, i64: 0 };

function assertClose(actual: Tensor, expected: (number | bigint)[], dtype: DType, what: string): void {
  equal(actual.dtype, dtype, `${what}: dtype`);
  const got = values(actual);
  equal(got.length, expected.length, `${what}: element count`);
  for (let i = 0; i < got.length; i++) {
    const a = got[i];
    const e = expected[i];
    if (typeof e === "bigint" || TOLERANCE[dtype] === 0) {
      assert(a === e, `${what}: [${i}] is ${a}, expected ${e}`);
    } else {
      const error = Math.abs((a as number) - e);
      assert(error <= TOLERANCE[dtype] * Math.max(1, Math.abs(e)), `${what}: [${i}] is ${a}, expected ${e}`);
    }
  }
}

/** The element of a row-major tensor of `shape` at `index`. */
function flatIndex(shape: number[], index: number[]): number {
  return index.reduce((flat, i, axis) => flat * shape[axis] + i, 0);
}

function unflatten(shape: number[], flat: number): number[] {
  const index = new Array(shape.length);
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    index[axis] = flat % shape[axis];
    flat = Math.floor(flat / shape[axis]);
  }
  return index;
}

/** Concatenation along `axis`, element by element. */
function expectedGather(parts: Tensor[], axis: number): (number | bigint)[] {
  const part = parts[0].shape;
  const shape = part.map((d, i) => (i === axis ? d * parts.length : d));
  return Array.from({ length: numel(shape) }, (_, flat) => {
    const index = unflatten(shape, flat);
    const source = Math.floor(index[axis] / part[axis]);
    index[axis] %= part[axis];
    return values(parts[source])[flatIndex(part, index)];
  });
}

/** Member `member`'s share of `axis` of a full tensor given by its values. */
function expectedShare(
  full: (number | bigint)[],
  shape: number[],
  axis: number,
  size: number,
  member: number,
) {
  const share = shape[axis] / size;
  const out = shape.map((d, i) => (i === axis ? share : d));
  return Array.from({ length: numel(out) }, (_, flat) => {
    const index = unflatten(out, flat);
    index[axis] += member * share;
    return full[flatIndex(shape, index)];
  });
}

function sameBits(a: Tensor, b: Tensor): boolean {
  const bytes = (t: Tensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return a.dtype === b.dtype && a.shape.join() === b.shape.join() && bytes(a).join() === bytes(b).join();
}

for (const worldSize of [1, 2, 3, 4]) {
  Deno.test(`tcp: every collective × every dtype over a world of ${worldSize}`, async () => {
    // Axis 1 has 12 elements, so it splits into 1, 2, 3 and 4 shares.
    const shape = [2, 12, 3];
    await withRanks(worldSize, { dp: 1, tp: worldSize }, async (backends) => {
      const groups = backends.map((backend) => backend.group("world"));
      groups.forEach((group, rank) => deepStrictEqual([group.rank, group.size], [rank, worldSize]));
      for (const [d, dtype] of DTYPES.entries()) {
        const inputs = groups.map((_, rank) => randomTensor(dtype, shape, 1000 * d + rank));
        for (const reduce of REDUCTIONS) {
          const results = await Promise.all(
            groups.map((group, rank) => group.allReduce(inputs[rank], reduce)),
          );
          const expected = expectedReduce(inputs, reduce);
          results.forEach((result, rank) => {
            assertClose(result, expected, dtype, `allReduce ${reduce} ${dtype} on rank ${rank}`);
            assert(
              sameBits(result, results[0]),
              `allReduce ${reduce} ${dtype}: rank ${rank} differs from rank 0`,
            );
          });
          for (const axis of [0, 1, -1]) {
            const at = axis < 0 ? axis + shape.length : axis;
            if (shape[at] % worldSize !== 0) continue;
            const shares = await Promise.all(
              groups.map((group, rank) => group.reduceScatter(inputs[rank], axis, reduce)),
            );
            shares.forEach((share, rank) => {
              const want = expectedShare(expected, shape, at, worldSize, rank);
              assertClose(
                share,
                want,
                dtype,
                `reduceScatter ${reduce} axis ${axis} ${dtype} on rank ${rank}`,
              );
            });
          }
        }
        for (const axis of [0, 1, 2, -2]) {
          const gathered = await Promise.all(
            groups.map((group, rank) => group.allGather(inputs[rank], axis)),
          );
          const expected = expectedGather(inputs, axis < 0 ? axis + shape.length : axis);
          gathered.forEach((result, rank) => {
            assertClose(result, expected, dtype, `allGather axis ${axis} ${dtype} on rank ${rank}`);
          });
        }
        for (let root = 0; root < worldSize; root++) {
          const received = await Promise.all(
            groups.map((group, rank) => group.broadcast(inputs[rank], root)),
          );
          received.forEach((result, rank) => {
            assert(sameBits(result, inputs[root]), `broadcast ${dtype} from ${root} on rank ${rank}`);
          });
        }
      }
      await Promise.all(groups.map((group) => group.barrier()));
    });
  });
}

Deno.test("tcp: a group of one returns its input", async () => {
  await withRanks(1, { dp: 1, tp: 1 }, async ([backend]) => {
    const x = randomTensor("f16", [2, 3], 7);
    for (const name of ["world", "tp", "dp"]) {
      const group = backend.group(name);
      equal(await group.allReduce(x, "avg"), x);
      equal(await group.allGather(x, 1), x);
      equal(await group.reduceScatter(x, 0, "sum"), x);
      equal(await group.broadcast(x, 0), x);
      await group.barrier();
    }
  });
});

Deno.test("tcp: dp 2 × tp 2 subgroups reduce only within their group", async () => {
  await withRanks(4, { dp: 2, tp: 2 }, async (backends) => {
    deepStrictEqual(backends.map((backend) => backend.group("tp").ranks), [[0, 1], [0, 1], [2, 3], [2, 3]]);
    deepStrictEqual(backends.map((backend) => backend.group("dp").ranks), [[0, 2], [1, 3], [0, 2], [1, 3]]);
    const own = (rank: number) => tensor("i32", [1], Int32Array.of(rank + 1));
    const tp = await Promise.all(
      backends.map((backend, rank) => backend.group("tp").allReduce(own(rank), "sum")),
    );
    deepStrictEqual(tp.map((t) => t.data[0]), [3, 3, 7, 7]);
    const dp = await Promise.all(
      backends.map((backend, rank) => backend.group("dp").allReduce(own(rank), "sum")),
    );
    deepStrictEqual(dp.map((t) => t.data[0]), [4, 6, 4, 6]);
    const gathered = await Promise.all(
      backends.map((backend, rank) => backend.group("tp").allGather(own(rank), 0)),
    );
    deepStrictEqual(gathered.map((t) => [...t.data]), [[1, 2], [1, 2], [3, 4], [3, 4]]);
    const world = await Promise.all(
      backends.map((backend, rank) => backend.group("world").allGather(own(rank), 0)),
    );
    deepStrictEqual(world.map((t) => [...t.data]), [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]);
    const fromRoot1 = await Promise.all(
      backends.map((backend, rank) => backend.group("dp").broadcast(own(rank), 1)),
    );
    deepStrictEqual(fromRoot1.map((t) => t.data[0]), [3, 4, 3, 4]);
  });
});

Deno.test("tcp: back-to-back collectives in flight together keep their order", async () => {
  await withRanks(3, { dp: 1, tp: 3 }, async (backends) => {
    const rounds = 30;
    const all = backends.map(async (backend, rank) => {
      const group = backend.group("world");
      const results: Promise<Tensor>[] = [];
      for (let step = 0; step < rounds; step++) {
        const x = tensor("f32", [2], Float32Array.of(step * 10 + rank, -step));
        if (step % 3 === 0) results.push(group.allReduce(x, "sum"));
        else if (step % 3 === 1) results.push(group.allGather(x, 0));
        else results.push(group.broadcast(x, step % 3));
        // Ranks issue at different paces, so messages of later steps arrive before earlier ones are read.
        if (rank === step % 3) await new Promise((resolve) => setTimeout(resolve, 1));
      }
      return await Promise.all(results);
    });
    const results = await Promise.all(all);
    results.forEach((perRank, rank) => {
      perRank.forEach((result, step) => {
        const expected = step % 3 === 0
          ? [3 * step * 10 + 3, -3 * step]
          : step % 3 === 1
          ? [0, 1, 2].flatMap((r) => [step * 10 + r, -step])
          : [step * 10 + 2, -step];
        deepStrictEqual([...result.data], expected, `rank ${rank} step ${step}`);
      });
    });
  });
});

Deno.test("tcp: mismatched tensors and a vanished peer fail with a DistError", async () => {
  await withRanks(2, { dp: 1, tp: 2 }, async ([a, b]) => {
    const results = await Promise.allSettled([
      a.group("world").allReduce(tensor("f32", [2]), "sum"),
      b.group("world").allReduce(tensor("i32", [2]), "sum"),
    ]);
    for (const result of results) {
      assert(result.status === "rejected" && result.reason instanceof DistError);
      assert(/rank \d sent/.test(result.reason.message), result.reason.message);
    }
    const waiting = a.group("world").allReduce(tensor("f32", [2]), "sum");
    await b[Symbol.asyncDispose]();
    await rejects(waiting, (error: Error) => error instanceof DistError && /rank 1/.test(error.message));
  });
});

Deno.test("tcp: large tensors cross in many reads", async () => {
  await withRanks(2, { dp: 1, tp: 2 }, async (backends) => {
    const count = 1 << 20;
    const inputs = [0, 1].map((rank) =>
      tensor("f32", [count], Float32Array.from({ length: count }, (_, i) => i + rank))
    );
    const sums = await Promise.all(
      backends.map((backend, rank) => backend.group("world").allReduce(inputs[rank], "sum")),
    );
    for (const sum of sums) {
      equal(sum.data.length, count);
      for (const i of [0, 1, 65_535, 65_536, count - 1]) equal(sum.data[i], 2 * i + 1);
    }
  });
});
