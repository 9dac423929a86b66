// Normalizations over the last axis, one block per row: RMSNorm (Llama, Qwen2) and LayerNorm (GPT-2).
#include "common.cuh"

template <typename T>
__global__ void rmsnorm_kernel(const T* x, int64_t ldx, const T* w, T* out, int64_t width, float eps) {
  pdl_wait();
  pdl_trigger();
  const T* row = x + blockIdx.x * ldx;
  T* dst = out + blockIdx.x * width;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float v = to_f32(row[i]);
    sum += v * v;
  }
  sum = block_sum(sum);
  const float scale = rsqrtf(sum / (float)width + eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    dst[i] = from_f32<T>(to_f32(w[i]) * (to_f32(row[i]) * scale));
  }
}

// The same in 16-byte vectors held in registers (up to ROUNDS a thread) between the sum and the writes.
template <typename T, int ROUNDS>
__global__ void rmsnorm_packed_kernel(const T* x, int64_t ldx, const T* w, T* out, int64_t width, float eps) {
  constexpr int V = 16 / sizeof(T);
  struct alignas(16) Pack {
    T v[V];
  };
  pdl_wait();
  pdl_trigger();
  const T* row = x + blockIdx.x * ldx;
  T* dst = out + blockIdx.x * width;
  Pack held[ROUNDS];
  float sum = 0.f;
#pragma unroll
  for (int u = 0; u < ROUNDS; u++) {
    const int64_t c = ((int64_t)u * blockDim.x + threadIdx.x) * V;
    if (c < width) {
      held[u] = *reinterpret_cast<const Pack*>(row + c);
#pragma unroll
      for (int j = 0; j < V; j++) {
        const float v = to_f32(held[u].v[j]);
        sum += v * v;
      }
    }
  }
  sum = block_sum(sum);
  const float scale = rsqrtf(sum / (float)width + eps);
#pragma unroll
  for (int u = 0; u < ROUNDS; u++) {
    const int64_t c = ((int64_t)u * blockDim.x + threadIdx.x) * V;
    if (c < width) {
      const Pack g = *reinterpret_cast<const Pack*>(w + c);
      Pack o;
#pragma unroll
      for (int j = 0; j < V; j++) o.v[j] = from_f32<T>(to_f32(g.v[j]) * (to_f32(held[u].v[j]) * scale));
      *reinterpret_cast<Pack*>(dst + c) = o;
    }
  }
}

template <typename T>
__global__ void layernorm_kernel(const T* x, int64_t ldx, const T* w, const T* b, T* out, int64_t width,
                                 float eps) {
  const T* row = x + blockIdx.x * ldx;
  T* dst = out + blockIdx.x * width;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) sum += to_f32(row[i]);
  const float mean = block_sum(sum) / (float)width;
  float squares = 0.f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float d = to_f32(row[i]) - mean;
    squares += d * d;
  }
  const float scale = rsqrtf(block_sum(squares) / (float)width + eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    dst[i] = from_f32<T>((to_f32(row[i]) - mean) * scale * to_f32(w[i]) + to_f32(b[i]));
  }
}

static int norm_threads(int64_t width) {
  int threads = 32;
  while (threads < 1024 && threads < width) threads *= 2;
  return threads;
}

extern "C" int rf_rmsnorm(int dtype, const void* x, int ldx, const void* w, void* out, int rows,
                          int width, float eps, void* stream) {
  if (rows <= 0) return 0;
  constexpr int ROUNDS = 4;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  RF_DISPATCH(dtype, {
    constexpr int V = 16 / sizeof(T);
    const int vectors = width / V;
    const int threads = vectors >= 1024 ? 1024 : (vectors + 31) / 32 * 32;
    if (width % V == 0 && ldx % V == 0 && vectors <= ROUNDS * threads && aligned(x) && aligned(w) && aligned(out)) {
      return rf_launch(rmsnorm_packed_kernel<T, ROUNDS>, dim3((unsigned)rows), dim3(threads), 0, RF_STREAM(stream),
                       (const T*)x, (int64_t)ldx, (const T*)w, (T*)out, (int64_t)width, eps);
    }
    return rf_launch(rmsnorm_kernel<T>, dim3((unsigned)rows), dim3(norm_threads(width)), 0, RF_STREAM(stream),
                     (const T*)x, (int64_t)ldx, (const T*)w, (T*)out, (int64_t)width, eps);
  });
  return 0;
}

extern "C" int rf_layernorm(int dtype, const void* x, int ldx, const void* w, const void* b, void* out,
                            int rows, int width, float eps, void* stream) {
  if (rows <= 0) return 0;
  RF_DISPATCH(dtype, (layernorm_kernel<T><<<(unsigned)rows, norm_threads(width), 0, RF_STREAM(stream)>>>(
                         (const T*)x, ldx, (const T*)w, (const T*)b, (T*)out, width, eps)));
  return rf_launched();
}
