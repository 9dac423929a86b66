// Elementwise and data-movement kernels: activations, broadcasting add/mul, softmax, casts,
// row gathers (embedding lookup, picking each sequence's last row) and axis permutations.
#include "common.cuh"

__device__ __forceinline__ float apply_unary(int op, float x) {
  switch (op) {
    case RF_SILU:
      return silu(x);
    case RF_GELU_TANH:
      return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default:
      return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
  }
}

template <typename T>
__global__ void unary_kernel(int op, const T* x, int64_t ldx, T* out, int64_t rows, int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / width;
    const int64_t c = i - r * width;
    out[i] = from_f32<T>(apply_unary(op, to_f32(x[r * ldx + c])));
  }
}

// silu(a) · b over rows of `width`, V elements (16 bytes, or 1) a thread at a time; out is [rows, width].
template <typename T, int V>
__global__ void silu_mul_kernel(const T* a, int64_t lda, const T* b, int64_t ldb, T* out, int64_t rows,
                                int64_t width) {
  struct alignas(sizeof(T) * V) Pack {
    T v[V];
  };
  pdl_wait();
  pdl_trigger();
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * V; c < width;
         c += (int64_t)gridDim.x * blockDim.x * V) {
      const Pack pa = *reinterpret_cast<const Pack*>(a + r * lda + c);
      const Pack pb = *reinterpret_cast<const Pack*>(b + r * ldb + c);
      Pack po;
#pragma unroll
      for (int j = 0; j < V; j++) {
        // silu is rounded to the dtype before the product, as the graph's two ops would round it.
        const float gate = to_f32(from_f32<T>(silu(to_f32(pa.v[j]))));
        po.v[j] = from_f32<T>(gate * to_f32(pb.v[j]));
      }
      *reinterpret_cast<Pack*>(out + r * width + c) = po;
    }
  }
}

struct Dims4 {
  int64_t v[4];
};

template <typename T>
__global__ void binary_kernel(int op, const T* a, Dims4 as, const T* b, Dims4 bs, T* out, Dims4 shape) {
  const int64_t n = shape.v[0] * shape.v[1] * shape.v[2] * shape.v[3];
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t rest = i;
    int64_t ia = 0, ib = 0;
    for (int axis = 3; axis >= 0; axis--) {
      const int64_t index = rest % shape.v[axis];
      rest /= shape.v[axis];
      ia += index * as.v[axis];
      ib += index * bs.v[axis];
    }
    const float x = to_f32(a[ia]);
    const float y = to_f32(b[ib]);
    out[i] = from_f32<T>(op == RF_ADD ? x + y : x * y);
  }
}

template <typename T>
__global__ void softmax_kernel(const T* x, T* out, int64_t width) {
  const T* row = x + blockIdx.x * width;
  T* dst = out + blockIdx.x * width;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) m = fmaxf(m, to_f32(row[i]));
  m = block_max(m);
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) sum += expf(to_f32(row[i]) - m);
  sum = block_sum(sum);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = from_f32<T>(expf(to_f32(row[i]) - m) / sum);
}

template <typename From, typename To>
__global__ void cast_kernel(const From* x, To* out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    out[i] = from_f32<To>(to_f32(x[i]));
  }
}

// E is the unit a thread copies: the element, or 16 bytes where rows allow; a thread's loads are
// all issued before its stores (restrict: nothing aliases).
template <typename E>
__global__ void gather_rows_kernel(const E* __restrict__ table, int64_t width, int64_t ld_table,
                                   const int32_t* __restrict__ ids, E* __restrict__ out) {
  RF_TRACE_START();
  pdl_wait();
  RF_TRACE_WAITED();
  pdl_trigger();
  const E* src = table + (int64_t)ids[blockIdx.x] * ld_table;
  E* dst = out + (int64_t)blockIdx.x * width;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
  RF_TRACE_END(RF_TRACE_GATHER, 0);
}

RF_TRACE_SETTER(elementwise)

template <typename E>
__global__ void permute_kernel(const E* x, E* out, Dims4 out_shape, Dims4 in_strides) {
  const int64_t n = out_shape.v[0] * out_shape.v[1] * out_shape.v[2] * out_shape.v[3];
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t rest = i;
    int64_t source = 0;
    for (int axis = 3; axis >= 0; axis--) {
      const int64_t index = rest % out_shape.v[axis];
      rest /= out_shape.v[axis];
      source += index * in_strides.v[axis];
    }
    out[i] = x[source];
  }
}

static const int THREADS = 256;

extern "C" int rf_unary(int dtype, int op, const void* x, int ldx, void* out, int rows, int width,
                        void* stream) {
  if ((int64_t)rows * width <= 0) return 0;
  RF_DISPATCH(dtype, (unary_kernel<T><<<rf_blocks((int64_t)rows * width, THREADS), THREADS, 0, RF_STREAM(stream)>>>(
                         op, (const T*)x, ldx, (T*)out, rows, width)));
  return rf_launched();
}

extern "C" int rf_silu_mul(int dtype, const void* a, int lda, const void* b, int ldb, void* out,
                           int rows, int width, void* stream) {
  if ((int64_t)rows * width <= 0) return 0;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  RF_DISPATCH(dtype, {
    constexpr int V = 16 / sizeof(T);
    const bool packed = width % V == 0 && lda % V == 0 && ldb % V == 0 && aligned(a) && aligned(b) && aligned(out);
    const int per = packed ? V : 1;
    const dim3 grid(rf_blocks((int64_t)width / per, THREADS), (unsigned)(rows < 65535 ? rows : 65535));
    const auto kernel = packed ? silu_mul_kernel<T, V> : silu_mul_kernel<T, 1>;
    return rf_launch(kernel, grid, dim3(THREADS), 0, RF_STREAM(stream), (const T*)a, (int64_t)lda, (const T*)b,
                     (int64_t)ldb, (T*)out, (int64_t)rows, (int64_t)width);
  });
  return 0;
}

extern "C" int rf_binary(int dtype, int op, const void* a, const int64_t* a_strides, const void* b,
                         const int64_t* b_strides, void* out, const int64_t* shape, void* stream) {
  Dims4 as, bs, s;
  int64_t n = 1;
  for (int i = 0; i < 4; i++) {
    as.v[i] = a_strides[i];
    bs.v[i] = b_strides[i];
    s.v[i] = shape[i];
    n *= shape[i];
  }
  if (n <= 0) return 0;
  RF_DISPATCH(dtype, (binary_kernel<T><<<rf_blocks(n, THREADS), THREADS, 0, RF_STREAM(stream)>>>(
                         op, (const T*)a, as, (const T*)b, bs, (T*)out, s)));
  return rf_launched();
}

extern "C" int rf_softmax(int dtype, const void* x, void* out, int rows, int width, void* stream) {
  if (rows <= 0) return 0;
  RF_DISPATCH(dtype, (softmax_kernel<T><<<(unsigned)rows, THREADS, 0, RF_STREAM(stream)>>>((const T*)x, (T*)out,
                                                                                          width)));
  return rf_launched();
}

template <typename From>
static int cast_to(int to, const From* x, void* out, int64_t n, cudaStream_t stream) {
  const unsigned blocks = rf_blocks(n, THREADS);
  switch (to) {
    case RF_F32:
      cast_kernel<From, float><<<blocks, THREADS, 0, stream>>>(x, (float*)out, n);
      break;
    case RF_F16:
      cast_kernel<From, __half><<<blocks, THREADS, 0, stream>>>(x, (__half*)out, n);
      break;
    case RF_BF16:
      cast_kernel<From, __nv_bfloat16><<<blocks, THREADS, 0, stream>>>(x, (__nv_bfloat16*)out, n);
      break;
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
  return rf_launched();
}

extern "C" int rf_cast(int from, int to, const void* x, void* out, int n, void* stream) {
  if (n <= 0) return 0;
  RF_DISPATCH(from, return cast_to<T>(to, (const T*)x, out, n, RF_STREAM(stream)));
  return 0;
}

template <typename E>
static int gather_launch(const void* table, int64_t width, int64_t ld_table, const int32_t* ids, int rows, void* out,
                         cudaStream_t stream) {
  const int threads = width >= 256 ? 256 : 64;
  return rf_launch(gather_rows_kernel<E>, dim3((unsigned)rows), dim3(threads), 0, stream, (const E*)table, width,
                   ld_table, ids, (E*)out);
}

extern "C" int rf_gather_rows(int elem_bytes, const void* table, int width, int ld_table,
                              const int32_t* ids, int rows, void* out, void* stream) {
  if (rows <= 0) return 0;
  const cudaStream_t s = RF_STREAM(stream);
  const bool whole = ((int64_t)width * elem_bytes) % 16 == 0 && ((int64_t)ld_table * elem_bytes) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(table) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (whole && (elem_bytes == 2 || elem_bytes == 4)) {
    const int per = 16 / elem_bytes;
    return gather_launch<uint4>(table, width / per, ld_table / per, ids, rows, out, s);
  }
  switch (elem_bytes) {
    case 2:
      return gather_launch<uint16_t>(table, width, ld_table, ids, rows, out, s);
    case 4:
      return gather_launch<uint32_t>(table, width, ld_table, ids, rows, out, s);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

__global__ void decode_advance_kernel(int32_t* ids_in, int32_t* pos, const int32_t* ids, int rows, int32_t* history,
                                      int32_t* count) {
  pdl_wait();
  const int64_t n = *count;
  __syncthreads();  // every thread has read the count before thread 0 moves it
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const int32_t id = ids[r];
    ids_in[r] = id;
    pos[r] += 1;
    history[n * rows + r] = id;
  }
  if (threadIdx.x == 0) *count = (int32_t)n + 1;
  pdl_trigger();
}

extern "C" int rf_decode_advance(int32_t* ids_in, int32_t* pos, const int32_t* ids, int rows, int32_t* history,
                                 int32_t* count, void* stream) {
  if (rows <= 0 || rows > 1024) return static_cast<int>(cudaErrorInvalidValue);
  return rf_launch(decode_advance_kernel, dim3(1), dim3((unsigned)((rows + 31) / 32 * 32)), 0, RF_STREAM(stream),
                   ids_in, pos, ids, rows, history, count);
}

extern "C" int rf_permute(int elem_bytes, const void* x, void* out, const int64_t* shape, const int64_t* perm,
                          void* stream) {
  int64_t strides[4];
  strides[3] = 1;
  for (int i = 2; i >= 0; i--) strides[i] = strides[i + 1] * shape[i + 1];
  Dims4 out_shape, in_strides;
  int64_t n = 1;
  for (int i = 0; i < 4; i++) {
    if (perm[i] < 0 || perm[i] > 3) return static_cast<int>(cudaErrorInvalidValue);
    out_shape.v[i] = shape[perm[i]];
    in_strides.v[i] = strides[perm[i]];
    n *= shape[i];
  }
  if (n <= 0) return 0;
  const unsigned blocks = rf_blocks(n, THREADS);
  switch (elem_bytes) {
    case 2:
      permute_kernel<uint16_t><<<blocks, THREADS, 0, RF_STREAM(stream)>>>((const uint16_t*)x, (uint16_t*)out,
                                                                         out_shape, in_strides);
      break;
    case 4:
      permute_kernel<uint32_t><<<blocks, THREADS, 0, RF_STREAM(stream)>>>((const uint32_t*)x, (uint32_t*)out,
                                                                         out_shape, in_strides);
      break;
    case 8:
      permute_kernel<uint64_t><<<blocks, THREADS, 0, RF_STREAM(stream)>>>((const uint64_t*)x, (uint64_t*)out,
                                                                         out_shape, in_strides);
      break;
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
  return rf_launched();
}
