// NVRTC's compile path on the GPU: CUDA C++ compiled at run time to PTX, loaded through the
// driver API and run, and a compile error reported with NVRTC's log.

import { deepStrictEqual, match, throws } from "node:assert";
import { gpu } from "./gpu.ts";
import { compileToPtx, PtxModule } from "../../ffi/nvrtc.ts";
import {
  check,
  cudart,
  DEVICE_ATTRIBUTE,
  deviceAlloc,
  deviceAttribute,
  deviceFree,
  download,
  upload,
} from "../../ffi/cuda.ts";
import { FfiError } from "../../ffi/errors.ts";

const AXPY = `
extern "C" __global__ void axpy(float a, const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}`;

Deno.test({
  name: "gpu: nvrtc compiles a kernel to PTX that the driver loads and runs",
  ignore: !gpu,
  fn() {
    check(cudart().cudaSetDevice(0), "cudaSetDevice");
    check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize"); // makes the primary context current
    const arch = `${deviceAttribute(DEVICE_ATTRIBUTE.major, 0)}${deviceAttribute(DEVICE_ATTRIBUTE.minor, 0)}`;
    const ptx = compileToPtx(AXPY, "axpy.cu", [`--gpu-architecture=compute_${arch}`]);
    match(ptx, /\.entry axpy/);
    const n = 1000;
    const x = Float32Array.from({ length: n }, (_, i) => i);
    const y = Float32Array.from({ length: n }, (_, i) => 2 * i + 1);
    const dx = deviceAlloc(4 * n);
    const dy = deviceAlloc(4 * n);
    try {
      upload(dx, x);
      upload(dy, y);
      using module = new PtxModule(ptx);
      module.launch("axpy", [Math.ceil(n / 256), 1, 1], [256, 1, 1], [{ f32: 0.5 }, dx, dy, { i32: n }]);
      check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      const out = new Float32Array(n);
      download(out, dy);
      deepStrictEqual(Array.from(out), Array.from(y, (v, i) => 0.5 * x[i] + v));
    } finally {
      deviceFree(dx);
      deviceFree(dy);
    }
  },
});

Deno.test({
  name: "gpu: an nvrtc compile error carries the compiler's log",
  ignore: !gpu,
  fn() {
    throws(
      () => compileToPtx(`extern "C" __global__ void broken() { undeclared_name = 1; }`, "broken.cu"),
      (error: Error) =>
        error instanceof FfiError && /broken\.cu/.test(error.message) &&
        /undeclared_name/.test(error.message),
    );
  },
});
