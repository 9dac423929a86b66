// Sampling on the device: the greedy pick of each row, so that a decode step returns token ids
// (4 bytes a sequence) instead of logits.
#include "common.cuh"

template <typename T>
__global__ void argmax_kernel(const T* x, int64_t ldx, int32_t* out, int64_t width) {
  pdl_wait();
  pdl_trigger();
  const T* row = x + blockIdx.x * ldx;
  float best = -INFINITY;
  int64_t index = width;  // larger than any real index, so a real value always wins a tie break
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = to_f32(row[i]);
    if (v > best) {  // a thread visits indices in increasing order: the first of equal values stays
      best = v;
      index = i;
    }
  }
  __shared__ float values[32];
  __shared__ int64_t indices[32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, index, offset);
    if (ov > best || (ov == best && oi < index)) {
      best = ov;
      index = oi;
    }
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    best = lane < warps ? values[lane] : -INFINITY;
    index = lane < warps ? indices[lane] : width;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, index, offset);
      if (ov > best || (ov == best && oi < index)) {
        best = ov;
        index = oi;
      }
    }
    // A row of NaNs (nothing compares larger) picks 0, as the reference's strict comparison does.
    if (lane == 0) out[blockIdx.x] = (int32_t)(index < width ? index : 0);
  }
}

extern "C" int rf_argmax(int dtype, const void* x, int ldx, int32_t* out, int rows, int width,
                         void* stream) {
  if (rows <= 0) return 0;
  RF_DISPATCH(dtype, return rf_launch(argmax_kernel<T>, dim3((unsigned)rows), dim3(1024), 0, RF_STREAM(stream),
                                      (const T*)x, ldx, out, width));
  return 0;
}
