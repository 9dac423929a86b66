// Choosing the next token from a row of logits: greedy at temperature 0, else a draw from the
// softmax at the given temperature, cut to the smallest set of tokens whose probability reaches
// top_p (nucleus sampling). Each request draws from its own seeded generator, so a seed gives the
// same tokens whatever else the server is doing.

export interface SamplingOptions {
  /** 0 picks the most likely token; larger values flatten the distribution. */
  temperature: number;
  /** Keeps the most likely tokens whose probabilities add up to at least this (1 keeps all). */
  topP: number;
  /** Seeds the request's generator; a random seed where absent. */
  seed?: number;
}

export type Sampler = (logits: Float32Array) => number;

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
  if (options.temperature === 0) return argmax;
  const seed = options.seed ?? crypto.getRandomValues(new Uint32Array(1))[0];
  // Seeds beyond 32 bits (OpenAI allows 64) are folded in rather than cut off.
  const uniform = seededUniform((seed % 4294967296) ^ Math.floor(seed / 4294967296));
  const { temperature, topP } = options;
  return function sample(logits: Float32Array): number {
    const best = argmax(logits);
    const probabilities = new Float64Array(logits.length);
    let total = 0;
    for (let i = 0; i < logits.length; i++) {
      const p = Math.exp((logits[i] - logits[best]) / temperature);
      probabilities[i] = p;
      total += p;
    }
    const order = topP < 1
      ? nucleus(probabilities, total * topP)
      : Array.from({ length: logits.length }, (_, i) => i);
    let mass = 0;
    for (const index of order) mass += probabilities[index];
    let draw = uniform() * mass;
    for (const index of order) {
      draw -= probabilities[index];
      if (draw < 0) return index;
    }
    return order[order.length - 1];
  };
}

/** The indices of the most likely values, most likely first, until their sum reaches `mass`. */
function nucleus(probabilities: Float64Array, mass: number): number[] {
  const order = Array.from({ length: probabilities.length }, (_, i) => i)
    .sort((a, b) => probabilities[b] - probabilities[a] || a - b);
  let sum = 0;
  for (let n = 0; n < order.length; n++) {
    sum += probabilities[order[n]];
    if (sum >= mass) return order.slice(0, n + 1);
  }
  return order;
}
