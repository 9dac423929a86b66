// `rankflow features` works on any machine: without a GPU it says why, and names every library.

import { ok } from "node:assert";
import { featureReport, formatFeatures } from "../../../plugins/engines/features.ts";
import { gpu } from "../../ffi/gpu.ts";

Deno.test("features: a report on any machine names the GPUs (or why none) and each library", () => {
  const report = featureReport();
  const text = formatFeatures(report);
  ok(report.gpus.length > 0 || report.gpuProblem, "no GPUs needs a reason");
  for (const name of ["cudart", "cublaslt", "nccl", "nvrtc", "kernels", "collectives"]) {
    ok(text.includes(name), `the report should mention ${name}:\n${text}`);
  }
});

Deno.test({
  name: "gpu: features on the GPU machine find the GPU, cuBLASLt and NCCL, and the in-engine collective path",
  ignore: !gpu,
  fn() {
    const report = featureReport();
    console.log(formatFeatures(report));
    ok(report.gpus.length > 0);
    for (const name of ["cudart", "cublaslt", "nccl"]) {
      ok(report.libraries.find((lib) => lib.name === name)?.version, `${name} should load`);
    }
    ok(report.collectives.includes("NCCL"));
  },
});
