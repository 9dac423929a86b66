// Benchmarks of the engines on this machine, printed as tables.
//   deno task bench            the cpu engine (any machine)
//   deno task bench gpu [dir]  the cuda engine on a Llama-3.2-1B-shaped model beside PyTorch (GPU machine)

const which = Deno.args[0] ?? "cpu";
if (which === "gpu") {
  const { benchGpu } = await import("./gpu.ts");
  await benchGpu(Deno.args[1]);
} else if (which === "cpu") {
  await import("./cpu.ts");
} else {
  console.error(`unknown benchmark ${which}: deno task bench [cpu|gpu [model dir]]`);
  Deno.exit(2);
}
