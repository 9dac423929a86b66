/* rankflow's C ABI over the TensorRT C++ API: only what the tensorrt engine's converters and its
 * runtime need. Handles are opaque; tensors inside a network are small integer ids. Every call that
 * can fail returns 0 on success and a nonzero code otherwise; rf_trt_last_error() then holds the
 * shim's message followed by whatever TensorRT's logger reported at error severity.
 * Calls are not meant to be made concurrently from several threads. */
#ifndef RANKFLOW_TRT_H
#define RANKFLOW_TRT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define RF_TRT_API __declspec(dllexport)
#else
#define RF_TRT_API __attribute__((visibility("default")))
#endif

/* The C ABI's own version; ffi/tensorrt.ts refuses a shim with another one. */
#define RF_TRT_ABI_VERSION 1

/* Return codes. */
enum { RF_TRT_OK = 0, RF_TRT_ERROR = 1, RF_TRT_UNSUPPORTED = 2, RF_TRT_BAD_ARGUMENT = 3 };

/* What the headers the shim was compiled against define (bits of rf_trt_features). */
enum {
  RF_TRT_FEATURE_DIST_COLLECTIVE = 1 << 0,       /* INetworkDefinition::addDistCollective (>= 10.16) */
  RF_TRT_FEATURE_MULTIDEVICE_PREVIEW = 1 << 1,   /* PreviewFeature::kMULTIDEVICE_RUNTIME_10_16 (10.16 .. 10.x) */
  RF_TRT_FEATURE_ATTENTION_LOWER_RIGHT = 1 << 2, /* addAttentionV2 with CausalMaskKind (>= 11.0) */
  RF_TRT_FEATURE_NORMALIZATION_V2 = 1 << 3       /* addNormalizationV2 (>= 10.15) */
};

/* Tensor dtypes, in rankflow's terms. */
enum { RF_TRT_F32 = 0, RF_TRT_F16 = 1, RF_TRT_BF16 = 2, RF_TRT_I32 = 3, RF_TRT_I64 = 4, RF_TRT_BOOL = 5 };

enum { RF_TRT_ADD = 0, RF_TRT_SUB = 1, RF_TRT_MUL = 2, RF_TRT_DIV = 3, RF_TRT_MAX = 4, RF_TRT_MIN = 5,
       RF_TRT_POW = 6 };
enum { RF_TRT_EXP = 0, RF_TRT_LOG = 1, RF_TRT_SQRT = 2, RF_TRT_RECIP = 3, RF_TRT_NEG = 4, RF_TRT_SIN = 5,
       RF_TRT_COS = 6 };
enum { RF_TRT_SIGMOID = 0, RF_TRT_GELU_ERF = 1, RF_TRT_GELU_TANH = 2, RF_TRT_RELU = 3, RF_TRT_TANH = 4 };
enum { RF_TRT_REDUCE_SUM = 0, RF_TRT_REDUCE_AVG = 1, RF_TRT_REDUCE_MAX = 2, RF_TRT_REDUCE_MIN = 3,
       RF_TRT_REDUCE_NONE = -1 };
enum { RF_TRT_ALL_REDUCE = 0, RF_TRT_ALL_GATHER = 1, RF_TRT_REDUCE_SCATTER = 2, RF_TRT_BROADCAST = 3 };
/* Builder flags. Networks are strongly typed (TensorRT 11 knows no other kind), so precision is the
 * dtype of the network's tensors; TF32 is the one precision flag left. */
enum { RF_TRT_FLAG_TF32 = 0 };

/* The largest rank a tensor may have (TensorRT's Dims::MAX_DIMS). */
#define RF_TRT_MAX_DIMS 8

typedef struct rf_trt_builder rf_trt_builder;
typedef struct rf_trt_engine rf_trt_engine;
typedef struct rf_trt_context rf_trt_context;

/* ---- library ---- */
RF_TRT_API int32_t rf_trt_abi_version(void);
/* TensorRT version the shim was compiled against: major * 10000 + minor * 100 + patch. */
RF_TRT_API int32_t rf_trt_header_version(void);
/* TensorRT version of the loaded libnvinfer (getInferLibVersion). */
RF_TRT_API int32_t rf_trt_library_version(void);
RF_TRT_API uint32_t rf_trt_features(void);
/* The message of the last failed call; empty when none. Valid until the next call. */
RF_TRT_API const char* rf_trt_last_error(void);
/* Logger messages at or above this severity that are not errors go to stderr (0 internal error .. 4 verbose). */
RF_TRT_API void rf_trt_set_log_severity(int32_t severity);
RF_TRT_API void rf_trt_free(void* memory);

/* ---- building ---- */
RF_TRT_API rf_trt_builder* rf_trt_builder_create(void);
RF_TRT_API void rf_trt_builder_destroy(rf_trt_builder* builder);
RF_TRT_API int32_t rf_trt_builder_set_flag(rf_trt_builder* builder, int32_t flag, int32_t on);
RF_TRT_API int32_t rf_trt_builder_set_workspace(rf_trt_builder* builder, uint64_t bytes);
/* Allows layers that need several devices (DistCollective); fails where the headers lack them. */
RF_TRT_API int32_t rf_trt_builder_enable_multi_device(rf_trt_builder* builder);
/* dims: -1 marks a dynamic axis, which then needs an optimization profile entry. */
RF_TRT_API int32_t rf_trt_network_input(rf_trt_builder* builder, const char* name, int32_t dtype, int32_t rank,
                                        const int64_t* dims, int32_t* tensor);
RF_TRT_API int32_t rf_trt_profile_set(rf_trt_builder* builder, const char* input, int32_t rank,
                                      const int64_t* min, const int64_t* opt, const int64_t* max);
/* Copies `bytes` of data; the copy lives until the builder is destroyed. */
RF_TRT_API int32_t rf_trt_network_constant(rf_trt_builder* builder, int32_t dtype, int32_t rank,
                                           const int64_t* dims, const void* data, uint64_t bytes,
                                           int32_t* tensor);
RF_TRT_API int32_t rf_trt_network_output(rf_trt_builder* builder, int32_t tensor, const char* name);
/* Names the layer that produced `tensor`, so TensorRT's messages say which IR node it was. */
RF_TRT_API int32_t rf_trt_network_name_layer(rf_trt_builder* builder, int32_t tensor, const char* name);
RF_TRT_API int32_t rf_trt_tensor_rank(rf_trt_builder* builder, int32_t tensor);

RF_TRT_API int32_t rf_trt_add_elementwise(rf_trt_builder* builder, int32_t op, int32_t a, int32_t b,
                                          int32_t* out);
RF_TRT_API int32_t rf_trt_add_unary(rf_trt_builder* builder, int32_t op, int32_t x, int32_t* out);
RF_TRT_API int32_t rf_trt_add_activation(rf_trt_builder* builder, int32_t kind, int32_t x, int32_t* out);
RF_TRT_API int32_t rf_trt_add_matmul(rf_trt_builder* builder, int32_t a, int32_t transpose_a, int32_t b,
                                     int32_t transpose_b, int32_t* out);
RF_TRT_API int32_t rf_trt_add_softmax(rf_trt_builder* builder, int32_t x, int32_t axis, int32_t* out);
RF_TRT_API int32_t rf_trt_add_cast(rf_trt_builder* builder, int32_t x, int32_t dtype, int32_t* out);
RF_TRT_API int32_t rf_trt_add_reduce(rf_trt_builder* builder, int32_t op, int32_t x, int32_t axis,
                                     int32_t keep_dims, int32_t* out);
RF_TRT_API int32_t rf_trt_add_gather(rf_trt_builder* builder, int32_t data, int32_t indices, int32_t axis,
                                     int32_t* out);
/* Index (i32) of the largest value along axis, the axis removed. */
RF_TRT_API int32_t rf_trt_add_argmax(rf_trt_builder* builder, int32_t x, int32_t axis, int32_t* out);
/* spec[i] >= 0: that size; -1: inferred; -2 - j: the size of input axis j (dynamic sizes allowed). */
RF_TRT_API int32_t rf_trt_add_reshape(rf_trt_builder* builder, int32_t x, int32_t rank, const int64_t* spec,
                                      int32_t* out);
RF_TRT_API int32_t rf_trt_add_transpose(rf_trt_builder* builder, int32_t x, int32_t rank, const int32_t* perm,
                                        int32_t* out);
RF_TRT_API int32_t rf_trt_add_concat(rf_trt_builder* builder, int32_t count, const int32_t* inputs, int32_t axis,
                                     int32_t* out);
/* start <= i < end along axis; other axes whole, dynamic or not. */
RF_TRT_API int32_t rf_trt_add_slice(rf_trt_builder* builder, int32_t x, int32_t axis, int64_t start, int64_t end,
                                    int32_t* out);
/* (x - mean) / sqrt(var + eps) * scale + bias over the last axis; scale and bias have x's rank. */
RF_TRT_API int32_t rf_trt_add_layernorm(rf_trt_builder* builder, int32_t x, int32_t scale, int32_t bias, float eps,
                                        int32_t* out);
/* Causal attention, diagonal at the lower right: q[B,H,S,D] over k/v[B,KV,T,D]. */
RF_TRT_API int32_t rf_trt_add_attention(rf_trt_builder* builder, int32_t q, int32_t k, int32_t v, int32_t* out);
/* A DistCollective layer over the communicator ranks listed in `groups` (group_size of them), or
 * over all of them when group_size is 0 and groups null. nb_ranks (>= 2) is the number taking part;
 * it sets the output shape of all-gather and reduce-scatter. root is used by broadcast only;
 * reduce is RF_TRT_REDUCE_NONE for collectives without a reduction. */
RF_TRT_API int32_t rf_trt_add_dist_collective(rf_trt_builder* builder, int32_t x, int32_t op, int32_t reduce,
                                              int64_t root, const int64_t* groups, int64_t group_size,
                                              int32_t nb_ranks, int32_t* out);
/* Builds and serializes; *plan is freed with rf_trt_free. */
RF_TRT_API int32_t rf_trt_builder_build(rf_trt_builder* builder, void** plan, uint64_t* bytes);

/* ---- running ---- */
RF_TRT_API rf_trt_engine* rf_trt_engine_deserialize(const void* plan, uint64_t bytes);
RF_TRT_API void rf_trt_engine_destroy(rf_trt_engine* engine);
RF_TRT_API int32_t rf_trt_engine_io_count(rf_trt_engine* engine);
RF_TRT_API const char* rf_trt_engine_io_name(rf_trt_engine* engine, int32_t index);
/* dims gets RF_TRT_MAX_DIMS entries; -1 where dynamic. */
RF_TRT_API int32_t rf_trt_engine_io_desc(rf_trt_engine* engine, const char* name, int32_t* is_input,
                                         int32_t* dtype, int32_t* rank, int64_t* dims);
RF_TRT_API rf_trt_context* rf_trt_context_create(rf_trt_engine* engine);
RF_TRT_API void rf_trt_context_destroy(rf_trt_context* context);
/* The NCCL communicator (an ncclComm_t) the engine's DistCollective layers run over. */
RF_TRT_API int32_t rf_trt_context_set_communicator(rf_trt_context* context, void* communicator);
RF_TRT_API int32_t rf_trt_context_set_input_shape(rf_trt_context* context, const char* name, int32_t rank,
                                                  const int64_t* dims);
/* The shape of a tensor once every input shape is set. */
RF_TRT_API int32_t rf_trt_context_tensor_shape(rf_trt_context* context, const char* name, int32_t* rank,
                                               int64_t* dims);
/* A device address for an input or output, for callers that keep tensors on the device. */
RF_TRT_API int32_t rf_trt_context_set_address(rf_trt_context* context, const char* name, void* device);
/* Host convenience: copies into a device buffer the context owns and points the input at it. */
RF_TRT_API int32_t rf_trt_context_set_input_host(rf_trt_context* context, const char* name, const void* host,
                                                 uint64_t bytes);
/* Gives every output without an address a context-owned device buffer of its current shape. */
RF_TRT_API int32_t rf_trt_context_allocate_outputs(rf_trt_context* context);
/* stream: a cudaStream_t, or null for the context's own stream. With another stream, the caller
 * synchronizes it before reading outputs. */
RF_TRT_API int32_t rf_trt_context_enqueue(rf_trt_context* context, void* stream);
RF_TRT_API int32_t rf_trt_context_synchronize(rf_trt_context* context);
/* Copies a context-owned output back to the host (after synchronize). */
RF_TRT_API int32_t rf_trt_context_get_output_host(rf_trt_context* context, const char* name, void* host,
                                                  uint64_t bytes);

#ifdef __cplusplus
}
#endif

#endif
