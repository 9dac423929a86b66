// Dynamic-shape profiles: the range [min, opt, max] each symbolic dim of an engine's inputs may
// take. A backend may size its buffers or tune its kernels by them; every engine checks its
// inputs against them, so a length out of range is a clear error rather than a crash.
//
// For generation graphs `seq` is the length of a sequence: the ids of one step, and also the
// cached tokens plus the step's (past + seq), unless `past` has a profile of its own.

import { z } from "zod";
import type { GraphInput } from "../ir/graph.ts";
import type { Tensor } from "../ir/tensor.ts";
import { EngineError } from "./engine.ts";

export type Profile = readonly [min: number, opt: number, max: number];
export type Profiles = Record<string, Profile>;

export const profileSchema = z.tuple([z.number().int().nonnegative(), z.number().int(), z.number().int()])
  .refine(([min, opt, max]) => min <= opt && opt <= max, {
    message: "a profile is [min, opt, max] with min ≤ opt ≤ max",
  });

export const profilesSchema = z.record(z.string(), profileSchema).describe(
  "per symbolic dim, [min, opt, max] sizes the engine serves, e.g. seq: [1, 512, 4096]",
);

/** The symbolic dims an engine's inputs use, in order of first use. */
export function symbolicDims(inputs: GraphInput[]): string[] {
  const names = new Set<string>();
  for (const input of inputs) {
    for (const dim of input.type.shape) {
      if (typeof dim === "string" && /^[A-Za-z_]\w*$/.test(dim)) names.add(dim);
    }
  }
  return [...names];
}

/** Profiles for dims the inputs do not have, as messages naming the dims there are. */
export function unknownProfileDims(profiles: Profiles, inputs: GraphInput[]): string[] {
  const known = symbolicDims(inputs);
  return Object.keys(profiles).filter((name) => !known.includes(name)).map((name) =>
    `profiles.${name}: the engine's inputs have no dim ${name}; they have ${known.join(", ") || "none"}`
  );
}

/** The sequence pool limits the profiles imply: batch bounds the slots, past + seq the length. */
export function sequenceLimits(profiles: Profiles): { slots?: number; maxLength?: number } {
  const maxLength = profiles.past ? profiles.past[2] + (profiles.seq?.[2] ?? 1) : profiles.seq?.[2];
  return { slots: profiles.batch?.[2], maxLength };
}

/** Throws an EngineError naming the input and the dim when a given size is outside its profile. */
export function checkInputs(inputs: GraphInput[], given: Record<string, Tensor>, profiles: Profiles): void {
  const sizes = new Map<string, number>();
  for (const input of inputs) {
    const value = given[input.name];
    if (!value) continue;
    input.type.shape.forEach((dim, axis) => {
      if (typeof dim !== "string") return;
      const size = value.shape[axis];
      sizes.set(dim, size);
      const profile = profiles[dim];
      if (profile && (size < profile[0] || size > profile[2])) {
        throw new EngineError(
          `input ${input.name}: ${dim} = ${size} is outside the range this engine was compiled for, ` +
            `${profile[0]}..${profile[2]} (compile.profiles.${dim})`,
        );
      }
    });
  }
  const total = (sizes.get("past") ?? 0) + (sizes.get("seq") ?? 0);
  const limit = sequenceLimits(profiles).maxLength;
  if (!profiles.past && limit !== undefined && total > limit) {
    throw new EngineError(
      `the sequence would hold ${total} tokens (past ${sizes.get("past") ?? 0} + seq ${
        sizes.get("seq") ?? 0
      }), ` +
        `more than the ${limit} this engine was compiled for (compile.profiles.seq)`,
    );
  }
}
