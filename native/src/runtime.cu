// The library's own entry points: its ABI version, error strings, and the one-call graph replay
// that a decode step uses.
#include "common.cuh"

extern "C" int rf_abi_version(void) { return 1; }

extern "C" const char* rf_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

extern "C" int rf_graph_launch_sync(void* exec, void* stream) {
  cudaError_t rc = cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(exec), RF_STREAM(stream));
  if (rc != cudaSuccess) return static_cast<int>(rc);
  return static_cast<int>(cudaStreamSynchronize(RF_STREAM(stream)));
}
