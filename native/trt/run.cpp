// Running: deserializing a plan, describing its inputs and outputs, execution contexts with their
// NCCL communicator, tensor addresses, and host copies for callers that keep tensors on the host.

#include "shim.hpp"

using namespace rankflow_trt;

void* rf_trt_context::ensure(std::string const& name, uint64_t bytes) {
  auto& buffer = owned[name];
  if (buffer.bytes < bytes) {
    if (buffer.address) check_cuda(cudaFree(buffer.address), "cudaFree");
    buffer = {};
    check_cuda(cudaMalloc(&buffer.address, bytes == 0 ? 1 : bytes), "cudaMalloc");
    buffer.bytes = bytes;
  }
  return buffer.address;
}

namespace {

uint64_t tensor_bytes(rf_trt_context* c, char const* name) {
  nvinfer1::Dims const dims = c->context->getTensorShape(name);
  if (dims.nbDims < 0) fail(std::string("tensor ") + name + " is not in this engine", RF_TRT_BAD_ARGUMENT);
  uint64_t count = 1;
  for (int32_t i = 0; i < dims.nbDims; ++i) {
    if (dims.d[i] < 0) fail(std::string("tensor ") + name + " has no shape yet: set every input shape first");
    count *= static_cast<uint64_t>(dims.d[i]);
  }
  return count * element_bytes(c->engine->engine->getTensorDataType(name));
}

void set_address(rf_trt_context* c, char const* name, void* address) {
  if (!c->context->setTensorAddress(name, address)) fail(std::string("TensorRT refused the address of ") + name);
}

}  // namespace

extern "C" {

rf_trt_engine* rf_trt_engine_deserialize(const void* plan, uint64_t bytes) {
  rf_trt_engine* made = nullptr;
  guarded("rf_trt_engine_deserialize", [&] {
    auto engine = std::make_unique<rf_trt_engine>();
    engine->runtime.reset(nvinfer1::createInferRuntime(logger()));
    if (!engine->runtime) fail("createInferRuntime failed");
    engine->engine.reset(engine->runtime->deserializeCudaEngine(plan, bytes));
    if (!engine->engine) fail("the plan does not deserialize (built by another TensorRT version or GPU?)");
    made = engine.release();
  });
  return made;
}

void rf_trt_engine_destroy(rf_trt_engine* engine) { delete engine; }

int32_t rf_trt_engine_io_count(rf_trt_engine* engine) { return engine->engine->getNbIOTensors(); }

const char* rf_trt_engine_io_name(rf_trt_engine* engine, int32_t index) {
  return engine->engine->getIOTensorName(index);
}

int32_t rf_trt_engine_io_desc(rf_trt_engine* engine, const char* name, int32_t* is_input, int32_t* dtype,
                              int32_t* rank, int64_t* dims) {
  return guarded("rf_trt_engine_io_desc", [&] {
    auto const mode = engine->engine->getTensorIOMode(name);
    if (mode == nvinfer1::TensorIOMode::kNONE) fail(std::string(name) + " is not an input or output", RF_TRT_BAD_ARGUMENT);
    *is_input = mode == nvinfer1::TensorIOMode::kINPUT ? 1 : 0;
    *dtype = from_data_type(engine->engine->getTensorDataType(name));
    nvinfer1::Dims const shape = engine->engine->getTensorShape(name);
    *rank = shape.nbDims;
    for (int32_t i = 0; i < RF_TRT_MAX_DIMS; ++i) dims[i] = i < shape.nbDims ? shape.d[i] : 0;
  });
}

rf_trt_context* rf_trt_context_create(rf_trt_engine* engine) {
  rf_trt_context* made = nullptr;
  guarded("rf_trt_context_create", [&] {
    auto context = std::make_unique<rf_trt_context>();
    context->engine = engine;
    context->context.reset(engine->engine->createExecutionContext());
    if (!context->context) fail("TensorRT could not create an execution context (out of device memory?)");
    check_cuda(cudaStreamCreateWithFlags(&context->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    made = context.release();
  });
  return made;
}

void rf_trt_context_destroy(rf_trt_context* context) {
  if (!context) return;
  if (context->stream) cudaStreamSynchronize(context->stream);
  context->context.reset();
  for (auto& entry : context->owned) cudaFree(entry.second.address);
  if (context->stream) cudaStreamDestroy(context->stream);
  delete context;
}

int32_t rf_trt_context_set_communicator(rf_trt_context* context, void* communicator) {
  return guarded("rf_trt_context_set_communicator", [&] {
#if RF_HAS_DIST_COLLECTIVE
    if (!context->context->setCommunicator(communicator)) fail("TensorRT refused the communicator");
#else
    (void)context, (void)communicator;
    fail("setCommunicator needs TensorRT 10.16 or newer", RF_TRT_UNSUPPORTED);
#endif
  });
}

int32_t rf_trt_context_set_input_shape(rf_trt_context* context, const char* name, int32_t rank,
                                       const int64_t* dims) {
  return guarded("rf_trt_context_set_input_shape", [&] {
    if (!context->context->setInputShape(name, to_dims(rank, dims))) {
      fail(std::string("the shape of input ") + name + " is outside the engine's profile");
    }
  });
}

int32_t rf_trt_context_tensor_shape(rf_trt_context* context, const char* name, int32_t* rank, int64_t* dims) {
  return guarded("rf_trt_context_tensor_shape", [&] {
    nvinfer1::Dims const shape = context->context->getTensorShape(name);
    if (shape.nbDims < 0) fail(std::string(name) + " is not in this engine", RF_TRT_BAD_ARGUMENT);
    *rank = shape.nbDims;
    for (int32_t i = 0; i < RF_TRT_MAX_DIMS; ++i) dims[i] = i < shape.nbDims ? shape.d[i] : 0;
  });
}

int32_t rf_trt_context_set_address(rf_trt_context* context, const char* name, void* device) {
  return guarded("rf_trt_context_set_address", [&] {
    set_address(context, name, device);
    context->external[name] = true;
  });
}

int32_t rf_trt_context_set_input_host(rf_trt_context* context, const char* name, const void* host,
                                      uint64_t bytes) {
  return guarded("rf_trt_context_set_input_host", [&] {
    uint64_t const expected = tensor_bytes(context, name);
    if (bytes != expected) {
      fail(std::string("input ") + name + " has " + std::to_string(bytes) + " bytes, its shape needs " +
               std::to_string(expected),
           RF_TRT_BAD_ARGUMENT);
    }
    void* device = context->ensure(name, bytes);
    check_cuda(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, context->stream), "cudaMemcpyAsync");
    set_address(context, name, device);
    context->external.erase(name);
  });
}

int32_t rf_trt_context_allocate_outputs(rf_trt_context* context) {
  return guarded("rf_trt_context_allocate_outputs", [&] {
    auto& engine = *context->engine->engine;
    for (int32_t i = 0; i < engine.getNbIOTensors(); ++i) {
      char const* name = engine.getIOTensorName(i);
      if (engine.getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT || context->external.count(name)) continue;
      set_address(context, name, context->ensure(name, tensor_bytes(context, name)));
    }
  });
}

int32_t rf_trt_context_enqueue(rf_trt_context* context, void* stream) {
  return guarded("rf_trt_context_enqueue", [&] {
    auto* target = context->stream;
    if (stream) {
      // Host inputs were copied on the context's own stream; they must land before another stream reads them.
      check_cuda(cudaStreamSynchronize(context->stream), "cudaStreamSynchronize");
      target = static_cast<cudaStream_t>(stream);
    }
    if (!context->context->enqueueV3(target)) fail("enqueueV3 failed");
  });
}

int32_t rf_trt_context_synchronize(rf_trt_context* context) {
  return guarded("rf_trt_context_synchronize", [&] {
    check_cuda(cudaStreamSynchronize(context->stream), "cudaStreamSynchronize");
  });
}

int32_t rf_trt_context_get_output_host(rf_trt_context* context, const char* name, void* host, uint64_t bytes) {
  return guarded("rf_trt_context_get_output_host", [&] {
    auto found = context->owned.find(name);
    if (found == context->owned.end() || context->external.count(name)) {
      fail(std::string("output ") + name + " is not in a buffer this context owns", RF_TRT_BAD_ARGUMENT);
    }
    uint64_t const expected = tensor_bytes(context, name);
    if (bytes != expected) {
      fail(std::string("output ") + name + " has " + std::to_string(expected) + " bytes, the host buffer " +
               std::to_string(bytes),
           RF_TRT_BAD_ARGUMENT);
    }
    check_cuda(cudaMemcpyAsync(host, found->second.address, bytes, cudaMemcpyDeviceToHost, context->stream),
               "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(context->stream), "cudaStreamSynchronize");
  });
}

}  // extern "C"
