// The library-level calls: versions, compiled features, the logger and the error string.

#include "shim.hpp"

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace rankflow_trt {
namespace {

std::mutex error_mutex;
std::string last_error;       // what rf_trt_last_error returns
std::string logged_errors;    // TensorRT's error messages since the current call began
int32_t stderr_severity = 1;  // warnings and worse go to stderr

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override {
    auto const level = static_cast<int32_t>(severity);
    if (severity == Severity::kERROR || severity == Severity::kINTERNAL_ERROR) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!logged_errors.empty()) logged_errors += "; ";
      logged_errors += message;
      return;
    }
    if (level <= stderr_severity) std::fprintf(stderr, "[tensorrt] %s\n", message);
  }
};

}  // namespace

nvinfer1::ILogger& logger() {
  static Logger instance;
  return instance;
}

void fail(std::string message, int32_t code) { throw Failure{code, std::move(message)}; }

void begin_call() {
  std::lock_guard<std::mutex> lock(error_mutex);
  last_error.clear();
  logged_errors.clear();
}

void record_error(std::string const& message) {
  std::lock_guard<std::mutex> lock(error_mutex);
  last_error = logged_errors.empty() ? message : message + " (TensorRT: " + logged_errors + ")";
  logged_errors.clear();
}

nvinfer1::DataType to_data_type(int32_t dtype) {
  switch (dtype) {
    case RF_TRT_F32: return nvinfer1::DataType::kFLOAT;
    case RF_TRT_F16: return nvinfer1::DataType::kHALF;
    case RF_TRT_BF16: return nvinfer1::DataType::kBF16;
    case RF_TRT_I32: return nvinfer1::DataType::kINT32;
    case RF_TRT_I64: return nvinfer1::DataType::kINT64;
    case RF_TRT_BOOL: return nvinfer1::DataType::kBOOL;
  }
  fail("unknown dtype code " + std::to_string(dtype), RF_TRT_BAD_ARGUMENT);
}

int32_t from_data_type(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return RF_TRT_F32;
    case nvinfer1::DataType::kHALF: return RF_TRT_F16;
    case nvinfer1::DataType::kBF16: return RF_TRT_BF16;
    case nvinfer1::DataType::kINT32: return RF_TRT_I32;
    case nvinfer1::DataType::kINT64: return RF_TRT_I64;
    case nvinfer1::DataType::kBOOL: return RF_TRT_BOOL;
    default: break;
  }
  fail("the engine uses a TensorRT data type rankflow has no dtype for (" +
           std::to_string(static_cast<int32_t>(type)) + ")",
       RF_TRT_UNSUPPORTED);
}

uint64_t element_bytes(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF:
    case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kBOOL: return 1;
    default: break;
  }
  fail("no element size for TensorRT data type " + std::to_string(static_cast<int32_t>(type)),
       RF_TRT_UNSUPPORTED);
}

nvinfer1::Dims to_dims(int32_t rank, int64_t const* values) {
  if (rank < 0 || rank > nvinfer1::Dims::MAX_DIMS) {
    fail("rank " + std::to_string(rank) + " is outside 0.." + std::to_string(nvinfer1::Dims::MAX_DIMS),
         RF_TRT_BAD_ARGUMENT);
  }
  nvinfer1::Dims dims{};
  dims.nbDims = rank;
  for (int32_t i = 0; i < rank; ++i) dims.d[i] = values[i];
  return dims;
}

void check_cuda(cudaError_t status, char const* what) {
  if (status != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(status));
}

}  // namespace rankflow_trt

using namespace rankflow_trt;

extern "C" {

int32_t rf_trt_abi_version(void) { return RF_TRT_ABI_VERSION; }

int32_t rf_trt_header_version(void) { return NV_TENSORRT_VERSION; }

int32_t rf_trt_library_version(void) { return getInferLibVersion(); }

uint32_t rf_trt_features(void) {
  uint32_t features = 0;
#if RF_HAS_DIST_COLLECTIVE
  features |= RF_TRT_FEATURE_DIST_COLLECTIVE;
#endif
#if RF_HAS_MULTIDEVICE_PREVIEW
  features |= RF_TRT_FEATURE_MULTIDEVICE_PREVIEW;
#endif
#if RF_HAS_ATTENTION_LOWER_RIGHT
  features |= RF_TRT_FEATURE_ATTENTION_LOWER_RIGHT;
#endif
#if RF_HAS_NORMALIZATION_V2
  features |= RF_TRT_FEATURE_NORMALIZATION_V2;
#endif
  return features;
}

const char* rf_trt_last_error(void) {
  std::lock_guard<std::mutex> lock(error_mutex);
  return last_error.c_str();
}

void rf_trt_set_log_severity(int32_t severity) { stderr_severity = severity; }

void rf_trt_free(void* memory) { std::free(memory); }

}  // extern "C"
