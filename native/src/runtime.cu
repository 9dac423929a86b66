// The library's own entry points: its ABI version, error strings, the programmatic-launch switch
// and the one-call graph replay that a decode step uses.
#include "common.cuh"

int rf_programmatic = 0;

extern "C" int rf_abi_version(void) { return 8; }

extern "C" const char* rf_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

extern "C" int rf_set_programmatic_launch(int on) {
  int device = 0, major = 0;
  cudaError_t rc = cudaGetDevice(&device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (rc != cudaSuccess) return -static_cast<int>(rc);
  rf_programmatic = on && major >= 9 ? 1 : 0;
  return rf_programmatic;
}

extern "C" int rf_graph_launch_sync(void* exec, void* stream) {
  cudaError_t rc = cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(exec), RF_STREAM(stream));
  if (rc != cudaSuccess) return static_cast<int>(rc);
  return static_cast<int>(cudaStreamSynchronize(RF_STREAM(stream)));
}

#ifdef RF_TRACE
int rf_trace_set_decode_attention(void* buf);
int rf_trace_set_elementwise(void* buf);
int rf_trace_set_gemv(void* buf);
int rf_trace_set_sampling(void* buf);

// Points every traced kernel at `buf` (null: none records), see RF_TRACE_END in common.cuh.
extern "C" int rf_trace_set(void* buf) {
  int rc = rf_trace_set_decode_attention(buf);
  if (!rc) rc = rf_trace_set_elementwise(buf);
  if (!rc) rc = rf_trace_set_gemv(buf);
  if (!rc) rc = rf_trace_set_sampling(buf);
  return rc;
}
#endif
