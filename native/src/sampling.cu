// Sampling on the device: the greedy pick of each row, so that a decode step returns token ids
// (4 bytes a sequence) instead of logits.
#include "common.cuh"

template <typename T>
__global__ void argmax_kernel(const T* x, int64_t ldx, int32_t* out, int64_t width) {
  pdl_wait();
  pdl_trigger();
  const T* row = x + blockIdx.x * ldx;
  float best = -INFINITY;
  int64_t index = width;  // larger than any real index, so a real value always wins a tie break
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = to_f32(row[i]);
    if (v > best) {  // a thread visits indices in increasing order: the first of equal values stays
      best = v;
      index = i;
    }
  }
  __shared__ float values[32];
  __shared__ int64_t indices[32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, index, offset);
    if (ov > best || (ov == best && oi < index)) {
      best = ov;
      index = oi;
    }
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    best = lane < warps ? values[lane] : -INFINITY;
    index = lane < warps ? indices[lane] : width;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, index, offset);
      if (ov > best || (ov == best && oi < index)) {
        best = ov;
        index = oi;
      }
    }
    // A row of NaNs (nothing compares larger) picks 0, as the reference's strict comparison does.
    if (lane == 0) out[blockIdx.x] = (int32_t)(index < width ? index : 0);
  }
}

extern "C" int rf_argmax(int dtype, const void* x, int ldx, int32_t* out, int rows, int width,
                         void* stream) {
  if (rows <= 0) return 0;
  RF_DISPATCH(dtype, return rf_launch(argmax_kernel<T>, dim3((unsigned)rows), dim3(1024), 0, RF_STREAM(stream),
                                      (const T*)x, ldx, out, width));
  return 0;
}

// Drawing each row's token by the rule of core/serve/sampling.ts (sampleLogits), which the host
// uses too, so that a seed gives the same tokens on either side:
// - weights w_i = exp((x_i - max) / temperature) in f64;
// - tokens ranked by logit (descending; -0 equal to +0), ties by index (ascending);
// - candidates: the top_k first of that ranking (all where top_k is 0 or covers the vocabulary);
// - nucleus: the shortest ranked prefix of the candidates holding top_p of their weight;
// - the draw: uniform × the nucleus's weight, walked off the nucleus in index order.
// One block a row; thread t owns the contiguous indices [t·chunk, (t+1)·chunk), so that index order
// is thread order and "the first n ties in index order" is a prefix count over the threads. The
// cuts are found by radix selection on the order-preserving 32-bit key of the logit, 8 bits a pass
// (a histogram of counts for top_k, of weights for top_p, checked in f64).
static const int SAMPLE_THREADS = 1024;

__device__ __forceinline__ uint32_t order_key(float v) {
  uint32_t bits = __float_as_uint(v);
  if (bits == 0x80000000u) bits = 0;  // -0 ranks with +0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// The smallest and the largest value over the block (every thread gets it).
__device__ uint32_t block_min_u32(uint32_t v) {
  __shared__ uint32_t partial[32];
  v = __reduce_min_sync(0xffffffffu, v);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  uint32_t result = partial[0];
  for (int w = 1; w < (int)(blockDim.x >> 5); w++) result = min(result, partial[w]);
  __syncthreads();
  return result;
}

__device__ uint32_t block_max_u32(uint32_t v) {
  __shared__ uint32_t partial[32];
  v = __reduce_max_sync(0xffffffffu, v);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  uint32_t result = partial[0];
  for (int w = 1; w < (int)(blockDim.x >> 5); w++) result = max(result, partial[w]);
  __syncthreads();
  return result;
}

// Exclusive prefix over the block in thread order; *total gets the sum of all.
template <typename V>
__device__ V block_exclusive(V v, V* total) {
  __shared__ V sums[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  V x = v;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const V y = __shfl_up_sync(0xffffffffu, x, offset);
    if (lane >= offset) x += y;
  }
  if (lane == 31) sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    V s = lane < (int)(blockDim.x >> 5) ? sums[lane] : V(0);
    for (int offset = 1; offset < 32; offset <<= 1) {
      const V y = __shfl_up_sync(0xffffffffu, s, offset);
      if (lane >= offset) s += y;
    }
    sums[lane] = s;
  }
  __syncthreads();
  const V base = warp ? sums[warp - 1] : V(0);
  *total = sums[(blockDim.x >> 5) - 1];
  __syncthreads();
  return base + x - v;
}

template <typename V>
__device__ V block_total(V v) {
  V total;
  block_exclusive(v, &total);
  return total;
}

// The key whose ties finish the selection: walks 8-bit digits from the top, each pass counting
// (top_k) or weighing (top_p, in f32: the caller checks the result in f64) the selected elements
// under the prefix so far. `need` starts as the count or weight wanted and ends as what the ties at
// the returned key must still give. Each warp fills its own histogram, so that the atomics of a
// pass where most elements share a digit contend within a warp only.
template <typename T, typename V, typename Selected, typename Amount>
__device__ uint32_t radix_select(const T* row, int begin, int end, double* need, Selected selected, Amount amount,
                                 void* histograms) {
  V (*bins)[256] = reinterpret_cast<V (*)[256]>(histograms);  // [warps][256], 4-byte V
  __shared__ double totals[256];
  __shared__ uint32_t digit;
  __shared__ double left;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < warps * 256; d += blockDim.x) bins[d / 256][d % 256] = V(0);
    __syncthreads();
    for (int i = begin; i < end; i++) {
      const uint32_t key = order_key(to_f32(row[i]));
      if ((key & mask) == prefix && selected(i, key)) atomicAdd(&bins[warp][(key >> shift) & 255u], amount(i));
    }
    __syncthreads();
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      double sum = 0.0;
      for (int w = 0; w < warps; w++) sum += (double)bins[w][d];
      totals[d] = sum;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double rest = *need;
      int d = 255;
      for (; d > 0; d--) {
        if (totals[d] > 0.0 && rest <= totals[d]) break;
        rest -= totals[d];
      }
      // rounding may leave the weights short of `rest`: then the lowest non-empty digit
      if (d == 0 && totals[0] == 0.0) {
        for (d = 0; d < 256 && totals[d] == 0.0; d++) {
        }
        if (d == 256) d = 0;
        rest = totals[d];
      }
      digit = (uint32_t)d;
      left = rest;
    }
    __syncthreads();
    prefix |= digit << shift;
    mask |= 255u << shift;
    *need = left;
    __syncthreads();
  }
  return prefix;
}

template <typename T>
__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(const T* x, int64_t ldx, int vocab, const double* params, double* weights, int32_t* out) {
  __shared__ __align__(16) unsigned char histograms[SAMPLE_THREADS / 32 * 256 * 4];
  pdl_wait();
  pdl_trigger();
  const T* row = x + blockIdx.x * ldx;
  double* w = weights + (int64_t)blockIdx.x * vocab;
  const double temperature = params[4 * blockIdx.x];
  const int top_k = (int)params[4 * blockIdx.x + 1];
  const double top_p = params[4 * blockIdx.x + 2];
  const double uniform = params[4 * blockIdx.x + 3];
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int begin = min(vocab, (int)threadIdx.x * chunk);
  const int end = min(vocab, begin + chunk);

  float top = -INFINITY;
  for (int i = begin; i < end; i++) top = fmaxf(top, to_f32(row[i]));
  top = block_max(top);

  // Candidates: keys above tk, and the first keep_k ties at tk (index order).
  const bool cut_k = top_k > 0 && top_k < vocab;
  uint32_t tk = 0;
  int keep_k = 0, rank_k = 0;
  if (cut_k) {
    double need = top_k;
    tk = radix_select<T, int>(
        row, begin, end, &need, [](int, uint32_t) { return true; }, [](int) { return 1; }, histograms);
    keep_k = (int)need;
    int ties = 0;
    for (int i = begin; i < end; i++) ties += order_key(to_f32(row[i])) == tk;
    int all;
    rank_k = block_exclusive(ties, &all);
  }
  const auto candidate = [&](uint32_t key, int* rank) {
    if (!cut_k || key > tk) return true;
    if (key < tk) return false;
    return (*rank)++ < keep_k;
  };

  // Weights of the candidates (0 elsewhere), kept for the passes below.
  double mass = 0.0;
  {
    int rank = rank_k;
    for (int i = begin; i < end; i++) {
      const float v = to_f32(row[i]);
      const double weight = candidate(order_key(v), &rank) ? exp(((double)v - (double)top) / temperature) : 0.0;
      w[i] = weight;
      mass += weight;
    }
  }
  mass = block_total(mass);

  // Nucleus: candidate keys above tp, and the first keep_p candidate ties at tp.
  const bool cut_p = top_p < 1.0;
  uint32_t tp = 0;
  int keep_p = 0, rank_p = 0;
  if (cut_p) {
    const double target = top_p * mass;
    double need = target;
    tp = radix_select<T, float>(
        row, begin, end, &need, [&](int i, uint32_t) { return w[i] > 0.0; }, [&](int i) { return (float)w[i]; },
        histograms);
    // The f32 histograms may miss the boundary by a rounding: check it in f64 and step to the right
    // key, or (should that not settle) search the keys exactly by bisection.
    const auto mass_from = [&](uint32_t key, bool equal_too) {
      double sum = 0.0;
      for (int i = begin; i < end; i++) {
        if (w[i] == 0.0) continue;
        const uint32_t k = order_key(to_f32(row[i]));
        if (k > key || (equal_too && k == key)) sum += w[i];
      }
      return block_total(sum);
    };
    double above = mass_from(tp, false);
    double through = mass_from(tp, true);
    // Off by a rounding, the boundary is a neighbouring key: step to it, a few keys at most.
    for (int step = 0; step < 16 && !(above < target && target <= through); step++) {
      const bool up = above >= target;
      uint32_t next = up ? 0xffffffffu : 0u;
      for (int i = begin; i < end; i++) {
        if (w[i] == 0.0) continue;
        const uint32_t k = order_key(to_f32(row[i]));
        if (up && k > tp) next = min(next, k);
        if (!up && k < tp) next = max(next, k);
      }
      next = up ? block_min_u32(next) : block_max_u32(next);
      if (next == tp) break;
      tp = next;
      above = mass_from(tp, false);
      through = mass_from(tp, true);
    }
    if (!(above < target && target <= through)) {
      // the largest key whose candidates at or above it weigh at least the target
      uint32_t lo = 0, hi = 0xffffffffu;
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1) / 2;
        if (mass_from(mid, true) >= target) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      tp = lo;
      above = mass_from(tp, false);
    }
    need = target - above;
    int ties = 0;
    for (int i = begin; i < end; i++) ties += order_key(to_f32(row[i])) == tp && w[i] > 0.0;
    int all;
    rank_p = block_exclusive(ties, &all);
    // the ties share one weight; they join in index order until the prefix reaches the mass
    const double each = exp(((double)key_value(tp) - (double)top) / temperature);
    double sum = 0.0;
    keep_p = 0;
    while (keep_p < all && sum < need) {
      sum += each;
      keep_p++;
    }
    if (keep_p == 0) keep_p = 1;
  }

  // The draw, walked in index order over the nucleus.
  __shared__ int picked, last;
  if (threadIdx.x == 0) {
    picked = vocab;
    last = -1;
  }
  __syncthreads();
  double held = 0.0;
  int mine = -1;
  {
    int rank = rank_p;
    for (int i = begin; i < end; i++) {
      if (w[i] == 0.0) continue;
      const uint32_t key = order_key(to_f32(row[i]));
      bool in = true;
      if (cut_p) in = key > tp || (key == tp && rank++ < keep_p);
      if (!in) {
        w[i] = 0.0;
        continue;
      }
      held += w[i];
      mine = i;
    }
  }
  if (mine >= 0) atomicMax(&last, mine);
  double nucleus;
  const double base = block_exclusive(held, &nucleus);
  const double target = uniform * nucleus;
  if (held > 0.0 && base <= target && target < base + held) {
    double rest = target - base;
    int choice = mine;
    for (int i = begin; i < end; i++) {
      if (w[i] == 0.0) continue;
      rest -= w[i];
      if (rest < 0.0) {
        choice = i;
        break;
      }
    }
    atomicMin(&picked, choice);
  }
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = picked < vocab ? picked : (last >= 0 ? last : 0);
}

extern "C" int rf_sample(int dtype, const void* x, int ldx, int rows, int vocab, const double* params,
                         double* weights, int32_t* out, void* stream) {
  if (rows <= 0) return 0;
  if (vocab <= 0) return static_cast<int>(cudaErrorInvalidValue);
  RF_DISPATCH(dtype, return rf_launch(sample_kernel<T>, dim3((unsigned)rows), dim3(SAMPLE_THREADS), 0,
                                      RF_STREAM(stream), (const T*)x, (int64_t)ldx, vocab, params, weights, out));
  return 0;
}
