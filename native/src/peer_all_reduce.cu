// All-reduce (sum) over the GPUs of one machine in one kernel, for the small messages of decode,
// where NCCL's fixed cost (about 13 µs on two H200s) outweighs the transfer. Each rank owns a
// region of device memory that every other rank of the group has mapped (CUDA IPC):
//   [arrival flags: MAX_BLOCKS × MAX_RANKS u32][call counter u32][blocks done u32] ...
//   [parity 0: one slot per rank][parity 1: one slot per rank]
// A call writes this rank's input into its own slot in every rank's region (its parity's), then
// tells each peer it has arrived (a system-scope release of the call's number into the peer's
// flag for this block and rank), waits for every peer's arrival, and sums the slots of its own
// region in rank order, so that every rank gets the same bits. The parities alternate: a rank can
// only begin call n + 2, and overwrite what it wrote in call n, after call n + 1 has met every
// peer, which each peer joined only once it had finished reading call n. The call counter lives on
// the device, so a captured graph replays. The kernel lets the next one start at once (PDL), so a
// product after the all-reduce loads its weights while the ranks meet.
#include <algorithm>
#include <cstring>

#include "common.cuh"

namespace {

constexpr int MAX_RANKS = 8;
constexpr int MAX_BLOCKS = 64;
constexpr int THREADS = 512;
constexpr int64_t HEADER = 4096;  // flags, counters; keeps the slots 16-byte (in fact page) aligned

struct Regions {
  char* at[MAX_RANKS];
};

__device__ __forceinline__ void release_sys(uint32_t* flag, uint32_t value) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}

__device__ __forceinline__ uint32_t acquire_sys(const uint32_t* flag) {
  uint32_t value;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(value) : "l"(flag) : "memory");
  return value;
}

// 16 bytes: one vector load or store of 8 (16-bit) or 4 (f32) elements.
template <typename T>
union Vec {
  static constexpr int N = 16 / sizeof(T);
  uint4 bits;
  T x[N];
};

template <typename T>
__global__ void __launch_bounds__(THREADS, 1) peer_all_reduce(const uint4* in, uint4* out, int64_t vectors,
                                                              const __grid_constant__ Regions regions, int rank,
                                                              int world, int64_t capacity) {
  pdl_wait();
  pdl_trigger();
  char* own = regions.at[rank];
  uint32_t* flags = reinterpret_cast<uint32_t*>(own);
  uint32_t* counter = flags + MAX_BLOCKS * MAX_RANKS;
  uint32_t* done = counter + 1;
  const uint32_t call = *counter + 1;  // every block reads it before the last block moves it on
  const int64_t parity = HEADER + (call & 1) * world * capacity;
  const int64_t per_block = (vectors + gridDim.x - 1) / gridDim.x;
  const int64_t begin = blockIdx.x * per_block;
  const int64_t end = min(begin + per_block, vectors);

  for (int64_t v = begin + threadIdx.x; v < end; v += THREADS) {
    const uint4 x = in[v];
#pragma unroll
    for (int r = 0; r < MAX_RANKS; r++) {
      if (r < world) reinterpret_cast<uint4*>(regions.at[r] + parity + rank * capacity)[v] = x;
    }
  }
  __threadfence_system();
  __syncthreads();
  const int peer = threadIdx.x;
  if (peer < world && peer != rank) {
    uint32_t* theirs = reinterpret_cast<uint32_t*>(regions.at[peer]);
    release_sys(theirs + blockIdx.x * MAX_RANKS + rank, call);
    // Flags only grow; a peer may already be one call further on.
    while (static_cast<int32_t>(acquire_sys(flags + blockIdx.x * MAX_RANKS + peer) - call) < 0) {
    }
  }
  __syncthreads();

  for (int64_t v = begin + threadIdx.x; v < end; v += THREADS) {
    float acc[Vec<T>::N] = {};
#pragma unroll
    for (int r = 0; r < MAX_RANKS; r++) {
      if (r >= world) break;
      Vec<T> in_r;
      in_r.bits = __ldcg(reinterpret_cast<const uint4*>(own + parity + r * capacity) + v);
#pragma unroll
      for (int i = 0; i < Vec<T>::N; i++) acc[i] += to_f32(in_r.x[i]);
    }
    Vec<T> sum;
#pragma unroll
    for (int i = 0; i < Vec<T>::N; i++) sum.x[i] = from_f32<T>(acc[i]);
    out[v] = sum.bits;
  }

  // The last block to finish moves the counter on for the next call.
  __shared__ bool last;
  if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last && threadIdx.x == 0) {
    *done = 0;
    *counter = call;
  }
}

template <typename T>
int launch(const void* in, void* out, int64_t count, void* const* regions, int rank, int world, int64_t capacity,
           cudaStream_t stream) {
  const int64_t bytes = count * static_cast<int64_t>(sizeof(T));
  if (world < 2 || world > MAX_RANKS || rank < 0 || rank >= world || bytes % 16 != 0 || bytes > capacity ||
      capacity % 16 != 0 || reinterpret_cast<uintptr_t>(in) % 16 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (count == 0) return 0;
  Regions at = {};
  for (int r = 0; r < world; r++) at.at[r] = static_cast<char*>(regions[r]);
  const int64_t vectors = bytes / 16;
  const int blocks = static_cast<int>(std::min<int64_t>(MAX_BLOCKS, (vectors + THREADS - 1) / THREADS));
  return rf_launch(peer_all_reduce<T>, dim3(blocks), dim3(THREADS), 0, stream, static_cast<const uint4*>(in),
                   static_cast<uint4*>(out), vectors, at, rank, world, capacity);
}

}  // namespace

extern "C" int64_t rf_peer_region_bytes(int64_t capacity, int world) { return HEADER + 2 * world * capacity; }

extern "C" int rf_ipc_alloc(int64_t bytes, void** ptr, void* handle) {
  cudaError_t rc = cudaMalloc(ptr, static_cast<size_t>(bytes));
  if (rc != cudaSuccess) return static_cast<int>(rc);
  rc = cudaMemset(*ptr, 0, static_cast<size_t>(bytes));
  if (rc == cudaSuccess) rc = cudaDeviceSynchronize();
  if (rc == cudaSuccess) rc = cudaIpcGetMemHandle(static_cast<cudaIpcMemHandle_t*>(handle), *ptr);
  if (rc != cudaSuccess) {
    cudaFree(*ptr);
    *ptr = nullptr;
  }
  return static_cast<int>(rc);
}

extern "C" int rf_ipc_open(const void* handle, void** ptr) {
  cudaIpcMemHandle_t h;
  memcpy(&h, handle, sizeof(h));
  return static_cast<int>(cudaIpcOpenMemHandle(ptr, h, cudaIpcMemLazyEnablePeerAccess));
}

extern "C" int rf_ipc_close(void* ptr) { return static_cast<int>(cudaIpcCloseMemHandle(ptr)); }

extern "C" int rf_peer_all_reduce(int dtype, const void* in, void* out, int64_t count, void* const* regions, int rank,
                                  int world, int64_t capacity, void* stream) {
  switch (dtype) {
    case RF_F32:
      return launch<float>(in, out, count, regions, rank, world, capacity, RF_STREAM(stream));
    case RF_F16:
      return launch<__half>(in, out, count, regions, rank, world, capacity, RF_STREAM(stream));
    case RF_BF16:
      return launch<__nv_bfloat16>(in, out, count, regions, rank, world, capacity, RF_STREAM(stream));
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}
