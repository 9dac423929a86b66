/* rankflow_kernels: the CUDA kernels of rankflow's cuda engine, behind a plain C ABI so that
 * Deno FFI (ffi/kernels.ts) can call them. Every function enqueues work on `stream` (a
 * cudaStream_t) and returns the cudaError_t of the launch (0 when it was accepted).
 * Tensors are row-major; `ld*` arguments are row strides in elements (sizes are int: no tensor
 * axis here comes near 2^31), so that a kernel can read
 * one part of a wider buffer (q, k and v out of one fused projection, say). Floats are computed
 * in f32 and rounded to the tensor's dtype on store. */
#ifndef RANKFLOW_KERNELS_H
#define RANKFLOW_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* dtype codes of float tensors */
enum { RF_F32 = 0, RF_F16 = 1, RF_BF16 = 2 };
/* rf_unary ops */
enum { RF_SILU = 0, RF_GELU_TANH = 1, RF_GELU_ERF = 2 };
/* rf_binary ops */
enum { RF_ADD = 0, RF_MUL = 1 };

/* The ABI version; ffi/kernels.ts refuses a library of another version. */
int rf_abi_version(void);
const char* rf_error_string(int code);

/* out[r, :] = table[ids[r], :] for r < rows (rows of any element size: elem_bytes 2 or 4). */
int rf_gather_rows(int elem_bytes, const void* table, int width, int ld_table, const int32_t* ids,
                   int rows, void* out, void* stream);
/* The step after a greedy decode step, on the device: ids_in[r] = ids[r], pos[r] += 1 and
 * history[*count * rows + r] = ids[r] for r < rows, then *count += 1 (one block; rows ≤ 1024). */
int rf_decode_advance(int32_t* ids_in, int32_t* pos, const int32_t* ids, int rows, int32_t* history,
                      int32_t* count, void* stream);
int rf_rmsnorm(int dtype, const void* x, int ldx, const void* w, void* out, int rows, int width,
               float eps, void* stream);
int rf_layernorm(int dtype, const void* x, int ldx, const void* w, const void* b, void* out, int rows,
                 int width, float eps, void* stream);
/* Rotates halves of each head of x[tokens, heads, head_dim] at position pos[t % period]. */
int rf_rope(int dtype, const void* x, int ldx, void* out, const int32_t* pos, int period, int tokens,
            int heads, int head_dim, float theta, void* stream);
int rf_unary(int dtype, int op, const void* x, int ldx, void* out, int rows, int width, void* stream);
/* out = silu(a) * b */
int rf_silu_mul(int dtype, const void* a, int lda, const void* b, int ldb, void* out, int rows,
                int width, void* stream);
/* out[i0,i1,i2,i3] = a[..] op b[..] with element strides a_strides[4], b_strides[4] (0 = broadcast). */
int rf_binary(int dtype, int op, const void* a, const int64_t* a_strides, const void* b, const int64_t* b_strides,
              void* out, const int64_t* shape, void* stream);
int rf_softmax(int dtype, const void* x, void* out, int rows, int width, void* stream);
/* out[r] = index of the largest x[r, :] (the first on ties); dtype may also be RF_F32 logits. */
int rf_argmax(int dtype, const void* x, int ldx, int32_t* out, int rows, int width, void* stream);
/* out[r] = a token drawn from x[r, :vocab] by core/serve/sampling.ts's rule, with params[4r ..]
 * = temperature (> 0), top_k (0: all), top_p (in (0, 1]) and the uniform draw in [0, 1);
 * scratch: rf_sample_scratch_bytes(rows or more, vocab) bytes, zero before the first launch and
 * used by nothing else; each launch leaves it fit for the next. */
int rf_sample(int dtype, const void* x, int ldx, int rows, int vocab, const double* params, void* scratch,
              int32_t* out, void* stream);
/* Bytes of scratch rf_sample needs for up to `rows` rows of `vocab` (-1 where this GPU cannot
 * hold the blocks one row needs at once). */
int64_t rf_sample_scratch_bytes(int rows, int vocab);
int rf_cast(int from, int to, const void* x, void* out, int n, void* stream);
/* out = x permuted: out.shape[i] = shape[perm[i]], for up to 4 axes (pad with leading 1s). */
int rf_permute(int elem_bytes, const void* x, void* out, const int64_t* shape, const int64_t* perm, void* stream);
/* Copies k and v of each token into the caches [slots, kv_heads, max_len, head_dim] at
 * (slots[t], cache_pos[t]), rotating k (rope_k) and writing q to q_out[tokens, heads, head_dim],
 * rotated when rope_q, at rope position rope_pos[t % rope_period]. */
int rf_qkv_prepare(int dtype, const void* q, int ldq, const void* k, int ldk, const void* v, int ldv,
                   void* q_out, void* k_cache, void* v_cache, const int32_t* slots, const int32_t* cache_pos,
                   const int32_t* rope_pos, int rope_period, int rope_q, int rope_k, float theta,
                   int tokens, int heads, int kv_heads, int head_dim, int max_len, void* stream);
/* Causal attention of q[tokens, heads, head_dim] over the caches: token t sees positions
 * 0..cache_pos[t] of slot slots[t]. `span` bounds cache_pos[t] + 1 for every token and fixes the
 * grid (a CUDA graph replays with span = max_len). out is [tokens, heads, head_dim]. head_dim is a
 * multiple of 8, at most 128. Up to 64 tokens (decode) split the keys over blocks and merge the
 * chunks; more tokens in f16/bf16 with head_dim 16, 32, 64 or 128 run on tensor cores (no scratch). */
int rf_attention(int dtype, const void* q, void* out, const void* k_cache, const void* v_cache,
                 const int32_t* slots, const int32_t* cache_pos, int tokens, int heads, int kv_heads,
                 int head_dim, int max_len, int span, float scale, float* scratch, void* stream);
/* Bytes of f32 scratch rf_attention needs for these sizes. */
int64_t rf_attention_scratch_bytes(int tokens, int heads, int head_dim, int span);
/* Decode in one launch: rf_qkv_prepare then rf_attention for tokens that each belong to another
 * slot (one new token per sequence), q, k and v read from the product rows that made them, out
 * [tokens, heads, head_dim]. heads / kv_heads ≤ 8. scratch: rf_decode_attention_scratch_bytes(tokens,
 * heads, head_dim, max_len); counters: 4 * tokens * kv_heads ints. Both zero before the first launch
 * and used by no other kernel (launches with the same heads, kv heads, head size and max_len may
 * share them, one after another); row t of a launch keeps its state in them across launches. */
int rf_decode_attention(int dtype, const void* q, int ldq, const void* k, int ldk, const void* v, int ldv,
                        void* k_cache, void* v_cache, const int32_t* slots, const int32_t* cache_pos,
                        const int32_t* rope_pos, int rope_period, int rope_q, int rope_k, float theta, int tokens,
                        int heads, int kv_heads, int head_dim, int max_len, int span, float scale, float* scratch,
                        int* counters, void* out, void* stream);
int64_t rf_decode_attention_scratch_bytes(int tokens, int heads, int head_dim, int max_len);
/* out[m, n] = x[m, :] · w[n, :] (+ bias[n]) (+ residual[m, n]) for 1 ≤ m ≤ 8: decode products at
 * weight-streaming speed. k and ldx must be multiples of 8 (4 for f32), pointers 16-byte aligned;
 * residual shares out's row stride; bias, residual and norm may be NULL.
 * norm: x is first RMS-normalized with this weight and eps (as rf_rmsnorm would, then rounded);
 * allowed where rf_gemv_stages(dtype, m, k) is 1.
 * gated: n is even and out[m, j] = silu(x·w[j]) · (x·w[j + n/2]) for j < n/2 (no residual). */
int rf_gemv(int dtype, int m, const void* x, int ldx, const void* norm, float eps, const void* w, const void* bias,
            const void* residual, void* out, int ld_out, int n, int k, int gated, void* stream);
/* 1 when rf_gemv keeps m rows of k elements in shared memory (and can apply a norm on the way). */
int rf_gemv_stages(int dtype, int m, int k);
/* Launch rankflow's decode kernels with programmatic stream serialization (compute capability ≥ 9.0):
 * each may start during the one before it and load its weights. Returns 1 when on, 0 when off,
 * a negative cudaError on failure. */
int rf_set_programmatic_launch(int on);
/* Makes the one-row products (rf_gemv at m = 1) leave room for the decode attention of this shape
 * that runs between them: each of their blocks reserves, unused, as much shared memory as one
 * rf_decode_attention block takes, so that the multiprocessors they run on are configured with
 * room for attention's blocks to start as theirs end (not where fewer product blocks would fit).
 * heads 0, or a shape rf_decode_attention does not take, reserves nothing. For the process, like
 * rf_set_programmatic_launch. Returns the bytes a block reserves, or a negative cudaError. */
int rf_set_attention_room(int dtype, int heads, int kv_heads, int head_dim);
/* Launches an instantiated CUDA graph (cudaGraphExec_t) and waits for the stream: one call per decode step. */
int rf_graph_launch_sync(void* exec, void* stream);

/* All-reduce (sum) of small messages over the GPUs of one machine, in one kernel (peer_all_reduce.cu).
 * Each rank of a group allocates a region of rf_peer_region_bytes(capacity, world) with rf_ipc_alloc (zeroed;
 * `handle` receives its 64-byte cudaIpcMemHandle_t), passes the handle to the others, and maps theirs
 * with rf_ipc_open. rf_peer_all_reduce then takes the group's regions in rank order (a host array of
 * `world` pointers, this rank's own at `rank`): out[count] = sum over ranks of in[count], in rank order,
 * so that every rank gets the same bits. count × element size must be a multiple of 16 and at most
 * `capacity`, in and out 16-byte aligned (in may be out); 2 ≤ world ≤ 8. Every rank must make the same
 * calls in the same order; a rank that never calls leaves the others waiting. */
int64_t rf_peer_region_bytes(int64_t capacity, int world);
int rf_ipc_alloc(int64_t bytes, void** ptr, void* handle);
int rf_ipc_open(const void* handle, void** ptr);
int rf_ipc_close(void* ptr);
int rf_peer_all_reduce(int dtype, const void* in, void* out, int64_t count, void* const* regions, int rank, int world,
                       int64_t capacity, void* stream);

#ifdef __cplusplus
}
#endif
#endif
