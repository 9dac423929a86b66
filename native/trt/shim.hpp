// Internals shared by the shim's translation units: the handle types behind the C ABI, the one
// logger TensorRT reports through, and the guard that turns a failure into a return code plus a
// message for rf_trt_last_error().
#pragma once

#include "rankflow_trt.h"

#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#if NV_TENSORRT_MAJOR < 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR < 7)
#error "rankflow's TensorRT shim needs TensorRT 10.7 or newer (addSqueeze, strongly typed networks)"
#endif

#define RF_TRT_AT_LEAST(major, minor) \
  (NV_TENSORRT_MAJOR > (major) || (NV_TENSORRT_MAJOR == (major) && NV_TENSORRT_MINOR >= (minor)))

// DistCollective and IExecutionContext::setCommunicator arrived in 10.16.
#define RF_HAS_DIST_COLLECTIVE RF_TRT_AT_LEAST(10, 16)
// 10.16 gates multi-device layers behind a preview feature; 11.0 removed that feature from the enum.
#define RF_HAS_MULTIDEVICE_PREVIEW (RF_TRT_AT_LEAST(10, 16) && NV_TENSORRT_MAJOR == 10)
// addAttentionV2 and CausalMaskKind::kLOWER_RIGHT (causal attention over a KV cache) arrived in 11.0.
#define RF_HAS_ATTENTION_LOWER_RIGHT RF_TRT_AT_LEAST(11, 0)
#define RF_HAS_NORMALIZATION_V2 RF_TRT_AT_LEAST(10, 15)
#define RF_HAS_TOPK_INDICES_TYPE RF_TRT_AT_LEAST(10, 14)

namespace rankflow_trt {

// A failure inside a call; the guard turns it into the call's return code.
struct Failure {
  int32_t code;
  std::string message;
};

[[noreturn]] void fail(std::string message, int32_t code = RF_TRT_ERROR);

nvinfer1::ILogger& logger();

// Clears the messages of the previous call; every C entry point but rf_trt_last_error starts so.
void begin_call();
void record_error(std::string const& message);

template <typename Body>
int32_t guarded(char const* what, Body&& body) noexcept {
  begin_call();
  try {
    body();
    return RF_TRT_OK;
  } catch (Failure const& failure) {
    record_error(std::string(what) + ": " + failure.message);
    return failure.code;
  } catch (std::exception const& error) {
    record_error(std::string(what) + ": " + error.what());
    return RF_TRT_ERROR;
  } catch (...) {
    record_error(std::string(what) + ": unknown C++ exception");
    return RF_TRT_ERROR;
  }
}

nvinfer1::DataType to_data_type(int32_t dtype);
int32_t from_data_type(nvinfer1::DataType type);
uint64_t element_bytes(nvinfer1::DataType type);
nvinfer1::Dims to_dims(int32_t rank, int64_t const* values);
void check_cuda(cudaError_t status, char const* what);

template <typename T>
struct Deleter {
  void operator()(T* object) const noexcept { delete object; }
};
template <typename T>
using Owned = std::unique_ptr<T, Deleter<T>>;

}  // namespace rankflow_trt

// Members are destroyed in reverse order: the network and config before the builder.
struct rf_trt_builder {
  rankflow_trt::Owned<nvinfer1::IBuilder> builder;
  rankflow_trt::Owned<nvinfer1::INetworkDefinition> network;
  rankflow_trt::Owned<nvinfer1::IBuilderConfig> config;
  nvinfer1::IOptimizationProfile* profile = nullptr;  // owned by the builder
  bool profile_used = false;
  std::vector<nvinfer1::ITensor*> tensors;
  std::vector<nvinfer1::ILayer*> producers;  // null for network inputs and attention outputs
  std::deque<std::vector<uint8_t>> constants;  // constant data must outlive the build

  nvinfer1::ITensor& tensor(int32_t id);
  int32_t add(nvinfer1::ITensor* tensor, nvinfer1::ILayer* producer);
  int32_t add(nvinfer1::ILayer* layer, char const* kind);
  nvinfer1::ITensor& constant(nvinfer1::DataType type, nvinfer1::Dims const& dims, void const* data,
                              uint64_t bytes);
};

struct rf_trt_engine {
  rankflow_trt::Owned<nvinfer1::IRuntime> runtime;
  rankflow_trt::Owned<nvinfer1::ICudaEngine> engine;
};

struct rf_trt_device_buffer {
  void* address = nullptr;
  uint64_t bytes = 0;
};

struct rf_trt_context {
  rf_trt_engine* engine = nullptr;
  rankflow_trt::Owned<nvinfer1::IExecutionContext> context;
  cudaStream_t stream = nullptr;
  std::map<std::string, rf_trt_device_buffer> owned;  // buffers this context allocated
  std::map<std::string, bool> external;               // tensors the caller gave a device address

  void* ensure(std::string const& name, uint64_t bytes);
};
