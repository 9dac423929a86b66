// Products with few rows (decode: one row per sequence): out[m, n] = x[m, :] · w[n, :] (+ bias[n])
// (+ residual[m, n]) for m ≤ 8. Reading the weight once at full bandwidth is all that matters:
// - each warp takes two weight rows at a time, every lane holding 8 of their 16-byte vectors in
//   flight, and reduces with shuffles; blocks stay resident and loop, loading the next rows
//   while they reduce;
// - the warp's first weight loads are issued before pdl_wait(), so under programmatic launch
//   they overlap the kernel before (weights are never written);
// - one row of x (batch-1 decode) lives in registers: a row of up to 2048 bf16 elements is one
//   warp's slice (longer rows are split over up to 8 warps of a block, which add up their parts
//   in shared memory), and the RMSNorm that feeds the product is applied there by the warp;
// - several rows of x are staged once per block in shared memory, normalized on the way;
// - `gated` pairs row j with row j + n/2 and writes silu(x·w_j) · (x·w_{j+n/2}): the gate and up
//   projections of an MLP and their silu·mul in one launch.
// Every rounding matches the unfused kernels: the norm's output, the gate and up products and
// the silu are each rounded to the dtype, as the graph's separate ops would store them.
#include <stdlib.h>

#include "common.cuh"

static const int GEMV_WARPS = 8;
static const int GEMV_UNROLL = 8;                  // 16-byte vectors per lane per row in flight
static const int GEMV_STAGE_LIMIT = 64 * 1024;     // bytes of staged x per block

template <typename T>
struct GemvParams {
  const T* x;
  int ldx;
  const T* norm;  // RMSNorm weight, or null
  float eps;
  const T* w;
  const T* bias;
  const T* residual;
  T* out;
  int ld_out;
  int n;
  int k;
  int gated;
  int staged;
};

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float* out) {
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 16 / (int)sizeof(T); i++) out[i] = to_f32(v[i]);
}

// A weight vector, streamed past L1 (each is read once).
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// x (normalized when p.norm is set) into shared memory as [M][k] elements of T.
template <typename T, int M>
__device__ void stage_x(const GemvParams<T>& p, T* xs) {
  constexpr int V = 16 / sizeof(T);
  for (int m = 0; m < M; m++) {
    const T* row = p.x + (int64_t)m * p.ldx;
    float scale = 1.f;
    if (p.norm) {
      float sum = 0.f;
      for (int kk = threadIdx.x * V; kk < p.k; kk += blockDim.x * V) {
        float v[V];
        unpack<T>(*reinterpret_cast<const uint4*>(row + kk), v);
#pragma unroll
        for (int i = 0; i < V; i++) sum += v[i] * v[i];
      }
      scale = rsqrtf(block_sum(sum) / (float)p.k + p.eps);
    }
    for (int kk = threadIdx.x * V; kk < p.k; kk += blockDim.x * V) {
      uint4 raw = *reinterpret_cast<const uint4*>(row + kk);
      if (p.norm) {
        float v[V], g[V];
        unpack<T>(raw, v);
        unpack<T>(*reinterpret_cast<const uint4*>(p.norm + kk), g);
        T* r = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < V; i++) r[i] = from_f32<T>(g[i] * (v[i] * scale));
      }
      *reinterpret_cast<uint4*>(xs + (int64_t)m * p.k + kk) = raw;
    }
  }
}

template <typename T, int M>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(const GemvParams<T> p) {
  constexpr int V = 16 / sizeof(T);
  constexpr int CHUNK = 32 * V * GEMV_UNROLL;
  extern __shared__ __align__(16) unsigned char gemv_shared[];
  T* xs = reinterpret_cast<T*>(gemv_shared);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int half = p.n / 2;
  const int pairs = p.gated ? half : (p.n + 1) / 2;
  const int stride = gridDim.x * GEMV_WARPS;

  uint4 wa[GEMV_UNROLL], wb[GEMV_UNROLL];
  const auto rows = [&](int pair, int* a, int* b) {
    *a = p.gated ? pair : 2 * pair;
    *b = p.gated ? pair + half : min(2 * pair + 1, p.n - 1);
  };
  const auto load = [&](int pair, int k0) {
    int a, b;
    rows(pair, &a, &b);
    const T* ra = p.w + (int64_t)a * p.k;
    const T* rb = p.w + (int64_t)b * p.k;
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const int kk = k0 + (u * 32 + lane) * V;
      if (kk < p.k) {
        wa[u] = load_stream(ra + kk);
        wb[u] = load_stream(rb + kk);
      }
    }
  };

  int pair = blockIdx.x * GEMV_WARPS + warp;
  if (pair < pairs) load(pair, 0);
  pdl_wait();
  if (p.staged) {
    stage_x<T, M>(p, xs);
    __syncthreads();
  }
  pdl_trigger();
  const T* x = p.staged ? xs : p.x;
  const int64_t ldx = p.staged ? p.k : p.ldx;

  for (; pair < pairs; pair += stride) {
    float acc_a[M], acc_b[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc_a[m] = acc_b[m] = 0.f;
    for (int k0 = 0; k0 < p.k; k0 += CHUNK) {
      if (k0 > 0) load(pair, k0);
#pragma unroll
      for (int u = 0; u < GEMV_UNROLL; u++) {
        const int kk = k0 + (u * 32 + lane) * V;
        if (kk < p.k) {
          float fa[V], fb[V];
          unpack<T>(wa[u], fa);
          unpack<T>(wb[u], fb);
#pragma unroll
          for (int m = 0; m < M; m++) {
            float xv[V];
            unpack<T>(*reinterpret_cast<const uint4*>(x + m * ldx + kk), xv);
#pragma unroll
            for (int i = 0; i < V; i++) {
              acc_a[m] += xv[i] * fa[i];
              acc_b[m] += xv[i] * fb[i];
            }
          }
        }
      }
    }
    int a, b;
    rows(pair, &a, &b);
    if (pair + stride < pairs) load(pair + stride, 0);  // in flight during the reduction
    float va = 0.f, vb = 0.f;
#pragma unroll
    for (int m = 0; m < M; m++) {
      const float sa = warp_sum(acc_a[m]);
      const float sb = warp_sum(acc_b[m]);
      if (lane == m) {
        va = sa;
        vb = sb;
      }
    }
    if (lane < M) {
      const int64_t row = (int64_t)lane * p.ld_out;
      if (p.bias) {
        va += to_f32(p.bias[a]);
        vb += to_f32(p.bias[b]);
      }
      if (p.gated) {
        const float gate = to_f32(from_f32<T>(silu(to_f32(from_f32<T>(va)))));
        p.out[row + pair] = from_f32<T>(gate * to_f32(from_f32<T>(vb)));
      } else {
        if (p.residual) va += to_f32(p.residual[row + a]);
        p.out[row + a] = from_f32<T>(va);
        if (b != a) {
          if (p.residual) vb += to_f32(p.residual[row + b]);
          p.out[row + b] = from_f32<T>(vb);
        }
      }
    }
  }
}

// One row of x: warp w of a block takes pair w / SLICES over the slice w % SLICES of k (U vectors
// of 16 bytes per lane per row), with x's slice in registers; the slices' norms and dot products
// add up in shared memory.
template <typename T, int SLICES, int U>
__global__ void __launch_bounds__(GEMV_WARPS * 32, U == 4 ? 2 : 1) gemv_one_kernel(const GemvParams<T> p) {
  constexpr int V = 16 / sizeof(T);
  constexpr int CHUNK = 32 * V * U;
  constexpr int PER_BLOCK = GEMV_WARPS / SLICES;  // pairs a block takes at a time
  __shared__ float parts[GEMV_WARPS][2];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int slice = warp % SLICES;
  const int local = warp / SLICES;
  const int k0 = slice * CHUNK;
  const int half = p.n / 2;
  const int pairs = p.gated ? half : (p.n + 1) / 2;
  const int groups = (pairs + PER_BLOCK - 1) / PER_BLOCK;

  uint4 wa[U], wb[U];
  const auto rows = [&](int pair, int* a, int* b) {
    *a = p.gated ? pair : 2 * pair;
    *b = p.gated ? pair + half : min(2 * pair + 1, p.n - 1);
  };
  const auto load = [&](int group) {
    const int pair = group * PER_BLOCK + local;
    if (group >= groups || pair >= pairs) return;
    int a, b;
    rows(pair, &a, &b);
    const T* ra = p.w + (int64_t)a * p.k;
    const T* rb = p.w + (int64_t)b * p.k;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int kk = k0 + (u * 32 + lane) * V;
      if (kk < p.k) {
        wa[u] = load_stream(ra + kk);
        wb[u] = load_stream(rb + kk);
      }
    }
  };

  int group = blockIdx.x;
  load(group);
  pdl_wait();
  uint4 xr[U];
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int kk = k0 + (u * 32 + lane) * V;
    xr[u] = kk < p.k ? *reinterpret_cast<const uint4*>(p.x + kk) : make_uint4(0, 0, 0, 0);
  }
  if (p.norm) {
    float sum = 0.f;
#pragma unroll
    for (int u = 0; u < U; u++) {
      float v[V];
      unpack<T>(xr[u], v);
#pragma unroll
      for (int i = 0; i < V; i++) sum += v[i] * v[i];
    }
    sum = warp_sum(sum);
    if (SLICES > 1) {
      // warps 0 .. SLICES-1 hold the slices of the whole row
      if (lane == 0) parts[warp][0] = sum;
      __syncthreads();
      sum = 0.f;
      for (int s = 0; s < SLICES; s++) sum += parts[s][0];
      __syncthreads();
    }
    const float scale = rsqrtf(sum / (float)p.k + p.eps);
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int kk = k0 + (u * 32 + lane) * V;
      if (kk < p.k) {
        float v[V], g[V];
        unpack<T>(xr[u], v);
        unpack<T>(*reinterpret_cast<const uint4*>(p.norm + kk), g);
        T* r = reinterpret_cast<T*>(&xr[u]);
#pragma unroll
        for (int i = 0; i < V; i++) r[i] = from_f32<T>(g[i] * (v[i] * scale));
      }
    }
  }
  pdl_trigger();

  for (; group < groups; group += gridDim.x) {
    const int pair = group * PER_BLOCK + local;
    float va = 0.f, vb = 0.f;
    if (pair < pairs) {
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int kk = k0 + (u * 32 + lane) * V;
        if (kk < p.k) {
          float xv[V], fa[V], fb[V];
          unpack<T>(xr[u], xv);
          unpack<T>(wa[u], fa);
          unpack<T>(wb[u], fb);
#pragma unroll
          for (int i = 0; i < V; i++) {
            va += xv[i] * fa[i];
            vb += xv[i] * fb[i];
          }
        }
      }
    }
    load(group + gridDim.x);  // in flight during the reduction
    va = warp_sum(va);
    vb = warp_sum(vb);
    if (SLICES > 1) {
      if (lane == 0) {
        parts[warp][0] = va;
        parts[warp][1] = vb;
      }
      __syncthreads();
      if (slice == 0) {
        for (int s = 1; s < SLICES; s++) {
          va += parts[warp + s][0];
          vb += parts[warp + s][1];
        }
      }
    }
    if (slice == 0 && lane == 0 && pair < pairs) {
      int a, b;
      rows(pair, &a, &b);
      if (p.bias) {
        va += to_f32(p.bias[a]);
        vb += to_f32(p.bias[b]);
      }
      if (p.gated) {
        const float gate = to_f32(from_f32<T>(silu(to_f32(from_f32<T>(va)))));
        p.out[pair] = from_f32<T>(gate * to_f32(from_f32<T>(vb)));
      } else {
        if (p.residual) va += to_f32(p.residual[a]);
        p.out[a] = from_f32<T>(va);
        if (b != a) {
          if (p.residual) vb += to_f32(p.residual[b]);
          p.out[b] = from_f32<T>(vb);
        }
      }
    }
    if (SLICES > 1) __syncthreads();
  }
}

static int multiprocessors() {
  static int count = 0;
  if (count == 0) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      count = 0;
      return 1;
    }
  }
  return count;
}

static size_t staged_bytes(int m, int k, int elem) { return (size_t)m * k * elem; }

template <typename T, int M>
static int gemv_launch(const GemvParams<T>& params, cudaStream_t stream) {
  const auto kernel = gemv_kernel<T, M>;
  const size_t shared = params.staged ? staged_bytes(M, params.k, sizeof(T)) : 0;
  if (shared > 48 * 1024) {
    static bool raised = false;
    if (!raised) {
      const cudaError_t rc =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, GEMV_STAGE_LIMIT);
      if (rc != cudaSuccess) return static_cast<int>(rc);
      raised = true;
    }
  }
  int resident = 0;
  cudaError_t rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, GEMV_WARPS * 32, shared);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  const int pairs = params.gated ? params.n / 2 : (params.n + 1) / 2;
  const int needed = (pairs + GEMV_WARPS - 1) / GEMV_WARPS;
  const int blocks = max(1, min(needed, max(1, resident) * multiprocessors()));
  return rf_launch(kernel, dim3((unsigned)blocks), dim3(GEMV_WARPS * 32), shared, stream, params);
}

// Tuning read once from the environment, for benchmarks (bench/kernels/sweep.sh):
// RANKFLOW_GEMV_STAGED=1 sends one row of x down the staged path too; RANKFLOW_GEMV_UNROLL (4 or
// 8) sets the vectors per lane per row of the one-row kernel (4, the default, measured fastest on
// an H200: twice the resident warps of 8).
static int tuning(const char* name, int fallback) {
  const char* value = getenv(name);
  return value && *value ? atoi(value) : fallback;
}
static const int force_staged = tuning("RANKFLOW_GEMV_STAGED", 0);
static const int unroll = tuning("RANKFLOW_GEMV_UNROLL", 4);

template <typename T, int SLICES, int U>
static int gemv_one_launch(const GemvParams<T>& params, cudaStream_t stream) {
  const auto kernel = gemv_one_kernel<T, SLICES, U>;
  int resident = 0;
  cudaError_t rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, GEMV_WARPS * 32, 0);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  const int pairs = params.gated ? params.n / 2 : (params.n + 1) / 2;
  constexpr int PER_BLOCK = GEMV_WARPS / SLICES;
  const int groups = (pairs + PER_BLOCK - 1) / PER_BLOCK;
  const int blocks = max(1, min(groups, max(1, resident) * multiprocessors()));
  return rf_launch(kernel, dim3((unsigned)blocks), dim3(GEMV_WARPS * 32), 0, stream, params);
}

// Warps over one row of x at `u` vectors a lane: 1, 2, 4 or 8 (0 where 8 warps do not cover it).
template <typename T>
static int slices_of(int k, int u) {
  const int chunk = 32 * (16 / (int)sizeof(T)) * u;
  const int needed = (k + chunk - 1) / chunk;
  for (int s = 1; s <= GEMV_WARPS; s *= 2)
    if (s >= needed) return s;
  return 0;
}

template <typename T, int U>
static int gemv_one(int slices, const GemvParams<T>& params, cudaStream_t stream) {
  switch (slices) {
    case 1:
      return gemv_one_launch<T, 1, U>(params, stream);
    case 2:
      return gemv_one_launch<T, 2, U>(params, stream);
    case 4:
      return gemv_one_launch<T, 4, U>(params, stream);
    default:
      return gemv_one_launch<T, 8, U>(params, stream);
  }
}

template <typename T>
static int gemv(int m, const GemvParams<T>& params, cudaStream_t stream) {
  const int u = unroll == 4 ? 4 : 8;
  const int slices = slices_of<T>(params.k, u);
  if (m == 1 && slices > 0 && !force_staged) {
    return u == 4 ? gemv_one<T, 4>(slices, params, stream) : gemv_one<T, 8>(slices, params, stream);
  }
  switch (m) {
    case 1:
      return gemv_launch<T, 1>(params, stream);
    case 2:
      return gemv_launch<T, 2>(params, stream);
    case 3:
      return gemv_launch<T, 3>(params, stream);
    case 4:
      return gemv_launch<T, 4>(params, stream);
    case 5:
      return gemv_launch<T, 5>(params, stream);
    case 6:
      return gemv_launch<T, 6>(params, stream);
    case 7:
      return gemv_launch<T, 7>(params, stream);
    case 8:
      return gemv_launch<T, 8>(params, stream);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

extern "C" int rf_gemv_stages(int dtype, int m, int k) {
  const int elem = dtype == RF_F32 ? 4 : 2;
  return staged_bytes(m, k, elem) <= (size_t)GEMV_STAGE_LIMIT ? 1 : 0;
}

extern "C" int rf_gemv(int dtype, int m, const void* x, int ldx, const void* norm, float eps, const void* w,
                       const void* bias, const void* residual, void* out, int ld_out, int n, int k, int gated,
                       void* stream) {
  const int elements = dtype == RF_F32 ? 4 : 8;
  if (m < 1 || m > 8 || n < 1 || k % elements != 0 || ldx % elements != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (gated && (n % 2 != 0 || residual)) return static_cast<int>(cudaErrorInvalidValue);
  const int staged = rf_gemv_stages(dtype, m, k);
  if (norm && !staged) return static_cast<int>(cudaErrorInvalidValue);
  RF_DISPATCH(dtype, {
    const GemvParams<T> params = {(const T*)x, ldx,   (const T*)norm, eps, (const T*)w, (const T*)bias,
                                  (const T*)residual, (T*)out, ld_out, n, k, gated, staged};
    return gemv<T>(m, params, RF_STREAM(stream));
  });
  return 0;
}
