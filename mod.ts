// rankflow's public API.

export * from "./core/ir/tensor.ts";
export * from "./core/ir/graph.ts";
export * from "./core/ir/registry.ts";
export * from "./core/ir/text.ts";
export * from "./core/ir/rewrite.ts";
export * from "./core/ir/weights.ts";
export * from "./core/pipeline/plugin.ts";
export * from "./core/runtime/engine.ts";
export * from "./core/runtime/generate.ts";
export * from "./core/runtime/interpreter.ts";
export * from "./core/testing/passes.ts";
