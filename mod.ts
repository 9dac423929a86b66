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
export * from "./core/testing/ranks.ts";
export * from "./core/dist/group.ts";
export * from "./core/dist/memory.ts";
export * from "./core/runtime/segments.ts";
export { PipelineError } from "./core/pipeline/errors.ts";
export { loadPipeline, runPipeline } from "./core/pipeline/runner.ts";
