// Choosing the next token from a row of logits. `sampleLogits` is the one rule, written down here so
// that an engine sampling on its device can follow it to the token; each request draws its uniforms
// from its own seeded generator, so a seed gives the same tokens whatever else the server is doing
// and wherever the sampling runs.
//
// The rule, for f32 logits l (all arithmetic below in float64), temperature T, top_k K, top_p P
// and one uniform u in [0, 1):
// 1. T = 0: the index of the largest logit, the first of equals; u is not used.
// 2. Each token weighs p_i = exp((l_i - m) / T), m the largest logit.
// 3. Tokens rank by logit, larger first; equal logits (-0 and +0 among them) rank by lower index.
// 4. The candidates C are the first K of that ranking if 0 < K < vocab, else every token.
// 5. If P < 1, the nucleus N is the shortest prefix of C, in ranked order, whose weights (added in
//    ranked order) reach P × (the weights of C added in increasing index order); should rounding
//    keep every prefix short of it, N = C. If P = 1, N = C.
// 6. The target u × (the weights of N added in increasing index order) loses the weights of N's
//    members one by one in increasing index order; the token is the first at which it falls below 0,
//    or, should rounding never take it there, the largest index in N.

import { everyToken, inRankedOrder, Kept, rankedThrough, rankKeys, selectKey } from "./ranking.ts";

export interface SampleParams {
  /** 0 is greedy; larger values flatten the distribution. */
  temperature: number;
  /** Keeps only the topK likeliest tokens; 0 keeps all. */
  topK: number;
  /** Keeps the likeliest tokens whose weights reach this share of the candidates' (1 keeps all). */
  topP: number;
}

export interface SamplingOptions {
  /** 0 picks the most likely token; larger values flatten the distribution. */
  temperature: number;
  /** Keeps only the topK likeliest tokens; 0 (the default) keeps all. */
  topK?: number;
  /** Keeps the most likely tokens whose probabilities add up to at least this (1 keeps all). */
  topP: number;
  /** Seeds the request's generator; a random seed where absent. */
  seed?: number;
}

/** One request's way of choosing tokens: its parameters, and its own stream of uniform draws. */
export interface Sampler {
  readonly params: SampleParams;
  /** One uniform draw in [0, 1); called once per sampled token (never for greedy ones). */
  draw(): number;
}

/** The index of the largest value; the first of equals, as argmax does everywhere else in rankflow. */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Uniform draws in [0, 1) from a 32-bit seed (splitmix32: small, fast, and good enough to sample). */
export function seededUniform(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return ((z ^ (z >>> 15)) >>> 0) / 4294967296;
  };
}

export function makeSampler(options: SamplingOptions): Sampler {
  const seed = options.seed ?? crypto.getRandomValues(new Uint32Array(1))[0];
  // Seeds beyond 32 bits (OpenAI allows 64) are folded in rather than cut off.
  const draw = seededUniform((seed % 4294967296) ^ Math.floor(seed / 4294967296));
  const params = { temperature: options.temperature, topK: options.topK ?? 0, topP: options.topP };
  return { params, draw };
}

/** The token the rule above picks from `logits` with the draw `uniform`. */
export function sampleLogits(logits: Float32Array, params: SampleParams, uniform: number): number {
  const { temperature, topK, topP } = params;
  if (temperature === 0) return argmax(logits);
  const vocab = logits.length;
  const largest = logits[argmax(logits)];
  const keys = rankKeys(logits);
  const candidates = topK > 0 && topK < vocab
    ? rankedThrough(keys, lastOfFirst(keys, topK), kept.candidates)
    : everyToken(vocab);
  // Only the candidates' weights are read, so the others may hold a previous call's.
  const weights = kept.weights.take(vocab);
  for (let n = 0; n < candidates.length; n++) {
    weights[candidates[n]] = Math.exp((logits[candidates[n]] - largest) / temperature);
  }
  if (topP >= 1) return drawInIndexOrder(candidates, weights, uniform);
  const mass = topP * sumInOrder(candidates, weights);
  const last = lastOfNucleus(keys, candidates, weights, mass) ??
    lastReaching(inRankedOrder(keys, candidates), weights, mass);
  const nucleus = last === undefined ? candidates : rankedThrough(keys, last, kept.nucleus);
  return drawInIndexOrder(nucleus, weights, uniform);
}

/** The last of the first `count` tokens of the ranking (step 4). */
function lastOfFirst(keys: Int32Array, count: number): number {
  // Counts are exact, and 0 < count < vocab: there is a boundary.
  const boundary = selectKey(keys, everyToken(keys.length), undefined, count)!;
  return boundary.ties[count - boundary.above - 1];
}

/**
 * The last token of the nucleus (step 5) where histograms of the weights settle it without a
 * ranking; undefined where they are too close to call. The rule adds the weights in ranked order
 * and the histograms in another, but any two ways of adding the same n non-negative terms, none
 * taking part in more than d additions, agree to within 2·γ(d) of their sum (γ(d) = d·u / (1 - d·u),
 * u = 2^-53; Higham, Accuracy and Stability of Numerical Algorithms, §4.2). So a prefix whose
 * estimate clears the mass by a wider margin reaches it in the rule's order too, and one short of it
 * by a wider margin does not; in between, the caller ranks the candidates and adds as the rule does.
 */
function lastOfNucleus(
  keys: Int32Array,
  candidates: Uint32Array,
  weights: Float64Array,
  mass: number,
): number | undefined {
  // Far from underflow and overflow, the relative bound holds for every sum below.
  if (!(mass >= 2 ** -1000 && mass <= 2 ** 1000)) return undefined;
  const boundary = selectKey(keys, candidates, weights, mass);
  if (!boundary) return undefined;
  // Equal keys are equal logits, so equal weights: l - m is one value for both zeros, or ±0 where m
  // is a zero, and exp(±0 / T) = 1.
  const { ties } = boundary;
  const each = weights[ties[0]];
  let before = boundary.above;
  let through = before;
  let joined = 0;
  for (; joined < ties.length && through < mass; joined++) {
    before = through;
    through += each;
  }
  // A weight goes through at most one bin's additions, those of the bins and digits after it
  // (fewer than 8192), and the ties': d < candidates + 8192. The slack is twice the 2·γ(d) needed.
  const slack = 8 * (candidates.length + 8192) * 2 ** -53;
  const settled = before * (1 + slack) < mass && through * (1 - slack) >= mass && through <= 2 ** 1000;
  return settled ? ties[joined - 1] : undefined;
}

/** The last token of the shortest prefix of `ranked` whose weights, added in that order, reach `mass`. */
function lastReaching(ranked: Uint32Array, weights: Float64Array, mass: number): number | undefined {
  let sum = 0;
  for (let n = 0; n < ranked.length; n++) {
    sum += weights[ranked[n]];
    if (sum >= mass) return ranked[n];
  }
  return undefined;
}

/** Step 6 over `tokens`, which are in increasing order. */
function drawInIndexOrder(tokens: Uint32Array, weights: Float64Array, uniform: number): number {
  let target = uniform * sumInOrder(tokens, weights);
  for (let n = 0; n < tokens.length; n++) {
    target -= weights[tokens[n]];
    if (target < 0) return tokens[n];
  }
  return tokens[tokens.length - 1];
}

function sumInOrder(tokens: Uint32Array, weights: Float64Array): number {
  let sum = 0;
  for (let n = 0; n < tokens.length; n++) sum += weights[tokens[n]];
  return sum;
}

const kept = {
  weights: new Kept((length) => new Float64Array(length)),
  candidates: new Kept((length) => new Uint32Array(length)),
  nucleus: new Kept((length) => new Uint32Array(length)),
};
