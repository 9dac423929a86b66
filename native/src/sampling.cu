// Sampling on the device: the greedy pick of each row, so that a decode step returns token ids
// (4 bytes a sequence) instead of logits.
#include <cooperative_groups.h>

#include "common.cuh"

// The warp's largest value and, among equal ones, its smallest index, in every lane.
__device__ __forceinline__ void warp_argmax(float* best, int64_t* index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, *best, offset);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, *index, offset);
    if (ov > *best || (ov == *best && oi < *index)) {
      *best = ov;
      *index = oi;
    }
  }
}

// A row's largest value, the first index holding it. Where the row is 16-byte aligned a thread
// reads whole vectors, ARGMAX_U of them in flight at a time; a thread visits its indices in
// increasing order, so that the first of equal values stays. Long rows on sm_90 are split over a
// cluster of ARGMAX_SPLIT blocks that meet in distributed shared memory (one block of 1024 threads
// would take 7.7 µs for a 128256-token row on an H200); elsewhere one block takes a row.
static const int ARGMAX_U = 8;
static const int ARGMAX_SPLIT = 8;
static const int64_t ARGMAX_SPLIT_FROM = 32768;  // elements a row, from which rows are split

template <typename T, bool VECTORS, int THREADS, int SPLIT>
__global__ void __launch_bounds__(THREADS) argmax_kernel(const T* x, int64_t ldx, int32_t* out, int64_t width) {
  RF_TRACE_START();
  pdl_wait();
  RF_TRACE_WAITED();
  pdl_trigger();
  const int part = SPLIT > 1 ? blockIdx.x : 0;
  const int64_t r = SPLIT > 1 ? blockIdx.y : blockIdx.x;
  const T* row = x + r * ldx;
  float best = -INFINITY;
  int64_t index = width;  // larger than any real index, so a real value always wins a tie break
  const auto visit = [&](float v, int64_t i) {
    if (v > best) {
      best = v;
      index = i;
    }
  };
  constexpr int V = VECTORS ? 16 / sizeof(T) : 1;
  const int64_t units = width / V;  // this block takes units [begin, end), the last block the tail
  const int64_t per = (units + SPLIT - 1) / SPLIT;
  const int64_t begin = part * per;
  const int64_t end = min(units, begin + per);
  if constexpr (VECTORS) {
    const uint4* src = reinterpret_cast<const uint4*>(row);
    for (int64_t base = begin + threadIdx.x; base < end; base += (int64_t)ARGMAX_U * THREADS) {
      uint4 held[ARGMAX_U];
#pragma unroll
      for (int u = 0; u < ARGMAX_U; u++) {
        const int64_t at = base + (int64_t)u * THREADS;
        if (at < end) held[u] = __ldcg(src + at);
      }
#pragma unroll
      for (int u = 0; u < ARGMAX_U; u++) {
        const int64_t at = base + (int64_t)u * THREADS;
        if (at < end) {
          const T* values = reinterpret_cast<const T*>(&held[u]);
#pragma unroll
          for (int e = 0; e < V; e++) visit(to_f32(values[e]), at * V + e);
        }
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += THREADS) visit(to_f32(row[i]), i);
  }
  if (part == SPLIT - 1) {
    for (int64_t i = units * V + threadIdx.x; i < width; i += THREADS) visit(to_f32(row[i]), i);
  }
  __shared__ float values[32];
  __shared__ int64_t indices[32];
  warp_argmax(&best, &index);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < THREADS / 32 ? values[lane] : -INFINITY;
    index = lane < THREADS / 32 ? indices[lane] : width;
    warp_argmax(&best, &index);
  }
  if constexpr (SPLIT > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // block 0 of the cluster takes every block's result from its shared memory
    if (threadIdx.x == 0) {
      values[0] = best;
      indices[0] = index;
    }
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    cluster.sync();
    if (part == 0 && warp == 0) {
      best = lane < SPLIT ? *cluster.map_shared_rank(&values[0], lane) : -INFINITY;
      index = lane < SPLIT ? *cluster.map_shared_rank(&indices[0], lane) : width;
      warp_argmax(&best, &index);
    }
    cluster.sync();  // the others' shared memory stays until block 0 has read it
#endif
  }
  // A row of NaNs (nothing compares larger) picks 0, as the reference's strict comparison does.
  if (part == 0 && threadIdx.x == 0) out[r] = (int32_t)(index < width ? index : 0);
  RF_TRACE_END(RF_TRACE_ARGMAX, 0);
}

RF_TRACE_SETTER(sampling)

template <typename T, bool VECTORS>
static int argmax_launch(const T* x, int64_t ldx, int32_t* out, int rows, int64_t width, cudaStream_t stream) {
  static int major = -1;
  if (major < 0) {
    int device = 0;
    cudaError_t rc = cudaGetDevice(&device);
    if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (rc != cudaSuccess) return static_cast<int>(rc);
  }
  if (major >= 9 && width >= ARGMAX_SPLIT_FROM) {
    return rf_launch_cluster(argmax_kernel<T, VECTORS, 256, ARGMAX_SPLIT>, dim3(ARGMAX_SPLIT, (unsigned)rows),
                             dim3(256), 0, ARGMAX_SPLIT, stream, x, ldx, out, width);
  }
  return rf_launch(argmax_kernel<T, VECTORS, 1024, 1>, dim3((unsigned)rows), dim3(1024), 0, stream, x, ldx, out,
                   width);
}

extern "C" int rf_argmax(int dtype, const void* x, int ldx, int32_t* out, int rows, int width,
                         void* stream) {
  if (rows <= 0) return 0;
  RF_DISPATCH(dtype, {
    const bool vectors = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ((int64_t)ldx * sizeof(T)) % 16 == 0;
    const auto launch = vectors ? argmax_launch<T, true> : argmax_launch<T, false>;
    return launch((const T*)x, (int64_t)ldx, out, rows, (int64_t)width, RF_STREAM(stream));
  });
  return 0;
}

// Drawing each row's token by the rule of core/serve/sampling.ts (sampleLogits), which the host
// uses too, so that a seed gives the same tokens on either side:
// - weights w_i = exp((x_i - max) / temperature) in f64;
// - tokens ranked by logit (descending; -0 equal to +0), ties by index (ascending);
// - candidates: the top_k first of that ranking (all where top_k is 0 or covers the vocabulary);
// - nucleus: the shortest ranked prefix of the candidates holding top_p of their weight;
// - the draw: uniform × the nucleus's weight, walked off the nucleus in index order.
// A row is split over S blocks (a "team"), block b holding a contiguous segment of it and thread t
// of the block E contiguous indices of that, kept in registers as order-preserving 32-bit keys
// (and later their weights): index order is (block, thread, element) order, so "the first n ties
// in index order" is a prefix count over blocks, then threads. The team meets at barriers of its
// own in global memory (the launch is cooperative, so all its blocks are resident); every sum over
// the team is of per-block parts in block order, so each block computes the same result and the
// draw repeats exactly. The cuts are found by radix selection on the keys, 8 bits a pass (counts
// for top_k; for top_p weights summed in f32 within a block, in f64 across, the boundary then
// checked in f64). Teams take rows r, r + teams, ... in turn.
static const int SAMPLE_THREADS = 512;
static const int SAMPLE_HELD = 16;       // indices a thread holds
static const int SAMPLE_MAX_BLOCKS = 64;  // blocks a team

__device__ __forceinline__ uint32_t order_key(float v) {
  uint32_t bits = __float_as_uint(v);
  if (bits == 0x80000000u) bits = 0;  // -0 ranks with +0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
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

// A team's scratch in global memory: its barrier, and per-block parts of the sums and histograms
// it makes, in two alternating sets (a set is rewritten only after a barrier that every block has
// passed since it last read that set).
struct TeamScratch {
  unsigned* arrived;
  unsigned* generation;
  double* parts;  // [2][SAMPLE_MAX_BLOCKS]
  double* bins;   // [2][SAMPLE_MAX_BLOCKS][256]
};

static const int64_t TEAM_BYTES = 64 + 2 * SAMPLE_MAX_BLOCKS * 8 + 2 * SAMPLE_MAX_BLOCKS * 256 * 8;

__device__ __forceinline__ TeamScratch team_scratch(unsigned char* scratch, int team) {
  unsigned char* base = scratch + (int64_t)team * TEAM_BYTES;
  TeamScratch t;
  t.arrived = reinterpret_cast<unsigned*>(base);
  t.generation = reinterpret_cast<unsigned*>(base + 4);
  t.parts = reinterpret_cast<double*>(base + 64);
  t.bins = t.parts + 2 * SAMPLE_MAX_BLOCKS;
  return t;
}

struct Team {
  TeamScratch mem;
  int blocks;  // gridDim.x
  int set;     // which set of parts the next exchange uses

  __device__ void barrier() {
    __syncthreads();
    if (threadIdx.x == 0) {
      volatile unsigned* generation = mem.generation;
      const unsigned now = *generation;
      __threadfence();
      if (atomicAdd(mem.arrived, 1u) == (unsigned)blocks - 1) {
        *mem.arrived = 0;
        __threadfence();
        atomicAdd(mem.generation, 1u);
      } else {
        while (*generation == now) {
        }
      }
      __threadfence();
    }
    __syncthreads();
  }

  // Every block's `part` (given by thread 0), in block order after the barrier: parts()[b].
  __device__ const double* exchange(double part) {
    double* slots = mem.parts + set * SAMPLE_MAX_BLOCKS;
    if (threadIdx.x == 0) slots[blockIdx.x] = part;
    set ^= 1;
    barrier();
    return slots;
  }

  __device__ double sum(double block_part) {
    const double* parts = exchange(block_part);
    double total = 0.0;
    for (int b = 0; b < blocks; b++) total += __ldcg(parts + b);
    return total;
  }

  // The sum of the blocks before this one (and *total, of all).
  __device__ double before(double block_part, double* total) {
    const double* parts = exchange(block_part);
    double base = 0.0, all = 0.0;
    for (int b = 0; b < blocks; b++) {
      const double v = __ldcg(parts + b);
      if (b < (int)blockIdx.x) base += v;
      all += v;
    }
    *total = all;
    return base;
  }
};

__device__ double block_sum_d(double v) {
  double total;
  block_exclusive(v, &total);
  return total;
}

// The key whose ties finish the selection over the team: walks 8-bit digits from the top, each pass
// counting (top_k) or weighing (top_p: f32 within a block, f64 across) the selected elements under
// the prefix so far. `need` starts as the count or weight wanted and ends as what the ties at the
// returned key must still give. Each warp fills its own histogram, so that the atomics of a pass
// where most elements share a digit contend within a warp only.
template <typename V, typename Amount>
__device__ uint32_t radix_select(Team& team, const uint32_t (&keys)[SAMPLE_HELD], int count, double* need,
                                 Amount amount, V (*bins)[256]) {
  __shared__ double totals[256];
  __shared__ uint32_t digit;
  __shared__ double left;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < warps * 256; d += blockDim.x) bins[d / 256][d % 256] = V(0);
    __syncthreads();
#pragma unroll
    for (int e = 0; e < SAMPLE_HELD; e++) {
      if (e < count && (keys[e] & mask) == prefix) {
        const V a = amount(e);
        if (a != V(0)) atomicAdd(&bins[warp][(keys[e] >> shift) & 255u], a);
      }
    }
    __syncthreads();
    double* shared_bins = team.mem.bins + team.set * SAMPLE_MAX_BLOCKS * 256;
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      double sum = 0.0;
      for (int w = 0; w < warps; w++) sum += (double)bins[w][d];
      shared_bins[blockIdx.x * 256 + d] = sum;
    }
    team.set ^= 1;
    team.barrier();
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      double sum = 0.0;
      for (int b = 0; b < team.blocks; b++) sum += __ldcg(shared_bins + b * 256 + d);
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
    sample_kernel(const T* x, int64_t ldx, int rows, int vocab, const double* params, unsigned char* scratch,
                  int32_t* out) {
  __shared__ __align__(16) unsigned char histograms[SAMPLE_THREADS / 32 * 256 * 4];
  __shared__ uint32_t block_next;
  __shared__ int picked, last;
  pdl_wait();
  pdl_trigger();
  Team team = {team_scratch(scratch, blockIdx.y), (int)gridDim.x, 0};
  const int segment = (vocab + gridDim.x - 1) / gridDim.x;
  const int held = (segment + blockDim.x - 1) / blockDim.x;  // ≤ SAMPLE_HELD (the launch checks)
  const int begin = min(vocab, (int)blockIdx.x * segment + (int)threadIdx.x * held);
  const int end = min(min(vocab, ((int)blockIdx.x + 1) * segment), begin + held);
  const int count = max(0, end - begin);

  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* row = x + (int64_t)r * ldx;
    const double temperature = params[4 * r];
    const int top_k = (int)params[4 * r + 1];
    const double top_p = params[4 * r + 2];
    const double uniform = params[4 * r + 3];

    uint32_t keys[SAMPLE_HELD];
    float top = -INFINITY;
#pragma unroll
    for (int e = 0; e < SAMPLE_HELD; e++) {
      const float v = e < count ? to_f32(row[begin + e]) : 0.f;
      keys[e] = order_key(v);
      if (e < count) top = fmaxf(top, v);
    }
    {
      const double* parts = team.exchange((double)block_max(top));
      top = -INFINITY;
      for (int b = 0; b < team.blocks; b++) top = fmaxf(top, (float)__ldcg(parts + b));
    }

    // Candidates: keys above tk, and the first keep_k ties at tk (index order).
    const bool cut_k = top_k > 0 && top_k < vocab;
    uint32_t tk = 0;
    int keep_k = 0, rank_k = 0;
    if (cut_k) {
      double need = top_k;
      tk = radix_select<int>(team, keys, count, &need, [](int) { return 1; },
                             reinterpret_cast<int (*)[256]>(histograms));
      keep_k = (int)need;
      int ties = 0;
#pragma unroll
      for (int e = 0; e < SAMPLE_HELD; e++) ties += e < count && keys[e] == tk;
      int in_block;
      const int within = block_exclusive(ties, &in_block);
      double all;
      rank_k = within + (int)team.before((double)in_block, &all);
    }

    // Weights of the candidates (0 elsewhere).
    double w[SAMPLE_HELD];
    double mass = 0.0;
    {
      int rank = rank_k;
#pragma unroll
      for (int e = 0; e < SAMPLE_HELD; e++) {
        bool in = e < count;
        if (in && cut_k) in = keys[e] > tk || (keys[e] == tk && rank++ < keep_k);
        w[e] = in ? exp(((double)key_value(keys[e]) - (double)top) / temperature) : 0.0;
        mass += w[e];
      }
    }
    mass = team.sum(block_sum_d(mass));

    // Nucleus: candidate keys above tp, and the first keep_p candidate ties at tp.
    const bool cut_p = top_p < 1.0;
    uint32_t tp = 0;
    int keep_p = 0, rank_p = 0;
    if (cut_p) {
      const double target = top_p * mass;
      double need = target;
      tp = radix_select<float>(team, keys, count, &need, [&](int e) { return (float)w[e]; },
                               reinterpret_cast<float (*)[256]>(histograms));
      // The f32 histograms may miss the boundary by a rounding: check it in f64 and step to the
      // right key, or (should that not settle) search the keys exactly by bisection.
      const auto mass_from = [&](uint32_t key, bool equal_too) {
        double sum = 0.0;
#pragma unroll
        for (int e = 0; e < SAMPLE_HELD; e++) {
          if (w[e] != 0.0 && (keys[e] > key || (equal_too && keys[e] == key))) sum += w[e];
        }
        return team.sum(block_sum_d(sum));
      };
      double above = mass_from(tp, false);
      double through = mass_from(tp, true);
      // Off by a rounding, the boundary is a neighbouring key: step to it, a few keys at most.
      for (int step = 0; step < 16 && !(above < target && target <= through); step++) {
        const bool up = above >= target;
        uint32_t next = up ? 0xffffffffu : 0u;
#pragma unroll
        for (int e = 0; e < SAMPLE_HELD; e++) {
          if (w[e] == 0.0) continue;
          if (up && keys[e] > tp) next = min(next, keys[e]);
          if (!up && keys[e] < tp) next = max(next, keys[e]);
        }
        if (threadIdx.x == 0) block_next = up ? 0xffffffffu : 0u;
        __syncthreads();
        if (up) {
          atomicMin(&block_next, next);
        } else {
          atomicMax(&block_next, next);
        }
        __syncthreads();
        const double* parts = team.exchange((double)block_next);  // keys are exact as doubles
        uint32_t found = up ? 0xffffffffu : 0u;
        for (int b = 0; b < team.blocks; b++) {
          const uint32_t k = (uint32_t)__ldcg(parts + b);
          found = up ? min(found, k) : max(found, k);
        }
        if (found == tp) break;
        tp = found;
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
#pragma unroll
      for (int e = 0; e < SAMPLE_HELD; e++) ties += keys[e] == tp && w[e] > 0.0;
      int in_block;
      const int within = block_exclusive(ties, &in_block);
      double all_ties;
      rank_p = within + (int)team.before((double)in_block, &all_ties);
      const int all = (int)all_ties;
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
    double held_weight = 0.0;
    int mine = -1;
    {
      int rank = rank_p;
#pragma unroll
      for (int e = 0; e < SAMPLE_HELD; e++) {
        if (w[e] == 0.0) continue;
        bool in = true;
        if (cut_p) in = keys[e] > tp || (keys[e] == tp && rank++ < keep_p);
        if (!in) {
          w[e] = 0.0;
          continue;
        }
        held_weight += w[e];
        mine = begin + e;
      }
    }
    double in_block;
    const double within = block_exclusive(held_weight, &in_block);
    double nucleus;
    const double base = within + team.before(in_block, &nucleus);
    const double target = uniform * nucleus;
    if (threadIdx.x == 0) {
      picked = vocab;
      last = -1;
    }
    __syncthreads();
    if (mine >= 0) atomicMax(&last, mine);
    if (held_weight > 0.0 && base <= target && target < base + held_weight) {
      double rest = target - base;
      int choice = mine;
#pragma unroll
      for (int e = 0; e < SAMPLE_HELD; e++) {
        if (w[e] == 0.0) continue;
        rest -= w[e];
        if (rest < 0.0) {
          choice = begin + e;
          break;
        }
      }
      atomicMin(&picked, choice);
    }
    __syncthreads();
    // picked, else the last index of the nucleus (a rounding left the target past the end); each
    // exchange is read before the next barrier, as the alternating sets require
    int choice = vocab, final_last = -1;
    const double* picks = team.exchange((double)picked);
    for (int b = 0; b < team.blocks; b++) choice = min(choice, (int)__ldcg(picks + b));
    const double* lasts = team.exchange((double)last);
    for (int b = 0; b < team.blocks; b++) final_last = max(final_last, (int)__ldcg(lasts + b));
    if (blockIdx.x == 0 && threadIdx.x == 0) out[r] = choice < vocab ? choice : (final_last >= 0 ? final_last : 0);
  }
}

// Blocks a team: enough for SAMPLE_HELD indices a thread.
static int team_blocks(int vocab) {
  const int per_block = SAMPLE_THREADS * SAMPLE_HELD;
  return (vocab + per_block - 1) / per_block;
}

// Teams that can be resident at once beside each other (the cooperative launch needs all).
template <typename T>
static int teams_of(int rows, int vocab, int* teams) {
  int device = 0, multiprocessors = 0, resident = 0;
  cudaError_t rc = cudaGetDevice(&device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  if (rc == cudaSuccess) {
    rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, sample_kernel<T>, SAMPLE_THREADS, 0);
  }
  if (rc != cudaSuccess) return static_cast<int>(rc);
  const int blocks = team_blocks(vocab);
  *teams = min(rows, resident * multiprocessors / blocks);
  return *teams < 1 || blocks > SAMPLE_MAX_BLOCKS ? static_cast<int>(cudaErrorInvalidValue) : 0;
}

extern "C" int64_t rf_sample_scratch_bytes(int rows, int vocab) {
  if (rows <= 0 || vocab <= 0) return 0;
  int teams = 0;
  // f32 and bf16 kernels use the same registers and shared memory; take the larger count
  if (teams_of<float>(rows, vocab, &teams) != 0) return -1;
  int other = 0;
  if (teams_of<__nv_bfloat16>(rows, vocab, &other) != 0) return -1;
  return (int64_t)max(teams, other) * TEAM_BYTES;
}

extern "C" int rf_sample(int dtype, const void* x, int ldx, int rows, int vocab, const double* params, void* scratch,
                         int32_t* out, void* stream) {
  if (rows <= 0) return 0;
  if (vocab <= 0) return static_cast<int>(cudaErrorInvalidValue);
  RF_DISPATCH(dtype, {
    int teams = 0;
    const int rc = teams_of<T>(rows, vocab, &teams);
    if (rc != 0) return rc;
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeCooperative;
    attribute.val.cooperative = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3((unsigned)team_blocks(vocab), (unsigned)teams);
    config.blockDim = dim3(SAMPLE_THREADS);
    config.stream = RF_STREAM(stream);
    config.attrs = &attribute;
    config.numAttrs = 1;
    return static_cast<int>(cudaLaunchKernelEx(&config, sample_kernel<T>, (const T*)x, (int64_t)ldx, rows, vocab,
                                               params, static_cast<unsigned char*>(scratch), out));
  });
  return 0;
}
