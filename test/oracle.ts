// The fixture models' transformers outputs (test/fixtures/<model>/oracle.json, written by
// make_fixtures.py) and the error measure tests hold engines' logits to.

import { join } from "node:path";

export const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

export interface Oracle {
  logit_ids: number[];
  logits: number[][];
  prompt_ids: number[];
  greedy_ids: number[];
}

export function oracleOf(name: string): Oracle {
  return JSON.parse(Deno.readTextFileSync(join(FIXTURES, name, "oracle.json")));
}

/** ‖rows − reference‖ / ‖reference‖ over every row, and the largest elementwise difference. */
export function relativeError(rows: number[][], reference: number[][]): { relative: number; maxAbs: number } {
  let diff = 0;
  let norm = 0;
  let maxAbs = 0;
  rows.forEach((row, i) =>
    row.forEach((v, j) => {
      const d = v - reference[i][j];
      if (!Number.isFinite(v)) diff = Infinity;
      diff += d * d;
      norm += reference[i][j] ** 2;
      maxAbs = Math.max(maxAbs, Math.abs(d));
    })
  );
  return { relative: Math.sqrt(diff / norm), maxAbs };
}
