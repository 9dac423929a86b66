// Products with few rows (decode: one row per sequence): out[m, n] = x[m, :] · w[n, :] (+ bias[n])
// (+ residual[m, n]) for m < 8. Reading the weight once at full bandwidth is all that matters, so
// each block takes 4 weight rows, its 256 threads stride over K with 16-byte loads, and every
// loaded weight vector is used for all M rows of x (kept in cache), accumulating in f32.
#include "common.cuh"

static const int GEMV_THREADS = 256;
static const int GEMV_ROWS = 4;

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float* out) {
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 16 / (int)sizeof(T); i++) out[i] = to_f32(v[i]);
}

template <typename T, int M>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_kernel(const T* x, int ldx, const T* w, const T* bias,
                                                            const T* residual, T* out, int ld_out, int n, int k) {
  constexpr int V = 16 / sizeof(T);
  const int row0 = blockIdx.x * GEMV_ROWS;
  float acc[GEMV_ROWS][M];
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.f;
  for (int k0 = threadIdx.x * V; k0 < k; k0 += GEMV_THREADS * V) {
    uint4 wraw[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
      const int row = min(row0 + r, n - 1);
      wraw[r] = __ldg(reinterpret_cast<const uint4*>(w + (int64_t)row * k + k0));
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
      float xv[V];
      unpack<T>(*reinterpret_cast<const uint4*>(x + (int64_t)m * ldx + k0), xv);
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; r++) {
        float wv[V];
        unpack<T>(wraw[r], wv);
#pragma unroll
        for (int i = 0; i < V; i++) acc[r][m] += xv[i] * wv[i];
      }
    }
  }
  __shared__ float partial[GEMV_THREADS / 32][GEMV_ROWS * M];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) {
      const float v = warp_sum(acc[r][m]);
      if (lane == 0) partial[warp][r * M + m] = v;
    }
  __syncthreads();
  if (threadIdx.x < GEMV_ROWS * M) {
    const int r = threadIdx.x / M;
    const int m = threadIdx.x - r * M;
    const int row = row0 + r;
    if (row < n) {
      float total = 0.f;
#pragma unroll
      for (int i = 0; i < GEMV_THREADS / 32; i++) total += partial[i][r * M + m];
      if (bias) total += to_f32(bias[row]);
      if (residual) total += to_f32(residual[(int64_t)m * ld_out + row]);
      out[(int64_t)m * ld_out + row] = from_f32<T>(total);
    }
  }
}

template <typename T>
static int gemv(int m, const T* x, int ldx, const T* w, const T* bias, const T* residual, T* out, int ld_out, int n,
                int k, cudaStream_t stream) {
  const unsigned blocks = (unsigned)((n + GEMV_ROWS - 1) / GEMV_ROWS);
#define RF_GEMV_CASE(M)                                                                                    \
  case M:                                                                                                  \
    gemv_kernel<T, M><<<blocks, GEMV_THREADS, 0, stream>>>(x, ldx, w, bias, residual, out, ld_out, n, k); \
    break;
  switch (m) {
    RF_GEMV_CASE(1)
    RF_GEMV_CASE(2)
    RF_GEMV_CASE(3)
    RF_GEMV_CASE(4)
    RF_GEMV_CASE(5)
    RF_GEMV_CASE(6)
    RF_GEMV_CASE(7)
    RF_GEMV_CASE(8)
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
#undef RF_GEMV_CASE
  return rf_launched();
}

extern "C" int rf_gemv(int dtype, int m, const void* x, int ldx, const void* w, const void* bias,
                       const void* residual, void* out, int ld_out, int n, int k, void* stream) {
  const int elements = dtype == RF_F32 ? 4 : 8;
  if (m < 1 || m > 8 || k % elements != 0 || ldx % elements != 0) return static_cast<int>(cudaErrorInvalidValue);
  RF_DISPATCH(dtype, return gemv<T>(m, (const T*)x, ldx, (const T*)w, (const T*)bias, (const T*)residual, (T*)out,
                                    ld_out, n, k, RF_STREAM(stream)));
  return 0;
}
