// The decode products of a Llama-3.2-1B-shaped model through rf_gemv, beside the copy-bandwidth
// floor of the same GPU: each product alone, then one whole step's 65 products captured in a CUDA
// graph with and without programmatic launch; and the one-launch decode attention alone. Also
// checks the fused forms (norm prologue, gated epilogue, residual) against the unfused kernels.
// Built by CMake as build/native/rankflow_bench_products; deno task bench:kernels runs it.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "rankflow_kernels.h"

#define CHECK(call)                                                                        \
  do {                                                                                     \
    cudaError_t rc_ = (cudaError_t)(call);                                                 \
    if (rc_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(rc_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

using bf16 = __nv_bfloat16;

__global__ void fill_kernel(bf16* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16(((float)(h & 0xffff) / 65535.f - 0.5f) * scale);
  }
}

// Reference: out[m, n] = sum_k x[m, k] w[n, k] in f32, one thread per output.
__global__ void naive_kernel(const bf16* x, const bf16* w, float* out, int m, int n, int k) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= m * n) return;
  const int r = idx / n, c = idx % n;
  float acc = 0.f;
  for (int i = 0; i < k; i++) acc += __bfloat162float(x[(size_t)r * k + i]) * __bfloat162float(w[(size_t)c * k + i]);
  out[idx] = acc;
}

static bf16* random_bf16(size_t n, uint32_t seed, float scale) {
  bf16* p;
  CHECK(cudaMalloc(&p, n * sizeof(bf16)));
  fill_kernel<<<1024, 256>>>(p, n, seed, scale);
  CHECK(cudaGetLastError());
  return p;
}

static std::vector<float> host_f32(const bf16* p, size_t n) {
  std::vector<bf16> h(n);
  CHECK(cudaMemcpy(h.data(), p, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; i++) out[i] = __bfloat162float(h[i]);
  return out;
}

static float silu(float x) { return x / (1.f + std::exp(-x)); }

struct Product {
  const char* name;
  int n, k;
  bool norm, gated, residual;
};

static void check(int rc, const char* what) {
  if (rc != 0) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString((cudaError_t)rc));
    std::exit(1);
  }
}

// Largest |fused - reference| / (max |reference| + tiny) over the outputs.
static int verify(cudaStream_t s) {
  const int m = 3, n = 384, k = 1024;
  bf16* x = random_bf16((size_t)m * k, 1, 4.f);
  bf16* g = random_bf16(k, 2, 2.f);
  bf16* w = random_bf16((size_t)n * k, 3, 0.2f);
  bf16* r = random_bf16((size_t)m * n, 4, 1.f);
  bf16 *xn, *out, *gated;
  float* ref;
  CHECK(cudaMalloc(&xn, (size_t)m * k * sizeof(bf16)));
  CHECK(cudaMalloc(&out, (size_t)m * n * sizeof(bf16)));
  CHECK(cudaMalloc(&gated, (size_t)m * n / 2 * sizeof(bf16)));
  CHECK(cudaMalloc(&ref, (size_t)m * n * sizeof(float)));
  check(rf_rmsnorm(RF_BF16, x, k, g, xn, m, k, 1e-5f, s), "rmsnorm");
  naive_kernel<<<(m * n + 127) / 128, 128, 0, s>>>(xn, w, ref, m, n, k);
  check(rf_gemv(RF_BF16, m, x, k, g, 1e-5f, w, nullptr, r, out, n, n, k, 0, s), "gemv norm+residual");
  check(rf_gemv(RF_BF16, m, x, k, g, 1e-5f, w, nullptr, nullptr, gated, n / 2, n, k, 1, s), "gemv gated");
  CHECK(cudaStreamSynchronize(s));
  std::vector<float> h_ref(m * n);
  CHECK(cudaMemcpy(h_ref.data(), ref, h_ref.size() * 4, cudaMemcpyDeviceToHost));
  const auto h_out = host_f32(out, (size_t)m * n), h_res = host_f32(r, (size_t)m * n);
  const auto h_gated = host_f32(gated, (size_t)m * n / 2);
  double worst = 0, worst_gated = 0, scale = 1e-6;
  for (float v : h_ref) scale = std::max(scale, (double)std::fabs(v));
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      const float expect = h_ref[i * n + j] + h_res[i * n + j];
      worst = std::max(worst, std::fabs(h_out[i * n + j] - expect) / scale);
      if (j < n / 2) {
        const float gate = h_ref[i * n + j], up = h_ref[i * n + j + n / 2];
        worst_gated = std::max(worst_gated, std::fabs(h_gated[i * (n / 2) + j] - silu(gate) * up) / scale);
      }
    }
  std::printf("check: norm + residual max error %.2e of max |y|; norm + gated %.2e (bf16 limit 2e-2)\n", worst,
              worst_gated);
  return worst < 2e-2 && worst_gated < 2e-2 ? 0 : 1;
}

int main() {
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d multiprocessors, programmatic launch %s\n", prop.name, prop.multiProcessorCount,
              rf_set_programmatic_launch(1) == 1 ? "available" : "unavailable");
  rf_set_programmatic_launch(0);
  int failed = verify(s);

  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  // Copy bandwidth: 2 GiB device to device, bytes read + written.
  const size_t copy = (size_t)2 << 30;
  void *src, *dst;
  CHECK(cudaMalloc(&src, copy));
  CHECK(cudaMalloc(&dst, copy));
  CHECK(cudaMemsetAsync(src, 1, copy, s));
  float best = 1e9;
  for (int i = 0; i < 6; i++) {
    CHECK(cudaEventRecord(a, s));
    CHECK(cudaMemcpyAsync(dst, src, copy, cudaMemcpyDeviceToDevice, s));
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    if (i > 0) best = std::min(best, ms);
  }
  CHECK(cudaFree(src));
  CHECK(cudaFree(dst));
  const double bandwidth = 2.0 * copy / (best * 1e-3);
  std::printf("copy bandwidth %.2f TB/s (read + write)\n\n", bandwidth / 1e12);

  const int hidden = 2048, layers = 16, vocab = 128256;
  const Product shapes[] = {{"qkv (norm)", 3072, hidden, true, false, false},
                            {"o (residual)", hidden, hidden, false, false, true},
                            {"gate·up (norm, gated)", 16384, hidden, true, true, false},
                            {"down (residual)", hidden, 8192, false, false, true},
                            {"head (norm)", vocab, hidden, true, false, false}};
  // Weights for every layer, so that the step streams 2.47 GB as a model's would.
  std::vector<bf16*> weights;
  size_t weight_bytes = 0;
  for (int l = 0; l < layers; l++)
    for (int p = 0; p < 4; p++) {
      weights.push_back(random_bf16((size_t)shapes[p].n * shapes[p].k, 10 + l * 4 + p, 0.05f));
      weight_bytes += (size_t)shapes[p].n * shapes[p].k * 2;
    }
  bf16* head = random_bf16((size_t)vocab * hidden, 99, 0.05f);
  weight_bytes += (size_t)vocab * hidden * 2;
  bf16* gamma = random_bf16(8192, 7, 1.f);
  bf16* h = random_bf16(8 * 8192, 8, 1.f);
  bf16* act = random_bf16(8 * 16384, 9, 1.f);
  bf16* out;
  CHECK(cudaMalloc(&out, (size_t)8 * vocab * sizeof(bf16)));

  const auto launch = [&](int m, const Product& p, const bf16* w) {
    const bf16* x = p.k == hidden ? h : act;
    const int width = p.gated ? p.n / 2 : p.n;
    check(rf_gemv(RF_BF16, m, x, p.k, p.norm ? gamma : nullptr, 1e-5f, w, nullptr, p.residual ? out : nullptr,
                  out, width, p.n, p.k, p.gated ? 1 : 0, s),
          p.name);
  };
  const auto graph_of = [&](auto body) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    body();
    CHECK(cudaStreamEndCapture(s, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CHECK(cudaGraphDestroy(graph));
    return exec;
  };
  const auto time_graph = [&](cudaGraphExec_t exec, int reps) {
    CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaStreamSynchronize(s));
    std::vector<float> times;
    for (int i = 0; i < reps; i++) {
      CHECK(cudaEventRecord(a, s));
      CHECK(cudaGraphLaunch(exec, s));
      CHECK(cudaEventRecord(b, s));
      CHECK(cudaEventSynchronize(b));
      float ms;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  };

  std::printf("Each product alone: 16 launches of it over different weights in one graph, median per launch\n");
  std::printf("| product | rows | n × k | µs | TB/s | of copy bandwidth |\n|---|---:|---:|---:|---:|---:|\n");
  for (int m : {1, 4, 8}) {
    for (int p = 0; p < 5; p++) {
      const Product& shape = shapes[p];
      const int count = p == 4 ? 2 : layers;
      cudaGraphExec_t exec = graph_of([&] {
        for (int l = 0; l < count; l++) launch(m, shape, p == 4 ? head : weights[l * 4 + p]);
      });
      const double us = time_graph(exec, 20) * 1e3 / count;
      const double tbs = (double)shape.n * shape.k * 2 / (us * 1e-6) / 1e12;
      std::printf("| %s | %d | %d × %d | %.1f | %.2f | %.0f%% |\n", shape.name, m, shape.n, shape.k, us, tbs,
                  100 * tbs * 1e12 / bandwidth);
      CHECK(cudaGraphExecDestroy(exec));
    }
  }

  std::printf("\nOne decode step's products (16 layers × 4 + head, %.3f GB), in one graph\n", weight_bytes / 1e9);
  std::printf("| rows | programmatic launch | ms | floor ms | × floor |\n|---:|---|---:|---:|---:|\n");
  const double floor_ms = weight_bytes / bandwidth * 1e3;
  for (int m : {1, 8}) {
    for (int pdl : {0, 1}) {
      rf_set_programmatic_launch(pdl);
      cudaGraphExec_t exec = graph_of([&] {
        for (int l = 0; l < layers; l++)
          for (int p = 0; p < 4; p++) launch(m, shapes[p], weights[l * 4 + p]);
        launch(m, shapes[4], head);
      });
      const double ms = time_graph(exec, 30);
      std::printf("| %d | %s | %.3f | %.3f | %.2f× |\n", m, pdl ? "on" : "off", ms, floor_ms, ms / floor_ms);
      CHECK(cudaGraphExecDestroy(exec));
    }
  }
  rf_set_programmatic_launch(0);

  // Decode attention of one token, Llama-3.2-1B heads (32 q, 8 kv, 64 dims), 16 layers' caches.
  {
    const int heads = 32, kv_heads = 8, head_dim = 64, max_len = 1080;
    const size_t cache = (size_t)kv_heads * max_len * head_dim;
    std::vector<bf16*> k_caches, v_caches;
    for (int l = 0; l < layers; l++) {
      k_caches.push_back(random_bf16(cache, 200 + l, 1.f));
      v_caches.push_back(random_bf16(cache, 300 + l, 1.f));
    }
    bf16* qkv = random_bf16(3072, 400, 1.f);
    bf16* attn_out;
    float* scratch;
    int32_t *meta, *counters;
    CHECK(cudaMalloc(&attn_out, heads * head_dim * sizeof(bf16)));
    CHECK(cudaMalloc(&scratch, rf_decode_attention_scratch_bytes(1, heads, head_dim, max_len)));
    CHECK(cudaMemset(scratch, 0, rf_decode_attention_scratch_bytes(1, heads, head_dim, max_len)));
    CHECK(cudaMalloc(&meta, 3 * sizeof(int32_t)));
    CHECK(cudaMalloc(&counters, 4 * 64 * kv_heads * sizeof(int32_t)));
    CHECK(cudaMemset(counters, 0, 4 * 64 * kv_heads * sizeof(int32_t)));
    std::printf("\nDecode attention alone (1 token, 32 q heads, 8 kv heads, 64 dims): 16 launches in one graph\n");
    std::printf("| context | µs per launch |\n|---:|---:|\n");
    for (int context : {128, 1024}) {
      const int32_t host[3] = {0, context - 1, context - 1};  // slot, cache position, rope position
      CHECK(cudaMemcpy(meta, host, sizeof(host), cudaMemcpyHostToDevice));
      cudaGraphExec_t exec = graph_of([&] {
        for (int l = 0; l < layers; l++) {
          check(rf_decode_attention(RF_BF16, qkv, 3072, qkv + 2048, 3072, qkv + 2560, 3072, k_caches[l], v_caches[l],
                                    meta, meta + 1, meta + 2, 1, 1, 1, 500000.f, 1, heads, kv_heads, head_dim, max_len,
                                    max_len, 0.125f, scratch, counters, attn_out, s),
                "decode attention");
        }
      });
      std::printf("| %d | %.1f |\n", context, time_graph(exec, 20) * 1e3 / layers);
      CHECK(cudaGraphExecDestroy(exec));
    }
  }
  CHECK(cudaStreamSynchronize(s));
  std::printf("\n%s\n", failed ? "check FAILED" : "check passed");
  return failed;
}
