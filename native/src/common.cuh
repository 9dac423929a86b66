// Shared helpers of the kernels: f32 conversion of every storage dtype, dtype dispatch and the
// launch-error convention (each C entry point returns cudaGetLastError after its launch).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "rankflow_kernels.h"

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

#define RF_STREAM(s) (reinterpret_cast<cudaStream_t>(s))

__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

// Programmatic dependent launch (sm_90): a kernel launched with rf_launch may start while the
// kernel before it on the stream is still running. It must call pdl_wait() before it reads what
// earlier kernels wrote or writes anything; what it does before (loading weights, which nothing
// writes) overlaps the earlier kernel's tail. pdl_trigger() lets the next kernel start early.
// Both are no-ops where the kernel was launched plainly or the GPU is older.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// A timeline of blocks, for diagnosis only (a build with RF_TRACE: cmake -DRANKFLOW_TRACE=ON; see
// bench/trace_step.ts). Thread 0 of each block of a traced kernel appends a record to the
// buffer rf_trace_set names (u64 0 counts records; records of 12 u64 from u64 8): when the block started,
// when its wait returned, when it ended (%globaltimer, ns), a tag (kind << 56 | extra << 32 |
// blocks in the grid << 16 | block) and 8 marks: 0 to 6 times within the block (0 where unused),
// 7 the multiprocessor it ran on (%smid).
enum { RF_TRACE_PRODUCT = 1, RF_TRACE_ATTENTION, RF_TRACE_MERGE, RF_TRACE_IDLE, RF_TRACE_GATHER, RF_TRACE_ARGMAX };
#ifdef RF_TRACE
static __device__ unsigned long long* rf_trace_buf;
__device__ __forceinline__ unsigned long long rf_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned long long rf_smid() {
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}
#define RF_TRACE_START()                         \
  const unsigned long long rf_t0 = rf_now(); \
  unsigned long long rf_t1 = 0, rf_m[8] = {0, 0, 0, 0, 0, 0, 0, rf_smid()}
#define RF_TRACE_WAITED() rf_t1 = rf_now()
#define RF_TRACE_MARK(i) rf_m[i] = rf_now()
// Every thread of the block must reach it.
#define RF_TRACE_END(kind, extra)                                                                         \
  do {                                                                                                    \
    __syncthreads();                                                                                      \
    if (threadIdx.x == 0 && rf_trace_buf) {                                                               \
      const unsigned long long end = rf_now();                                                            \
      unsigned long long* e = rf_trace_buf + 8 + 12 * atomicAdd(rf_trace_buf, 1ull);                       \
      const unsigned grid = gridDim.x * gridDim.y * gridDim.z;                                            \
      const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);                  \
      e[0] = rf_t0;                                                                                       \
      e[1] = rf_t1;                                                                                       \
      e[2] = end;                                                                                         \
      e[3] = ((unsigned long long)(kind) << 56) | ((unsigned long long)((extra) & 0xffffff) << 32) |      \
             ((unsigned long long)(grid & 0xffff) << 16) | (b & 0xffff);                                  \
      for (int m = 0; m < 8; m++) e[4 + m] = rf_m[m];                                                     \
    }                                                                                                     \
  } while (0)
// Defines rf_trace_set_<name>, which points this file's kernels at a buffer.
#define RF_TRACE_SETTER(name)                                                  \
  int rf_trace_set_##name(void* buf) {                                         \
    return static_cast<int>(cudaMemcpyToSymbol(rf_trace_buf, &buf, sizeof(buf))); \
  }
#else
#define RF_TRACE_START() (void)0
#define RF_TRACE_WAITED() (void)0
#define RF_TRACE_MARK(i) (void)0
#define RF_TRACE_END(kind, extra) (void)0
#define RF_TRACE_SETTER(name)
#endif

// Set by rf_set_programmatic_launch (runtime.cu); effective only on compute capability 9.0 and up.
extern int rf_programmatic;

// Launches `kernel` with `shared` bytes of dynamic shared memory, in clusters of `cluster` blocks
// along x (0: none), with programmatic stream serialization when it is switched on. Only kernels
// that call pdl_wait() before touching activations may be launched through here.
template <typename... Params, typename... Args>
static inline int rf_launch_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                                    unsigned cluster, cudaStream_t stream, Args... args) {
  cudaLaunchAttribute attributes[2];
  unsigned count = 0;
  if (rf_programmatic) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count].val.clusterDim.x = cluster;
    attributes[count].val.clusterDim.y = 1;
    attributes[count++].val.clusterDim.z = 1;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = count ? attributes : nullptr;
  config.numAttrs = count;
  return static_cast<int>(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...));
}

template <typename... Params, typename... Args>
static inline int rf_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                            Args... args) {
  return rf_launch_cluster(kernel, grid, block, shared, 0, stream, args...);
}

// Runs `body` with `T` bound to the element type of dtype code `dtype`.
#define RF_DISPATCH(dtype, ...)                     \
  switch (dtype) {                                   \
    case RF_F32: {                                   \
      using T = float;                               \
      __VA_ARGS__;                                   \
      break;                                         \
    }                                                \
    case RF_F16: {                                   \
      using T = __half;                              \
      __VA_ARGS__;                                   \
      break;                                         \
    }                                                \
    case RF_BF16: {                                  \
      using T = __nv_bfloat16;                       \
      __VA_ARGS__;                                   \
      break;                                         \
    }                                                \
    default:                                         \
      return static_cast<int>(cudaErrorInvalidValue); \
  }

static inline int rf_launched() { return static_cast<int>(cudaGetLastError()); }

static inline unsigned rf_blocks(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 64 ? 65535 * 64 : blocks));
}

// c (16 × 8, f32) += a (16 × 16) · b (16 × 8) on tensor cores, in the register layout of
// mma.m16n8k16: the last argument picks the input type.
#define RF_MMA_16816(type)                                                                                  \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." type "." type                                      \
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                      \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                           \
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
__device__ __forceinline__ void mma_16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                          uint32_t b1, __nv_bfloat16) {
  RF_MMA_16816("bf16");
}
__device__ __forceinline__ void mma_16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                          uint32_t b1, __half) {
  RF_MMA_16816("f16");
}
#undef RF_MMA_16816

// q · k over head_dim elements: q in f32 (already scaled), k in the dtype, even and odd elements in
// two sums.
template <typename T>
__device__ __forceinline__ float dot_row(const float* q, const T* k, int head_dim) {
  float even = 0.f, odd = 0.f;
  for (int d = 0; d < head_dim; d += 2) {
    even += q[d] * to_f32(k[d]);
    odd += q[d + 1] * to_f32(k[d + 1]);
  }
  return even + odd;
}

// ldmatrix: 8×8 matrices of 16-bit elements from shared memory, rows 16-byte aligned. Lanes 0-7
// give the rows of the first matrix, 8-15 of the second, and so on; lane l receives, of each matrix
// (transposed with trans), elements 2 (l % 4) and 2 (l % 4) + 1 of row l / 4.
__device__ __forceinline__ void ldsm_x4(const void* row, uint32_t* r, bool trans = false) {
  const unsigned at = (unsigned)__cvta_generic_to_shared(row);
  if (trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
  }
}

__device__ __forceinline__ void ldsm_x2(const void* row, uint32_t* r) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"((unsigned)__cvta_generic_to_shared(row)));
}

// 16-byte copies global → shared that bypass registers (zero-filled where `valid` is false).
__device__ __forceinline__ void copy_async(void* dst, const void* src, bool valid) {
  const unsigned to = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(to), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void copies_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void copies_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory"); }

// Copies `keys` contiguous rows of head_dim elements (at most ROWS × MAX_DIM in all) into shared
// rows `row_stride` apart, in two halves: fetch_rows issues a thread's 16-byte loads into `held`
// (all in flight together), put_rows stores them. row_stride is even, so rows are 4-byte aligned
// and the 16 bytes go as four words. load_rows is the two in a row.
template <typename T, int ROWS, int MAX_DIM, int THREADS>
struct RowUnits {
  static constexpr int COUNT = ROWS * MAX_DIM / (16 / sizeof(T)) / THREADS;  // 16-byte units a thread holds
};

template <typename T, int ROWS, int MAX_DIM, int THREADS>
__device__ __forceinline__ void fetch_rows(const T* src, uint4 (&held)[RowUnits<T, ROWS, MAX_DIM, THREADS>::COUNT],
                                           int keys, int head_dim) {
  const int units = keys * (head_dim / (16 / (int)sizeof(T)));
#pragma unroll
  for (int p = 0; p < RowUnits<T, ROWS, MAX_DIM, THREADS>::COUNT; p++) {
    const int unit = threadIdx.x + p * THREADS;
    if (unit < units) held[p] = __ldg(reinterpret_cast<const uint4*>(src) + unit);
  }
}

template <typename T, int ROWS, int MAX_DIM, int THREADS>
__device__ __forceinline__ void put_rows(const uint4 (&held)[RowUnits<T, ROWS, MAX_DIM, THREADS>::COUNT], T* rows,
                                         int keys, int head_dim, int row_stride) {
  constexpr int V = 16 / sizeof(T);
  const int per_row = head_dim / V;
  const int units = keys * per_row;
#pragma unroll
  for (int p = 0; p < RowUnits<T, ROWS, MAX_DIM, THREADS>::COUNT; p++) {
    const int unit = threadIdx.x + p * THREADS;
    if (unit < units) {
      const int j = unit / per_row;
      const int d = (unit - j * per_row) * V;
      uint32_t* dst = reinterpret_cast<uint32_t*>(rows + j * row_stride + d);
      dst[0] = held[p].x;
      dst[1] = held[p].y;
      dst[2] = held[p].z;
      dst[3] = held[p].w;
    }
  }
}

template <typename T, int ROWS, int MAX_DIM, int THREADS>
__device__ __forceinline__ void load_rows(const T* src, T* rows, int keys, int head_dim, int row_stride) {
  uint4 held[RowUnits<T, ROWS, MAX_DIM, THREADS>::COUNT];
  fetch_rows<T, ROWS, MAX_DIM, THREADS>(src, held, keys, head_dim);
  put_rows<T, ROWS, MAX_DIM, THREADS>(held, rows, keys, head_dim, row_stride);
}

// The same rows through cp.async, past the registers (row_stride a multiple of 16 bytes): the
// copies are queued, and land once the thread waits for them (copies_wait) and the block meets.
template <typename T, int THREADS>
__device__ __forceinline__ void copy_rows_async(const T* src, T* rows, int keys, int head_dim, int row_stride) {
  constexpr int V = 16 / sizeof(T);
  const int per_row = head_dim / V;
  for (int unit = threadIdx.x; unit < keys * per_row; unit += THREADS) {
    const int j = unit / per_row;
    copy_async(rows + j * row_stride + (unit - j * per_row) * V, src + unit * V, true);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The largest of a shared row's n values, over the lanes of a warp; every lane gets it.
__device__ __forceinline__ float warp_row_max(const float* row, int n, int lane) {
  float m = -INFINITY;
  for (int j = lane; j < n; j += 32) m = fmaxf(m, row[j]);
  return warp_max(m);
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  v = warp_sum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float x = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.f;
    x = warp_sum(x);
    if (lane == 0) total = x;
  }
  __syncthreads();
  float result = total;
  __syncthreads();
  return result;
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  v = warp_max(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float x = lane < (int)(blockDim.x >> 5) ? partial[lane] : -INFINITY;
    x = warp_max(x);
    if (lane == 0) total = x;
  }
  __syncthreads();
  float result = total;
  __syncthreads();
  return result;
}
