// Decode attention in one launch: every token of the run belongs to another slot and is the next
// token of its sequence. Each block takes one token, one q head and one chunk of KEYS keys of the
// cache (256 in f16/bf16, 128 in f32), a warp for each 32 of them, and
// - loads the chunk's keys and values that earlier steps wrote before pdl_wait(), overlapping the
//   kernel before (the product that makes this step's q, k and v): into registers (DecodeLanes),
//   else into shared memory;
// - rotates q and, in the chunk that holds the token's own position, the new k; the first q head
//   of each kv head writes k and v into the caches (this is rf_qkv_prepare's work);
// - scores its keys with each lane holding head_dim / 32 of the dimensions, a warp's 32 dot
//   products summed across the lanes in one butterfly (31 shuffles, lane l ends with key l);
// - where the token's keys fit in one chunk (up to 256 positions in f16/bf16), writes the output
//   at once; else leaves a partial softmax (max, sum, weighted values), and the last block of the
//   token's q head to finish merges the chunks (a counter per token and q head, which the merging
//   block resets to 0: the counters must start zeroed once, and be used by nothing else).
// The numerics are those of rf_qkv_prepare followed by rf_attention: q and k are rounded to the
// dtype after rotation, scores and softmax are f32.
#include <type_traits>

#include "common.cuh"

static const int MAX_HEAD_DIM = 128;

template <typename T>
struct DecodeShape {
  static constexpr int KEYS = sizeof(T) == 4 ? 128 : 256;  // keys a block, a warp for each 32
  static constexpr int THREADS = KEYS;
};

// Where a lane's DPL dimensions of its warp's 32 cached rows wait: in registers where they make a 4-
// or 8-byte vector (f16/bf16 heads of 33 to 128, f32 heads up to 64), so that the block needs no
// shared memory for them and can sit beside the kernel before it; else in shared memory.
template <typename T, int DPL>
struct DecodeLanes {
  static constexpr int BYTES = DPL * (int)sizeof(T);
  static constexpr bool IN_REGISTERS = BYTES == 4 || BYTES == 8;
  using Vec = std::conditional_t<BYTES == 8, uint2, uint32_t>;
  static size_t shared_bytes(int head_dim) {
    return IN_REGISTERS ? 0 : 2 * sizeof(T) * DecodeShape<T>::KEYS * head_dim;
  }
};

// The angle as rf_qkv_prepare computes it; not inlined, which keeps sincosf's long argument
// reduction out of this kernel's registers (it is called while few of them are live).
__device__ __noinline__ void decode_rope_angle(int64_t p, int i, int head_dim, float theta, float* c, float* s) {
  const float inverse = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
  sincosf((float)p * inverse, s, c);
}

// `bytes` (a multiple of 16) from global to shared memory, 16 bytes a thread at a time, in flight
// until cp.async.wait_all.
__device__ __forceinline__ void copy_async(void* dst, const void* src, int bytes) {
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  for (int at = threadIdx.x * 16; at < bytes; at += blockDim.x * 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(base + at),
                 "l"(static_cast<const char*>(src) + at)
                 : "memory");
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// A lane's DPL consecutive elements of a row in shared memory, as f32 (one vector load where they
// make one).
template <typename T, int DPL>
__device__ __forceinline__ void lane_elements(const T* at, float* out) {
  if constexpr (DPL * sizeof(T) == 4 || DPL * sizeof(T) == 8 || DPL * sizeof(T) == 16) {
    using Vec = std::conditional_t<DPL * sizeof(T) == 4, uint32_t,
                                   std::conditional_t<DPL * sizeof(T) == 8, uint2, uint4>>;
    const Vec raw = *reinterpret_cast<const Vec*>(at);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int e = 0; e < DPL; e++) out[e] = to_f32(v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < DPL; e++) out[e] = to_f32(at[e]);
  }
}

// One step of transpose_sum: lanes that differ in bit `WIDTH` swap halves of v[0 .. 2 WIDTH) and
// each keeps the sum of the half its bit names, in v[0 .. WIDTH).
template <int WIDTH>
__device__ __forceinline__ void transpose_step(float (&v)[32], bool upper) {
#pragma unroll
  for (int i = 0; i < WIDTH; i++) {
    const float lo = v[i], hi = v[i + WIDTH];
    const float received = __shfl_xor_sync(0xffffffffu, upper ? lo : hi, WIDTH);
    v[i] = (upper ? hi : lo) + received;
  }
}

// v[i] summed over the warp's lanes for i < 32: lane l gets the sum of v[l] (31 shuffles).
__device__ __forceinline__ float transpose_sum(float (&v)[32]) {
  const int lane = threadIdx.x & 31;
  transpose_step<16>(v, lane & 16);
  transpose_step<8>(v, lane & 8);
  transpose_step<4>(v, lane & 4);
  transpose_step<2>(v, lane & 2);
  transpose_step<1>(v, lane & 1);
  return v[0];
}

template <typename T>
struct DecodeArgs {
  const T *q, *k, *v;
  int64_t ldq, ldk, ldv;
  T *k_cache, *v_cache;
  const int32_t *slots, *cache_pos, *rope_pos;
  int64_t rope_period;
  int rope_q, rope_k;
  float theta;
  int heads, kv_heads, head_dim;
  int64_t max_len;
  float scale;
  float* scratch;
  int* counters;
  T* out;
};

template <typename T, int DPL>
__global__ void __launch_bounds__(DecodeShape<T>::THREADS) decode_attention_kernel(const DecodeArgs<T> a) {
  constexpr int KEYS = DecodeShape<T>::KEYS;
  constexpr int WARPS = KEYS / 32;
  const T *q = a.q, *k = a.k, *v = a.v;
  T *k_cache = a.k_cache, *v_cache = a.v_cache;
  const int heads = a.heads, kv_heads = a.kv_heads, head_dim = a.head_dim;
  const int64_t ldq = a.ldq, ldk = a.ldk, ldv = a.ldv, max_len = a.max_len;
  const int rope_q = a.rope_q, rope_k = a.rope_k;
  const float scale = a.scale;
  using Lanes = DecodeLanes<T, DPL>;
  using Vec = typename Lanes::Vec;
  constexpr bool REGS = Lanes::IN_REGISTERS;
  extern __shared__ __align__(16) unsigned char decode_shared[];
  T* k_rows = reinterpret_cast<T*>(decode_shared);  // [KEYS][head_dim], where not in registers
  T* v_rows = k_rows + KEYS * head_dim;
  __shared__ __align__(16) T own_k[MAX_HEAD_DIM], own_v[MAX_HEAD_DIM];  // the new row, in registers' case
  __shared__ float q_s[MAX_HEAD_DIM];
  __shared__ float weights[KEYS];
  __shared__ float sums[WARPS][MAX_HEAD_DIM];
  __shared__ float rot_cos[MAX_HEAD_DIM / 2], rot_sin[MAX_HEAD_DIM / 2];
  __shared__ bool last_block;

  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const int chunk = blockIdx.z;
  const int chunks = gridDim.z;
  // slots, cache positions and rope positions are copied in before the step's first kernel
  const int64_t pos = a.cache_pos[t];
  const int64_t slot = a.slots[t];  // loaded with pos: one round trip for both
  const int64_t key_start = (int64_t)chunk * KEYS;
  // A chunk past the token's position has nothing to do; it needs no wait (it reads nothing the
  // kernel before writes), and leaving at once frees its place for the blocks that work.
  if (pos + 1 - key_start <= 0) return;
  const int half = head_dim / 2;
  if ((rope_q || rope_k) && (int)threadIdx.x < half) {
    const int d = threadIdx.x;  // half ≤ 64 < blockDim.x
    decode_rope_angle(a.rope_pos[t % a.rope_period], d, head_dim, a.theta, &rot_cos[d], &rot_sin[d]);
  }
  const int keys = (int)min((int64_t)KEYS, pos + 1 - key_start);
  const int used = (int)(pos / KEYS) + 1;  // chunks holding keys of this token
  const int group = heads / kv_heads;
  const int kvh = h / group;
  const int64_t cache_row = ((slot * kv_heads + kvh) * max_len + key_start) * head_dim;
  const bool own = pos < key_start + KEYS;  // this chunk holds the token's own position
  const int earlier = own ? keys - 1 : keys;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int d0 = lane * DPL;  // this lane's dimensions: d0 .. d0 + DPL - 1
  const bool lane_on = d0 < head_dim;
  const int j0 = warp * 32;  // this warp's keys: j0 .. j0 + 31
  Vec kr[REGS ? 32 : 1], vr[REGS ? 32 : 1];
  if constexpr (REGS) {
#pragma unroll
    for (int i = 0; i < 32; i++) {
      if (lane_on && j0 + i < earlier) {
        const int64_t at = cache_row + (int64_t)(j0 + i) * head_dim + d0;
        kr[i] = __ldg(reinterpret_cast<const Vec*>(k_cache + at));
        vr[i] = __ldg(reinterpret_cast<const Vec*>(v_cache + at));
      }
    }
  } else {
    const int row_bytes = head_dim * (int)sizeof(T);
    copy_async(k_rows, k_cache + cache_row, earlier * row_bytes);
    copy_async(v_rows, v_cache + cache_row, earlier * row_bytes);
  }
  __syncthreads();
  pdl_wait();

  // q of this head, then (in the chunk that holds it) the token's own k and v.
  const int items = half + (own ? half : 0);
  const int j_own = keys - 1;
  for (int idx = threadIdx.x; idx < items; idx += blockDim.x) {
    if (idx < half) {
      const int d = idx;
      const T* src = q + t * ldq + (int64_t)h * head_dim;
      float a = to_f32(src[d]), b = to_f32(src[d + half]);
      if (rope_q) {
        const float c = rot_cos[d], s = rot_sin[d];
        const float ra = a * c - b * s, rb = b * c + a * s;
        a = ra;
        b = rb;
      }
      q_s[d] = to_f32(from_f32<T>(a)) * scale;
      q_s[d + half] = to_f32(from_f32<T>(b)) * scale;
      continue;
    }
    const int d = idx - half;
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
    T* k_new = REGS ? own_k : k_rows + j_own * head_dim;
    T* v_new = REGS ? own_v : v_rows + j_own * head_dim;
    k_new[d] = ka;
    k_new[d + half] = kb;
    v_new[d] = va;
    v_new[d + half] = vb;
    if (h % group == 0) {  // one block of the kv head writes the caches
      T* kc = k_cache + cache_row + (int64_t)j_own * head_dim;
      T* vc = v_cache + cache_row + (int64_t)j_own * head_dim;
      kc[d] = ka;
      kc[d + half] = kb;
      vc[d] = va;
      vc[d + half] = vb;
    }
  }
  if constexpr (!REGS) asm volatile("cp.async.wait_all;" ::: "memory");
  __syncthreads();
  pdl_trigger();

  // The lane's elements of key or value row j0 + i (i known at compile time where REGS).
  const auto row_of = [&](const Vec* held, const T* rows, const T* fresh, int i, float* out) {
    if constexpr (REGS) {
      if (own && j0 + i == j_own) {
        lane_elements<T, DPL>(fresh + d0, out);
      } else {
        const T* v = reinterpret_cast<const T*>(&held[i]);
#pragma unroll
        for (int e = 0; e < DPL; e++) out[e] = to_f32(v[e]);
      }
    } else {
      lane_elements<T, DPL>(rows + (j0 + i) * head_dim + d0, out);
    }
  };
  float qr[DPL];
#pragma unroll
  for (int e = 0; e < DPL; e++) qr[e] = lane_on ? q_s[d0 + e] : 0.f;
  float dots[32];
#pragma unroll
  for (int i = 0; i < 32; i++) {
    dots[i] = 0.f;
    if (lane_on && j0 + i < keys) {
      float kv[DPL];
      row_of(kr, k_rows, own_k, i, kv);
#pragma unroll
      for (int e = 0; e < DPL; e++) dots[i] += qr[e] * kv[e];
    }
  }
  const float sum = transpose_sum(dots);  // every lane takes part
  const float score = j0 + lane < keys ? sum : -INFINITY;
  const float m = block_max(score);
  const float e = j0 + lane < keys ? __expf(score - m) : 0.f;
  weights[j0 + lane] = e;
  const float total = block_sum(e);  // its barriers also publish `weights`

  float acc[DPL];
#pragma unroll
  for (int x = 0; x < DPL; x++) acc[x] = 0.f;
  if (lane_on) {
#pragma unroll
    for (int i = 0; i < 32; i++) {
      if (j0 + i < keys) {
        const float w = weights[j0 + i];
        float vv[DPL];
        row_of(vr, v_rows, own_v, i, vv);
#pragma unroll
        for (int x = 0; x < DPL; x++) acc[x] += w * vv[x];
      }
    }
#pragma unroll
    for (int x = 0; x < DPL; x++) sums[warp][d0 + x] = acc[x];
  }
  __syncthreads();
  float o = 0.f;
  if ((int)threadIdx.x < head_dim) {
    for (int w = 0; w < WARPS; w++) o += sums[w][threadIdx.x];
  }
  T* dst = a.out + (t * heads + h) * (int64_t)head_dim;
  if (used == 1) {
    if ((int)threadIdx.x < head_dim) dst[threadIdx.x] = from_f32<T>(o / total);
    return;
  }

  // The last of the `used` blocks of this token and q head merges their partials.
  const int partial = head_dim + 2;
  const auto partial_of = [&](int c) -> float* {
    return a.scratch + ((t * heads + h) * (int64_t)chunks + c) * partial;
  };
  if (threadIdx.x == 0) {
    partial_of(chunk)[0] = m;
    partial_of(chunk)[1] = total;
  }
  if ((int)threadIdx.x < head_dim) partial_of(chunk)[2 + threadIdx.x] = o;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = a.counters + t * heads + h;
    last_block = atomicAdd(counter, 1) == used - 1;
    if (last_block) *counter = 0;
  }
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  const int d = threadIdx.x;
  if (d >= head_dim) return;
  // One pass over the chunks with a running max, 8 chunks' loads in flight at a time.
  constexpr int AHEAD = 8;
  float mm = -INFINITY, all = 0.f, merged = 0.f;
  for (int c0 = 0; c0 < used; c0 += AHEAD) {
    float mc[AHEAD], sc[AHEAD], ac[AHEAD];
#pragma unroll
    for (int j = 0; j < AHEAD; j++) {
      mc[j] = -INFINITY;
      sc[j] = ac[j] = 0.f;
      if (c0 + j < used) {
        const float* part = partial_of(c0 + j);
        mc[j] = __ldcg(part);
        sc[j] = __ldcg(part + 1);
        ac[j] = __ldcg(part + 2 + d);
      }
    }
#pragma unroll
    for (int j = 0; j < AHEAD; j++) {
      if (mc[j] == -INFINITY) continue;
      const float next = fmaxf(mm, mc[j]);
      const float keep = mm == -INFINITY ? 0.f : __expf(mm - next);
      const float w = __expf(mc[j] - next);
      all = all * keep + sc[j] * w;
      merged = merged * keep + ac[j] * w;
      mm = next;
    }
  }
  dst[d] = from_f32<T>(merged / all);
}

static int decode_chunks(int span, int keys) { return (span + keys - 1) / keys; }

extern "C" int64_t rf_decode_attention_scratch_bytes(int tokens, int heads, int head_dim, int span) {
  // f32's chunks are the smaller: enough for every dtype
  return (int64_t)tokens * heads * decode_chunks(span, DecodeShape<float>::KEYS) * (head_dim + 2) * sizeof(float);
}

template <typename T, int DPL>
static int decode_attention_launch(dim3 grid, cudaStream_t stream, const DecodeArgs<T>& args) {
  const auto kernel = decode_attention_kernel<T, DPL>;
  const size_t bytes = DecodeLanes<T, DPL>::shared_bytes(args.head_dim);
  if (bytes > 48 * 1024) {
    const cudaError_t rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (rc != cudaSuccess) return static_cast<int>(rc);
  }
  return rf_launch(kernel, grid, dim3(DecodeShape<T>::THREADS), bytes, stream, args);
}

template <typename T>
static int decode_attention_typed(int tokens, int span, cudaStream_t stream, const DecodeArgs<T>& args) {
  const dim3 grid((unsigned)tokens, (unsigned)args.heads, (unsigned)decode_chunks(span, DecodeShape<T>::KEYS));
  // dimensions a lane: head_dim / 32 rounded up, to a count that divides head_dim
  int dpl = (args.head_dim + 31) / 32;
  while (args.head_dim % dpl != 0) dpl++;
  switch (dpl) {
    case 1:
      return decode_attention_launch<T, 1>(grid, stream, args);
    case 2:
      return decode_attention_launch<T, 2>(grid, stream, args);
    case 3:
      return decode_attention_launch<T, 3>(grid, stream, args);
    default:
      return decode_attention_launch<T, 4>(grid, stream, args);
  }
}

extern "C" int rf_decode_attention(int dtype, const void* q, int ldq, const void* k, int ldk, const void* v, int ldv,
                                   void* k_cache, void* v_cache, const int32_t* slots, const int32_t* cache_pos,
                                   const int32_t* rope_pos, int rope_period, int rope_q, int rope_k, float theta,
                                   int tokens, int heads, int kv_heads, int head_dim, int max_len, int span,
                                   float scale, float* scratch, int* counters, void* out,
                                   void* stream) {
  if (tokens <= 0) return 0;
  if (head_dim > MAX_HEAD_DIM || head_dim % 8 != 0 || kv_heads <= 0 || heads % kv_heads != 0 ||
      span <= 0 || span > max_len) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if ((rope_q || rope_k) && (!rope_pos || rope_period <= 0)) return static_cast<int>(cudaErrorInvalidValue);
  RF_DISPATCH(dtype, {
    const DecodeArgs<T> args = {(const T*)q,  (const T*)k, (const T*)v, ldq,       ldk,     ldv,
                                (T*)k_cache,  (T*)v_cache, slots,       cache_pos, rope_pos, rope_period,
                                rope_q,       rope_k,      theta,       heads,     kv_heads, head_dim,
                                max_len,      scale,       scratch,     counters,  (T*)out};
    return decode_attention_typed<T>(tokens, span, RF_STREAM(stream), args);
  });
  return 0;
}
