// A C ABI over the CUDA launchers of group_norm_kernels.h, for the GPU check
// (benchmarks/gpu/check.py drives it through ctypes with PyTorch tensors'
// data_ptr()). Not used by keras_gn itself.
//
// Build: nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC \
//          group_norm_kernels.cu group_norm_capi.cc -o libkeras_gn_cuda.so
//
// Every function returns a cudaError_t as an int (0: success);
// keras_gn_cuda_error_string names it. dtype: 0 float32, 1 float16,
// 2 bfloat16; activation: 0 none, 1 relu, 2 silu; the tensor is [n, a, c, b]
// (group_norm_kernels.h); stream is a cudaStream_t (0: the legacy default).

#include <cuda_runtime_api.h>

#include "group_norm_kernels.h"

namespace {

keras_gn::cuda::Shape MakeShape(int64_t n, int64_t a, int64_t c, int64_t b, int64_t groups) {
  keras_gn::cuda::Shape s;
  s.n = n;
  s.a = a;
  s.c = c;
  s.b = b;
  s.groups = groups;
  return s;
}

}  // namespace

extern "C" {

int keras_gn_cuda_forward_workspace_size(int64_t n, int64_t a, int64_t c, int64_t b,
                                         int64_t groups, int dtype, size_t* bytes) {
  return keras_gn::cuda::GroupNormForwardWorkspaceSize(
      MakeShape(n, a, c, b, groups), static_cast<keras_gn::cuda::DType>(dtype), bytes);
}

int keras_gn_cuda_backward_workspace_size(int64_t n, int64_t a, int64_t c, int64_t b,
                                          int64_t groups, int dtype, size_t* bytes) {
  return keras_gn::cuda::GroupNormBackwardWorkspaceSize(
      MakeShape(n, a, c, b, groups), static_cast<keras_gn::cuda::DType>(dtype), bytes);
}

int keras_gn_cuda_forward(int64_t n, int64_t a, int64_t c, int64_t b, int64_t groups, int dtype,
                          int activation, float epsilon, const void* x, const void* gamma,
                          const void* beta, void* y, void* mean, void* rstd, void* workspace,
                          size_t workspace_bytes, void* stream) {
  if (dtype < 0 || dtype > 2 || activation < 0 || activation > 2) return cudaErrorInvalidValue;
  return keras_gn::cuda::GroupNormForward(
      MakeShape(n, a, c, b, groups), static_cast<keras_gn::cuda::DType>(dtype),
      static_cast<keras_gn::cuda::Activation>(activation), epsilon, x,
      static_cast<const float*>(gamma), static_cast<const float*>(beta), y,
      static_cast<float*>(mean), static_cast<float*>(rstd), workspace, workspace_bytes,
      static_cast<cudaStream_t>(stream));
}

int keras_gn_cuda_backward(int64_t n, int64_t a, int64_t c, int64_t b, int64_t groups, int dtype,
                           int activation, const void* dy, const void* x, const void* gamma,
                           const void* beta, const void* mean, const void* rstd, void* dx,
                           void* dgamma, void* dbeta, void* workspace, size_t workspace_bytes,
                           void* stream) {
  if (dtype < 0 || dtype > 2 || activation < 0 || activation > 2) return cudaErrorInvalidValue;
  return keras_gn::cuda::GroupNormBackward(
      MakeShape(n, a, c, b, groups), static_cast<keras_gn::cuda::DType>(dtype),
      static_cast<keras_gn::cuda::Activation>(activation), dy, x,
      static_cast<const float*>(gamma), static_cast<const float*>(beta),
      static_cast<const float*>(mean), static_cast<const float*>(rstd), dx,
      static_cast<float*>(dgamma), static_cast<float*>(dbeta), workspace, workspace_bytes,
      static_cast<cudaStream_t>(stream));
}

const char* keras_gn_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

}  // extern "C"
