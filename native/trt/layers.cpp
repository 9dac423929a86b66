// The layers rankflow's converters map IR ops to. Each call takes tensor ids and gives the id of
// the layer's output; ops that need shape arithmetic for dynamic sizes (reshape, slice) build it
// here from shape tensors, so the converters can stay in terms of IR shapes.

#include "shim.hpp"

using namespace rankflow_trt;
using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ITensor;

namespace {

nvinfer1::ElementWiseOperation elementwise_op(int32_t op) {
  using E = nvinfer1::ElementWiseOperation;
  switch (op) {
    case RF_TRT_ADD: return E::kSUM;
    case RF_TRT_SUB: return E::kSUB;
    case RF_TRT_MUL: return E::kPROD;
    case RF_TRT_DIV: return E::kDIV;
    case RF_TRT_MAX: return E::kMAX;
    case RF_TRT_MIN: return E::kMIN;
    case RF_TRT_POW: return E::kPOW;
  }
  fail("unknown elementwise op " + std::to_string(op), RF_TRT_BAD_ARGUMENT);
}

nvinfer1::UnaryOperation unary_op(int32_t op) {
  using U = nvinfer1::UnaryOperation;
  switch (op) {
    case RF_TRT_EXP: return U::kEXP;
    case RF_TRT_LOG: return U::kLOG;
    case RF_TRT_SQRT: return U::kSQRT;
    case RF_TRT_RECIP: return U::kRECIP;
    case RF_TRT_NEG: return U::kNEG;
    case RF_TRT_SIN: return U::kSIN;
    case RF_TRT_COS: return U::kCOS;
  }
  fail("unknown unary op " + std::to_string(op), RF_TRT_BAD_ARGUMENT);
}

nvinfer1::ActivationType activation(int32_t kind) {
  using A = nvinfer1::ActivationType;
  switch (kind) {
    case RF_TRT_SIGMOID: return A::kSIGMOID;
    case RF_TRT_GELU_ERF: return A::kGELU_ERF;
    case RF_TRT_GELU_TANH: return A::kGELU_TANH;
    case RF_TRT_RELU: return A::kRELU;
    case RF_TRT_TANH: return A::kTANH;
  }
  fail("unknown activation " + std::to_string(kind), RF_TRT_BAD_ARGUMENT);
}

nvinfer1::ReduceOperation reduce_op(int32_t op) {
  using R = nvinfer1::ReduceOperation;
  switch (op) {
    case RF_TRT_REDUCE_SUM: return R::kSUM;
    case RF_TRT_REDUCE_AVG: return R::kAVG;
    case RF_TRT_REDUCE_MAX: return R::kMAX;
    case RF_TRT_REDUCE_MIN: return R::kMIN;
#if RF_HAS_DIST_COLLECTIVE
    case RF_TRT_REDUCE_NONE: return R::kNONE;
#endif
  }
  fail("unknown reduction " + std::to_string(op), RF_TRT_BAD_ARGUMENT);
}

int32_t checked_axis(ITensor& x, int32_t axis) {
  int32_t const rank = x.getDimensions().nbDims;
  if (axis < 0 || axis >= rank) {
    fail("axis " + std::to_string(axis) + " is outside a tensor of rank " + std::to_string(rank),
         RF_TRT_BAD_ARGUMENT);
  }
  return axis;
}

// A 1-D int64 shape-tensor constant.
ITensor& shape_constant(rf_trt_builder& b, std::vector<int64_t> const& values) {
  Dims dims{};
  dims.nbDims = 1;
  dims.d[0] = static_cast<int64_t>(values.size());
  return b.constant(DataType::kINT64, dims, values.data(), values.size() * sizeof(int64_t));
}

ITensor& shape_of(rf_trt_builder& b, ITensor& x) {
  auto* layer = b.network->addShape(x);
  if (!layer) fail("TensorRT refused a shape layer");
  return *layer->getOutput(0);  // int64 since TensorRT 10
}

}  // namespace

extern "C" {

int32_t rf_trt_add_elementwise(rf_trt_builder* b, int32_t op, int32_t x, int32_t y, int32_t* out) {
  return guarded("rf_trt_add_elementwise", [&] {
    *out = b->add(b->network->addElementWise(b->tensor(x), b->tensor(y), elementwise_op(op)), "elementwise");
  });
}

int32_t rf_trt_add_unary(rf_trt_builder* b, int32_t op, int32_t x, int32_t* out) {
  return guarded("rf_trt_add_unary", [&] {
    *out = b->add(b->network->addUnary(b->tensor(x), unary_op(op)), "unary");
  });
}

int32_t rf_trt_add_activation(rf_trt_builder* b, int32_t kind, int32_t x, int32_t* out) {
  return guarded("rf_trt_add_activation", [&] {
    *out = b->add(b->network->addActivation(b->tensor(x), activation(kind)), "activation");
  });
}

int32_t rf_trt_add_matmul(rf_trt_builder* b, int32_t x, int32_t transpose_x, int32_t y, int32_t transpose_y,
                          int32_t* out) {
  return guarded("rf_trt_add_matmul", [&] {
    using M = nvinfer1::MatrixOperation;
    *out = b->add(b->network->addMatrixMultiply(b->tensor(x), transpose_x ? M::kTRANSPOSE : M::kNONE,
                                                b->tensor(y), transpose_y ? M::kTRANSPOSE : M::kNONE),
                  "matrix multiply");
  });
}

int32_t rf_trt_add_softmax(rf_trt_builder* b, int32_t x, int32_t axis, int32_t* out) {
  return guarded("rf_trt_add_softmax", [&] {
    auto* layer = b->network->addSoftMax(b->tensor(x));
    if (layer) layer->setAxes(1U << checked_axis(b->tensor(x), axis));
    *out = b->add(layer, "softmax");
  });
}

int32_t rf_trt_add_cast(rf_trt_builder* b, int32_t x, int32_t dtype, int32_t* out) {
  return guarded("rf_trt_add_cast", [&] {
    *out = b->add(b->network->addCast(b->tensor(x), to_data_type(dtype)), "cast");
  });
}

int32_t rf_trt_add_reduce(rf_trt_builder* b, int32_t op, int32_t x, int32_t axis, int32_t keep_dims,
                          int32_t* out) {
  return guarded("rf_trt_add_reduce", [&] {
    uint32_t const axes = 1U << checked_axis(b->tensor(x), axis);
    *out = b->add(b->network->addReduce(b->tensor(x), reduce_op(op), axes, keep_dims != 0), "reduce");
  });
}

int32_t rf_trt_add_gather(rf_trt_builder* b, int32_t data, int32_t indices, int32_t axis, int32_t* out) {
  return guarded("rf_trt_add_gather", [&] {
    *out = b->add(b->network->addGather(b->tensor(data), b->tensor(indices), checked_axis(b->tensor(data), axis)),
                  "gather");
  });
}

int32_t rf_trt_add_argmax(rf_trt_builder* b, int32_t x, int32_t axis, int32_t* out) {
  return guarded("rf_trt_add_argmax", [&] {
    uint32_t const axes = 1U << checked_axis(b->tensor(x), axis);
#if RF_HAS_TOPK_INDICES_TYPE
    auto* top = b->network->addTopK(b->tensor(x), nvinfer1::TopKOperation::kMAX, 1, axes, DataType::kINT32);
#else
    auto* top = b->network->addTopK(b->tensor(x), nvinfer1::TopKOperation::kMAX, 1, axes);
#endif
    if (!top) fail("TensorRT refused the top-k layer");
    b->add(top->getOutput(1), top);
    ITensor& which = shape_constant(*b, {axis});
    *out = b->add(b->network->addSqueeze(*top->getOutput(1), which), "squeeze");
  });
}

int32_t rf_trt_add_reshape(rf_trt_builder* b, int32_t x, int32_t rank, const int64_t* spec, int32_t* out) {
  return guarded("rf_trt_add_reshape", [&] {
    ITensor& input = b->tensor(x);
    Dims const target = to_dims(rank, spec);
    bool copies = false;
    for (int32_t i = 0; i < rank; ++i) copies = copies || spec[i] <= -2;
    auto* layer = b->network->addShuffle(input);
    if (!layer) fail("TensorRT refused the shuffle layer");
    layer->setZeroIsPlaceholder(false);
    if (!copies) {
      layer->setReshapeDimensions(target);
      *out = b->add(layer, "shuffle");
      return;
    }
    // Dynamic sizes: the target shape is a shape tensor, each entry a constant or an input size.
    ITensor& shape = shape_of(*b, input);
    std::vector<ITensor*> parts;
    for (int32_t i = 0; i < rank; ++i) {
      if (spec[i] > -2) {
        parts.push_back(&shape_constant(*b, {spec[i]}));
        continue;
      }
      int32_t const axis = checked_axis(input, static_cast<int32_t>(-2 - spec[i]));
      ITensor& index = shape_constant(*b, {axis});
      auto* pick = b->network->addGather(shape, index, 0);
      if (!pick) fail("TensorRT refused a gather of a shape");
      parts.push_back(pick->getOutput(0));
    }
    auto* joined = b->network->addConcatenation(parts.data(), rank);
    if (!joined) fail("TensorRT refused a concatenation of shapes");
    joined->setAxis(0);
    layer->setInput(1, *joined->getOutput(0));
    *out = b->add(layer, "shuffle");
  });
}

int32_t rf_trt_add_transpose(rf_trt_builder* b, int32_t x, int32_t rank, const int32_t* perm, int32_t* out) {
  return guarded("rf_trt_add_transpose", [&] {
    if (rank != b->tensor(x).getDimensions().nbDims) fail("the permutation's length is not the rank", RF_TRT_BAD_ARGUMENT);
    nvinfer1::Permutation permutation{};
    for (int32_t i = 0; i < rank; ++i) permutation.order[i] = perm[i];
    auto* layer = b->network->addShuffle(b->tensor(x));
    if (layer) layer->setFirstTranspose(permutation);
    *out = b->add(layer, "shuffle");
  });
}

int32_t rf_trt_add_concat(rf_trt_builder* b, int32_t count, const int32_t* inputs, int32_t axis, int32_t* out) {
  return guarded("rf_trt_add_concat", [&] {
    std::vector<ITensor*> tensors;
    for (int32_t i = 0; i < count; ++i) tensors.push_back(&b->tensor(inputs[i]));
    if (tensors.empty()) fail("concat of nothing", RF_TRT_BAD_ARGUMENT);
    auto* layer = b->network->addConcatenation(tensors.data(), count);
    if (layer) layer->setAxis(checked_axis(*tensors[0], axis));
    *out = b->add(layer, "concatenation");
  });
}

int32_t rf_trt_add_slice(rf_trt_builder* b, int32_t x, int32_t axis, int64_t start, int64_t end, int32_t* out) {
  return guarded("rf_trt_add_slice", [&] {
    ITensor& input = b->tensor(x);
    Dims const dims = input.getDimensions();
    checked_axis(input, axis);
    if (dims.d[axis] < 0) fail("slice needs a fixed size on its axis", RF_TRT_BAD_ARGUMENT);
    if (start < 0 || end > dims.d[axis] || start >= end) fail("slice range outside the axis", RF_TRT_BAD_ARGUMENT);
    Dims begin{}, size = dims, stride{};
    begin.nbDims = stride.nbDims = dims.nbDims;
    bool dynamic = false;
    for (int32_t i = 0; i < dims.nbDims; ++i) {
      begin.d[i] = i == axis ? start : 0;
      stride.d[i] = 1;
      dynamic = dynamic || dims.d[i] < 0;
    }
    size.d[axis] = end - start;
    auto* layer = b->network->addSlice(input, begin, size, stride);
    if (!layer) fail("TensorRT refused the slice layer");
    if (dynamic) {
      // size = shape(x) - what the axis loses, computed when the shape is known.
      std::vector<int64_t> loss(dims.nbDims, 0);
      loss[axis] = dims.d[axis] - (end - start);
      auto* sized = b->network->addElementWise(shape_of(*b, input), shape_constant(*b, loss),
                                               nvinfer1::ElementWiseOperation::kSUB);
      if (!sized) fail("TensorRT refused a shape subtraction");
      layer->setInput(2, *sized->getOutput(0));
    }
    *out = b->add(layer, "slice");
  });
}

int32_t rf_trt_add_layernorm(rf_trt_builder* b, int32_t x, int32_t scale, int32_t bias, float eps, int32_t* out) {
  return guarded("rf_trt_add_layernorm", [&] {
    ITensor& input = b->tensor(x);
    uint32_t const axes = 1U << (input.getDimensions().nbDims - 1);
#if RF_HAS_NORMALIZATION_V2
    auto* layer = b->network->addNormalizationV2(input, b->tensor(scale), b->tensor(bias), axes);
#else
    auto* layer = b->network->addNormalization(input, b->tensor(scale), b->tensor(bias), axes);
#endif
    if (layer) layer->setEpsilon(eps);
    *out = b->add(layer, "normalization");
  });
}

int32_t rf_trt_add_attention(rf_trt_builder* b, int32_t q, int32_t k, int32_t v, int32_t* out) {
  return guarded("rf_trt_add_attention", [&] {
#if RF_HAS_ATTENTION_LOWER_RIGHT
    auto* attention = b->network->addAttentionV2(b->tensor(q), b->tensor(k), b->tensor(v),
                                                 nvinfer1::AttentionNormalizationOp::kSOFTMAX,
                                                 nvinfer1::CausalMaskKind::kLOWER_RIGHT);
    if (!attention) fail("TensorRT refused the attention");
    attention->setDecomposable(true);  // fall back to several kernels where no fused one fits
    *out = b->add(attention->getOutput(0), nullptr);
#else
    (void)b, (void)q, (void)k, (void)v, (void)out;
    fail("causal attention over a KV cache needs CausalMaskKind::kLOWER_RIGHT (TensorRT 11.0 or newer)",
         RF_TRT_UNSUPPORTED);
#endif
  });
}

int32_t rf_trt_add_dist_collective(rf_trt_builder* b, int32_t x, int32_t op, int32_t reduce, int64_t root,
                                   const int64_t* groups, int64_t group_size, int32_t nb_ranks, int32_t* out) {
  return guarded("rf_trt_add_dist_collective", [&] {
#if RF_HAS_DIST_COLLECTIVE
    using C = nvinfer1::CollectiveOperation;
    C kind;
    switch (op) {
      case RF_TRT_ALL_REDUCE: kind = C::kALL_REDUCE; break;
      case RF_TRT_ALL_GATHER: kind = C::kALL_GATHER; break;
      case RF_TRT_REDUCE_SCATTER: kind = C::kREDUCE_SCATTER; break;
      case RF_TRT_BROADCAST: kind = C::kBROADCAST; break;
      default: fail("unknown collective " + std::to_string(op), RF_TRT_BAD_ARGUMENT);
    }
    if (nb_ranks < 2) fail("a collective over fewer than 2 ranks adds no layer", RF_TRT_BAD_ARGUMENT);
    if (group_size != 0 && group_size != nb_ranks) fail("the group lists another number of ranks", RF_TRT_BAD_ARGUMENT);
    // The API takes a non-const pointer; with no list, every rank of the communicator takes part.
    std::vector<int64_t> ranks(groups, groups + group_size);
    auto* layer = b->network->addDistCollective(b->tensor(x), kind, reduce_op(reduce), root,
                                                group_size ? ranks.data() : nullptr, group_size);
    if (!layer) fail("TensorRT refused the DistCollective layer");
    // The output shape of all-gather and reduce-scatter depends on the rank count: set it before
    // the output is read.
    if (!layer->setNbRanks(nb_ranks)) fail("TensorRT refused the rank count");
    *out = b->add(layer, "DistCollective");
#else
    (void)b, (void)x, (void)op, (void)reduce, (void)root, (void)groups, (void)group_size, (void)nb_ranks, (void)out;
    fail("DistCollective needs TensorRT 10.16 or newer; this shim was compiled against " +
             std::to_string(NV_TENSORRT_VERSION),
         RF_TRT_UNSUPPORTED);
#endif
  });
}

}  // extern "C"
