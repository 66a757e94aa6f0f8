// CUDA kernels for Group Normalization (keras_gn): plain C++ launchers.
//
// No TensorFlow or PyTorch types: raw device pointers, sizes as int64, a
// stream, and a cudaError_t back. Two front ends call these: the TensorFlow
// GPU kernels of KerasGnGroupNorm / KerasGnGroupNormGrad (group_norm_op.cc,
// under GOOGLE_CUDA) and the C-ABI library of the GPU check
// (group_norm_capi.cc, driven from benchmarks/gpu/check.py).
//
// The math and the numerics are the CPU op's (group_norm_op.cc):
//   y = act(((x - ref) - mean) * rstd * gamma + beta)
// with `ref` the group's first value (channel g * C / G at the first
// position), `mean` the group mean minus ref, statistics and accumulation in
// float32 (combined across blocks in float64), gamma / beta / mean / rstd /
// dgamma / dbeta float32. x, y, dy, dx are float32, float16 or bfloat16.
//
// Layout: the tensor is seen as [n, a, c, b] (row-major): channels-last
// [N, S..., C] is a = S, b = 1; channels-first [N, C, S...] is a = 1, b = S.
// A view with both a > 1 and b > 1 is not supported (cudaErrorInvalidValue).
//
// Workspace: each launch needs scratch device memory of the size its
// *WorkspaceSize function gives for the same shape and dtype (it does not
// depend on the pointers or the device). Results do not depend on the device
// either: the reduction order is fixed by the shape.

#ifndef KERAS_GN_GROUP_NORM_KERNELS_H_
#define KERAS_GN_GROUP_NORM_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace keras_gn {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class Activation : int { kNone = 0, kRelu = 1, kSilu = 2 };

struct Shape {
  int64_t n, a, c, b;  // [n, a, c, b], see above
  int64_t groups;      // divides c
};

// Scratch bytes for GroupNormForward / GroupNormBackward.
cudaError_t GroupNormForwardWorkspaceSize(const Shape& shape, DType dtype, size_t* bytes);
cudaError_t GroupNormBackwardWorkspaceSize(const Shape& shape, DType dtype, size_t* bytes);

// y = act(GN(x) * gamma + beta); mean, rstd: [n, groups] (mean relative to
// the group's first value, as the CPU op's output).
cudaError_t GroupNormForward(const Shape& shape, DType dtype, Activation activation,
                             float epsilon, const void* x, const float* gamma,
                             const float* beta, void* y, float* mean, float* rstd,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

// dx, dgamma, dbeta of sum(y * dy), from the forward's mean and rstd.
cudaError_t GroupNormBackward(const Shape& shape, DType dtype, Activation activation,
                              const void* dy, const void* x, const float* gamma,
                              const float* beta, const float* mean, const float* rstd,
                              void* dx, float* dgamma, float* dbeta, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace keras_gn

#endif  // KERAS_GN_GROUP_NORM_KERNELS_H_
