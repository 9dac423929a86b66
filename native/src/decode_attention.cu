// Decode attention in one launch: every token of the run belongs to another slot and is the next
// token of its sequence. Each block takes one token, one kv head (with the q heads that share it)
// and one chunk of 64 or 128 keys of the cache, and
// - loads the chunk's keys and values that earlier steps wrote before pdl_wait(), overlapping the
//   kernel before (the product that makes this step's q, k and v);
// - rotates q and, in the chunk that holds the token's own position, the new k, writing k and v
//   into the caches (this is rf_qkv_prepare's work);
// - leaves a partial softmax (max, sum, weighted values) per q head, each value stored with the
//   launch's tag, and one block of the token's kv head merges the chunks once it reads every word
//   with that tag (see Word below: the scratch and the counters must start zeroed once, and be
//   used by nothing else).
// q and k are rounded to the dtype after rotation, as rf_qkv_prepare rounds them; scores and
// softmax are f32. In f16 and bf16 at head sizes that are multiples of 16 the scores and weighted
// values go through tensor cores (mma.m16n8k16, f32 accumulators): 16 keys (or 16 dims of the
// values) as M, the group's q heads, at most 8 and padded with zero rows, as N. q is then scaled
// after its product instead of before, and the softmax weights are rounded to the dtype, as in
// prefill attention; f32 and other head sizes take the scalar path (MMA false).
#include <algorithm>

#include "common.cuh"

static const int DTHREADS = 256;
// 128-key chunks (many tokens, long spans) in at most 80 registers, three blocks a multiprocessor (a
// traced build needs more registers)
#ifdef RF_TRACE
#define DECODE_MANY_BLOCKS 1
#else
#define DECODE_MANY_BLOCKS 3
#endif
static const int MIN_KEYS = 64;  // keys per block: 64, or 128 where tokens × kv heads fill the GPU
static const int MAX_GROUP = 8;
static const int MAX_HEAD_DIM = 128;

// The angle as rf_qkv_prepare computes it, in two parts: the inverse frequency of pair i, and the
// angle's cosine and sine at position p. Not inlined, which keeps powf's and sincosf's long
// argument reductions out of this kernel's registers.
__device__ __noinline__ float decode_inverse_frequency(int i, int head_dim, float theta) {
  return 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
}
__device__ __noinline__ void decode_rope_angle(int64_t p, float inverse, float* c, float* s) {
  sincosf((float)p * inverse, s, c);
}

// A merge of partial softmaxes in progress: the running max, and the sum of weights and 4 weighted
// values scaled to it.
struct Merging {
  float m = -INFINITY, total = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};

  __device__ __forceinline__ void add(float part_max, float part_sum, const float* values) {
    if (part_max == -INFINITY) return;
    const float next = fmaxf(m, part_max);
    const float keep = m == -INFINITY ? 0.f : __expf(m - next);
    const float w = __expf(part_max - next);
    total = total * keep + part_sum * w;
#pragma unroll
    for (int e = 0; e < 4; e++) acc[e] = acc[e] * keep + values[e] * w;
    m = next;
  }
};

// A partial's words: a float and, above it, the launch's tag (64-bit accesses are single-copy
// atomic, so a word read with this launch's tag holds this launch's value). The merging block reads
// each chunk's words until all carry the tag, with no fence on either side. A word's place depends
// only on its token's row, q head and chunk, and each row and kv head keeps a state of 4 ints:
// its generation (the last launch's tag), the chunks that launch used, and the arrival count of the
// last-block merge. A launch's tag is the generation plus one, never 0; its merge records tag and
// chunks, and clears the words of chunks the launch before used and this one did not. So a word a
// launch reads holds its tag, the last launch's, or 0.
using Word = unsigned long long;
__device__ __forceinline__ void put_word(Word* at, float value, unsigned tag) {
  const Word w = ((Word)tag << 32) | __float_as_uint(value);
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(at), "l"(w) : "memory");
}
__device__ __forceinline__ void get_words(const Word* at, Word* a, Word* b) {
  asm volatile("ld.relaxed.gpu.global.v2.b64 {%0, %1}, [%2];" : "=l"(*a), "=l"(*b) : "l"(at) : "memory");
}
__device__ __forceinline__ float value_of(Word w) { return __uint_as_float((unsigned)w); }

// On tensor cores, 64-key blocks take at most 80 registers (the merge's 3 chunks in flight keep
// them there), so that two fit beside a block of a one-row product.
template <typename T, int KEYS, bool MMA>
__global__ void __launch_bounds__(DTHREADS, KEYS == MIN_KEYS ? (MMA ? 3 : 1) : DECODE_MANY_BLOCKS) decode_attention_kernel(
    const T* q, int64_t ldq, const T* k, int64_t ldk, const T* v, int64_t ldv, T* k_cache, T* v_cache,
    const int32_t* slots, const int32_t* cache_pos, const int32_t* rope_pos, int64_t rope_period, int rope_q,
    int rope_k, float theta, int heads, int kv_heads, int head_dim, int64_t max_len, float scale, Word* scratch,
    int* counters, T* out, int designated) {
  extern __shared__ __align__(16) unsigned char decode_shared[];
  const int group = heads / kv_heads;
  // shared: scores, f32 [group][KEYS]; then on the scalar path q, f32 [group][head_dim], and the
  // cached rows, T [KEYS][head_dim + 2]; with MMA q and the weights, T [MAX_GROUP][head_dim + 8] and
  // [MAX_GROUP][KEYS + 8], and the cached rows, T [KEYS][head_dim + 8] (rows 16-byte aligned, as
  // ldmatrix wants them). The merge reuses the rows' room.
  const int row_stride = MMA ? head_dim + 8 : head_dim + 2;
  const int q_stride = head_dim + 8, p_stride = KEYS + 8;
  float* scores = reinterpret_cast<float*>(decode_shared);
  float* q_tile = scores + group * KEYS;
  T* q_mma = reinterpret_cast<T*>(q_tile);
  T* p_mma = q_mma + MAX_GROUP * q_stride;
  T* k_rows = MMA ? p_mma + MAX_GROUP * p_stride : reinterpret_cast<T*>(q_tile + group * head_dim);
  T* v_rows = k_rows + KEYS * row_stride;
  __shared__ bool last_block;
  __shared__ float rot_cos[MAX_HEAD_DIM / 2], rot_sin[MAX_HEAD_DIM / 2];

  const int64_t t = blockIdx.x;
  const int kvh = blockIdx.y;
  const int chunk = blockIdx.z;
  // Slot, cache position and rotary position, copied in before the step's first kernel, are read
  // before the wait and together: a block that starts late (its multiprocessor busy with the
  // product before) pays one round trip for them, not two behind its own cached rows' copies.
  const int64_t slot = slots[t];
  const int64_t pos = cache_pos[t];
  const int64_t rotary = rope_q || rope_k ? rope_pos[t % rope_period] : 0;
  int* merge_state = counters + 4 * (t * kv_heads + kvh);  // generation, chunks used, arrivals
  const int2 last_launch = __ldcg(reinterpret_cast<const int2*>(merge_state));
  const unsigned tag = max((unsigned)last_launch.x + 1u, 1u);
  const int half = head_dim / 2;  // at most DTHREADS
  // the inverse frequency of this thread's pair, worked out while those loads are in flight
  const float inverse =
      (rope_q || rope_k) && threadIdx.x < half ? decode_inverse_frequency(threadIdx.x, head_dim, theta) : 0.f;
  const int64_t key_start = (int64_t)chunk * KEYS;
  const int keys = (int)min((int64_t)KEYS, pos + 1 - key_start);
  const int used = (int)(pos / KEYS) + 1;  // chunks holding keys of this token
  RF_TRACE_START();
  if (keys <= 0) {
    // past the token's keys: nothing to wait for (the blocks that work wait for the kernel before,
    // so the kernel after still follows it), and the slot frees at once
    RF_TRACE_WAITED();
    RF_TRACE_END(RF_TRACE_IDLE, 0);
    return;
  }
  const int64_t cache_row = ((slot * kv_heads + kvh) * max_len + key_start) * head_dim;
  const bool own = pos < key_start + KEYS;  // this chunk holds the token's own position
  const int earlier = own ? keys - 1 : keys;
  // The cached keys' and values' loads go out first, and the rotation's angles are worked out
  // while they are in flight. On tensor cores (rows 16-byte aligned) they are copied straight to
  // shared memory (cp.async) and waited for only once q, k and v are loaded too. Otherwise 64-key
  // chunks hold them in registers; 128-key chunks load them after the angles: holding both would
  // take registers enough to cost resident blocks.
  using Units = RowUnits<T, KEYS, MAX_HEAD_DIM, DTHREADS>;
  constexpr bool in_registers = KEYS == MIN_KEYS && !MMA;
  uint4 cached_k[in_registers ? Units::COUNT : 1], cached_v[in_registers ? Units::COUNT : 1];
  if constexpr (in_registers) {
    fetch_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(k_cache + cache_row, cached_k, earlier, head_dim);
    fetch_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(v_cache + cache_row, cached_v, earlier, head_dim);
  } else if constexpr (MMA) {
    copy_rows_async<T, DTHREADS>(k_cache + cache_row, k_rows, earlier, head_dim, row_stride);
    copy_rows_async<T, DTHREADS>(v_cache + cache_row, v_rows, earlier, head_dim, row_stride);
    copies_commit();
  }
  if ((rope_q || rope_k) && threadIdx.x < half) {
    decode_rope_angle(rotary, inverse, &rot_cos[threadIdx.x], &rot_sin[threadIdx.x]);
  }
  if constexpr (in_registers) {
    put_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(cached_k, k_rows, earlier, head_dim, row_stride);
    put_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(cached_v, v_rows, earlier, head_dim, row_stride);
  } else if constexpr (!MMA) {
    load_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(k_cache + cache_row, k_rows, earlier, head_dim, row_stride);
    load_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(v_cache + cache_row, v_rows, earlier, head_dim, row_stride);
  }
  if constexpr (MMA) {
    // Zeros where the products read past what the block holds: value rows past its keys (their
    // weights are 0, and 0 × garbage could be NaN), and the q and weight rows past the group.
    const auto zero = [](T* rows, int count) {
      for (int w = threadIdx.x; w < count / 2; w += DTHREADS) reinterpret_cast<uint32_t*>(rows)[w] = 0u;
    };
    zero(v_rows + keys * row_stride, (KEYS - keys) * row_stride);
    zero(q_mma + group * q_stride, (MAX_GROUP - group) * q_stride);
    zero(p_mma + group * p_stride, (MAX_GROUP - group) * p_stride);
  }
  __syncthreads();
  pdl_wait();
  RF_TRACE_WAITED();

  // q of the group's heads, then (in the chunk that holds it) the token's own k and v: one item a
  // thread where the block has enough of them, so that their loads go out together.
  const int q_items = group * half;
  const int items = q_items + (own ? half : 0);
  const int j = keys - 1;  // the own row, where own
  for (int idx = threadIdx.x; idx < items; idx += DTHREADS) {
    if (idx < q_items) {
      const int i = idx / half;
      const int d = idx - i * half;
      const T* src = q + t * ldq + (int64_t)(kvh * group + i) * head_dim;
      float a = to_f32(src[d]), b = to_f32(src[d + half]);
      if (rope_q) {
        const float c = rot_cos[d], s = rot_sin[d];
        const float ra = a * c - b * s, rb = b * c + a * s;
        a = ra;
        b = rb;
      }
      if constexpr (MMA) {
        q_mma[i * q_stride + d] = from_f32<T>(a);
        q_mma[i * q_stride + d + half] = from_f32<T>(b);
      } else {
        q_tile[i * head_dim + d] = to_f32(from_f32<T>(a)) * scale;
        q_tile[i * head_dim + d + half] = to_f32(from_f32<T>(b)) * scale;
      }
      continue;
    }
    const int d = idx - q_items;
    const T* ks = k + t * ldk + (int64_t)kvh * head_dim;
    const T* vs = v + t * ldv + (int64_t)kvh * head_dim;
    float a = to_f32(ks[d]), b = to_f32(ks[d + half]);
    const T va = vs[d], vb = vs[d + half];
    if (rope_k) {
      const float c = rot_cos[d], s = rot_sin[d];
      const float ra = a * c - b * s, rb = b * c + a * s;
      a = ra;
      b = rb;
    }
    const T ka = from_f32<T>(a), kb = from_f32<T>(b);
    T* kc = k_cache + cache_row + (int64_t)j * head_dim;
    T* vc = v_cache + cache_row + (int64_t)j * head_dim;
    k_rows[j * row_stride + d] = ka;
    k_rows[j * row_stride + d + half] = kb;
    kc[d] = ka;
    kc[d + half] = kb;
    v_rows[j * row_stride + d] = va;
    v_rows[j * row_stride + d + half] = vb;
    vc[d] = va;
    vc[d + half] = vb;
  }
  if constexpr (MMA) copies_wait<0>();
  __syncthreads();
  RF_TRACE_MARK(0);
  pdl_trigger();

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2, pair = 2 * (lane & 3);  // an mma accumulator's rows g, g + 8, columns pair, pair + 1
  if constexpr (MMA) {
    // scores^T (16 keys × 8 heads a warp) = keys (16 × head_dim) · q^T
    for (int tile = warp; tile < KEYS / 16; tile += DTHREADS / 32) {
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      for (int d0 = 0; d0 < head_dim; d0 += 16) {
        uint32_t a[4], b[2];
        ldsm_x4(k_rows + (tile * 16 + (lane & 15)) * row_stride + d0 + (lane >> 4) * 8, a);
        ldsm_x2(q_mma + (lane & 7) * q_stride + d0 + ((lane >> 3) & 1) * 8, b);
        mma_16816(c, a[0], a[1], a[2], a[3], b[0], b[1], T());
      }
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const int j = tile * 16 + g + (r >> 1) * 8, i = pair + (r & 1);
        if (i < group) scores[i * KEYS + j] = j < keys ? c[r] * scale : -INFINITY;
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < group * KEYS; idx += DTHREADS) {
      const int i = idx / KEYS;
      const int j = idx - i * KEYS;
      float s = -INFINITY;
      if (j < keys) s = dot_row(q_tile + i * head_dim, k_rows + j * row_stride, head_dim);
      scores[idx] = s;
    }
  }
  __syncthreads();
  RF_TRACE_MARK(1);
  const int partial = head_dim + 2;  // words: max, sum, weighted values (16-byte aligned)
  const int64_t places = (max_len + MIN_KEYS - 1) / MIN_KEYS;  // chunks a row and head has room for
  const auto partial_of = [&](int i, int c) -> Word* {
    return scratch + ((t * heads + kvh * group + i) * places + c) * partial;
  };
  for (int i = warp; i < group; i += DTHREADS / 32) {
    float* row = scores + i * KEYS;
    const float m = warp_row_max(row, KEYS, lane);
    float sum = 0.f;
    for (int j = lane; j < KEYS; j += 32) {
      const float e = j < keys ? __expf(row[j] - m) : 0.f;
      if constexpr (MMA) {
        p_mma[i * p_stride + j] = from_f32<T>(e);
      } else {
        row[j] = e;
      }
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      put_word(partial_of(i, chunk), m, tag);
      put_word(partial_of(i, chunk) + 1, sum, tag);
    }
  }
  __syncthreads();
  RF_TRACE_MARK(2);
  if constexpr (MMA) {
    // weighted values^T (16 dims × 8 heads a warp) = values^T (16 × keys, through ldmatrix.trans) · weights^T
    for (int tile = warp; tile < head_dim / 16; tile += DTHREADS / 32) {
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      for (int j0 = 0; j0 < keys; j0 += 16) {
        uint32_t a[4], b[2];
        ldsm_x4(v_rows + (j0 + (lane & 7) + (lane >> 4) * 8) * row_stride + tile * 16 + ((lane >> 3) & 1) * 8, a,
                true);
        ldsm_x2(p_mma + (lane & 7) * p_stride + j0 + ((lane >> 3) & 1) * 8, b);
        mma_16816(c, a[0], a[1], a[2], a[3], b[0], b[1], T());
      }
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const int d = tile * 16 + g + (r >> 1) * 8, i = pair + (r & 1);
        if (i < group) put_word(partial_of(i, chunk) + 2 + d, c[r], tag);
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < group * head_dim; idx += DTHREADS) {
      const int i = idx / head_dim;
      const int d = idx - i * head_dim;
      const float* weights = scores + i * KEYS;
      float acc = 0.f;
      for (int j = 0; j < keys; j++) acc += weights[j] * to_f32(v_rows[j * row_stride + d]);
      put_word(partial_of(i, chunk) + 2 + d, acc, tag);
    }
  }

  // One block of this token and kv head merges the partials of all `used`: where the merging blocks
  // take at most half the GPU's room for this kernel (`designated`), the first chunk's, which
  // waits for the others' words (the others always find room to run, on a GPU whose every
  // multiprocessor this process may use); otherwise the last to count itself in.
  RF_TRACE_MARK(3);
  if (designated) {
    if (chunk != 0) {
      RF_TRACE_END(RF_TRACE_ATTENTION, 0);
      return;
    }
    __syncthreads();  // the merge's parts take the rows' room
  } else {
    __syncthreads();
    if (threadIdx.x == 0) {
      last_block = atomicAdd(merge_state + 2, 1) == used - 1;
      if (last_block) merge_state[2] = 0;
    }
    __syncthreads();
    if (!last_block) {
      RF_TRACE_END(RF_TRACE_ATTENTION, 0);
      return;
    }
  }
  RF_TRACE_MARK(4);
  // A thread takes 4 values of one q head (16-byte loads) and every ways-th chunk, in one pass with a
  // running max, 3 of its chunks' loads in flight at a time (more would cost the kernel registers).
  // Where there are more chunks than that, the threads split them (ways > 1), and the parts of each
  // 4 values merge in shared memory (in the rows' room), in a fixed order.
  constexpr int AHEAD = 3;
  const int vecs = group * head_dim / 4;  // at most DTHREADS
  const int ways = used <= AHEAD ? 1 : DTHREADS / vecs;
  const int vec = threadIdx.x % vecs, way = threadIdx.x / vecs;
  const int i = 4 * vec / head_dim, d = 4 * vec - i * head_dim;
  float* parts = reinterpret_cast<float*>(k_rows);  // [ways][vecs][6]: max, sum, 4 weighted values
  T* dst = out + (t * heads + kvh * group) * (int64_t)head_dim + 4 * vec;
  if (way < ways) {
    Merging merging;
    for (int c0 = way; c0 < used; c0 += ways * AHEAD) {
      Word w[AHEAD][6];
      const auto fetch = [&](int j, int c) {
        const Word* part = partial_of(i, c);
        get_words(part, &w[j][0], &w[j][1]);
        get_words(part + 2 + d, &w[j][2], &w[j][3]);
        get_words(part + 4 + d, &w[j][4], &w[j][5]);
      };
#pragma unroll
      for (int j = 0; j < AHEAD; j++) {
        const int c = c0 + j * ways;
        if (c < used) fetch(j, c);
      }
#pragma unroll
      for (int j = 0; j < AHEAD; j++) {
        const int c = c0 + j * ways;
        if (c >= used) continue;
        // until the block of chunk c has stored them, its words hold an earlier launch's tag
        const Word want = (Word)tag;
        while (((w[j][0] >> 32) != want) | ((w[j][1] >> 32) != want) | ((w[j][2] >> 32) != want) |
               ((w[j][3] >> 32) != want) | ((w[j][4] >> 32) != want) | ((w[j][5] >> 32) != want)) {
          fetch(j, c);
        }
        const float values[4] = {value_of(w[j][2]), value_of(w[j][3]), value_of(w[j][4]), value_of(w[j][5])};
        merging.add(value_of(w[j][0]), value_of(w[j][1]), values);
      }
    }
    if (ways == 1) {
      for (int e = 0; e < 4; e++) dst[e] = from_f32<T>(merging.acc[e] / merging.total);
    } else {
      float* mine = parts + (way * vecs + vec) * 6;
      mine[0] = merging.m;
      mine[1] = merging.total;
      for (int e = 0; e < 4; e++) mine[2 + e] = merging.acc[e];
    }
  }
  RF_TRACE_MARK(5);
  if (ways > 1) {
    __syncthreads();
    if (threadIdx.x < vecs) {
      Merging merging;
      for (int w = 0; w < ways; w++) {
        const float* part = parts + (w * vecs + vec) * 6;
        merging.add(part[0], part[1], part + 2);
      }
      for (int e = 0; e < 4; e++) dst[e] = from_f32<T>(merging.acc[e] / merging.total);
    }
  }
  // Every chunk's block has stored its words, so has read the state (thread 0 has seen every
  // chunk's words, itself or past the barrier above): clear what the launch before left past this
  // one's chunks, and record this one.
  if (way < ways) {
    for (int c = used + way; c < last_launch.y; c += ways) {
      Word* part = partial_of(i, c);
      if (d == 0) *reinterpret_cast<ulonglong2*>(part) = make_ulonglong2(0ull, 0ull);
      *reinterpret_cast<ulonglong2*>(part + 2 + d) = make_ulonglong2(0ull, 0ull);
      *reinterpret_cast<ulonglong2*>(part + 4 + d) = make_ulonglong2(0ull, 0ull);
    }
  }
  if (threadIdx.x == 0) *reinterpret_cast<int2*>(merge_state) = make_int2((int)tag, used);
  RF_TRACE_MARK(6);
  RF_TRACE_END(RF_TRACE_MERGE, used);
}

RF_TRACE_SETTER(decode_attention)

// The kernel for a dtype, chunk size and path (tensor cores only for 16-bit dtypes).
template <typename T, int KEYS>
static auto decode_kernel(bool mma) {
  if constexpr (sizeof(T) == 2) {
    return mma ? decode_attention_kernel<T, KEYS, true> : decode_attention_kernel<T, KEYS, false>;
  } else {
    return decode_attention_kernel<T, KEYS, false>;
  }
}

static int decode_chunks(int span, int keys) { return (span + keys - 1) / keys; }

extern "C" int64_t rf_decode_attention_scratch_bytes(int tokens, int heads, int head_dim, int max_len) {
  return (int64_t)tokens * heads * decode_chunks(max_len, MIN_KEYS) * (head_dim + 2) * sizeof(Word);
}

// Dynamic shared memory of a decode-attention block: up to the cached rows, then the rows or the
// merge's parts (DTHREADS × 6 floats), whichever is more.
static size_t decode_shared_bytes(bool mma, int group, int keys, int head_dim, int elem) {
  const size_t before_rows = mma ? sizeof(float) * group * keys + (size_t)elem * MAX_GROUP * (head_dim + 8 + keys + 8)
                                 : sizeof(float) * group * (head_dim + keys);
  const size_t rows = 2 * (size_t)elem * keys * (head_dim + (mma ? 8 : 2));
  return before_rows + std::max(rows, sizeof(float) * DTHREADS * 6);
}

static bool decode_arguments_valid(int heads, int kv_heads, int head_dim, int max_len, int span, int rope_q,
                                   int rope_k, const int32_t* rope_pos, int rope_period) {
  if (head_dim > MAX_HEAD_DIM || head_dim % 8 != 0 || kv_heads <= 0 || heads % kv_heads != 0 ||
      heads / kv_heads > MAX_GROUP || span <= 0 || span > max_len) {
    return false;
  }
  return !((rope_q || rope_k) && (!rope_pos || rope_period <= 0));
}

// 64-key chunks spread a few tokens over the GPU; with many tokens, or spans past 512 positions,
// 128-key chunks halve the blocks (more of them find room while the product before still runs)
// and the chunks each merge reads.
static int decode_keys(int tokens, int kv_heads, int span) { return tokens * kv_heads >= 32 || span > 512 ? 128 : 64; }

// Lets `kernel` take `bytes` of dynamic shared memory, then gives how many of its blocks fit on all
// multiprocessors at once.
template <typename Kernel>
static int prepare_kernel(Kernel kernel, size_t bytes, int* capacity) {
  cudaError_t rc = cudaSuccess;
  if (bytes > 48 * 1024) rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  int per_sm = 0, sms = 0, device = 0;
  if (rc == cudaSuccess) rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, DTHREADS, bytes);
  if (rc == cudaSuccess) rc = cudaGetDevice(&device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  *capacity = std::max(1, per_sm) * sms;
  return static_cast<int>(rc);
}

extern "C" int rf_decode_attention(int dtype, const void* q, int ldq, const void* k, int ldk, const void* v, int ldv,
                                   void* k_cache, void* v_cache, const int32_t* slots, const int32_t* cache_pos,
                                   const int32_t* rope_pos, int rope_period, int rope_q, int rope_k, float theta,
                                   int tokens, int heads, int kv_heads, int head_dim, int max_len, int span,
                                   float scale, float* scratch, int* counters, void* out,
                                   void* stream) {
  if (tokens <= 0) return 0;
  if (!decode_arguments_valid(heads, kv_heads, head_dim, max_len, span, rope_q, rope_k, rope_pos, rope_period)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int group = heads / kv_heads;
  const int keys = decode_keys(tokens, kv_heads, span);
  const int chunks = decode_chunks(span, keys);
  const dim3 grid((unsigned)tokens, (unsigned)kv_heads, (unsigned)chunks);
  RF_DISPATCH(dtype, {
    const bool mma = sizeof(T) == 2 && head_dim % 16 == 0;
    const size_t bytes = decode_shared_bytes(mma, group, keys, head_dim, sizeof(T));
    const auto kernel = keys == 128 ? decode_kernel<T, 128>(mma) : decode_kernel<T, 64>(mma);
    int capacity = 0;
    const int rc = prepare_kernel(kernel, bytes, &capacity);
    if (rc != 0) return rc;
    const int designated = 2 * tokens * kv_heads <= capacity ? 1 : 0;
    return rf_launch(kernel, grid, dim3(DTHREADS), bytes, RF_STREAM(stream), (const T*)q,
                     (int64_t)ldq, (const T*)k, (int64_t)ldk, (const T*)v, (int64_t)ldv, (T*)k_cache, (T*)v_cache,
                     slots, cache_pos, rope_pos, (int64_t)rope_period, rope_q, rope_k, theta, heads, kv_heads,
                     head_dim, (int64_t)max_len, scale, reinterpret_cast<Word*>(scratch), counters, (T*)out,
                     designated);
  });
  return 0;
}

void rf_set_one_row_room(int bytes);

// The shared memory (static and dynamic) of one decode-attention block of this shape: the most over
// the kernels a decode step may take (64- and 128-key chunks), or a negative cudaError.
template <typename T>
static int attention_block_bytes(int group, int head_dim) {
  const bool mma = sizeof(T) == 2 && head_dim % 16 == 0;
  int most = 0;
  for (const int keys : {64, 128}) {
    const auto kernel = keys == 128 ? decode_kernel<T, 128>(mma) : decode_kernel<T, 64>(mma);
    cudaFuncAttributes attributes;
    const cudaError_t rc = cudaFuncGetAttributes(&attributes, kernel);
    if (rc != cudaSuccess) return -static_cast<int>(rc);
    const size_t bytes = attributes.sharedSizeBytes + decode_shared_bytes(mma, group, keys, head_dim, sizeof(T));
    most = std::max(most, (int)bytes);
  }
  return most;
}

// RANKFLOW_ATTENTION_ROOM=0 reserves nothing, for benchmarks.
extern "C" int rf_set_attention_room(int dtype, int heads, int kv_heads, int head_dim) {
  int bytes = 0;
  const char* setting = getenv("RANKFLOW_ATTENTION_ROOM");
  const bool on = !(setting && setting[0] == '0');
  // a shape decode attention does not take reserves nothing
  if (on && heads > 0 && decode_arguments_valid(heads, kv_heads, head_dim, 1, 1, 0, 0, nullptr, 0)) {
    RF_DISPATCH(dtype, { bytes = attention_block_bytes<T>(heads / kv_heads, head_dim); });
    if (bytes < 0) return bytes;
  }
  rf_set_one_row_room(bytes);
  return bytes;
}
