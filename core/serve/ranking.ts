// Ranking the tokens of a row of logits for sampling.ts without sorting them where it can be
// avoided: an order-preserving integer key per logit, radix selection of the key where a count or a
// weight is reached, and a native sort of packed (key, index) integers where a full ranking is needed.
// Working arrays are kept from call to call (see Kept).

/**
 * Each token's rank key (step 3) as a signed integer: larger logits have larger keys, equal logits
 * (-0 and +0 among them) equal keys. The f32 bits order positives already; negatives need their
 * magnitude bits flipped.
 */
export function rankKeys(logits: Float32Array): Int32Array {
  const bits = new Int32Array(logits.buffer, logits.byteOffset, logits.length);
  const keys = kept.keys.take(logits.length);
  for (let token = 0; token < keys.length; token++) {
    const word = bits[token];
    keys[token] = word === -0x80000000 ? 0 : word ^ ((word >> 31) & 0x7fffffff);
  }
  return keys;
}

/** The tokens that rank before `last`, and `last`, in increasing index order, in `into`'s array. */
export function rankedThrough(keys: Int32Array, last: number, into: Kept<Uint32Array>): Uint32Array {
  const tokens = into.take(keys.length);
  const key = keys[last];
  // Each token is written, then counted in as a 0 or a 1: no branch to mispredict.
  let size = 0;
  for (let token = 0; token <= last; token++) {
    tokens[size] = token;
    size += +(keys[token] >= key);
  }
  for (let token = last + 1; token < keys.length; token++) {
    tokens[size] = token;
    size += +(keys[token] > key);
  }
  return tokens.subarray(0, size);
}

/**
 * `tokens` in ranked order. Each becomes one 64-bit integer, its key (inverted, so that larger keys
 * come first) above its index, and the integers are sorted as numbers: a native sort, many times
 * faster than one calling back a comparator.
 */
export function inRankedOrder(keys: Int32Array, tokens: Uint32Array): Uint32Array {
  const packed = kept.packed.take(tokens.length);
  const words = new Uint32Array(packed.buffer, packed.byteOffset, 2 * tokens.length);
  const [low, high] = LITTLE_ENDIAN ? [0, 1] : [1, 0];
  for (let n = 0; n < tokens.length; n++) {
    words[2 * n + low] = tokens[n];
    words[2 * n + high] = keys[tokens[n]] ^ 0x7fffffff;
  }
  packed.sort();
  const ranked = new Uint32Array(tokens.length);
  for (let n = 0; n < ranked.length; n++) ranked[n] = words[2 * n + low];
  return ranked;
}

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** Where tokens, taken from the largest key down, first reach a target count or weight. */
export interface Boundary {
  /** The count or weight of the tokens with larger keys: less than the target. */
  above: number;
  /** The tokens with the key whose count or weight takes the total to the target, in increasing index order. */
  ties: Uint32Array;
}

/** The digits of a key, most significant first (12, 10 and 10 bits), each as the shift to its place. */
const DIGIT_SHIFTS = [20, 10, 0];

/** A key's digit at `shift`; the top one carries the sign, lifted so that it orders as the key does. */
function digitOf(key: number, shift: number): number {
  return shift === 20 ? (key >> 20) + 2048 : (key >> shift) & 1023;
}

const bins = new Float64Array(4096);
const binSizes = new Uint32Array(4096);

/**
 * Radix selection of the boundary among `tokens` (in increasing index order): for each digit in
 * turn, a histogram of the tokens under the digits chosen so far, counting them (no `weights`) or
 * weighing them. Counts are exact; weights are added bin by bin, so `above` may be a rounding off
 * the rule's sums. None where all the tokens together fall short of the target.
 */
export function selectKey(
  keys: Int32Array,
  tokens: Uint32Array,
  weights: Float64Array | undefined,
  target: number,
): Boundary | undefined {
  let above = 0;
  for (const [level, shift] of DIGIT_SHIFTS.entries()) {
    const width = shift === 20 ? 4096 : 1024;
    bins.fill(0, 0, width);
    binSizes.fill(0, 0, width);
    for (let n = 0; n < tokens.length; n++) {
      const digit = digitOf(keys[tokens[n]], shift);
      bins[digit] += weights ? weights[tokens[n]] : 1;
      binSizes[digit]++;
    }
    let chosen = width - 1;
    for (; chosen >= 0; chosen--) {
      if (bins[chosen] > 0 && above + bins[chosen] >= target) break;
      above += bins[chosen];
    }
    if (chosen < 0) return undefined;
    const under = kept.under[level % 2].take(binSizes[chosen]);
    for (let n = 0, size = 0; size < under.length; n++) {
      under[size] = tokens[n];
      size += +(digitOf(keys[tokens[n]], shift) === chosen);
    }
    tokens = under;
  }
  return { above, ties: tokens };
}

/** 0, 1, … vocab - 1, to be read only. */
export function everyToken(vocab: number): Uint32Array {
  if (identity.length < vocab) {
    identity = new Uint32Array(vocab);
    for (let token = 0; token < vocab; token++) identity[token] = token;
  }
  return identity.subarray(0, vocab);
}

let identity = new Uint32Array(0);

/**
 * An array kept from one call to the next and grown to the longest asked for: at 128k tokens a
 * fresh one costs more than the work done in it (its pages are zeroed as they are first touched, and
 * that much memory outside the heap brings on collections). sampleLogits never yields, so each use
 * has its array to itself until it returns.
 */
export class Kept<T extends Float64Array | Int32Array | Uint32Array | BigUint64Array> {
  #array: T;
  constructor(readonly make: (length: number) => T) {
    this.#array = make(0);
  }
  /** `length` elements, holding what the last caller left there. */
  take(length: number): T {
    if (this.#array.length < length) this.#array = this.make(length);
    return this.#array.subarray(0, length) as T;
  }
}

const kept = {
  keys: new Kept((length) => new Int32Array(length)),
  /** selectKey's tokens under the digits chosen so far, a digit in one, the next in the other. */
  under: [new Kept((length) => new Uint32Array(length)), new Kept((length) => new Uint32Array(length))],
  packed: new Kept((length) => new BigUint64Array(length)),
};
