// The one-row product's work for one block, shared by its own kernel (gemv.cu) and by the kernel
// that runs it beside decode attention (decode_attention.cu), and the parameters of every
// few-row product.
#pragma once
#include "common.cuh"

static const int GEMV_WARPS = 8;

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

// Where rf_qkv_attention's product also stores its rows for the attention blocks of its launch:
// each pair of rows (2j, 2j + 1) as one 64-bit word, the two values below the tag of the kv head
// the rows belong to (its decode-attention generation plus one, read from `states`, 4 ints a kv
// head). Rows of q come first (`q_rows` of them, `group` heads a kv head), then k's and v's
// (`kv_rows` each).
struct TaggedRows {
  unsigned long long* words;
  const int* states;
  int q_rows, kv_rows, head_dim, group;

  __device__ __forceinline__ int kv_head(int row) const {
    return row < q_rows ? row / head_dim / group : (row - q_rows) % kv_rows / head_dim;
  }
};

// One row of x: warp w of a block takes pair w / SLICES over the slice w % SLICES of k (U vectors
// of 16 bytes per lane per row), with x's slice in registers; the slices' norms and dot products
// add up in shared memory.
template <typename T, int SLICES, int U>
__device__ __forceinline__ void gemv_one_body(const GemvParams<T>& p, int block, int blocks,
                                              const TaggedRows* tagged = nullptr) {
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
  unsigned tag = 0;
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
    if (activations && tagged) tag = max((unsigned)__ldcg(tagged->states + 4 * tagged->kv_head(a)) + 1u, 1u);
  };

  int group = block;
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

  for (; group < groups; group += blocks) {
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
    load(group + blocks);  // in flight during the reduction
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
        if (tagged) {
          const T pair_values[2] = {from_f32<T>(va), from_f32<T>(vb)};
          unsigned pair_bits = 0;
          memcpy(&pair_bits, pair_values, sizeof(pair_bits));
          const unsigned long long word = ((unsigned long long)tag << 32) | pair_bits;
          asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(tagged->words + a / 2), "l"(word) : "memory");
        }
      }
    }
    fetch_extra(group + blocks, true, true);
    if (SLICES > 1) __syncthreads();
  }
  RF_TRACE_END(RF_TRACE_PRODUCT, ((p.k / 256) << 16) | (p.n / 16));
}

