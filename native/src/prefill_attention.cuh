// Causal attention of prompt-length runs on tensor cores (f16/bf16); attention.cu's rf_attention
// sends runs here when tensor_core_prefill_fits says the sizes suit it.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

bool tensor_core_prefill_fits(int dtype, int head_dim);
int tensor_core_prefill(int dtype, const void* q, void* out, const void* k_cache, const void* v_cache,
                        const int32_t* slots, const int32_t* cache_pos, int tokens, int heads, int kv_heads,
                        int head_dim, int max_len, float scale, cudaStream_t stream);
