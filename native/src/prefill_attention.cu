// Flash-style causal attention on tensor cores for runs of many tokens (prompts): a block takes 64
// query rows of one head and walks the keys 64 at a time. S = Q·Kᵀ and O += P·V are WMMA products
// (f16/bf16 in, f32 accumulate); the softmax is online (running max and sum per row). The f32
// output accumulator lives in shared memory, so that rescaling a row needs no knowledge of the
// fragments' layout. Each warp owns 16 query rows: their scores, softmax and output strip, so the
// warps only meet at the K/V tile loads.
// Rows of one tile may belong to different slots (several prompts in one run): the tile walks each
// run of one slot in turn, the other rows masked out of it.
#include <mma.h>

#include "common.cuh"
#include "prefill_attention.cuh"

using namespace nvcuda;

namespace {

const int ROWS = 64;      // query rows per block
const int KEYS = 64;      // keys per tile
const int WARPS = 4;      // each owns ROWS / WARPS = 16 rows
const int THREADS = WARPS * 32;
const int PAD = 8;        // elements of padding per 16-bit row (keeps 32-byte alignment, spreads banks)
const int FPAD = 4;       // floats of padding per f32 row

template <int HD>
struct Layout {
  static constexpr int q = 0;                                        // T [ROWS][HD + PAD]
  static constexpr int k = q + ROWS * (HD + PAD) * 2;                // T [KEYS][HD + PAD]
  static constexpr int v = k + KEYS * (HD + PAD) * 2;                // T [KEYS][HD + PAD]
  static constexpr int p = v + KEYS * (HD + PAD) * 2;                // T [ROWS][KEYS + PAD]
  static constexpr int s = p + ROWS * (KEYS + PAD) * 2;              // f32 [ROWS][KEYS + FPAD]
  static constexpr int o = s + ROWS * (KEYS + FPAD) * 4;             // f32 [ROWS][HD + FPAD]
  static constexpr int rows = o + ROWS * (HD + FPAD) * 4;            // per row: max, sum, position, slot
  static constexpr int bytes = rows + ROWS * 4 * 4;
};

// Copies `count` rows of HD elements (row r at src + r * src_stride) into shared rows of HD + PAD,
// zeros for rows from `count` on, so that masked keys never bring NaN bit patterns into a product.
template <typename T, int HD>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t src_stride, int count) {
  constexpr int V = 8;  // 16-bit elements per 16-byte load
  constexpr int PER_ROW = HD / V;
  for (int unit = threadIdx.x; unit < ROWS * PER_ROW; unit += THREADS) {
    const int r = unit / PER_ROW;
    const int d = (unit - r * PER_ROW) * V;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < count) value = __ldg(reinterpret_cast<const uint4*>(src + r * src_stride + d));
    *reinterpret_cast<uint4*>(dst + r * (HD + PAD) + d) = value;
  }
}

template <typename T, int HD>
__global__ void __launch_bounds__(THREADS, 1) prefill_attention_kernel(const T* q, T* out, const T* k_cache,
                                                                    const T* v_cache, const int32_t* slots,
                                                                    const int32_t* cache_pos, int tokens,
                                                                    int heads, int kv_heads, int64_t max_len,
                                                                    float scale_log2) {
  using L = Layout<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem + L::q);
  T* ks = reinterpret_cast<T*>(smem + L::k);
  T* vs = reinterpret_cast<T*>(smem + L::v);
  T* ps = reinterpret_cast<T*>(smem + L::p);
  float* ss = reinterpret_cast<float*>(smem + L::s);
  float* os = reinterpret_cast<float*>(smem + L::o);
  float* row_max = reinterpret_cast<float*>(smem + L::rows);
  float* row_sum = row_max + ROWS;
  int* row_pos = reinterpret_cast<int*>(row_sum + ROWS);
  int* row_slot = row_pos + ROWS;

  // The last tiles have the most keys: start them first.
  const int tile = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y;
  const int kvh = h / (heads / kv_heads);
  const int64_t first_token = (int64_t)tile * ROWS;
  const int count = (int)min((int64_t)ROWS, tokens - first_token);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int strip = warp * 16;  // this warp's first row

  load_tile<T, HD>(qs, q + (first_token * heads + h) * HD, (int64_t)heads * HD, count);
  for (int i = threadIdx.x; i < ROWS * (HD + FPAD); i += THREADS) os[i] = 0.f;
  for (int r = threadIdx.x; r < ROWS; r += THREADS) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
    row_pos[r] = r < count ? cache_pos[first_token + r] : -1;
    row_slot[r] = r < count ? slots[first_token + r] : -1;
  }
  __syncthreads();

  for (int run = 0; run < count;) {
    const int slot = row_slot[run];
    int end = run + 1;
    int last_pos = row_pos[run];
    while (end < count && row_slot[end] == slot) last_pos = max(last_pos, row_pos[end++]);
    const T* k_rows = k_cache + ((int64_t)slot * kv_heads + kvh) * max_len * HD;
    const T* v_rows = v_cache + ((int64_t)slot * kv_heads + kvh) * max_len * HD;
    for (int key0 = 0; key0 <= last_pos; key0 += KEYS) {
      const int keys = min(KEYS, last_pos + 1 - key0);
      __syncthreads();  // every warp is done with the previous K/V tile
      load_tile<T, HD>(ks, k_rows + (int64_t)key0 * HD, HD, keys);
      load_tile<T, HD>(vs, v_rows + (int64_t)key0 * HD, HD, keys);
      __syncthreads();

      // S strip = Q strip · Kᵀ
      for (int j = 0; j < KEYS / 16; j++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
          wmma::load_matrix_sync(a, qs + strip * (HD + PAD) + kk * 16, HD + PAD);
          wmma::load_matrix_sync(b, ks + j * 16 * (HD + PAD) + kk * 16, HD + PAD);
          wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(ss + strip * (KEYS + FPAD) + j * 16, acc, KEYS + FPAD, wmma::mem_row_major);
      }
      __syncwarp();

      // Online softmax of the strip's rows; P in the dtype, O's rows rescaled.
      for (int i = 0; i < 16; i++) {
        const int r = strip + i;
        const bool active = r >= run && r < end;
        const int pos = row_pos[r];
        const int c0 = lane;
        const int c1 = lane + 32;
        const float s0 = active && c0 < keys && key0 + c0 <= pos ? ss[r * (KEYS + FPAD) + c0] * scale_log2 : -INFINITY;
        const float s1 = active && c1 < keys && key0 + c1 <= pos ? ss[r * (KEYS + FPAD) + c1] * scale_log2 : -INFINITY;
        const float old_max = row_max[r];
        const float new_max = fmaxf(old_max, warp_max(fmaxf(s0, s1)));
        const float p0 = new_max == -INFINITY ? 0.f : exp2f(s0 - new_max);
        const float p1 = new_max == -INFINITY ? 0.f : exp2f(s1 - new_max);
        ps[r * (KEYS + PAD) + c0] = from_f32<T>(p0);
        ps[r * (KEYS + PAD) + c1] = from_f32<T>(p1);
        float sum = p0 + p1;
        sum = warp_sum(sum);
        const float rescale = new_max == -INFINITY ? 1.f : exp2f(old_max - new_max);
        if (rescale != 1.f) {
          for (int d = lane; d < HD; d += 32) os[r * (HD + FPAD) + d] *= rescale;
        }
        __syncwarp();
        if (lane == 0) {
          row_max[r] = new_max;
          row_sum[r] = row_sum[r] * rescale + sum;
        }
      }
      __syncwarp();

      // O strip += P strip · V
#pragma unroll
      for (int dt = 0; dt < HD / 16; dt++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        float* o_tile = os + strip * (HD + FPAD) + dt * 16;
        wmma::load_matrix_sync(acc, o_tile, HD + FPAD, wmma::mem_row_major);
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
          wmma::load_matrix_sync(a, ps + strip * (KEYS + PAD) + kk * 16, KEYS + PAD);
          wmma::load_matrix_sync(b, vs + kk * 16 * (HD + PAD) + dt * 16, HD + PAD);
          wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(o_tile, acc, HD + FPAD, wmma::mem_row_major);
      }
      __syncwarp();
    }
    run = end;
  }

  // out[token, h, :] = O / sum, each warp its own rows
  for (int i = 0; i < 16; i++) {
    const int r = strip + i;
    if (r >= count) break;
    const float inverse = 1.f / row_sum[r];
    T* dst = out + ((first_token + r) * heads + h) * HD;
    for (int d = lane; d < HD; d += 32) dst[d] = from_f32<T>(os[r * (HD + FPAD) + d] * inverse);
  }
}

template <typename T, int HD>
int launch(const void* q, void* out, const void* k_cache, const void* v_cache, const int32_t* slots,
           const int32_t* cache_pos, int tokens, int heads, int kv_heads, int max_len, float scale,
           cudaStream_t stream) {
  const int bytes = Layout<HD>::bytes;
  static bool configured = false;  // the opt-in above 48 KiB, once per kernel
  if (!configured) {
    const cudaError_t rc = cudaFuncSetAttribute(prefill_attention_kernel<T, HD>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (rc != cudaSuccess) return static_cast<int>(rc);
    configured = true;
  }
  const dim3 grid((unsigned)((tokens + ROWS - 1) / ROWS), (unsigned)heads);
  // exp2 of scaled scores: log2(e) folded into the scale
  prefill_attention_kernel<T, HD><<<grid, THREADS, bytes, stream>>>(
      (const T*)q, (T*)out, (const T*)k_cache, (const T*)v_cache, slots, cache_pos, tokens, heads, kv_heads,
      max_len, scale * 1.4426950408889634f);
  return rf_launched();
}

template <typename T>
int launch_for_head_dim(int head_dim, const void* q, void* out, const void* k_cache, const void* v_cache,
                        const int32_t* slots, const int32_t* cache_pos, int tokens, int heads, int kv_heads,
                        int max_len, float scale, cudaStream_t stream) {
  switch (head_dim) {
    case 32:
      return launch<T, 32>(q, out, k_cache, v_cache, slots, cache_pos, tokens, heads, kv_heads, max_len, scale,
                           stream);
    case 64:
      return launch<T, 64>(q, out, k_cache, v_cache, slots, cache_pos, tokens, heads, kv_heads, max_len, scale,
                           stream);
    case 128:
      return launch<T, 128>(q, out, k_cache, v_cache, slots, cache_pos, tokens, heads, kv_heads, max_len, scale,
                            stream);
    default:
      return launch<T, 16>(q, out, k_cache, v_cache, slots, cache_pos, tokens, heads, kv_heads, max_len, scale,
                           stream);
  }
}

}  // namespace

bool tensor_core_prefill_fits(int dtype, int head_dim) {
  return (dtype == RF_F16 || dtype == RF_BF16) &&
         (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128);
}

int tensor_core_prefill(int dtype, const void* q, void* out, const void* k_cache, const void* v_cache,
                        const int32_t* slots, const int32_t* cache_pos, int tokens, int heads, int kv_heads,
                        int head_dim, int max_len, float scale, cudaStream_t stream) {
  if (dtype == RF_F16) {
    return launch_for_head_dim<__half>(head_dim, q, out, k_cache, v_cache, slots, cache_pos, tokens, heads,
                                       kv_heads, max_len, scale, stream);
  }
  return launch_for_head_dim<__nv_bfloat16>(head_dim, q, out, k_cache, v_cache, slots, cache_pos, tokens, heads,
                                            kv_heads, max_len, scale, stream);
}
