// Attention: rotary embedding, writing k and v into per-slot KV caches, and causal attention of
// each token over its slot's cache up to its own position. Runs of many f16/bf16 tokens (prompts)
// go to the tensor-core kernel of prefill_attention.cu. Otherwise attention runs in two launches:
// each block scores a chunk of keys for a tile of tokens that share a slot and leaves a partial
// (max, sum, weighted values); a second launch merges the chunks (split-K, so a single decode
// token still spreads over many blocks).
#include "common.cuh"
#include "prefill_attention.cuh"

static const int CHUNK = 128;      // keys per block
static const int TOKEN_TILE = 8;   // tokens of one slot scored together per block
static const int MAX_HEAD_DIM = 128;
static const int ATTN_THREADS = 128;

// The angle of pair i at position p, in f32 as the reference rounds it (a product of two floats
// is correctly rounded either way; powf and cosf/sinf are within an ulp or two).
__device__ __forceinline__ void rope_angle(int64_t p, int i, int head_dim, float theta, float* c, float* s) {
  const float inverse = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
  const float angle = (float)p * inverse;
  sincosf(angle, s, c);
}

template <typename T>
__global__ void rope_kernel(const T* x, int64_t ldx, T* out, const int32_t* pos, int64_t period, int heads,
                            int head_dim, float theta) {
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const int64_t p = pos[t % period];
  for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int h = idx / half;
    const int i = idx - h * half;
    float c, s;
    rope_angle(p, i, head_dim, theta, &c, &s);
    const T* src = x + t * ldx + (int64_t)h * head_dim;
    T* dst = out + (t * heads + h) * (int64_t)head_dim;
    const float a = to_f32(src[i]);
    const float b = to_f32(src[i + half]);
    dst[i] = from_f32<T>(a * c - b * s);
    dst[i + half] = from_f32<T>(b * c + a * s);
  }
}

// A block per token: the rotation table of its position once in shared memory ([half] cosines,
// then [half] sines), then every pair of its q heads (rotated into q_out) and of its kv heads
// (written into the caches), one pair a thread at a time.
template <typename T>
__global__ void qkv_prepare_kernel(const T* q, int64_t ldq, const T* k, int64_t ldk, const T* v, int64_t ldv,
                                   T* q_out, T* k_cache, T* v_cache, const int32_t* slots, const int32_t* cache_pos,
                                   const int32_t* rope_pos, int64_t rope_period, int rope_q, int rope_k,
                                   float theta, int heads, int kv_heads, int head_dim, int64_t max_len) {
  extern __shared__ float rotation[];
  pdl_wait();
  pdl_trigger();
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  if (rope_q || rope_k) {
    const int64_t p = rope_pos[t % rope_period];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      rope_angle(p, i, head_dim, theta, &rotation[i], &rotation[half + i]);
    }
    __syncthreads();
  }
  const int64_t cache_row = (int64_t)slots[t] * kv_heads * max_len + cache_pos[t];
  for (int idx = threadIdx.x; idx < (heads + kv_heads) * half; idx += blockDim.x) {
    const int h = idx / half;
    const int i = idx - h * half;
    const bool rotate = h < heads ? rope_q : rope_k;
    const float c = rotate ? rotation[i] : 1.f, s = rotate ? rotation[half + i] : 0.f;
    if (h < heads) {
      const T* src = q + t * ldq + (int64_t)h * head_dim;
      T* dst = q_out + (t * heads + h) * (int64_t)head_dim;
      if (rope_q) {
        const float a = to_f32(src[i]);
        const float b = to_f32(src[i + half]);
        dst[i] = from_f32<T>(a * c - b * s);
        dst[i + half] = from_f32<T>(b * c + a * s);
      } else {
        dst[i] = src[i];
        dst[i + half] = src[i + half];
      }
      continue;
    }
    const int kvh = h - heads;
    const int64_t row = (cache_row + (int64_t)kvh * max_len) * head_dim;
    const T* ks = k + t * ldk + (int64_t)kvh * head_dim;
    const T* vs = v + t * ldv + (int64_t)kvh * head_dim;
    if (rope_k) {
      const float a = to_f32(ks[i]);
      const float b = to_f32(ks[i + half]);
      k_cache[row + i] = from_f32<T>(a * c - b * s);
      k_cache[row + i + half] = from_f32<T>(b * c + a * s);
    } else {
      k_cache[row + i] = ks[i];
      k_cache[row + i + half] = ks[i + half];
    }
    v_cache[row + i] = vs[i];
    v_cache[row + i + half] = vs[i + half];
  }
}

// grid (token tiles, heads, chunks). Shared memory: q tile (f32), scores, one K or V chunk (T,
// rows padded by 2 elements so that threads reading one column of consecutive rows hit distinct banks).
template <typename T>
__global__ void __launch_bounds__(ATTN_THREADS) attention_partial_kernel(
    const T* q, const T* k_cache, const T* v_cache, const int32_t* slots, const int32_t* cache_pos,
    int64_t tokens, int heads, int kv_heads, int head_dim, int64_t max_len, int chunks, float scale,
    float* scratch, int tile, int grouped) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ float shared[];
  float* q_tile = shared;                                 // [TOKEN_TILE][head_dim]
  float* scores = q_tile + TOKEN_TILE * head_dim;         // [TOKEN_TILE][CHUNK]
  int* positions = (int*)(scores + TOKEN_TILE * CHUNK);   // [TOKEN_TILE]
  T* rows = (T*)(positions + TOKEN_TILE);                 // [CHUNK][head_dim + 2]
  const int row_stride = head_dim + 2;

  // grouped (decode): blockIdx.y is a kv head and the block's queries are the q heads sharing it,
  // all of one token; otherwise blockIdx.y is a q head and the queries are tokens of the tile.
  const int group = heads / kv_heads;  // q heads per kv head
  const int kvh = grouped ? (int)blockIdx.y : (int)blockIdx.y / group;
  const int h = blockIdx.y;
  const int chunk = blockIdx.z;
  const int64_t key_start = (int64_t)chunk * CHUNK;
  const int64_t tile_start = (int64_t)blockIdx.x * tile;
  const int64_t tile_end = min(tile_start + tile, tokens);
  const int partial = head_dim + 2;
  const int pairs = TOKEN_TILE * MAX_HEAD_DIM / ATTN_THREADS;  // (token, dim) outputs per thread

  for (int64_t first = tile_start; first < tile_end;) {
    // The run of tokens from `first` on that share its slot.
    const int64_t slot = slots[first];
    int64_t last = first + 1;
    while (last < tile_end && slots[last] == slot) last++;
    const int count = grouped ? group : (int)(last - first);
    // query i: its token, its head, and where its partial result goes
    const auto qtoken = [&](int i) -> int64_t { return grouped ? first : first + i; };
    const auto qhead = [&](int i) -> int { return grouped ? kvh * group + i : h; };
    const auto partial_of = [&](int i) -> float* {
      return scratch + ((qtoken(i) * heads + qhead(i)) * (int64_t)chunks + chunk) * partial;
    };
    int max_pos = 0;
    for (int i = 0; i < count; i++) max_pos = max(max_pos, cache_pos[qtoken(i)]);
    const int64_t key_end = min(key_start + CHUNK, (int64_t)max_pos + 1);
    const int keys = (int)(key_end - key_start);
    if (keys <= 0) {
      for (int idx = threadIdx.x; idx < count * partial; idx += blockDim.x) {
        const int i = idx / partial;
        const int d = idx - i * partial;
        partial_of(i)[d] = d == 0 ? -INFINITY : 0.f;
      }
      first = last;
      continue;
    }
    for (int idx = threadIdx.x; idx < count * head_dim; idx += blockDim.x) {
      const int i = idx / head_dim;
      const int d = idx - i * head_dim;
      q_tile[i * head_dim + d] = to_f32(q[(qtoken(i) * heads + qhead(i)) * (int64_t)head_dim + d]) * scale;
    }
    if (threadIdx.x < count) positions[threadIdx.x] = cache_pos[qtoken((int)threadIdx.x)];
    const T* k_rows = k_cache + ((slot * kv_heads + kvh) * max_len + key_start) * head_dim;
    const T* v_rows = v_cache + ((slot * kv_heads + kvh) * max_len + key_start) * head_dim;
    load_rows<T, CHUNK, MAX_HEAD_DIM, ATTN_THREADS>(k_rows, rows, keys, head_dim, row_stride);
    __syncthreads();
    for (int idx = threadIdx.x; idx < count * CHUNK; idx += blockDim.x) {
      const int i = idx / CHUNK;
      const int j = idx - i * CHUNK;
      float s = -INFINITY;
      if (j < keys && key_start + j <= positions[i]) {
        s = dot_row(q_tile + i * head_dim, rows + j * row_stride, head_dim);
      }
      scores[i * CHUNK + j] = s;
    }
    __syncthreads();
    // Each warp turns the scores of its tokens into exp(s - max), keeping max and sum.
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    for (int i = warp; i < count; i += ATTN_THREADS / 32) {
      float* row = scores + i * CHUNK;
      const float m = warp_row_max(row, CHUNK, lane);
      float sum = 0.f;
      for (int j = lane; j < CHUNK; j += 32) {
        const float e = m == -INFINITY ? 0.f : __expf(row[j] - m);
        row[j] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        float* dst = partial_of(i);
        dst[0] = m;
        dst[1] = sum;
      }
    }
    // The K rows were last read before the barrier above; V takes their place.
    load_rows<T, CHUNK, MAX_HEAD_DIM, ATTN_THREADS>(v_rows, rows, keys, head_dim, row_stride);
    __syncthreads();
    const int outputs = count * head_dim;
    if (outputs * 2 <= ATTN_THREADS) {
      // Few outputs (decode): groups of threads take every groups-th key, then add up in shared memory.
      // (the sums go where the q tile was: at most TOKEN_TILE * head_dim floats)
      const int groups = min(ATTN_THREADS / outputs, TOKEN_TILE * head_dim / outputs);
      const int share = threadIdx.x / outputs;
      const int idx = threadIdx.x - share * outputs;
      float acc = 0.f;
      if (share < groups) {
        const int i = idx / head_dim;
        const int d = idx - i * head_dim;
        const float* weights = scores + i * CHUNK;
        for (int j = share; j < keys; j += groups) acc += weights[j] * to_f32(rows[j * row_stride + d]);
      }
      __syncthreads();
      float* sums = q_tile;  // q is no longer needed
      if (share < groups) sums[share * outputs + idx] = acc;
      __syncthreads();
      if (threadIdx.x < outputs) {
        float total = 0.f;
        for (int g = 0; g < groups; g++) total += sums[g * outputs + threadIdx.x];
        const int i = threadIdx.x / head_dim;
        const int d = threadIdx.x - i * head_dim;
        partial_of(i)[2 + d] = total;
      }
    } else {
#pragma unroll
      for (int p = 0; p < pairs; p++) {
        const int idx = threadIdx.x + p * ATTN_THREADS;
        if (idx >= outputs) break;
        const int i = idx / head_dim;
        const int d = idx - i * head_dim;
        const float* weights = scores + i * CHUNK;
        float acc = 0.f;
        for (int j = 0; j < keys; j++) acc += weights[j] * to_f32(rows[j * row_stride + d]);
        partial_of(i)[2 + d] = acc;
      }
    }
    __syncthreads();
    first = last;
  }
}

template <typename T>
__global__ void attention_merge_kernel(const float* scratch, T* out, int heads, int head_dim, int chunks) {
  pdl_wait();
  pdl_trigger();
  const int64_t th = blockIdx.x;  // token * heads + head
  const int partial = head_dim + 2;
  const float* base = scratch + th * chunks * partial;
  float m = -INFINITY;
  for (int c = 0; c < chunks; c++) m = fmaxf(m, base[c * partial]);
  float total = 0.f;
  for (int c = 0; c < chunks; c++) {
    const float mc = base[c * partial];
    if (mc != -INFINITY) total += base[c * partial + 1] * __expf(mc - m);
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int c = 0; c < chunks; c++) {
      const float mc = base[c * partial];
      if (mc != -INFINITY) acc += base[c * partial + 2 + d] * __expf(mc - m);
    }
    out[th * head_dim + d] = from_f32<T>(acc / total);
  }
}

static int chunks_of(int64_t span) { return (int)((span + CHUNK - 1) / CHUNK); }

extern "C" int64_t rf_attention_scratch_bytes(int tokens, int heads, int head_dim, int span) {
  return tokens * heads * (int64_t)chunks_of(span) * (head_dim + 2) * (int64_t)sizeof(float);
}

extern "C" int rf_rope(int dtype, const void* x, int ldx, void* out, const int32_t* pos, int period,
                       int tokens, int heads, int head_dim, float theta, void* stream) {
  if (tokens <= 0) return 0;
  if (head_dim % 2 != 0 || period <= 0) return static_cast<int>(cudaErrorInvalidValue);
  RF_DISPATCH(dtype, (rope_kernel<T><<<(unsigned)tokens, 128, 0, RF_STREAM(stream)>>>(
                         (const T*)x, ldx, (T*)out, pos, period, heads, head_dim, theta)));
  return rf_launched();
}

extern "C" int rf_qkv_prepare(int dtype, const void* q, int ldq, const void* k, int ldk, const void* v,
                              int ldv, void* q_out, void* k_cache, void* v_cache, const int32_t* slots,
                              const int32_t* cache_pos, const int32_t* rope_pos, int rope_period, int rope_q,
                              int rope_k, float theta, int tokens, int heads, int kv_heads, int head_dim,
                              int max_len, void* stream) {
  if (tokens <= 0) return 0;
  if (head_dim % 2 != 0 || kv_heads <= 0 || heads % kv_heads != 0) return static_cast<int>(cudaErrorInvalidValue);
  if ((rope_q || rope_k) && (!rope_pos || rope_period <= 0)) return static_cast<int>(cudaErrorInvalidValue);
  const int pairs = (heads + kv_heads) * (head_dim / 2);
  const int threads = pairs >= 256 ? 256 : (pairs + 31) / 32 * 32;
  const size_t rotation = sizeof(float) * head_dim;
  RF_DISPATCH(dtype, return rf_launch(qkv_prepare_kernel<T>, dim3((unsigned)tokens), dim3(threads), rotation,
                                      RF_STREAM(stream), (const T*)q,
                                      ldq, (const T*)k, ldk, (const T*)v, ldv, (T*)q_out, (T*)k_cache, (T*)v_cache,
                                      slots, cache_pos, rope_pos, rope_period, rope_q, rope_k, theta, heads, kv_heads,
                                      head_dim, max_len));
  return 0;
}

extern "C" int rf_attention(int dtype, const void* q, void* out, const void* k_cache, const void* v_cache,
                            const int32_t* slots, const int32_t* cache_pos, int tokens, int heads,
                            int kv_heads, int head_dim, int max_len, int span, float scale,
                            float* scratch, void* stream) {
  if (tokens <= 0) return 0;
  if (head_dim > MAX_HEAD_DIM || head_dim % 8 != 0 || kv_heads <= 0 || heads % kv_heads != 0 || span <= 0 ||
      span > max_len) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  // Decode batches hold one token per slot: a block per token spreads them, and a block takes all
  // q heads of one kv head (reading each K/V chunk once for them). Longer runs of one slot
  // (prompts) run on tensor cores where the dtype and head_dim allow, else share each K/V chunk
  // among a tile of tokens.
  const bool decode = tokens <= 64;
  if (!decode && tensor_core_prefill_fits(dtype, head_dim)) {
    return tensor_core_prefill(dtype, q, out, k_cache, v_cache, slots, cache_pos, tokens, heads, kv_heads, head_dim,
                               max_len, scale, RF_STREAM(stream));
  }
  const int tile = decode ? 1 : TOKEN_TILE;
  const int grouped = decode && heads / kv_heads <= TOKEN_TILE ? 1 : 0;
  const int chunks = chunks_of(span);
  const dim3 grid((unsigned)((tokens + tile - 1) / tile), (unsigned)(grouped ? kv_heads : heads), (unsigned)chunks);
  RF_DISPATCH(dtype, {
    const size_t bytes = sizeof(float) * (TOKEN_TILE * head_dim + TOKEN_TILE * CHUNK) + sizeof(int) * TOKEN_TILE +
                         sizeof(T) * CHUNK * (head_dim + 2);
    if (bytes > 48 * 1024) {  // f32 at head sizes over 80
      const cudaError_t raised =
          cudaFuncSetAttribute(attention_partial_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
      if (raised != cudaSuccess) return static_cast<int>(raised);
    }
    const int rc = rf_launch(attention_partial_kernel<T>, grid, dim3(ATTN_THREADS), bytes, RF_STREAM(stream),
                             (const T*)q, (const T*)k_cache, (const T*)v_cache, slots, cache_pos, (int64_t)tokens,
                             heads, kv_heads, head_dim, (int64_t)max_len, chunks, scale, scratch, tile, grouped);
    if (rc != 0) return rc;
    return rf_launch(attention_merge_kernel<T>, dim3((unsigned)(tokens * heads)), dim3(64), 0, RF_STREAM(stream),
                     (const float*)scratch, (T*)out, heads, head_dim, chunks);
  });
  return 0;
}
