// Building: the builder, its config and optimization profile, network inputs, constants and
// outputs, and serialization of the built plan.

#include "shim.hpp"

#include <cstdlib>
#include <cstring>

using namespace rankflow_trt;

nvinfer1::ITensor& rf_trt_builder::tensor(int32_t id) {
  if (id < 0 || static_cast<size_t>(id) >= tensors.size()) {
    fail("tensor id " + std::to_string(id) + " is not in this network", RF_TRT_BAD_ARGUMENT);
  }
  return *tensors[id];
}

int32_t rf_trt_builder::add(nvinfer1::ITensor* made, nvinfer1::ILayer* producer) {
  if (!made) fail("TensorRT gave no output tensor");
  tensors.push_back(made);
  producers.push_back(producer);
  return static_cast<int32_t>(tensors.size() - 1);
}

int32_t rf_trt_builder::add(nvinfer1::ILayer* layer, char const* kind) {
  if (!layer) fail(std::string("TensorRT refused the ") + kind + " layer");
  return add(layer->getOutput(0), layer);
}

nvinfer1::ITensor& rf_trt_builder::constant(nvinfer1::DataType type, nvinfer1::Dims const& dims,
                                            void const* data, uint64_t bytes) {
  uint64_t count = 1;
  for (int32_t i = 0; i < dims.nbDims; ++i) {
    if (dims.d[i] < 0) fail("a constant needs every size known", RF_TRT_BAD_ARGUMENT);
    count *= static_cast<uint64_t>(dims.d[i]);
  }
  if (count * element_bytes(type) != bytes) {
    fail("constant data has " + std::to_string(bytes) + " bytes, its shape needs " +
             std::to_string(count * element_bytes(type)),
         RF_TRT_BAD_ARGUMENT);
  }
  auto const* begin = static_cast<uint8_t const*>(data);
  constants.emplace_back(begin, begin + bytes);
  nvinfer1::Weights weights{type, constants.back().data(), static_cast<int64_t>(count)};
  auto* layer = network->addConstant(dims, weights);
  if (!layer) fail("TensorRT refused the constant");
  add(layer->getOutput(0), layer);
  return *layer->getOutput(0);
}

extern "C" {

rf_trt_builder* rf_trt_builder_create(void) {
  rf_trt_builder* made = nullptr;
  guarded("rf_trt_builder_create", [&] {
    auto builder = std::make_unique<rf_trt_builder>();
    builder->builder.reset(nvinfer1::createInferBuilder(logger()));
    if (!builder->builder) fail("createInferBuilder failed (is libnvinfer's CUDA runtime usable?)");
#if NV_TENSORRT_MAJOR >= 11
    nvinfer1::NetworkDefinitionCreationFlags const flags = 0;  // strongly typed is the only kind
#else
    nvinfer1::NetworkDefinitionCreationFlags const flags =
        1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#endif
    builder->network.reset(builder->builder->createNetworkV2(flags));
    builder->config.reset(builder->builder->createBuilderConfig());
    builder->profile = builder->builder->createOptimizationProfile();
    if (!builder->network || !builder->config || !builder->profile) fail("could not create the network");
    made = builder.release();
  });
  return made;
}

void rf_trt_builder_destroy(rf_trt_builder* builder) { delete builder; }

int32_t rf_trt_builder_set_flag(rf_trt_builder* builder, int32_t flag, int32_t on) {
  return guarded("rf_trt_builder_set_flag", [&] {
    if (flag != RF_TRT_FLAG_TF32) fail("unknown builder flag " + std::to_string(flag), RF_TRT_BAD_ARGUMENT);
    if (on) builder->config->setFlag(nvinfer1::BuilderFlag::kTF32);
    else builder->config->clearFlag(nvinfer1::BuilderFlag::kTF32);
  });
}

int32_t rf_trt_builder_set_workspace(rf_trt_builder* builder, uint64_t bytes) {
  return guarded("rf_trt_builder_set_workspace", [&] {
    builder->config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, bytes);
  });
}

int32_t rf_trt_builder_enable_multi_device(rf_trt_builder* builder) {
  return guarded("rf_trt_builder_enable_multi_device", [&] {
#if RF_HAS_MULTIDEVICE_PREVIEW
    builder->config->setPreviewFeature(nvinfer1::PreviewFeature::kMULTIDEVICE_RUNTIME_10_16, true);
#elif RF_HAS_DIST_COLLECTIVE
    (void)builder;  // TensorRT 11 builds multi-device layers without a preview feature
#else
    (void)builder;
    fail("this shim was compiled against TensorRT " + std::to_string(NV_TENSORRT_VERSION) +
             ", which has no multi-device layers (10.16 or newer has)",
         RF_TRT_UNSUPPORTED);
#endif
  });
}

int32_t rf_trt_network_input(rf_trt_builder* builder, const char* name, int32_t dtype, int32_t rank,
                             const int64_t* dims, int32_t* tensor) {
  return guarded("rf_trt_network_input", [&] {
    auto* input = builder->network->addInput(name, to_data_type(dtype), to_dims(rank, dims));
    if (!input) fail(std::string("TensorRT refused input ") + name);
    *tensor = builder->add(input, nullptr);
  });
}

int32_t rf_trt_profile_set(rf_trt_builder* builder, const char* input, int32_t rank, const int64_t* min,
                           const int64_t* opt, const int64_t* max) {
  return guarded("rf_trt_profile_set", [&] {
    using nvinfer1::OptProfileSelector;
    auto* profile = builder->profile;
    bool const ok = profile->setDimensions(input, OptProfileSelector::kMIN, to_dims(rank, min)) &&
                    profile->setDimensions(input, OptProfileSelector::kOPT, to_dims(rank, opt)) &&
                    profile->setDimensions(input, OptProfileSelector::kMAX, to_dims(rank, max));
    if (!ok) fail(std::string("the profile of input ") + input + " was refused (min <= opt <= max?)");
    builder->profile_used = true;
  });
}

int32_t rf_trt_network_constant(rf_trt_builder* builder, int32_t dtype, int32_t rank, const int64_t* dims,
                                const void* data, uint64_t bytes, int32_t* tensor) {
  return guarded("rf_trt_network_constant", [&] {
    builder->constant(to_data_type(dtype), to_dims(rank, dims), data, bytes);
    *tensor = static_cast<int32_t>(builder->tensors.size() - 1);
  });
}

int32_t rf_trt_network_output(rf_trt_builder* builder, int32_t tensor, const char* name) {
  return guarded("rf_trt_network_output", [&] {
    auto& output = builder->tensor(tensor);
    output.setName(name);
    builder->network->markOutput(output);
  });
}

int32_t rf_trt_network_name_layer(rf_trt_builder* builder, int32_t tensor, const char* name) {
  return guarded("rf_trt_network_name_layer", [&] {
    builder->tensor(tensor);
    if (auto* layer = builder->producers[tensor]) layer->setName(name);
  });
}

int32_t rf_trt_tensor_rank(rf_trt_builder* builder, int32_t tensor) {
  int32_t rank = -1;
  guarded("rf_trt_tensor_rank", [&] { rank = builder->tensor(tensor).getDimensions().nbDims; });
  return rank;
}

int32_t rf_trt_builder_build(rf_trt_builder* builder, void** plan, uint64_t* bytes) {
  return guarded("rf_trt_builder_build", [&] {
    if (builder->profile_used && builder->config->addOptimizationProfile(builder->profile) < 0) {
      fail("the optimization profile is incomplete or inconsistent");
    }
    Owned<nvinfer1::IHostMemory> serialized(
        builder->builder->buildSerializedNetwork(*builder->network, *builder->config));
    if (!serialized) fail("TensorRT could not build the network");
    void* copy = std::malloc(serialized->size());
    if (!copy) fail("out of host memory for a plan of " + std::to_string(serialized->size()) + " bytes");
    std::memcpy(copy, serialized->data(), serialized->size());
    *plan = copy;
    *bytes = serialized->size();
  });
}

}  // extern "C"
