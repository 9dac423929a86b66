import { ok, strictEqual } from "node:assert";
import { argmax, makeSampler } from "../../../core/serve/sampling.ts";

const logits = Float32Array.from([0, 1, 2, 0.5, 1.5]);

function counts(sample: (logits: Float32Array) => number, draws: number): number[] {
  const seen = new Array(logits.length).fill(0);
  for (let n = 0; n < draws; n++) seen[sample(logits)]++;
  return seen;
}

Deno.test("sampling: temperature 0 is argmax; a seed repeats the same draws", () => {
  strictEqual(makeSampler({ temperature: 0, topP: 1 })(logits), 2);
  strictEqual(argmax(Float32Array.from([3, 5, 5])), 1);
  const a = makeSampler({ temperature: 1, topP: 1, seed: 5 });
  const b = makeSampler({ temperature: 1, topP: 1, seed: 5 });
  const drawsA = Array.from({ length: 50 }, () => a(logits));
  strictEqual(drawsA.join(), Array.from({ length: 50 }, () => b(logits)).join());
  ok(new Set(drawsA).size > 2, "draws spread over several tokens");
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
