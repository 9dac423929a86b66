// Products with few rows (decode: one row per sequence): out[m, n] = x[m, :] · w[n, :] (+ bias[n])
// (+ residual[m, n]) for m ≤ 8. Reading the weight once at full bandwidth is all that matters:
// - each warp takes two weight rows at a time, every lane holding 4 (RANKFLOW_GEMV_UNROLL: or 8)
//   of their 16-byte vectors in flight, and reduces with shuffles; blocks stay resident and loop,
//   loading the next rows while they reduce;
// - the warp's first weight loads are issued before pdl_wait(), so under programmatic launch
//   they overlap the kernel before (weights are never written);
// - one row of x (batch-1 decode) lives in registers: a warp holds a slice of 32 lanes × 4
//   vectors of it (1024 bf16 elements), a row is split over up to 8 warps of a block, which add
//   up their parts in shared memory, and the RMSNorm that feeds the product is applied there;
// - several rows of x are staged once per block in shared memory, normalized on the way, and in
//   f16/bf16 go through tensor cores (mma.m16n8k16, below); f32 keeps an FMA kernel;
// - `gated` pairs row j with row j + n/2 and writes silu(x·w_j) · (x·w_{j+n/2}): the gate and up
//   projections of an MLP and their silu·mul in one launch.
// Every rounding matches the unfused kernels: the norm's output, the gate and up products and
// the silu are each rounded to the dtype, as the graph's separate ops would store them.
#include <stdlib.h>

#include <type_traits>

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
  RF_TRACE_START();

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

  // What only lane 0 of a pair's first slice adds to its two outputs: bias and residual, loaded a
  // group ahead so that their latency hides behind the products.
  const bool writer = slice == 0 && lane == 0;
  float bias_a = 0.f, bias_b = 0.f, res_a = 0.f, res_b = 0.f;
  const auto fetch_extra = [&](int group, bool weights, bool activations) {
    const int pair = group * PER_BLOCK + local;
    if (!writer || group >= groups || pair >= pairs) return;
    int a, b;
    rows(pair, &a, &b);
    if (weights && p.bias) {
      bias_a = to_f32(p.bias[a]);
      bias_b = to_f32(p.bias[b]);
    }
    if (activations && p.residual) {
      res_a = to_f32(p.residual[a]);
      res_b = to_f32(p.residual[b]);
    }
  };

  int group = blockIdx.x;
  load(group);
  // The norm's weights are constants too: loaded before the wait, they are not on the path from
  // the kernel before to this one's first products.
  uint4 gr[U];
  if (p.norm) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int kk = k0 + (u * 32 + lane) * V;
      if (kk < p.k) gr[u] = __ldg(reinterpret_cast<const uint4*>(p.norm + kk));
    }
  }
  fetch_extra(group, true, false);
  pdl_wait();
  RF_TRACE_WAITED();
  fetch_extra(group, false, true);
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
        unpack<T>(gr[u], g);
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
    if (writer && pair < pairs) {
      int a, b;
      rows(pair, &a, &b);
      if (p.bias) {
        va += bias_a;
        vb += bias_b;
      }
      if (p.gated) {
        const float gate = to_f32(from_f32<T>(silu(to_f32(from_f32<T>(va)))));
        p.out[pair] = from_f32<T>(gate * to_f32(from_f32<T>(vb)));
      } else {
        if (p.residual) va += res_a;
        p.out[a] = from_f32<T>(va);
        if (b != a) {
          if (p.residual) vb += res_b;
          p.out[b] = from_f32<T>(vb);
        }
      }
    }
    fetch_extra(group + gridDim.x, true, true);
    if (SLICES > 1) __syncthreads();
  }
  RF_TRACE_END(RF_TRACE_PRODUCT, ((p.k / 256) << 16) | (p.n / 16));
}

RF_TRACE_SETTER(gemv)

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

// Shared memory each block of a one-row product reserves, unused (rf_set_attention_room): the
// multiprocessors its blocks run on are then set up with room for decode attention's blocks to start
// there as the product's blocks end. Without it attention's blocks started only on multiprocessors
// the product's blocks had all left, as if a multiprocessor changed its split of L1 and shared
// memory only once empty (bench/RESULTS.md). Not reserved where fewer product blocks would fit.
static int room_bytes = 0;

template <typename T, int SLICES, int U>
static int gemv_one_launch(const GemvParams<T>& params, cudaStream_t stream) {
  const auto kernel = gemv_one_kernel<T, SLICES, U>;
  int resident = 0;
  cudaError_t rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, GEMV_WARPS * 32, 0);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  int room = room_bytes;
  if (room > 0) {
    if (room > 48 * 1024) rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, room);
    int fit = 0;
    if (rc == cudaSuccess) rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, GEMV_WARPS * 32, room);
    if (rc != cudaSuccess) return static_cast<int>(rc);
    if (fit < resident) room = 0;
  }
  const int pairs = params.gated ? params.n / 2 : (params.n + 1) / 2;
  constexpr int PER_BLOCK = GEMV_WARPS / SLICES;
  const int groups = (pairs + PER_BLOCK - 1) / PER_BLOCK;
  // As few rounds as the resident blocks allow, and as few blocks as take that many rounds: each
  // block does the same work, and the slots left free take the next kernel's blocks early.
  const int capacity = max(1, resident) * multiprocessors();
  const int rounds = (groups + capacity - 1) / capacity;
  const int blocks = max(1, (groups + rounds - 1) / rounds);
  return rf_launch(kernel, dim3((unsigned)blocks), dim3(GEMV_WARPS * 32), room, stream, params);
}

void rf_set_one_row_room(int bytes) { room_bytes = bytes; }

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

// Several rows of x (2 to 8: decode batches) on tensor cores: mma.m16n8k16 with 16 weight rows as
// its M and the rows of x as its N (8, zero where x has fewer rows), f32 accumulators. Lane l holds,
// of weight rows g = l / 4 and g + 8, the 16-byte vector at k = 32·b + 8·(l % 4) of each 32-wide
// k block b; the products' k order within a block is permuted alike in the weights and in x, so
// two mma steps use the vector as loaded. A warp's task is two 16-row tiles: 16 rows over two
// halves of its k range, or (gated) 16 gate rows and the 16 matching up rows. x is staged in
// shared memory (normalized there when a norm is folded) where it fits, rows MMA_PAD elements apart
// beyond k so that the two rows one load phase reads fall in different banks.
static const int MMA_U = 4;     // k blocks of 32 a lane has in flight per row
static const int MMA_PAD = 32;  // elements between staged rows of x beyond k

template <typename T, int SLICES>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 2) gemv_mma_kernel(const GemvParams<T> p, int m) {
  constexpr int PER_BLOCK = GEMV_WARPS / SLICES;
  extern __shared__ __align__(16) unsigned char mma_shared[];
  T* xs = reinterpret_cast<T*>(mma_shared);
  __shared__ float parts[GEMV_WARPS][8][32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int slice = warp % SLICES;
  const int local = warp / SLICES;
  const int g = lane >> 2;
  const int q = lane & 3;
  const int half = p.n / 2;
  const int tasks = p.gated ? (half + 15) / 16 : (p.n + 15) / 16;
  const int blocks_k = p.k / 32;
  const int k_begin = slice * blocks_k / SLICES;
  const int k_end = (slice + 1) * blocks_k / SLICES;
  // tile A runs over [k_begin, k_a_end) and tile B over [k_a_end - k_begin + b_shift ...): the
  // same blocks for gated tasks, the second half of the slice for plain ones
  const int steps = p.gated ? k_end - k_begin : (k_end - k_begin + 1) / 2;
  const int b_shift = p.gated ? 0 : steps;
  const int64_t ldx = p.staged ? p.k + MMA_PAD : p.ldx;
  const T* x = p.staged ? xs : p.x;

  uint4 w[4][MMA_U];  // rows g and g + 8 of tile A, then of tile B
  const auto row_of = [&](int task, int r) -> int {  // r: 0, 1 tile A (g, g + 8); 2, 3 tile B
    const int i = 16 * task + g + (r & 1) * 8;
    if (p.gated) return min(i, half - 1) + (r >= 2 ? half : 0);
    return min(i, p.n - 1);
  };
  const auto load = [&](int task, int step0) {
    if (task >= tasks) return;
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const T* row = p.w + (int64_t)row_of(task, r) * p.k;
      const int shift = r >= 2 ? b_shift : 0;
#pragma unroll
      for (int u = 0; u < MMA_U; u++) {
        const int b = k_begin + step0 + u + shift;
        if (step0 + u < steps && b < k_end) w[r][u] = load_stream(row + 32 * b + 8 * q);
      }
    }
  };

  int task = blockIdx.x * PER_BLOCK + local;
  const int stride = gridDim.x * PER_BLOCK;
  load(task, 0);
  pdl_wait();
  if (p.staged) {
    for (int r = 0; r < m; r++) {
      const T* row = p.x + (int64_t)r * p.ldx;
      float scale = 1.f;
      if (p.norm) {
        float sum = 0.f;
        for (int kk = threadIdx.x * 8; kk < p.k; kk += blockDim.x * 8) {
          float v[8];
          unpack<T>(*reinterpret_cast<const uint4*>(row + kk), v);
#pragma unroll
          for (int i = 0; i < 8; i++) sum += v[i] * v[i];
        }
        scale = rsqrtf(block_sum(sum) / (float)p.k + p.eps);
      }
      for (int kk = threadIdx.x * 8; kk < p.k; kk += blockDim.x * 8) {
        uint4 raw = *reinterpret_cast<const uint4*>(row + kk);
        if (p.norm) {
          float v[8], gw[8];
          unpack<T>(raw, v);
          unpack<T>(*reinterpret_cast<const uint4*>(p.norm + kk), gw);
          T* out = reinterpret_cast<T*>(&raw);
#pragma unroll
          for (int i = 0; i < 8; i++) out[i] = from_f32<T>(gw[i] * (v[i] * scale));
        }
        *reinterpret_cast<uint4*>(xs + r * ldx + kk) = raw;
      }
    }
    __syncthreads();
  }
  pdl_trigger();

  for (; task < tasks; task += stride) {
    float ca[4] = {0.f, 0.f, 0.f, 0.f}, cb[4] = {0.f, 0.f, 0.f, 0.f};
    for (int step0 = 0; step0 < steps; step0 += MMA_U) {
      if (step0 > 0) load(task, step0);
#pragma unroll
      for (int u = 0; u < MMA_U; u++) {
        if (step0 + u >= steps) break;
        const int ba = k_begin + step0 + u;
        const int bb = ba + b_shift;
        const uint4 zero = make_uint4(0, 0, 0, 0);
        const uint4 xa = g < m ? *reinterpret_cast<const uint4*>(x + g * ldx + 32 * ba + 8 * q) : zero;
        mma_16816(ca, w[0][u].x, w[1][u].x, w[0][u].y, w[1][u].y, xa.x, xa.y, T());
        mma_16816(ca, w[0][u].z, w[1][u].z, w[0][u].w, w[1][u].w, xa.z, xa.w, T());
        if (bb < k_end) {
          const uint4 xb =
              b_shift == 0 ? xa : (g < m ? *reinterpret_cast<const uint4*>(x + g * ldx + 32 * bb + 8 * q) : zero);
          mma_16816(cb, w[2][u].x, w[3][u].x, w[2][u].y, w[3][u].y, xb.x, xb.y, T());
          mma_16816(cb, w[2][u].z, w[3][u].z, w[2][u].w, w[3][u].w, xb.z, xb.w, T());
        }
      }
    }
    load(task + stride, 0);  // in flight during the reduction
    if (SLICES > 1) {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        parts[warp][i][lane] = ca[i];
        parts[warp][4 + i][lane] = cb[i];
      }
      __syncthreads();
      if (slice == 0) {
        for (int s = 1; s < SLICES; s++) {
#pragma unroll
          for (int i = 0; i < 4; i++) {
            ca[i] += parts[warp + s][i][lane];
            cb[i] += parts[warp + s][4 + i][lane];
          }
        }
      }
    }
    if (slice == 0) {
      // c[0], c[1]: row g, x rows 2q and 2q + 1; c[2], c[3]: row g + 8, the same x rows
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int r = 16 * task + g + (i >= 2 ? 8 : 0);
        const int token = 2 * q + (i & 1);
        if (token >= m) continue;
        const int64_t at = (int64_t)token * p.ld_out;
        if (p.gated) {
          if (r >= half) continue;
          float gate = ca[i], up = cb[i];
          if (p.bias) {
            gate += to_f32(p.bias[r]);
            up += to_f32(p.bias[r + half]);
          }
          const float s = to_f32(from_f32<T>(silu(to_f32(from_f32<T>(gate)))));
          p.out[at + r] = from_f32<T>(s * to_f32(from_f32<T>(up)));
        } else {
          if (r >= p.n) continue;
          float v = ca[i] + cb[i];
          if (p.bias) v += to_f32(p.bias[r]);
          if (p.residual) v += to_f32(p.residual[at + r]);
          p.out[at + r] = from_f32<T>(v);
        }
      }
    }
    if (SLICES > 1) __syncthreads();
  }
}

template <typename T, int SLICES>
static int gemv_mma_launch(const GemvParams<T>& params, int m, cudaStream_t stream) {
  const auto kernel = gemv_mma_kernel<T, SLICES>;
  const size_t shared = params.staged ? (size_t)m * (params.k + MMA_PAD) * sizeof(T) : 0;
  if (shared > 48 * 1024) {
    static bool raised = false;
    if (!raised) {
      const cudaError_t rc =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, GEMV_STAGE_LIMIT + 1024);
      if (rc != cudaSuccess) return static_cast<int>(rc);
      raised = true;
    }
  }
  int resident = 0;
  cudaError_t rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, GEMV_WARPS * 32, shared);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  const int tasks = params.gated ? (params.n / 2 + 15) / 16 : (params.n + 15) / 16;
  constexpr int PER_BLOCK = GEMV_WARPS / SLICES;
  const int needed = (tasks + PER_BLOCK - 1) / PER_BLOCK;
  const int blocks = max(1, min(needed, max(1, resident) * multiprocessors()));
  return rf_launch(kernel, dim3((unsigned)blocks), dim3(GEMV_WARPS * 32), shared, stream, params, m);
}

// Warps over k for `tasks` two-tile tasks: enough warps to fill the GPU, each tile with at least
// MMA_U blocks of 32 to stream.
static int mma_slices(int tasks, int k) {
  int slices = 1;
  while (slices < GEMV_WARPS && tasks * slices < 2048 && (k / 32) / (slices * 2) >= MMA_U) slices *= 2;
  return slices;
}

template <typename T>
static int gemv_mma(int m, GemvParams<T> params, cudaStream_t stream) {
  params.staged = (size_t)m * (params.k + MMA_PAD) * sizeof(T) <= (size_t)GEMV_STAGE_LIMIT + 1024 ? 1 : 0;
  const int tasks = params.gated ? (params.n / 2 + 15) / 16 : (params.n + 15) / 16;
  switch (mma_slices(tasks, params.k)) {
    case 1:
      return gemv_mma_launch<T, 1>(params, m, stream);
    case 2:
      return gemv_mma_launch<T, 2>(params, m, stream);
    case 4:
      return gemv_mma_launch<T, 4>(params, m, stream);
    default:
      return gemv_mma_launch<T, 8>(params, m, stream);
  }
}

template <typename T>
static int gemv(int m, const GemvParams<T>& params, cudaStream_t stream) {
  const int u = unroll == 4 ? 4 : 8;
  const int slices = slices_of<T>(params.k, u);
  if (m == 1 && slices > 0 && !force_staged) {
    return u == 4 ? gemv_one<T, 4>(slices, params, stream) : gemv_one<T, 8>(slices, params, stream);
  }
  if constexpr (!std::is_same<T, float>::value) {
    if (m > 1 && params.k % 32 == 0 && !force_staged) return gemv_mma<T>(m, params, stream);
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
