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
  // Only top_k and top_p need a ranking, and then only of the tokens they might keep.
  const ranked = topK > 0 && topK < vocab ? rankedTokens(logits, topK) : undefined;
  const candidates = ranked ? ascending(ranked) : everyToken(vocab);
  const weights = new Float64Array(vocab);
  for (let n = 0; n < candidates.length; n++) {
    weights[candidates[n]] = Math.exp((logits[candidates[n]] - largest) / temperature);
  }
  if (topP >= 1) return drawInIndexOrder(candidates, weights, uniform);
  const mass = topP * sumInOrder(candidates, weights);
  const nucleus = ranked
    ? prefixReaching(ranked, weights, mass) ?? ranked
    : nucleusOfAll(logits, weights, mass);
  return drawInIndexOrder(ascending(nucleus), weights, uniform);
}

/** How many of the ranking a nucleus over every token looks at first; each retry looks at 16 times more. */
const FIRST_NUCLEUS_RANKS = 1024;

/** Step 5 where C is every token: most nuclei are small, so rank a few tokens, and more only if needed. */
function nucleusOfAll(logits: Float32Array, weights: Float64Array, mass: number): Uint32Array {
  let count = Math.min(FIRST_NUCLEUS_RANKS, logits.length);
  for (;;) {
    const ranked = rankedTokens(logits, count);
    const nucleus = prefixReaching(ranked, weights, mass);
    if (nucleus) return nucleus;
    if (count === logits.length) return ranked;
    count = Math.min(logits.length, count * 16);
  }
}

/** The shortest prefix of `ranked` whose weights, added in that order, reach `mass`; none if no prefix does. */
function prefixReaching(ranked: Uint32Array, weights: Float64Array, mass: number): Uint32Array | undefined {
  let sum = 0;
  for (let n = 0; n < ranked.length; n++) {
    sum += weights[ranked[n]];
    if (sum >= mass) return ranked.subarray(0, n + 1);
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

function ascending(tokens: Uint32Array): Uint32Array {
  return tokens.slice().sort();
}

function everyToken(vocab: number): Uint32Array {
  const tokens = new Uint32Array(vocab);
  for (let token = 0; token < vocab; token++) tokens[token] = token;
  return tokens;
}

/** Whether token a ranks before token b (step 3); `>` and `===` already hold -0 and +0 equal. */
function ranksBefore(logits: Float32Array, a: number, b: number): boolean {
  return logits[a] > logits[b] || (logits[a] === logits[b] && a < b);
}

/** The first `count` tokens of the ranking, in ranked order. */
function rankedTokens(logits: Float32Array, count: number): Uint32Array {
  // -0 - +0 is -0, which is falsy: equal logits, so the index decides.
  const compare = (a: number, b: number) => logits[b] - logits[a] || a - b;
  if (count * 2 >= logits.length) return everyToken(logits.length).sort(compare).subarray(0, count);
  // A heap of the best `count` so far with the worst of them at the root: most tokens are turned
  // away by one comparison with it, so this is one pass over the logits rather than a sort of them.
  const heap = new Uint32Array(count);
  const worse = (a: number, b: number) => ranksBefore(logits, b, a);
  const swap = (i: number, j: number) => {
    const held = heap[i];
    heap[i] = heap[j];
    heap[j] = held;
  };
  for (let token = 0; token < count; token++) {
    heap[token] = token;
    for (let at = token; at > 0 && worse(heap[at], heap[(at - 1) >> 1]); at = (at - 1) >> 1) {
      swap(at, (at - 1) >> 1);
    }
  }
  for (let token = count; token < logits.length; token++) {
    if (!ranksBefore(logits, token, heap[0])) continue;
    heap[0] = token;
    for (let at = 0;;) {
      const left = 2 * at + 1;
      if (left >= count) break;
      const child = left + 1 < count && worse(heap[left + 1], heap[left]) ? left + 1 : left;
      if (!worse(heap[child], heap[at])) break;
      swap(at, child);
      at = child;
    }
  }
  return heap.sort(compare);
}
