// Flash-style causal attention on tensor cores for runs of many tokens (prompts): a block takes 64
// query rows of one head and walks the keys 64 at a time. S = Q·Kᵀ and O += P·V are mma.m16n8k16
// products (f16/bf16 in, f32 accumulate) on fragments held in registers; the softmax is online
// (running max and sum per row, over the quad of lanes that holds a row). Each warp owns 16 query
// rows, so the warps only meet at the K/V tiles, which are copied a tile ahead.
// Rows of one tile may belong to different slots (several prompts in one run): the tile walks each
// run of one slot in turn, the other rows masked out of it.
#include "common.cuh"
#include "prefill_attention.cuh"

namespace {

const int ROWS = 64;      // query rows per block
const int KEYS = 64;      // keys per tile
const int WARPS = 4;      // each owns ROWS / WARPS = 16 rows
const int THREADS = WARPS * 32;
const int PAD = 8;        // elements of padding per 16-bit row (keeps 32-byte alignment, spreads banks)

template <int HD>
struct Layout {
  // q T [ROWS][HD + PAD], two stages of K and V T [KEYS][HD + PAD], per row: position, slot
  static constexpr int bytes = (ROWS + 4 * KEYS) * (HD + PAD) * 2 + ROWS * 2 * 4;
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

// Queues the copy of `count` rows of HD elements (row r at src + r * HD) into shared rows of
// HD + PAD, zeros from row `count` on, so that masked keys never bring NaN bit patterns into a product.
template <typename T, int HD>
__device__ __forceinline__ void queue_tile(T* dst, const T* src, int count) {
  constexpr int V = 8;  // 16-bit elements per 16-byte copy
  constexpr int PER_ROW = HD / V;
  for (int unit = threadIdx.x; unit < KEYS * PER_ROW; unit += THREADS) {
    const int r = unit / PER_ROW;
    const int d = (unit - r * PER_ROW) * V;
    copy_async(dst + r * (HD + PAD) + d, src + (r < count ? r : 0) * HD + d, r < count);
  }
}

__device__ __forceinline__ uint32_t shared_word(const void* p) { return *reinterpret_cast<const uint32_t*>(p); }

template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  const __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A block: 64 query rows of one head; warp w owns rows 16w .. 16w + 15 and keeps their q, scores
// and output in registers, in the layout of mma.m16n8k16 (lane l: rows l / 4 and l / 4 + 8, columns
// 2 (l % 4) and one more of each 8). Key and value tiles are double-buffered in shared memory,
// the next one copied (cp.async) while the warps work on this one.
template <typename T, int HD>
__global__ void __launch_bounds__(THREADS, 1) prefill_attention_kernel(const T* q, T* out, const T* k_cache,
                                                                    const T* v_cache, const int32_t* slots,
                                                                    const int32_t* cache_pos, int tokens,
                                                                    int heads, int kv_heads, int64_t max_len,
                                                                    float scale_log2) {
  constexpr int ROW = HD + PAD;  // elements per shared row
  constexpr int KT = HD / 16;    // k steps of q · k
  constexpr int NT = HD / 8;     // 8-wide column tiles of the output
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* tiles = qs + ROWS * ROW;  // per stage: K [KEYS][ROW], then V [KEYS][ROW]
  int* row_pos = reinterpret_cast<int*>(tiles + 4 * KEYS * ROW);
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
  const int g = lane >> 2;      // this lane's rows: strip + g and strip + g + 8
  const int c = (lane & 3) * 2;  // and its first column of each 8

  load_tile<T, HD>(qs, q + (first_token * heads + h) * HD, (int64_t)heads * HD, count);
  for (int r = threadIdx.x; r < ROWS; r += THREADS) {
    row_pos[r] = r < count ? cache_pos[first_token + r] : -1;
    row_slot[r] = r < count ? slots[first_token + r] : -1;
  }
  __syncthreads();
  uint32_t qf[KT][4];
#pragma unroll
  for (int kk = 0; kk < KT; kk++) {
    const T* q0 = qs + (strip + g) * ROW + kk * 16 + c;
    qf[kk][0] = shared_word(q0);
    qf[kk][1] = shared_word(q0 + 8 * ROW);
    qf[kk][2] = shared_word(q0 + 8);
    qf[kk][3] = shared_word(q0 + 8 * ROW + 8);
  }
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const int pos0 = row_pos[strip + g], pos1 = row_pos[strip + g + 8];

  for (int run = 0; run < count;) {
    const int slot = row_slot[run];
    int end = run + 1;
    int last_pos = row_pos[run];
    while (end < count && row_slot[end] == slot) last_pos = max(last_pos, row_pos[end++]);
    // the last key each of this lane's rows attends to in this run (-1: none), and any of the warp's
    const int last0 = strip + g >= run && strip + g < end ? pos0 : -1;
    const int last1 = strip + g + 8 >= run && strip + g + 8 < end ? pos1 : -1;
    int warp_last = max(last0, last1);
    for (int offset = 16; offset > 0; offset >>= 1) warp_last = max(warp_last, __shfl_xor_sync(~0u, warp_last, offset));
    const T* k_rows = k_cache + ((int64_t)slot * kv_heads + kvh) * max_len * HD;
    const T* v_rows = v_cache + ((int64_t)slot * kv_heads + kvh) * max_len * HD;
    const int tiles_of_run = last_pos / KEYS + 1;
    const auto queue = [&](int i) {
      const int key0 = i * KEYS;
      const int keys = min(KEYS, last_pos + 1 - key0);
      T* stage = tiles + (i & 1) * 2 * KEYS * ROW;
      queue_tile<T, HD>(stage, k_rows + (int64_t)key0 * HD, keys);
      queue_tile<T, HD>(stage + KEYS * ROW, v_rows + (int64_t)key0 * HD, keys);
      copies_commit();
    };
    queue(0);
    for (int i = 0; i < tiles_of_run; i++) {
      if (i + 1 < tiles_of_run) {
        queue(i + 1);
        copies_wait<1>();
      } else {
        copies_wait<0>();
      }
      __syncthreads();  // tile i is in shared memory for every warp
      const int key0 = i * KEYS;
      if (key0 <= warp_last) {
        const T* ks = tiles + (i & 1) * 2 * KEYS * ROW;
        const T* vs = ks + KEYS * ROW;
        // S = Q · Kᵀ for this warp's 16 rows and the tile's 64 keys, scaled to log2 units and masked
        float s[KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < KEYS / 8; n++) {
          s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
          for (int kk = 0; kk < KT; kk++) {
            const T* k0 = ks + (n * 8 + g) * ROW + kk * 16 + c;
            mma_16816(s[n], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], shared_word(k0), shared_word(k0 + 8), T());
          }
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int key = key0 + n * 8 + c + (e & 1);
            s[n][e] = key <= (e < 2 ? last0 : last1) ? s[n][e] * scale_log2 : -INFINITY;  // e < 2: row g
          }
        }
        // online softmax of the two rows: max and sum over the quad of lanes that shares them
#pragma unroll
        for (int r = 0; r < 2; r++) {
          float m = row_max[r];
#pragma unroll
          for (int n = 0; n < KEYS / 8; n++) m = fmaxf(m, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
          m = fmaxf(m, __shfl_xor_sync(~0u, m, 1));
          m = fmaxf(m, __shfl_xor_sync(~0u, m, 2));
          const float rescale = m == -INFINITY ? 1.f : exp2f(row_max[r] - m);
          float sum = 0.f;
#pragma unroll
          for (int n = 0; n < KEYS / 8; n++) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; e++) {
              s[n][e] = m == -INFINITY ? 0.f : exp2f(s[n][e] - m);
              sum += s[n][e];
            }
          }
          sum += __shfl_xor_sync(~0u, sum, 1);
          sum += __shfl_xor_sync(~0u, sum, 2);
          row_max[r] = m;
          row_sum[r] = row_sum[r] * rescale + sum;
#pragma unroll
          for (int n = 0; n < NT; n++) {
            o[n][2 * r] *= rescale;
            o[n][2 * r + 1] *= rescale;
          }
        }
        // O += P · V: P (in the dtype) from the score registers, V through ldmatrix.trans
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) {
          const uint32_t a0 = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
          const uint32_t a1 = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
          const uint32_t a2 = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
          const uint32_t a3 = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
          for (int n = 0; n < NT; n += 2) {
            const T* v0 = vs + (kk * 16 + (lane & 15)) * ROW + n * 8 + (lane >> 4) * 8;
            uint32_t b[4];
            ldsm_x4(v0, b, true);
            mma_16816(o[n], a0, a1, a2, a3, b[0], b[1], T());
            if (n + 1 < NT) mma_16816(o[n + 1], a0, a1, a2, a3, b[2], b[3], T());
          }
        }
      }
      __syncthreads();  // every warp is done with this stage before it is copied into again
    }
    run = end;
  }

  // out[token, h, :] = O / sum
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = strip + g + 8 * r;
    if (row >= count) continue;
    const float inverse = 1.f / row_sum[r];
    T* dst = out + ((first_token + row) * heads + h) * HD + c;
#pragma unroll
    for (int n = 0; n < NT; n++) {
      *reinterpret_cast<uint32_t*>(dst + n * 8) = pack2<T>(o[n][2 * r] * inverse, o[n][2 * r + 1] * inverse);
    }
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
