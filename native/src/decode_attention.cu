// Decode attention in one launch: every token of the run belongs to another slot and is the next
// token of its sequence. Each block takes one token, one kv head (with the q heads that share it)
// and one chunk of 64 or 128 keys of the cache, and
// - loads the chunk's keys and values that earlier steps wrote before pdl_wait(), overlapping the
//   kernel before (the product that makes this step's q, k and v);
// - rotates q and, in the chunk that holds the token's own position, the new k, writing k and v
//   into the caches (this is rf_qkv_prepare's work);
// - leaves a partial softmax (max, sum, weighted values) per q head; the last block of the token's
//   kv head to finish merges the chunks (a counter per token and kv head, which the merging block
//   resets to 0: the counters must start zeroed once, and be used by nothing else).
// The numerics are those of rf_qkv_prepare followed by rf_attention: q and k are rounded to the
// dtype after rotation, scores and softmax are f32.
#include "common.cuh"

static const int DTHREADS = 256;
static const int MIN_KEYS = 64;  // keys per block: 64, or 128 where tokens × kv heads fill the GPU
static const int MAX_GROUP = 8;
static const int MAX_HEAD_DIM = 128;

// The angle as rf_qkv_prepare computes it; not inlined, which keeps sincosf's long argument
// reduction out of this kernel's registers.
__device__ __noinline__ void decode_rope_angle(int64_t p, int i, int head_dim, float theta, float* c, float* s) {
  const float inverse = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
  sincosf((float)p * inverse, s, c);
}

template <typename T, int KEYS>
__global__ void __launch_bounds__(DTHREADS) decode_attention_kernel(
    const T* q, int64_t ldq, const T* k, int64_t ldk, const T* v, int64_t ldv, T* k_cache, T* v_cache,
    const int32_t* slots, const int32_t* cache_pos, const int32_t* rope_pos, int64_t rope_period, int rope_q,
    int rope_k, float theta, int heads, int kv_heads, int head_dim, int64_t max_len, float scale, float* scratch,
    int* counters, T* out) {
  extern __shared__ __align__(16) unsigned char decode_shared[];
  const int group = heads / kv_heads;
  const int row_stride = head_dim + 2;
  float* q_tile = reinterpret_cast<float*>(decode_shared);  // [group][head_dim]
  float* scores = q_tile + group * head_dim;                 // [group][KEYS]
  T* k_rows = reinterpret_cast<T*>(scores + group * KEYS);   // [KEYS][head_dim + 2]
  T* v_rows = k_rows + KEYS * row_stride;
  __shared__ bool last_block;
  __shared__ float rot_cos[MAX_HEAD_DIM / 2], rot_sin[MAX_HEAD_DIM / 2];

  const int64_t t = blockIdx.x;
  const int kvh = blockIdx.y;
  const int chunk = blockIdx.z;
  const int chunks = gridDim.z;
  const int64_t slot = slots[t];
  const int64_t pos = cache_pos[t];
  const int64_t key_start = (int64_t)chunk * KEYS;
  const int keys = (int)min((int64_t)KEYS, pos + 1 - key_start);
  const int used = (int)(pos / KEYS) + 1;  // chunks holding keys of this token
  RF_TRACE_START();
  if (keys <= 0) {
    pdl_wait();
    pdl_trigger();
    RF_TRACE_WAITED();
    RF_TRACE_END(RF_TRACE_IDLE, 0);
    return;
  }
  const int64_t cache_row = ((slot * kv_heads + kvh) * max_len + key_start) * head_dim;
  const bool own = pos < key_start + KEYS;  // this chunk holds the token's own position
  const int earlier = own ? keys - 1 : keys;
  const int half = head_dim / 2;
  if (rope_q || rope_k) {
    // positions, like slots and cache positions, are copied in before the step's first kernel
    const int64_t p = rope_pos[t % rope_period];
    for (int d = threadIdx.x; d < half; d += DTHREADS) {
      decode_rope_angle(p, d, head_dim, theta, &rot_cos[d], &rot_sin[d]);
    }
  }
  load_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(k_cache + cache_row, k_rows, earlier, head_dim, row_stride);
  load_rows<T, KEYS, MAX_HEAD_DIM, DTHREADS>(v_cache + cache_row, v_rows, earlier, head_dim, row_stride);
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
      q_tile[i * head_dim + d] = to_f32(from_f32<T>(a)) * scale;
      q_tile[i * head_dim + d + half] = to_f32(from_f32<T>(b)) * scale;
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
  __syncthreads();
  RF_TRACE_MARK(0);
  pdl_trigger();

  for (int idx = threadIdx.x; idx < group * KEYS; idx += DTHREADS) {
    const int i = idx / KEYS;
    const int j = idx - i * KEYS;
    float s = -INFINITY;
    if (j < keys) {
      const float* qi = q_tile + i * head_dim;
      const T* kj = k_rows + j * row_stride;
      float even = 0.f, odd = 0.f;
      for (int d = 0; d < head_dim; d += 2) {
        even += qi[d] * to_f32(kj[d]);
        odd += qi[d + 1] * to_f32(kj[d + 1]);
      }
      s = even + odd;
    }
    scores[idx] = s;
  }
  __syncthreads();
  RF_TRACE_MARK(1);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int partial = head_dim + 2;
  const auto partial_of = [&](int i, int c) -> float* {
    return scratch + ((t * heads + kvh * group + i) * (int64_t)chunks + c) * partial;
  };
  for (int i = warp; i < group; i += DTHREADS / 32) {
    float* row = scores + i * KEYS;
    float m = -INFINITY;
    for (int j = lane; j < KEYS; j += 32) m = fmaxf(m, row[j]);
    m = warp_max(m);
    float sum = 0.f;
    for (int j = lane; j < KEYS; j += 32) {
      const float e = j < keys ? __expf(row[j] - m) : 0.f;
      row[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      partial_of(i, chunk)[0] = m;
      partial_of(i, chunk)[1] = sum;
    }
  }
  __syncthreads();
  RF_TRACE_MARK(2);
  for (int idx = threadIdx.x; idx < group * head_dim; idx += DTHREADS) {
    const int i = idx / head_dim;
    const int d = idx - i * head_dim;
    const float* weights = scores + i * KEYS;
    float acc = 0.f;
    for (int j = 0; j < keys; j++) acc += weights[j] * to_f32(v_rows[j * row_stride + d]);
    partial_of(i, chunk)[2 + d] = acc;
  }

  // The last of the `used` blocks of this token and kv head merges their partials.
  RF_TRACE_MARK(3);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = counters + t * kv_heads + kvh;
    last_block = atomicAdd(counter, 1) == used - 1;
    if (last_block) *counter = 0;
  }
  __syncthreads();
  if (!last_block) {
    RF_TRACE_END(RF_TRACE_ATTENTION, 0);
    return;
  }
  RF_TRACE_MARK(4);
  __threadfence();
  RF_TRACE_MARK(5);
  // One pass over the chunks with a running max, 8 chunks' loads in flight at a time.
  constexpr int AHEAD = 8;
  for (int idx = threadIdx.x; idx < group * head_dim; idx += DTHREADS) {
    const int i = idx / head_dim;
    const int d = idx - i * head_dim;
    float m = -INFINITY, total = 0.f, acc = 0.f;
    for (int c0 = 0; c0 < used; c0 += AHEAD) {
      float mc[AHEAD], sc[AHEAD], ac[AHEAD];
#pragma unroll
      for (int j = 0; j < AHEAD; j++) {
        mc[j] = -INFINITY;
        sc[j] = ac[j] = 0.f;
        if (c0 + j < used) {
          const float* part = partial_of(i, c0 + j);
          mc[j] = __ldcg(part);
          sc[j] = __ldcg(part + 1);
          ac[j] = __ldcg(part + 2 + d);
        }
      }
#pragma unroll
      for (int j = 0; j < AHEAD; j++) {
        if (mc[j] == -INFINITY) continue;
        const float next = fmaxf(m, mc[j]);
        const float keep = m == -INFINITY ? 0.f : __expf(m - next);
        const float w = __expf(mc[j] - next);
        total = total * keep + sc[j] * w;
        acc = acc * keep + ac[j] * w;
        m = next;
      }
    }
    out[(t * heads + kvh * group + i) * (int64_t)head_dim + d] = from_f32<T>(acc / total);
  }
  RF_TRACE_MARK(6);
  RF_TRACE_END(RF_TRACE_MERGE, used);
}

RF_TRACE_SETTER(decode_attention)

static int decode_chunks(int span, int keys) { return (span + keys - 1) / keys; }

extern "C" int64_t rf_decode_attention_scratch_bytes(int tokens, int heads, int head_dim, int span) {
  return (int64_t)tokens * heads * decode_chunks(span, MIN_KEYS) * (head_dim + 2) * sizeof(float);
}

extern "C" int rf_decode_attention(int dtype, const void* q, int ldq, const void* k, int ldk, const void* v, int ldv,
                                   void* k_cache, void* v_cache, const int32_t* slots, const int32_t* cache_pos,
                                   const int32_t* rope_pos, int rope_period, int rope_q, int rope_k, float theta,
                                   int tokens, int heads, int kv_heads, int head_dim, int max_len, int span,
                                   float scale, float* scratch, int* counters, void* out,
                                   void* stream) {
  if (tokens <= 0) return 0;
  if (head_dim > MAX_HEAD_DIM || head_dim % 8 != 0 || kv_heads <= 0 || heads % kv_heads != 0 ||
      heads / kv_heads > MAX_GROUP || span <= 0 || span > max_len) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if ((rope_q || rope_k) && (!rope_pos || rope_period <= 0)) return static_cast<int>(cudaErrorInvalidValue);
  const int group = heads / kv_heads;
  // 64-key chunks spread a few tokens over the GPU; with many tokens, 128-key chunks halve the
  // blocks and the chunks each merge reads.
  const int keys = tokens * kv_heads >= 32 ? 128 : 64;
  const int chunks = decode_chunks(span, keys);
  const dim3 grid((unsigned)tokens, (unsigned)kv_heads, (unsigned)chunks);
  RF_DISPATCH(dtype, {
    const size_t bytes = sizeof(float) * group * (head_dim + keys) + 2 * sizeof(T) * keys * (head_dim + 2);
    const auto kernel = keys == 128 ? decode_attention_kernel<T, 128> : decode_attention_kernel<T, 64>;
    if (bytes > 48 * 1024) {
      const cudaError_t rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
      if (rc != cudaSuccess) return static_cast<int>(rc);
    }
    return rf_launch(kernel, grid, dim3(DTHREADS), bytes, RF_STREAM(stream), (const T*)q,
                     (int64_t)ldq, (const T*)k, (int64_t)ldk, (const T*)v, (int64_t)ldv, (T*)k_cache, (T*)v_cache,
                     slots, cache_pos, rope_pos, (int64_t)rope_period, rope_q, rope_k, theta, heads, kv_heads,
                     head_dim, (int64_t)max_len, scale, scratch, counters, (T*)out);
  });
  return 0;
}
