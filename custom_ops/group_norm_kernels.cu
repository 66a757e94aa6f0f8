// CUDA kernels for Group Normalization (keras_gn); see group_norm_kernels.h.
//
// Checked on an H200 by benchmarks/gpu/run.sh (correctness against the
// float64 reference, a tensor over 2**31 elements, speed next to PyTorch):
// benchmarks/results/gpu_group_norm.json.
//
// Design (memory-bound: every pass streams the tensor once):
//   forward:  1. tile reduction -> per-(sample, channel, chunk) partial
//                moments (mean relative to the group's first value, M2)
//             2. per (sample, channel): combine the chunks (float64, Chan)
//             3. per (sample, group): combine the channels, write mean/rstd
//                and a per-(sample, channel) table (ref, mean, rstd * gamma, beta)
//             4. tile elementwise pass: y = act(((x - ref) - mean) * scale + beta)
//             (groups whose slice fits in shared memory: one block per group
//             does all of it in one read of x, GroupForward)
//   backward: 1. tile reduction -> per-(sample, channel, chunk) sums of dz and
//                dz * xhat (dz = dy * act'(z))
//             2. per (sample, channel): add the chunks (float64)
//             3. per (sample, group): the two group means of gamma * dz and
//                gamma * dz * xhat, into a table for the dx pass
//             4. per channel: dgamma, dbeta (sum over the batch, float64)
//             5. tile elementwise pass: dx
//
// Tiles. Channels-last ([N, S, C]): a block is TX x TY threads, TX threads
// over consecutive channel vectors of one position (a warp reads contiguous
// channels, 16 bytes per thread where C and the pointers allow), TY over
// positions; each thread keeps its channels' sums over the block's positions,
// and the block combines its TY rows in shared memory. Channels-first
// ([N, C, S]): TX threads over consecutive position vectors of one channel
// row, TY over rows; the TX lanes of a row are reduced with warp shuffles.
//
// Numerics. Each thread shifts its data by its own first value per channel
// (sums of x - shift and (x - shift)^2 in float32 over at most 256 * 8
// values), turns them into (count, mean - ref, M2), and those are combined
// with Chan et al.'s pairwise formula: in float32 within a block, in float64
// across blocks and channels. Centering is (x - ref) - (mean - ref), exact for
// data near ref, so an offset of 1e6 costs no accuracy. All index arithmetic
// is 64-bit. No atomics: results are bitwise reproducible.

#include "group_norm_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

namespace keras_gn {
namespace cuda {
namespace {

// How the tile kernels cut the tensor: each thread takes at most MAX_ITERS
// rows (channels-last) or vectors (channels-first), fewer until the grid has
// TARGET_BLOCKS blocks; the reductions (REDUCE_*: partial moments or sums per
// chunk) and the elementwise passes (ELEMENTWISE_*: y, dx) are cut apart.
// Overridable with -D for tuning (benchmarks/gpu/check.py --tune). Chosen on
// an H200 (132 SMs) from 12 variants, sum of the speed rows' medians: the
// reductions want long per-thread loops and few partials (the block's
// combine and the partials cost more than the occupancy they buy); 16/2048
// for both was 20% slower in forward, 1.75x in float16 channels-last.
#ifndef KERAS_GN_REDUCE_MAX_ITERS
#define KERAS_GN_REDUCE_MAX_ITERS 256
#endif
#ifndef KERAS_GN_REDUCE_TARGET_BLOCKS
#define KERAS_GN_REDUCE_TARGET_BLOCKS 264
#endif
#ifndef KERAS_GN_ELEMENTWISE_MAX_ITERS
#define KERAS_GN_ELEMENTWISE_MAX_ITERS 128
#endif
#ifndef KERAS_GN_ELEMENTWISE_TARGET_BLOCKS
#define KERAS_GN_ELEMENTWISE_TARGET_BLOCKS 528
#endif
// Forward in one pass where a group's slice takes at most this many bytes
// (0: never): see GroupForward. Channels-last only where a group's channels
// at one position take at least KERAS_GN_SINGLE_PASS_CL_ROW_BYTES (its reads
// are rows of that many bytes, strided by the C channels); 0: never. Off
// until it has run on a GPU: `bash benchmarks/gpu/run.sh --tune ''
// SINGLE_PASS_CL_ROW_BYTES=16` checks and times it beside the defaults.
#ifndef KERAS_GN_SINGLE_PASS_BYTES
#define KERAS_GN_SINGLE_PASS_BYTES (112 * 1024)
#endif
#ifndef KERAS_GN_SINGLE_PASS_CL_ROW_BYTES
#define KERAS_GN_SINGLE_PASS_CL_ROW_BYTES 0
#endif

constexpr int kThreads = 256;  // per tile block
constexpr int kFinalizeThreads = 256;

struct Cut {
  int max_iters;
  int64_t target_blocks;
};
constexpr Cut kReduceCut{KERAS_GN_REDUCE_MAX_ITERS, KERAS_GN_REDUCE_TARGET_BLOCKS};
constexpr Cut kElementwiseCut{KERAS_GN_ELEMENTWISE_MAX_ITERS, KERAS_GN_ELEMENTWISE_TARGET_BLOCKS};

// ---------------------------------------------------------------- elements

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// V consecutive elements, loaded and stored as one access (16 bytes for the
// vectorized kernels; the launcher checks alignment).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> Load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void Store(T* p, const Pack<T, V>& pack) {
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

// ------------------------------------------------------------- activations

template <int A>
__device__ __forceinline__ float Activate(float z) {
  if (A == static_cast<int>(Activation::kRelu)) return z > 0.0f ? z : 0.0f;
  if (A == static_cast<int>(Activation::kSilu)) return z * __frcp_rn(1.0f + __expf(-z));
  return z;
}

// d Activate(z) / dz
template <int A>
__device__ __forceinline__ float ActivationGrad(float z) {
  if (A == static_cast<int>(Activation::kRelu)) return z > 0.0f ? 1.0f : 0.0f;
  if (A == static_cast<int>(Activation::kSilu)) {
    const float s = __frcp_rn(1.0f + __expf(-z));
    return s * (1.0f + z * (1.0f - s));
  }
  return 1.0f;
}

// ------------------------------------------------------------------ moments

// (na, ma, qa) += (nb, mb, qb): count, mean, sum of squared deviations.
template <typename F>
__device__ __forceinline__ void Combine(F& na, F& ma, F& qa, F nb, F mb, F qb) {
  if (nb == F(0)) return;
  if (na == F(0)) {
    na = nb;
    ma = mb;
    qa = qb;
    return;
  }
  const F n = na + nb;
  const F d = mb - ma;
  const F wb = nb / n;
  ma += d * wb;
  qa += qb + d * d * na * wb;
  na = n;
}

// s1 += sum(v - shift), s2 += sum((v - shift)^2) over one pack.
template <typename T, int V>
__device__ __forceinline__ void AddShifted(const Pack<T, V>& pack, float shift, float& s1,
                                           float& s2) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float d = ToFloat(pack.v[j]) - shift;
    s1 += d;
    s2 = fmaf(d, d, s2);
  }
}

// act(((v - ref) - mean) * scale + beta): mean relative to ref, scale = rstd * gamma.
template <int A>
__device__ __forceinline__ float Normalized(float v, float ref, float mean, float scale,
                                            float beta) {
  return Activate<A>(((v - ref) - mean) * scale + beta);
}

// Shifted sums of one thread -> mean relative to ref, M2.
__device__ __forceinline__ void ToMoments(float count, float shift, float ref, float s1,
                                          float s2, float* mean, float* m2) {
  if (count > 0.0f) {
    const float local = s1 / count;
    *mean = (shift - ref) + local;
    *m2 = fmaxf(0.0f, s2 - s1 * local);
  } else {
    *mean = 0.0f;
    *m2 = 0.0f;
  }
}

// ----------------------------------------------------- channels-last tiles
//
// x as [N, S, C]; grid (N * parts, channel tiles), block (TX, TY). Block
// (n, part, tile) covers positions [part * chunk, +chunk) and channel vectors
// [tile * TX, +TX). Partials: part[(n * parts + part) * C + c].

struct TileCL {
  int64_t n, part, row0, row_end, c0;
  bool active;

  __device__ TileCL(int64_t S, int64_t C, int64_t parts, int64_t chunk, int V) {
    n = blockIdx.x / parts;
    part = blockIdx.x - n * parts;
    row0 = part * chunk;
    row_end = min(S, row0 + chunk);
    const int64_t v = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
    c0 = v * V;
    active = c0 < C;
  }
};

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    MomentsCL(const T* __restrict__ x, int64_t S, int64_t C, int64_t group_size, int64_t parts,
              int64_t chunk, float2* __restrict__ partial) {
  __shared__ float sh_n[kThreads];
  __shared__ float sh_m[kThreads * V];
  __shared__ float sh_q[kThreads * V];
  const TileCL t(S, C, parts, chunk, V);
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  const T* xs = x + t.n * S * C;

  float shift[V], s1[V], s2[V], mean[V], m2[V];
  float count = 0.0f;
#pragma unroll
  for (int j = 0; j < V; ++j) shift[j] = s1[j] = s2[j] = 0.0f;
  if (t.active && t.row0 + ty < t.row_end) {
    const Pack<T, V> first = Load<T, V>(xs + (t.row0 + ty) * C + t.c0);
#pragma unroll
    for (int j = 0; j < V; ++j) shift[j] = ToFloat(first.v[j]);
  }
  if (t.active) {
#pragma unroll 4
    for (int64_t r = t.row0 + ty; r < t.row_end; r += TY) {
      const Pack<T, V> p = Load<T, V>(xs + r * C + t.c0);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float d = ToFloat(p.v[j]) - shift[j];
        s1[j] += d;
        s2[j] = fmaf(d, d, s2[j]);
      }
      count += 1.0f;
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float ref = 0.0f;
    if (t.active) ref = ToFloat(xs[((t.c0 + j) / group_size) * group_size]);
    ToMoments(count, shift[j], ref, s1[j], s2[j], &mean[j], &m2[j]);
  }

  // Combine the TY rows of the block (tree, fixed order).
  const int tid = ty * TX + tx;
  sh_n[tid] = count;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    sh_m[tid * V + j] = mean[j];
    sh_q[tid * V + j] = m2[j];
  }
  __syncthreads();
  for (int stride = TY / 2; stride > 0; stride /= 2) {
    if (ty < stride) {
      const int other = tid + stride * TX;
      const float nb = sh_n[other];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float na = count;
        Combine(na, mean[j], m2[j], nb, sh_m[other * V + j], sh_q[other * V + j]);
        sh_m[tid * V + j] = mean[j];
        sh_q[tid * V + j] = m2[j];
      }
      count += nb;
      sh_n[tid] = count;
    }
    __syncthreads();
  }
  if (ty == 0 && t.active) {
    float2* out = partial + (t.n * parts + t.part) * C + t.c0;
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = make_float2(mean[j], m2[j]);
  }
}

// table: per (n, c) float4 (ref, mean, rstd * gamma, beta).
template <typename T, int V, int A>
__global__ void __launch_bounds__(kThreads)
    NormalizeCL(const T* __restrict__ x, T* __restrict__ y, const float4* __restrict__ table,
                int64_t S, int64_t C, int64_t parts, int64_t chunk) {
  const TileCL t(S, C, parts, chunk, V);
  if (!t.active) return;
  float4 k[V];
#pragma unroll
  for (int j = 0; j < V; ++j) k[j] = table[t.n * C + t.c0 + j];
  const int64_t base = t.n * S * C + t.c0;
#pragma unroll 4
  for (int64_t r = t.row0 + threadIdx.y; r < t.row_end; r += blockDim.y) {
    const Pack<T, V> p = Load<T, V>(x + base + r * C);
    Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = FromFloat<T>(Normalized<A>(ToFloat(p.v[j]), k[j].x, k[j].y, k[j].z, k[j].w));
    }
    Store<T, V>(y + base + r * C, out);
  }
}

// Per-(n, c) parameters of the backward pass.
struct GradParams {
  float ref, mean, rstd, gamma, beta;
};

template <typename T>
__device__ __forceinline__ GradParams LoadGradParams(const T* x, const float* gamma,
                                                     const float* beta, const float* mean,
                                                     const float* rstd, int64_t n, int64_t c,
                                                     int64_t G, int64_t group_size,
                                                     int64_t sample_stride,
                                                     int64_t channel_stride) {
  const int64_t g = c / group_size;
  GradParams p;
  p.ref = ToFloat(x[n * sample_stride + g * group_size * channel_stride]);
  p.mean = mean[n * G + g];
  p.rstd = rstd[n * G + g];
  p.gamma = gamma[c];
  p.beta = beta[c];
  return p;
}

template <int A>
__device__ __forceinline__ void GradTerms(const GradParams& p, float xv, float dyv, float* xhat,
                                          float* dz) {
  *xhat = ((xv - p.ref) - p.mean) * p.rstd;
  *dz = dyv * ActivationGrad<A>(*xhat * p.gamma + p.beta);
}

template <typename T, int V, int A>
__global__ void __launch_bounds__(kThreads)
    GradSumsCL(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ gamma,
               const float* __restrict__ beta, const float* __restrict__ mean,
               const float* __restrict__ rstd, int64_t S, int64_t C, int64_t G,
               int64_t group_size, int64_t parts, int64_t chunk, float2* __restrict__ partial) {
  __shared__ float sh_a[kThreads * V];
  __shared__ float sh_b[kThreads * V];
  const TileCL t(S, C, parts, chunk, V);
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  float sum_dz[V], sum_dz_xhat[V];
#pragma unroll
  for (int j = 0; j < V; ++j) sum_dz[j] = sum_dz_xhat[j] = 0.0f;
  if (t.active) {
    GradParams prm[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      prm[j] = LoadGradParams(x, gamma, beta, mean, rstd, t.n, t.c0 + j, G, group_size, S * C, 1);
    }
    const int64_t base = t.n * S * C + t.c0;
#pragma unroll 4
    for (int64_t r = t.row0 + ty; r < t.row_end; r += TY) {
      const Pack<T, V> px = Load<T, V>(x + base + r * C);
      const Pack<T, V> pd = Load<T, V>(dy + base + r * C);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float xhat, dz;
        GradTerms<A>(prm[j], ToFloat(px.v[j]), ToFloat(pd.v[j]), &xhat, &dz);
        sum_dz[j] += dz;
        sum_dz_xhat[j] = fmaf(dz, xhat, sum_dz_xhat[j]);
      }
    }
  }
  const int tid = ty * TX + tx;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    sh_a[tid * V + j] = sum_dz[j];
    sh_b[tid * V + j] = sum_dz_xhat[j];
  }
  __syncthreads();
  for (int stride = TY / 2; stride > 0; stride /= 2) {
    if (ty < stride) {
      const int other = tid + stride * TX;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        sum_dz[j] += sh_a[other * V + j];
        sum_dz_xhat[j] += sh_b[other * V + j];
        sh_a[tid * V + j] = sum_dz[j];
        sh_b[tid * V + j] = sum_dz_xhat[j];
      }
    }
    __syncthreads();
  }
  if (ty == 0 && t.active) {
    float2* out = partial + (t.n * parts + t.part) * C + t.c0;
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = make_float2(sum_dz[j], sum_dz_xhat[j]);
  }
}

// table: per (n, c) two float4: (ref, mean, rstd, gamma), (beta, c_xhat, c_0, 0);
// dx = (gamma * dz - c_xhat * xhat - c_0) * rstd.
template <int A>
__device__ __forceinline__ float InputGrad(const float4& k0, const float4& k1, float xv,
                                           float dyv) {
  const float xhat = ((xv - k0.x) - k0.y) * k0.z;
  const float dz = dyv * ActivationGrad<A>(xhat * k0.w + k1.x);
  // The bracket first: its terms cancel, and rstd would amplify their rounding.
  return (k0.w * dz - k1.y * xhat - k1.z) * k0.z;
}

template <typename T, int V, int A>
__global__ void __launch_bounds__(kThreads)
    InputGradCL(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                const float4* __restrict__ table, int64_t S, int64_t C, int64_t parts,
                int64_t chunk) {
  const TileCL t(S, C, parts, chunk, V);
  if (!t.active) return;
  float4 k0[V], k1[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    k0[j] = table[2 * (t.n * C + t.c0 + j)];
    k1[j] = table[2 * (t.n * C + t.c0 + j) + 1];
  }
  const int64_t base = t.n * S * C + t.c0;
#pragma unroll 4
  for (int64_t r = t.row0 + threadIdx.y; r < t.row_end; r += blockDim.y) {
    const Pack<T, V> px = Load<T, V>(x + base + r * C);
    const Pack<T, V> pd = Load<T, V>(dy + base + r * C);
    Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = FromFloat<T>(InputGrad<A>(k0[j], k1[j], ToFloat(px.v[j]), ToFloat(pd.v[j])));
    }
    Store<T, V>(dx + base + r * C, out);
  }
}

// ---------------------------------------------------- channels-first tiles
//
// x as [N * C rows, B]; grid (row tiles * parts), block (TX, TY) with TX a
// power of two <= 32. Block (tile, part) covers rows [tile * TY, +TY) and
// positions [part * chunk, +chunk). Partials: part[row * parts + part].

struct TileCF {
  int64_t row, part, col0, col_end;
  bool active;

  __device__ TileCF(int64_t rows, int64_t B, int64_t parts, int64_t chunk) {
    const int64_t tile = blockIdx.x / parts;
    part = blockIdx.x - tile * parts;
    row = tile * blockDim.y + threadIdx.y;
    col0 = part * chunk;
    col_end = min(B, col0 + chunk);
    active = row < rows;
  }
};

// Chan-combines (count, mean, m2) over the TX lanes of a row; lane 0 of the
// row ends with the result.
__device__ __forceinline__ void RowCombine(float& count, float& mean, float& m2, int TX) {
  for (int offset = TX / 2; offset > 0; offset /= 2) {
    const float nb = __shfl_xor_sync(0xffffffffu, count, offset, TX);
    const float mb = __shfl_xor_sync(0xffffffffu, mean, offset, TX);
    const float qb = __shfl_xor_sync(0xffffffffu, m2, offset, TX);
    Combine(count, mean, m2, nb, mb, qb);
  }
}

__device__ __forceinline__ float RowSum(float v, int TX) {
  for (int offset = TX / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset, TX);
  }
  return v;
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    MomentsCF(const T* __restrict__ x, int64_t rows, int64_t C, int64_t B, int64_t group_size,
              int64_t parts, int64_t chunk, float2* __restrict__ partial) {
  const TileCF t(rows, B, parts, chunk);
  const int tx = threadIdx.x, TX = blockDim.x;
  const T* xr = x + t.row * B;
  float shift = 0.0f, s1 = 0.0f, s2 = 0.0f, count = 0.0f, ref = 0.0f;
  if (t.active) {
    const int64_t n = t.row / C, c = t.row - n * C;
    ref = ToFloat(x[(n * C + (c / group_size) * group_size) * B]);
    if (t.col0 + tx * V < t.col_end) shift = ToFloat(xr[t.col0 + tx * V]);
#pragma unroll 4
    for (int64_t col = t.col0 + tx * V; col < t.col_end; col += TX * V) {
      AddShifted(Load<T, V>(xr + col), shift, s1, s2);
      count += static_cast<float>(V);
    }
  }
  float mean, m2;
  ToMoments(count, shift, ref, s1, s2, &mean, &m2);
  RowCombine(count, mean, m2, TX);
  if (tx == 0 && t.active) partial[t.row * parts + t.part] = make_float2(mean, m2);
}

template <typename T, int V, int A>
__global__ void __launch_bounds__(kThreads)
    NormalizeCF(const T* __restrict__ x, T* __restrict__ y, const float4* __restrict__ table,
                int64_t rows, int64_t B, int64_t parts, int64_t chunk) {
  const TileCF t(rows, B, parts, chunk);
  if (!t.active) return;
  const float4 k = table[t.row];
  const int64_t base = t.row * B;
#pragma unroll 4
  for (int64_t col = t.col0 + threadIdx.x * V; col < t.col_end; col += blockDim.x * V) {
    const Pack<T, V> p = Load<T, V>(x + base + col);
    Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = FromFloat<T>(Normalized<A>(ToFloat(p.v[j]), k.x, k.y, k.z, k.w));
    }
    Store<T, V>(y + base + col, out);
  }
}

template <typename T, int V, int A>
__global__ void __launch_bounds__(kThreads)
    GradSumsCF(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ gamma,
               const float* __restrict__ beta, const float* __restrict__ mean,
               const float* __restrict__ rstd, int64_t rows, int64_t C, int64_t B, int64_t G,
               int64_t group_size, int64_t parts, int64_t chunk, float2* __restrict__ partial) {
  const TileCF t(rows, B, parts, chunk);
  const int TX = blockDim.x;
  float sum_dz = 0.0f, sum_dz_xhat = 0.0f;
  if (t.active) {
    const int64_t n = t.row / C, c = t.row - n * C;
    const GradParams prm = LoadGradParams(x, gamma, beta, mean, rstd, n, c, G, group_size, C * B, B);
    const int64_t base = t.row * B;
#pragma unroll 4
    for (int64_t col = t.col0 + threadIdx.x * V; col < t.col_end; col += TX * V) {
      const Pack<T, V> px = Load<T, V>(x + base + col);
      const Pack<T, V> pd = Load<T, V>(dy + base + col);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float xhat, dz;
        GradTerms<A>(prm, ToFloat(px.v[j]), ToFloat(pd.v[j]), &xhat, &dz);
        sum_dz += dz;
        sum_dz_xhat = fmaf(dz, xhat, sum_dz_xhat);
      }
    }
  }
  sum_dz = RowSum(sum_dz, TX);
  sum_dz_xhat = RowSum(sum_dz_xhat, TX);
  if (threadIdx.x == 0 && t.active) {
    partial[t.row * parts + t.part] = make_float2(sum_dz, sum_dz_xhat);
  }
}

template <typename T, int V, int A>
__global__ void __launch_bounds__(kThreads)
    InputGradCF(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                const float4* __restrict__ table, int64_t rows, int64_t B, int64_t parts,
                int64_t chunk) {
  const TileCF t(rows, B, parts, chunk);
  if (!t.active) return;
  const float4 k0 = table[2 * t.row], k1 = table[2 * t.row + 1];
  const int64_t base = t.row * B;
#pragma unroll 4
  for (int64_t col = t.col0 + threadIdx.x * V; col < t.col_end; col += blockDim.x * V) {
    const Pack<T, V> px = Load<T, V>(x + base + col);
    const Pack<T, V> pd = Load<T, V>(dy + base + col);
    Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = FromFloat<T>(InputGrad<A>(k0, k1, ToFloat(px.v[j]), ToFloat(pd.v[j])));
    }
    Store<T, V>(dx + base + col, out);
  }
}

// ---------------------------------------------------------------- one pass
//
// One block per (sample, group): the group's slice of L = group_size * S
// values is loaded once into shared memory while each thread sums its
// values (shifted by its first one), the block combines the threads'
// moments (Chan: float32 within a warp, float64 across warps), and the
// normalization reads the slice back from shared memory: x is read from
// memory once instead of twice. Same numerics and outputs as the tile path.
// Channels-first, the slice is contiguous; channels-last it is S rows of
// group_size channels, C apart (group_size % V == 0: a vector lies in one
// row), kept in shared memory as [S, group_size].

// Threads per block: KERAS_GN_GROUP_THREADS for float32,
// KERAS_GN_GROUP_THREADS_HALF for float16 / bfloat16.
#ifndef KERAS_GN_GROUP_THREADS
#define KERAS_GN_GROUP_THREADS 512
#endif
#ifndef KERAS_GN_GROUP_THREADS_HALF
#define KERAS_GN_GROUP_THREADS_HALF 256
#endif
template <typename T>
struct GroupThreads {
  static constexpr int value = sizeof(T) == 2 ? KERAS_GN_GROUP_THREADS_HALF : KERAS_GN_GROUP_THREADS;
};
constexpr size_t kSinglePassBytes = KERAS_GN_SINGLE_PASS_BYTES;

template <typename T, int V, int A, bool kChannelsLast>
__global__ void __launch_bounds__(GroupThreads<T>::value)
    GroupForward(const T* __restrict__ x, const float* __restrict__ gamma,
                 const float* __restrict__ beta, int64_t C, int64_t S, int64_t G, float epsilon,
                 T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out) {
  extern __shared__ __align__(16) unsigned char group_cache[];
  T* cache = reinterpret_cast<T*>(group_cache);
  constexpr int kWarps = GroupThreads<T>::value / 32;
  __shared__ double warp_n[kWarps], warp_m[kWarps], warp_q[kWarps];
  __shared__ float group_mean, group_rstd;
  const int64_t group = blockIdx.x;  // n * G + g
  const int64_t group_size = C / G, L = group_size * S, vectors = L / V;
  const int64_t c0 = (group % G) * group_size;
  // Where the slice's k-th value (k = i * V) lies, from the group's first.
  auto offset = [&](int64_t k) {
    return kChannelsLast ? (k / group_size) * C + k % group_size : k;
  };
  const int64_t start = kChannelsLast ? (group / G) * S * C + c0 : group * L;
  const T* xg = x + start;
  T* yg = y + start;
  const float ref = ToFloat(xg[0]);

  float shift = 0.0f, s1 = 0.0f, s2 = 0.0f, count = 0.0f;
  if (threadIdx.x < vectors) shift = ToFloat(xg[offset(static_cast<int64_t>(threadIdx.x) * V)]);
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    const Pack<T, V> pack = Load<T, V>(xg + offset(i * V));
    Store<T, V>(cache + i * V, pack);
    AddShifted(pack, shift, s1, s2);
    count += static_cast<float>(V);
  }
  float mean, m2;
  ToMoments(count, shift, ref, s1, s2, &mean, &m2);
  RowCombine(count, mean, m2, 32);  // lane 0 of each warp: the warp's moments
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_n[warp] = count;
    warp_m[warp] = mean;
    warp_q[warp] = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double n = 0.0, m = 0.0, q = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      Combine(n, m, q, warp_n[w], warp_m[w], warp_q[w]);
    }
    const float r = static_cast<float>(1.0 / sqrt(q / n + static_cast<double>(epsilon)));
    group_mean = static_cast<float>(m);
    group_rstd = r;
    mean_out[group] = group_mean;
    rstd_out[group] = r;
  }
  __syncthreads();
  const float rel = group_mean, r = group_rstd;
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    const Pack<T, V> pack = Load<T, V>(cache + i * V);
    Pack<T, V> out;
    if (kChannelsLast) {  // V consecutive channels of one position
      const int64_t c = c0 + (i * V) % group_size;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        out.v[j] = FromFloat<T>(
            Normalized<A>(ToFloat(pack.v[j]), ref, rel, r * gamma[c + j], beta[c + j]));
      }
    } else {  // S % V == 0: a vector lies in one channel
      const int64_t c = c0 + (i * V) / S;
      const float scale = r * gamma[c], shift_c = beta[c];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        out.v[j] = FromFloat<T>(Normalized<A>(ToFloat(pack.v[j]), ref, rel, scale, shift_c));
      }
    }
    Store<T, V>(yg + offset(i * V), out);
  }
}

// The largest slice the one-pass kernel takes on the current device:
// KERAS_GN_SINGLE_PASS_BYTES, within the device's opt-in shared memory per
// block (less the kernel's static shared memory); 0 where unknown.
size_t SinglePassLimit() {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    cudaGetLastError();  // clear it: the tile path runs instead
    return 0;
  }
  return std::min(kSinglePassBytes, static_cast<size_t>(std::max(0, optin - 1024)));
}

// Positions of a view that has one of a, b equal to 1: S.
int64_t Positions(const Shape& s) { return s.b == 1 ? s.a : s.b; }

size_t GroupSliceBytes(const Shape& s, size_t element_bytes) {
  return static_cast<size_t>(s.c / s.groups) * static_cast<size_t>(Positions(s)) * element_bytes;
}

// Whether the one-pass kernel can take this forward's layout and groups;
// it does where the group slice also fits SinglePassLimit() (a device
// query, so asked only then).
bool SinglePassShape(const Shape& s, size_t element_bytes) {
  constexpr size_t kRowBytes = KERAS_GN_SINGLE_PASS_CL_ROW_BYTES;
  if (kSinglePassBytes == 0 || (s.a != 1 && s.b != 1) || Positions(s) <= 1 ||
      s.n * s.groups > 0x7fffffff) {
    return false;
  }
  const bool channels_last = s.b == 1;
  return !channels_last ||
         (kRowBytes > 0 && static_cast<size_t>(s.c / s.groups) * element_bytes >= kRowBytes);
}

template <typename T, int V, bool kChannelsLast>
cudaError_t LaunchSinglePass(const Shape& s, size_t limit, Activation activation, float epsilon,
                             const T* x, const float* gamma, const float* beta, T* y, float* mean,
                             float* rstd, cudaStream_t stream) {
  const size_t bytes = GroupSliceBytes(s, sizeof(T));
  const dim3 grid(static_cast<unsigned>(s.n * s.groups));
  auto launch = [&](auto kernel) {
    cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(limit));
    if (error != cudaSuccess) return error;
    kernel<<<grid, GroupThreads<T>::value, bytes, stream>>>(x, gamma, beta, s.c, Positions(s),
                                                            s.groups, epsilon, y, mean, rstd);
    return cudaGetLastError();
  };
  switch (activation) {
    case Activation::kRelu: return launch(GroupForward<T, V, 1, kChannelsLast>);
    case Activation::kSilu: return launch(GroupForward<T, V, 2, kChannelsLast>);
    default: return launch(GroupForward<T, V, 0, kChannelsLast>);
  }
}

// --------------------------------------------------------------- finalize
//
// Partials of (n, c, part) at partial[n * C * parts + c * stride_c + part * stride_p]:
// channels-last stride_c = 1, stride_p = C; channels-first stride_c = parts, stride_p = 1.

// One warp per (n, c): the chunks' moments combined (float64); part k holds
// min(chunk, len - k * chunk) values. Lanes take every 32nd chunk, then a
// butterfly; lane 0's result is kept (fixed order: reproducible). A thread per (n, c) would
// coalesce the channels-last loads, but leaves too few threads where N * C is
// small (measured: 3x slower on (2, 32, 64, 64, 64)).
__global__ void ChannelMoments(const float2* __restrict__ partial, int64_t NC, int64_t C,
                               int64_t parts, int64_t len, int64_t chunk, int64_t stride_c,
                               int64_t stride_p, double2* __restrict__ channel) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= NC) return;  // whole warps
  const int64_t n = i / C, c = i - n * C;
  const float2* p = partial + n * C * parts + c * stride_c;
  double count = 0.0, mean = 0.0, m2 = 0.0;
  for (int64_t k = lane; k < parts; k += 32) {
    const float2 v = p[k * stride_p];
    Combine(count, mean, m2, static_cast<double>(min(chunk, len - k * chunk)),
            static_cast<double>(v.x), static_cast<double>(v.y));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const double nb = __shfl_xor_sync(0xffffffffu, count, offset);
    const double mb = __shfl_xor_sync(0xffffffffu, mean, offset);
    const double qb = __shfl_xor_sync(0xffffffffu, m2, offset);
    Combine(count, mean, m2, nb, mb, qb);
  }
  if (lane == 0) channel[i] = make_double2(mean, m2);
}

// One warp per (n, c): the chunks' sums added (float64).
__global__ void ChannelSums(const float2* __restrict__ partial, int64_t NC, int64_t C,
                            int64_t parts, int64_t stride_c, int64_t stride_p,
                            double2* __restrict__ channel) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= NC) return;
  const int64_t n = i / C, c = i - n * C;
  const float2* p = partial + n * C * parts + c * stride_c;
  double a = 0.0, b = 0.0;
  for (int64_t k = lane; k < parts; k += 32) {
    const float2 v = p[k * stride_p];
    a += v.x;
    b += v.y;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, offset);
    b += __shfl_xor_sync(0xffffffffu, b, offset);
  }
  if (lane == 0) channel[i] = make_double2(a, b);
}

// One warp per (n, g): the group's moments from its channels' (each of `len`
// values), mean / rstd outputs, and the normalize table.
template <typename T>
__global__ void GroupMoments(const double2* __restrict__ channel, const T* __restrict__ x,
                             const float* __restrict__ gamma, const float* __restrict__ beta,
                             int64_t N, int64_t C, int64_t G, int64_t len, int64_t sample_stride,
                             int64_t channel_stride, float epsilon, float* __restrict__ mean_out,
                             float* __restrict__ rstd_out, float4* __restrict__ table) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= N * G) return;
  const int64_t n = warp / G, g = warp - n * G, group_size = C / G;
  const double2* ch = channel + n * C + g * group_size;
  double count = 0.0, mean = 0.0, m2 = 0.0;
  for (int64_t k = lane; k < group_size; k += 32) {
    Combine(count, mean, m2, static_cast<double>(len), ch[k].x, ch[k].y);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const double nb = __shfl_xor_sync(0xffffffffu, count, offset);
    const double mb = __shfl_xor_sync(0xffffffffu, mean, offset);
    const double qb = __shfl_xor_sync(0xffffffffu, m2, offset);
    Combine(count, mean, m2, nb, mb, qb);
  }
  // Lane 0's result for every lane (the butterfly's lanes may differ in rounding).
  mean = __shfl_sync(0xffffffffu, mean, 0);
  m2 = __shfl_sync(0xffffffffu, m2, 0);
  count = __shfl_sync(0xffffffffu, count, 0);
  const float r = static_cast<float>(1.0 / sqrt(m2 / count + static_cast<double>(epsilon)));
  const float rel = static_cast<float>(mean);
  const float ref = ToFloat(x[n * sample_stride + g * group_size * channel_stride]);
  if (lane == 0) {
    mean_out[warp] = rel;
    rstd_out[warp] = r;
  }
  for (int64_t k = lane; k < group_size; k += 32) {
    const int64_t c = g * group_size + k;
    table[n * C + c] = make_float4(ref, rel, r * gamma[c], beta[c]);
  }
}

// One warp per (n, g): means over the group of gamma * dz and gamma * dz * xhat.
template <typename T>
__global__ void GroupGradCoefficients(const double2* __restrict__ channel, const T* __restrict__ x,
                                      const float* __restrict__ gamma,
                                      const float* __restrict__ beta,
                                      const float* __restrict__ mean,
                                      const float* __restrict__ rstd, int64_t N, int64_t C,
                                      int64_t G, int64_t len, int64_t sample_stride,
                                      int64_t channel_stride, float4* __restrict__ table) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= N * G) return;
  const int64_t n = warp / G, g = warp - n * G, group_size = C / G;
  const double2* ch = channel + n * C + g * group_size;
  double a = 0.0, b = 0.0;
  for (int64_t k = lane; k < group_size; k += 32) {
    const double gk = gamma[g * group_size + k];
    a += gk * ch[k].x;
    b += gk * ch[k].y;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, offset);
    b += __shfl_xor_sync(0xffffffffu, b, offset);
  }
  a = __shfl_sync(0xffffffffu, a, 0);
  b = __shfl_sync(0xffffffffu, b, 0);
  const double count = static_cast<double>(len) * static_cast<double>(group_size);
  const float c_0 = static_cast<float>(a / count), c_xhat = static_cast<float>(b / count);
  const float ref = ToFloat(x[n * sample_stride + g * group_size * channel_stride]);
  const float m = mean[warp], r = rstd[warp];
  for (int64_t k = lane; k < group_size; k += 32) {
    const int64_t c = g * group_size + k;
    table[2 * (n * C + c)] = make_float4(ref, m, r, gamma[c]);
    table[2 * (n * C + c) + 1] = make_float4(beta[c], c_xhat, c_0, 0.0f);
  }
}

// Per channel: dbeta = sum_n sum_dz, dgamma = sum_n sum_dz_xhat (float64, sample order).
__global__ void ParameterGrads(const double2* __restrict__ channel, int64_t N, int64_t C,
                               float* __restrict__ dgamma, float* __restrict__ dbeta) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double a = 0.0, b = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    a += channel[n * C + c].x;
    b += channel[n * C + c].y;
  }
  dbeta[c] = static_cast<float>(a);
  dgamma[c] = static_cast<float>(b);
}

// ------------------------------------------------------------------ plans

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

// How the tile kernels cut the tensor.
struct Plan {
  bool channels_last;
  int vec, tx, ty;
  int64_t len;    // values per (n, c): positions
  int64_t chunk;  // of them per block
  int64_t parts;  // chunks per (n, c)
  dim3 grid;
};

bool ValidShape(const Shape& s) {
  return s.n >= 0 && s.a >= 0 && s.b >= 0 && s.c >= 1 && s.groups >= 1 && s.groups <= s.c &&
         s.c % s.groups == 0 && (s.a <= 1 || s.b <= 1);
}

int VectorWidth(DType dtype) { return dtype == DType::kFloat32 ? 4 : 8; }

// The plan for vector width `vec` (1, or VectorWidth(dtype) when it divides
// the contiguous extent). Returns false where the grid would not fit.
bool MakePlan(const Shape& s, int vec, Cut cut, Plan* p) {
  p->channels_last = s.b == 1;
  p->vec = vec;
  const int64_t width = p->channels_last ? s.c : s.b;  // the contiguous extent
  const int64_t vectors = width / vec;
  int tx = 1;
  while (tx < 32 && tx < vectors) tx *= 2;
  p->tx = tx;
  p->ty = kThreads / tx;
  p->len = s.a * s.b;
  const int64_t tiles = p->channels_last ? CeilDiv(vectors, tx) : CeilDiv(s.n * s.c, p->ty);
  for (int iters = cut.max_iters; iters >= 1; iters /= 2) {
    p->chunk = p->channels_last ? static_cast<int64_t>(p->ty) * iters
                                : static_cast<int64_t>(tx) * vec * iters;
    p->parts = std::max<int64_t>(1, CeilDiv(p->len, p->chunk));
    const int64_t blocks = (p->channels_last ? s.n : 1) * p->parts * tiles;
    if (blocks >= cut.target_blocks) break;
  }
  const int64_t grid_x = p->channels_last ? s.n * p->parts : tiles * p->parts;
  const int64_t grid_y = p->channels_last ? tiles : 1;
  if (grid_x > 0x7fffffff || grid_y > 65535) return false;
  p->grid = dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  return true;
}

struct Layout {
  size_t partial, channel, table, total;
};

Layout MakeLayout(const Shape& s, const Plan& p, int table_float4s) {
  Layout l;
  const size_t nc = static_cast<size_t>(s.n * s.c);
  l.partial = 0;
  l.channel = AlignUp(nc * p.parts * sizeof(float2));
  l.table = l.channel + AlignUp(nc * sizeof(double2));
  l.total = l.table + AlignUp(nc * table_float4s * sizeof(float4));
  return l;
}

cudaError_t WorkspaceSize(const Shape& s, DType dtype, int table_float4s, size_t* bytes) {
  if (!ValidShape(s)) return cudaErrorInvalidValue;
  *bytes = 0;
  if (s.n == 0 || s.a * s.b == 0) return cudaSuccess;
  Plan plain, vectorized;
  if (!MakePlan(s, 1, kReduceCut, &plain)) return cudaErrorInvalidConfiguration;
  *bytes = MakeLayout(s, plain, table_float4s).total;
  if (MakePlan(s, VectorWidth(dtype), kReduceCut, &vectorized)) {
    *bytes = std::max(*bytes, MakeLayout(s, vectorized, table_float4s).total);
  }
  return cudaSuccess;
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The vector width the tile kernels can use for these pointers.
int ChooseVector(const Shape& s, DType dtype, std::initializer_list<const void*> pointers) {
  const int vec = VectorWidth(dtype);
  const int64_t width = s.b == 1 ? s.c : s.b;
  if (width % vec != 0) return 1;
  for (const void* p : pointers) {
    if (!Aligned(p)) return 1;
  }
  return vec;
}

unsigned Blocks(int64_t threads, int per_block) {
  return static_cast<unsigned>(CeilDiv(threads, per_block));
}

// ---------------------------------------------------------------- forward

template <typename T, int V, int A>
void LaunchNormalize(const Shape& s, const Plan& p, const T* x, T* y, const float4* table,
                     cudaStream_t stream) {
  const dim3 block(p.tx, p.ty);
  if (p.channels_last) {
    NormalizeCL<T, V, A><<<p.grid, block, 0, stream>>>(x, y, table, s.a, s.c, p.parts, p.chunk);
  } else {
    NormalizeCF<T, V, A><<<p.grid, block, 0, stream>>>(x, y, table, s.n * s.c, s.b, p.parts,
                                                      p.chunk);
  }
}

template <typename T, int V>
void Forward(const Shape& s, const Plan& p, const Plan& e, const Layout& l, Activation activation,
             float epsilon, const T* x, const float* gamma, const float* beta, T* y, float* mean,
             float* rstd, char* ws, cudaStream_t stream) {
  float2* partial = reinterpret_cast<float2*>(ws + l.partial);
  double2* channel = reinterpret_cast<double2*>(ws + l.channel);
  float4* table = reinterpret_cast<float4*>(ws + l.table);
  const dim3 block(p.tx, p.ty);
  const int64_t group_size = s.c / s.groups;
  if (p.channels_last) {
    MomentsCL<T, V><<<p.grid, block, 0, stream>>>(x, s.a, s.c, group_size, p.parts, p.chunk,
                                                  partial);
  } else {
    MomentsCF<T, V><<<p.grid, block, 0, stream>>>(x, s.n * s.c, s.c, s.b, group_size, p.parts,
                                                  p.chunk, partial);
  }
  const int64_t nc = s.n * s.c;
  const int64_t stride_c = p.channels_last ? 1 : p.parts;
  const int64_t stride_p = p.channels_last ? s.c : 1;
  ChannelMoments<<<Blocks(nc * 32, kFinalizeThreads), kFinalizeThreads, 0, stream>>>(
      partial, nc, s.c, p.parts, p.len, p.chunk, stride_c, stride_p, channel);
  // The group's first value: element (n, 0, g * group_size, 0).
  const int64_t sample_stride = s.a * s.c * s.b, channel_stride = s.b;
  GroupMoments<T><<<Blocks(s.n * s.groups * 32, kFinalizeThreads), kFinalizeThreads, 0, stream>>>(
      channel, x, gamma, beta, s.n, s.c, s.groups, p.len, sample_stride, channel_stride, epsilon,
      mean, rstd, table);
  switch (activation) {
    case Activation::kRelu: LaunchNormalize<T, V, 1>(s, e, x, y, table, stream); break;
    case Activation::kSilu: LaunchNormalize<T, V, 2>(s, e, x, y, table, stream); break;
    default: LaunchNormalize<T, V, 0>(s, e, x, y, table, stream);
  }
}

template <typename T>
cudaError_t ForwardTyped(const Shape& s, DType dtype, Activation activation, float epsilon,
                         const void* x, const float* gamma, const float* beta, void* y,
                         float* mean, float* rstd, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream) {
  const int vec = ChooseVector(s, dtype, {x, y});
  Plan p, e;
  if (!MakePlan(s, vec, kReduceCut, &p) || !MakePlan(s, vec, kElementwiseCut, &e)) {
    return cudaErrorInvalidConfiguration;
  }
  const Layout l = MakeLayout(s, p, 1);
  if (workspace_bytes < l.total || (l.total > 0 && workspace == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  char* ws = static_cast<char*>(workspace);
  constexpr int kVec = 16 / sizeof(T);
  const size_t bytes = GroupSliceBytes(s, sizeof(T));
  const size_t limit = SinglePassShape(s, sizeof(T)) ? SinglePassLimit() : 0;
  if (bytes > 0 && bytes <= limit) {
    if (s.b == 1) {  // channels-last: vectors also within a group's channels
      return vec == kVec && (s.c / s.groups) % kVec == 0
                 ? LaunchSinglePass<T, kVec, true>(s, limit, activation, epsilon, xt, gamma,
                                                   beta, yt, mean, rstd, stream)
                 : LaunchSinglePass<T, 1, true>(s, limit, activation, epsilon, xt, gamma, beta,
                                                yt, mean, rstd, stream);
    }
    return vec == kVec ? LaunchSinglePass<T, kVec, false>(s, limit, activation, epsilon, xt,
                                                          gamma, beta, yt, mean, rstd, stream)
                       : LaunchSinglePass<T, 1, false>(s, limit, activation, epsilon, xt, gamma,
                                                       beta, yt, mean, rstd, stream);
  }
  if (vec == kVec) {
    Forward<T, kVec>(s, p, e, l, activation, epsilon, xt, gamma, beta, yt, mean, rstd, ws, stream);
  } else {
    Forward<T, 1>(s, p, e, l, activation, epsilon, xt, gamma, beta, yt, mean, rstd, ws, stream);
  }
  return cudaGetLastError();
}

// --------------------------------------------------------------- backward

template <typename T, int V, int A>
void BackwardActivation(const Shape& s, const Plan& p, const Plan& e, const Layout& l, const T* dy,
                        const T* x,
                        const float* gamma, const float* beta, const float* mean,
                        const float* rstd, T* dx, float* dgamma, float* dbeta, char* ws,
                        cudaStream_t stream) {
  float2* partial = reinterpret_cast<float2*>(ws + l.partial);
  double2* channel = reinterpret_cast<double2*>(ws + l.channel);
  float4* table = reinterpret_cast<float4*>(ws + l.table);
  const dim3 block(p.tx, p.ty);
  const int64_t group_size = s.c / s.groups;
  if (p.channels_last) {
    GradSumsCL<T, V, A><<<p.grid, block, 0, stream>>>(dy, x, gamma, beta, mean, rstd, s.a, s.c,
                                                      s.groups, group_size, p.parts, p.chunk,
                                                      partial);
  } else {
    GradSumsCF<T, V, A><<<p.grid, block, 0, stream>>>(dy, x, gamma, beta, mean, rstd, s.n * s.c,
                                                      s.c, s.b, s.groups, group_size, p.parts,
                                                      p.chunk, partial);
  }
  const int64_t nc = s.n * s.c;
  const int64_t stride_c = p.channels_last ? 1 : p.parts;
  const int64_t stride_p = p.channels_last ? s.c : 1;
  ChannelSums<<<Blocks(nc * 32, kFinalizeThreads), kFinalizeThreads, 0, stream>>>(
      partial, nc, s.c, p.parts, stride_c, stride_p, channel);
  const int64_t sample_stride = s.a * s.c * s.b, channel_stride = s.b;
  GroupGradCoefficients<T>
      <<<Blocks(s.n * s.groups * 32, kFinalizeThreads), kFinalizeThreads, 0, stream>>>(
          channel, x, gamma, beta, mean, rstd, s.n, s.c, s.groups, p.len, sample_stride,
          channel_stride, table);
  ParameterGrads<<<Blocks(s.c, kFinalizeThreads), kFinalizeThreads, 0, stream>>>(
      channel, s.n, s.c, dgamma, dbeta);
  const dim3 e_block(e.tx, e.ty);
  if (e.channels_last) {
    InputGradCL<T, V, A><<<e.grid, e_block, 0, stream>>>(dy, x, dx, table, s.a, s.c, e.parts,
                                                         e.chunk);
  } else {
    InputGradCF<T, V, A><<<e.grid, e_block, 0, stream>>>(dy, x, dx, table, s.n * s.c, s.b,
                                                         e.parts, e.chunk);
  }
}

template <typename T, int V>
void Backward(const Shape& s, const Plan& p, const Plan& e, const Layout& l, Activation activation,
              const T* dy, const T* x, const float* gamma, const float* beta, const float* mean,
              const float* rstd, T* dx, float* dgamma, float* dbeta, char* ws,
              cudaStream_t stream) {
  switch (activation) {
    case Activation::kRelu:
      BackwardActivation<T, V, 1>(s, p, e, l, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, ws,
                                  stream);
      break;
    case Activation::kSilu:
      BackwardActivation<T, V, 2>(s, p, e, l, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, ws,
                                  stream);
      break;
    default:
      BackwardActivation<T, V, 0>(s, p, e, l, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, ws,
                                  stream);
  }
}

template <typename T>
cudaError_t BackwardTyped(const Shape& s, DType dtype, Activation activation, const void* dy,
                          const void* x, const float* gamma, const float* beta,
                          const float* mean, const float* rstd, void* dx, float* dgamma,
                          float* dbeta, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  const int vec = ChooseVector(s, dtype, {dy, x, dx});
  Plan p, e;
  if (!MakePlan(s, vec, kReduceCut, &p) || !MakePlan(s, vec, kElementwiseCut, &e)) {
    return cudaErrorInvalidConfiguration;
  }
  const Layout l = MakeLayout(s, p, 2);
  if (workspace_bytes < l.total || (l.total > 0 && workspace == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const T* dyt = static_cast<const T*>(dy);
  const T* xt = static_cast<const T*>(x);
  T* dxt = static_cast<T*>(dx);
  char* ws = static_cast<char*>(workspace);
  constexpr int kVec = 16 / sizeof(T);
  if (vec == kVec) {
    Backward<T, kVec>(s, p, e, l, activation, dyt, xt, gamma, beta, mean, rstd, dxt, dgamma, dbeta,
                      ws, stream);
  } else {
    Backward<T, 1>(s, p, e, l, activation, dyt, xt, gamma, beta, mean, rstd, dxt, dgamma, dbeta, ws,
                   stream);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t GroupNormForwardWorkspaceSize(const Shape& shape, DType dtype, size_t* bytes) {
  return WorkspaceSize(shape, dtype, 1, bytes);
}

cudaError_t GroupNormBackwardWorkspaceSize(const Shape& shape, DType dtype, size_t* bytes) {
  return WorkspaceSize(shape, dtype, 2, bytes);
}

cudaError_t GroupNormForward(const Shape& s, DType dtype, Activation activation, float epsilon,
                             const void* x, const float* gamma, const float* beta, void* y,
                             float* mean, float* rstd, void* workspace, size_t workspace_bytes,
                             cudaStream_t stream) {
  if (!ValidShape(s)) return cudaErrorInvalidValue;
  if (s.n == 0) return cudaSuccess;
  if (s.a * s.b == 0) {  // no positions: statistics of nothing are zeros (the CPU op's)
    const size_t bytes = static_cast<size_t>(s.n * s.groups) * sizeof(float);
    cudaError_t error = cudaMemsetAsync(mean, 0, bytes, stream);
    if (error == cudaSuccess) error = cudaMemsetAsync(rstd, 0, bytes, stream);
    return error;
  }
  switch (dtype) {
    case DType::kFloat32:
      return ForwardTyped<float>(s, dtype, activation, epsilon, x, gamma, beta, y, mean, rstd,
                                 workspace, workspace_bytes, stream);
    case DType::kFloat16:
      return ForwardTyped<__half>(s, dtype, activation, epsilon, x, gamma, beta, y, mean, rstd,
                                  workspace, workspace_bytes, stream);
    case DType::kBFloat16:
      return ForwardTyped<__nv_bfloat16>(s, dtype, activation, epsilon, x, gamma, beta, y, mean,
                                         rstd, workspace, workspace_bytes, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t GroupNormBackward(const Shape& s, DType dtype, Activation activation, const void* dy,
                              const void* x, const float* gamma, const float* beta,
                              const float* mean, const float* rstd, void* dx, float* dgamma,
                              float* dbeta, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  if (!ValidShape(s)) return cudaErrorInvalidValue;
  if (s.n == 0 || s.a * s.b == 0) {  // nothing to sum: zero parameter gradients
    const size_t bytes = static_cast<size_t>(s.c) * sizeof(float);
    cudaError_t error = cudaMemsetAsync(dgamma, 0, bytes, stream);
    if (error == cudaSuccess) error = cudaMemsetAsync(dbeta, 0, bytes, stream);
    return error;
  }
  switch (dtype) {
    case DType::kFloat32:
      return BackwardTyped<float>(s, dtype, activation, dy, x, gamma, beta, mean, rstd, dx,
                                  dgamma, dbeta, workspace, workspace_bytes, stream);
    case DType::kFloat16:
      return BackwardTyped<__half>(s, dtype, activation, dy, x, gamma, beta, mean, rstd, dx,
                                   dgamma, dbeta, workspace, workspace_bytes, stream);
    case DType::kBFloat16:
      return BackwardTyped<__nv_bfloat16>(s, dtype, activation, dy, x, gamma, beta, mean, rstd,
                                          dx, dgamma, dbeta, workspace, workspace_bytes, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace keras_gn
