import { deepStrictEqual, rejects } from "node:assert";
import { join } from "node:path";
import cpu, { cpuBackend } from "../../../plugins/engines/cpu.ts";
import save from "../../../plugins/save/engine_file.ts";
import load from "../../../plugins/load/engine_file.ts";
import { EngineError, f32, GraphBuilder, i32, type ModelInfo, type Tensor, toF32 } from "../../../mod.ts";
import { seededRandom } from "../../../core/testing/passes.ts";

function smallModel() {
  const b = new GraphBuilder("small");
  const ids = b.input("ids", "i32", ["batch", "seq"]);
  const table = b.weight("embed", "f32", [10, 6]);
  const w = b.weight("proj", "f32", [10, 6]);
  const x = b.op1("embedding", [table, ids]);
  const y = b.op1("gelu", [b.op1("rmsnorm", [x, b.weight("norm", "f32", [6])], { eps: 1e-6 })]);
  b.output(b.op1("linear", [y, w], {}, "logits"));
  const graph = b.finish();
  const next = seededRandom(3);
  const weights = new Map<string, Tensor>();
  for (const weight of graph.weights) {
    const shape = weight.type.shape as number[];
    weights.set(
      weight.name,
      f32(shape, Array.from({ length: shape.reduce((a, c) => a * c, 1) }, () => next() - 0.5)),
    );
  }
  return { graph, weights };
}

const model: ModelInfo = {
  architecture: "test",
  vocabSize: 10,
  layers: 0,
  heads: 1,
  kvHeads: 1,
  headDim: 6,
  hidden: 6,
  maxPositions: 8,
};
const ids = { ids: i32([2, 3], [1, 2, 3, 4, 5, 9]) };

async function savedSet() {
  const { graph, weights } = smallModel();
  const engine = await cpuBackend().build(graph, weights);
  const dir = await Deno.makeTempDir();
  const ctx = { baseDir: dir, rank: 0, worldSize: 1, log: () => {}, model };
  await save.save(engine, { dir: "set" }, ctx);
  return { engine, dir, ctx };
}

function loadCtx(dir: string, worldSize = 1) {
  return { baseDir: dir, rank: 0, worldSize, log: () => {}, backends: () => cpuBackend() };
}

Deno.test("cpu engine: save then load gives bit-identical outputs", async () => {
  const { engine, dir } = await savedSet();
  const { engine: loaded } = await load.load({ dir: "set" }, loadCtx(dir));
  const [a, b] = [await engine.run(ids), await loaded.run(ids)];
  deepStrictEqual(a.logits.shape, [2, 3, 10]);
  deepStrictEqual(new Uint8Array(toF32(a.logits).buffer), new Uint8Array(toF32(b.logits).buffer));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cpu engine: a bf16 compute dtype rounds like bf16 and stays close to f32", async () => {
  const { graph, weights } = smallModel();
  const full = await cpu.backend({}).build(graph, weights);
  const half = await cpu.backend({ dtype: "bf16" }).build(graph, weights);
  const [a, b] = [toF32((await full.run(ids)).logits), toF32((await half.run(ids)).logits)];
  const worst = a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
  deepStrictEqual(worst > 0 && worst < 0.05, true, `bf16 differs from f32 by ${worst}`);
  deepStrictEqual((await half.run(ids)).logits.dtype, "bf16");
});

Deno.test("engine files: every kind of damage gives a clear error naming the file", async () => {
  const { dir } = await savedSet();
  const manifest = JSON.parse(await Deno.readTextFile(join(dir, "set", "manifest.json")));
  const file = join(dir, "set", manifest.files[0].file);
  const good = await Deno.readFile(file);
  const cases: [string, (bytes: Uint8Array) => Uint8Array, RegExp][] = [
    ["truncated", (b) => b.slice(0, b.length - 7), /truncated or padded/],
    ["altered", (b) => b.map((v, i) => (i === b.length - 3 ? v ^ 1 : v)), /checksum mismatch/],
    ["not an engine", () => new TextEncoder().encode("hello, world, this is no engine"), /bad magic/],
    ["future format", (b) => b.map((v, i) => (i === 8 ? 99 : v)), /format 99/],
    ["header cut", (b) => b.slice(0, 40), /header runs past/],
  ];
  for (const [name, damage, message] of cases) {
    await Deno.writeFile(file, damage(good));
    await rejects(load.load({ dir: "set" }, loadCtx(dir)), (e: Error) => {
      return e instanceof EngineError && e.message.includes(file) && message.test(e.message) ||
        Promise.reject(new Error(`${name}: ${e.message}`));
    });
  }
  await Deno.writeFile(file, good);
  await rejects(load.load({ dir: "set" }, loadCtx(dir, 2)), /saved for 1 ranks, this run has 2/);
  await Deno.remove(file);
  await rejects(load.load({ dir: "set" }, loadCtx(dir)), /engine file not found/);
  await rejects(load.load({ dir: "nowhere" }, loadCtx(dir)), /no manifest/);
  await Deno.remove(dir, { recursive: true });
});
