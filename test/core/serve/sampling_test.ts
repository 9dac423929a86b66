import { deepStrictEqual, ok, strictEqual } from "node:assert";
import {
  argmax,
  makeSampler,
  sampleLogits,
  type SampleParams,
  type Sampler,
} from "../../../core/serve/sampling.ts";

const logits = Float32Array.from([0, 1, 2, 0.5, 1.5]);

function counts(sampler: Sampler, draws: number): number[] {
  const seen = new Array(logits.length).fill(0);
  for (let n = 0; n < draws; n++) seen[sampleLogits(logits, sampler.params, sampler.draw())]++;
  return seen;
}

/** The tokens drawn by 1000 evenly spaced uniforms: the nucleus, where no member weighs under 0.1%. */
function support(values: number[], params: Partial<SampleParams>): number[] {
  const full = { temperature: 1, topK: 0, topP: 1, ...params };
  const seen = new Set<number>();
  for (let n = 0; n < 1000; n++) seen.add(sampleLogits(Float32Array.from(values), full, n / 1000));
  return [...seen].sort((a, b) => a - b);
}

/** The rule of core/serve/sampling.ts step by step, with a full sort, to check the fast paths against. */
function reference(values: Float32Array, params: SampleParams, uniform: number): number {
  const { temperature, topK, topP } = params;
  if (temperature === 0) return argmax(values);
  // Math.max one value at a time: spread over a large vocabulary, the arguments overflow the stack.
  const m = values.reduce((a, b) => Math.max(a, b), -Infinity);
  const p = Array.from(values, (value) => Math.exp((value - m) / temperature));
  const ranking = Array.from(values, (_, i) => i).sort((
    a,
    b,
  ) => (values[a] === values[b] ? a - b : values[b] - values[a]));
  const candidates = topK > 0 && topK < values.length ? ranking.slice(0, topK) : ranking;
  let nucleus = candidates;
  if (topP < 1) {
    const mass = topP * [...candidates].sort((a, b) => a - b).reduce((sum, i) => sum + p[i], 0);
    let sum = 0;
    const reached = candidates.findIndex((i) => (sum += p[i]) >= mass);
    if (reached >= 0) nucleus = candidates.slice(0, reached + 1);
  }
  const members = [...nucleus].sort((a, b) => a - b);
  let target = uniform * members.reduce((sum, i) => sum + p[i], 0);
  for (const i of members) if ((target -= p[i]) < 0) return i;
  return members[members.length - 1];
}

Deno.test("sampling: temperature 0 is argmax; a seed repeats the same draws", () => {
  const greedy = makeSampler({ temperature: 0, topP: 1 });
  deepStrictEqual(greedy.params, { temperature: 0, topK: 0, topP: 1 });
  strictEqual(sampleLogits(logits, greedy.params, 0.99), 2);
  strictEqual(sampleLogits(Float32Array.from([1, 7, 7, 3]), { temperature: 0, topK: 3, topP: 0.1 }, 0.99), 1);
  strictEqual(argmax(Float32Array.from([3, 5, 5])), 1);
  const a = makeSampler({ temperature: 1, topK: 4, topP: 1, seed: 5 });
  const b = makeSampler({ temperature: 1, topK: 4, topP: 1, seed: 5 });
  deepStrictEqual(a.params, { temperature: 1, topK: 4, topP: 1 });
  const drawsA = Array.from({ length: 50 }, () => a.draw());
  deepStrictEqual(drawsA, Array.from({ length: 50 }, () => b.draw()));
  ok(drawsA.every((u) => u >= 0 && u < 1));
  const tokens = drawsA.map((u) => sampleLogits(logits, a.params, u));
  ok(new Set(tokens).size > 2, "draws spread over several tokens");
  ok(!tokens.includes(0), "top_k 4 never draws the least likely of 5");
});

Deno.test("sampling: draws follow the softmax at the temperature, cut to the top_p nucleus", () => {
  const draws = 20000;
  const seen = counts(makeSampler({ temperature: 2, topP: 1, seed: 1 }), draws);
  const weights = Array.from(logits, (value) => Math.exp(value / 2));
  const total = weights.reduce((a, b) => a + b, 0);
  seen.forEach((count, token) => {
    const expected = draws * weights[token] / total;
    ok(
      Math.abs(count - expected) < 5 * Math.sqrt(expected),
      `token ${token}: ${count} draws, ${expected} expected`,
    );
  });
  // At temperature 1 the two likeliest tokens (2 and 4) hold 0.43 + 0.26 of the mass: top_p 0.6 keeps only them.
  const nucleus = counts(makeSampler({ temperature: 1, topP: 0.6, seed: 2 }), 2000);
  strictEqual(nucleus[0] + nucleus[1] + nucleus[3], 0);
  ok(nucleus[2] > nucleus[4] && nucleus[4] > 0);
});

Deno.test("sampling: top_k keeps the k likeliest tokens, equal logits by lower index", () => {
  deepStrictEqual(support([1, 3, 2, 3, 0], { topK: 2 }), [1, 3]);
  deepStrictEqual(support([2, 5, 2, 5, 2], { topK: 3 }), [0, 1, 3]);
  deepStrictEqual(support([2, 5, 2, 5, 2], { topK: 1 }), [1]);
  // top_k at or past the vocabulary cuts nothing, as 0 does.
  for (const topK of [5, 6, 1000]) {
    for (const u of [0, 0.05, 0.3, 0.62, 0.999]) {
      strictEqual(
        sampleLogits(logits, { temperature: 1, topK, topP: 1 }, u),
        sampleLogits(logits, { temperature: 1, topK: 0, topP: 1 }, u),
      );
    }
  }
  deepStrictEqual(support([...logits], { topK: 5 }), [0, 1, 2, 3, 4]);
});

Deno.test("sampling: top_p keeps the shortest ranked prefix whose weights reach the share", () => {
  // Equal logits weigh exactly 1 each: 4 in all, so top_p 0.5 asks for 2 and the first two reach it exactly.
  deepStrictEqual(support([0, 0, 0, 0], { topP: 0.5 }), [0, 1]);
  deepStrictEqual(support([0, 0, 0, 0], { topP: 0.5000001 }), [0, 1, 2]);
  deepStrictEqual(support([0, 0, 0, 0], { topP: 0.25 }), [0]);
  // Weights 0.4, 0.3, 0.2, 0.1 at tokens 1, 3, 2, 0: prefixes hold 0.4, 0.7, 0.9 and 1 of the mass.
  const shares = [0.1, 0.4, 0.2, 0.3].map(Math.log);
  deepStrictEqual(support(shares, { topP: 0.39 }), [1]);
  deepStrictEqual(support(shares, { topP: 0.41 }), [1, 3]);
  deepStrictEqual(support(shares, { topP: 0.69 }), [1, 3]);
  deepStrictEqual(support(shares, { topP: 0.71 }), [1, 2, 3]);
  deepStrictEqual(support(shares, { topP: 0.95 }), [0, 1, 2, 3]);
  // With top_k the share is of the candidates' weight: 0.4 + 0.3 of 0.9 is 0.78 of it.
  deepStrictEqual(support(shares, { topK: 3, topP: 0.77 }), [1, 3]);
  deepStrictEqual(support(shares, { topK: 3, topP: 0.79 }), [1, 2, 3]);
});

Deno.test("sampling: the draw walks the kept tokens in index order, not by likelihood", () => {
  // Weights e^-2, 1, e^-1 (0.135, 1, 0.368 of 1.503): token 0 takes u < 0.090, token 1 u < 0.755.
  const row = Float32Array.from([0, 2, 1]);
  const params = { temperature: 1, topK: 0, topP: 1 };
  deepStrictEqual(
    [0, 0.05, 0.089, 0.091, 0.5, 0.754, 0.756, 0.999].map((u) => sampleLogits(row, params, u)),
    [
      0,
      0,
      0,
      1,
      1,
      1,
      2,
      2,
    ],
  );
  // Cut to tokens 1 and 0 (weights 1 and e^-1) by top_k 2 or top_p 0.8, token 0 comes first in the
  // walk although it is the less likely: it takes u < 0.269.
  const cut = Float32Array.from([1, 2, 0]);
  for (const choice of [{ topK: 2, topP: 1 }, { topK: 0, topP: 0.8 }, { topK: 2, topP: 0.8 }]) {
    deepStrictEqual([0.1, 0.268, 0.27, 0.9].map((u) => sampleLogits(cut, { ...params, ...choice }, u)), [
      0,
      0,
      1,
      1,
    ]);
  }
  // A draw of 0 takes the first kept token in index order with any weight.
  strictEqual(sampleLogits(Float32Array.from([-Infinity, 0, 5]), params, 0), 1);
});

Deno.test("sampling: -0 and +0 are equal logits, ranked by index", () => {
  deepStrictEqual(support([-1, -0, 0, -2], { topK: 1 }), [1]);
  deepStrictEqual(support([0, -0], { topK: 1 }), [0]);
  deepStrictEqual(support([-0, 0], { topK: 1 }), [0]);
  deepStrictEqual(support([-0, 0, 0], { topP: 0.5 }), [0, 1]);
  deepStrictEqual(support([-5, 0, -0], { topK: 2, topP: 0.4 }), [1]);
});

Deno.test("sampling: sampleLogits picks what the rule, done step by step with a full sort, picks", () => {
  let state = 12345;
  const random = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296;
  let compared = 0;
  // Logits in quarters tie by the hundred at 3000 tokens, so the boundaries of top_k and top_p fall
  // inside ties; spread 0.1 rounds every logit to ±0, all weights 1, where top_p 0.5 and 0.05 of 300
  // or 3000 reach the share exactly, too close for the histograms to call (the ranking decides there).
  for (const vocab of [7, 300, 3000]) {
    for (const spread of [0.1, 0.5, 8]) {
      const row = new Float32Array(vocab);
      for (let i = 0; i < vocab; i++) row[i] = Math.round((random() - 0.5) * spread * 4) / 4;
      row[vocab - 1] = -0;
      row[vocab >> 1] = 0;
      for (const temperature of [0, 0.3, 1, 2]) {
        for (const topK of [0, 1, 2, 5, 50, vocab - 1, vocab, vocab + 3]) {
          for (const topP of [1, 0.999, 0.9, 0.5, 0.05]) {
            for (let n = 0; n < 4; n++) {
              const params = { temperature, topK, topP };
              const u = random();
              strictEqual(
                sampleLogits(row, params, u),
                reference(row, params, u),
                JSON.stringify({ vocab, spread, ...params, u }),
              );
              compared++;
            }
          }
        }
      }
    }
  }
  strictEqual(compared, 3 * 3 * 4 * 8 * 5 * 4);
});

Deno.test("sampling: over large vocabularies, sampleLogits picks what the full sort picks", () => {
  let state = 777;
  const random = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296;
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  // Almost flat logits (the nucleus is most of the vocabulary), logits cut to bf16 (ties by the
  // hundred, at the boundary too), and a peaked row (a few tokens hold nearly all the weight).
  const bf16 = new Float32Array(1);
  const bf16Bits = new Uint32Array(bf16.buffer);
  const rows: [string, Float32Array][] = [
    ["flat", Float32Array.from({ length: 128256 }, () => (random() - 0.5) * 0.2)],
    [
      "bf16",
      Float32Array.from({ length: 50000 }, () => {
        bf16[0] = normal() * 3;
        bf16Bits[0] &= 0xffff0000;
        return bf16[0];
      }),
    ],
    ["peaked", Float32Array.from({ length: 50000 }, (_, i) => normal() + (i % 9973 === 5 ? 12 : 0))],
  ];
  const choices = [
    { temperature: 0.8, topK: 0, topP: 0.9 },
    { temperature: 0.3, topK: 0, topP: 0.5 },
    { temperature: 1.5, topK: 0, topP: 0.95 },
    { temperature: 0.8, topK: 40, topP: 0.9 },
    { temperature: 1, topK: 20000, topP: 0.8 },
    { temperature: 0.7, topK: 20000, topP: 1 },
  ];
  const uniforms = [0.0625, 0.5, 0.96875];
  for (const [name, row] of rows) {
    for (const [n, params] of choices.entries()) {
      const u = uniforms[n % uniforms.length];
      strictEqual(
        sampleLogits(row, params, u),
        reference(row, params, u),
        JSON.stringify({ name, ...params, u }),
      );
    }
  }
});

Deno.test("sampling: a share that a ranked prefix reaches to the last bit is decided by the rule's own sums", () => {
  let state = 99;
  const random = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296;
  // Distinct logits, and each share the exact ratio of a ranked prefix's weights to all of them: the
  // mass lands within a rounding of that prefix, where weights added in another order (a histogram's)
  // could fall on the other side of it. Only the rule's order, ranked then index, decides it.
  const row = Float32Array.from({ length: 3000 }, () => (random() - 0.5) * 6);
  const largest = Math.max(...row);
  const weights = Array.from(row, (value) => Math.exp(value - largest));
  for (const topK of [0, 1000]) {
    const ranking = Array.from(row, (_, i) => i).sort((a, b) => row[b] - row[a] || a - b);
    const candidates = topK ? ranking.slice(0, topK) : ranking;
    const total = [...candidates].sort((a, b) => a - b).reduce((sum, i) => sum + weights[i], 0);
    let prefix = 0;
    for (const [n, token] of candidates.entries()) {
      prefix += weights[token];
      if (n % 41 !== 3) continue;
      for (
        const topP of [prefix / total, (prefix / total) * (1 - 2 ** -52), (prefix / total) * (1 + 2 ** -52)]
      ) {
        const params = { temperature: 1, topK, topP };
        const u = random();
        strictEqual(
          sampleLogits(row, params, u),
          reference(row, params, u),
          JSON.stringify({ n, ...params, u }),
        );
      }
    }
  }
});
