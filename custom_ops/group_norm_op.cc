// Fused Group Normalization for TensorFlow on the CPU.
//
// KerasGnGroupNorm:      x, gamma, beta -> y, mean, rstd
// KerasGnGroupNormGrad:  dy, x, gamma, beta, mean, rstd -> dx, dgamma, dbeta
//
// The math is the one of keras_gn/ops.py (Wu & He 2018, Eq. 1, 2, 6, 7),
// with an optional fused activation (ReLU, SiLU) applied to the normalized
// output. Inputs are float32, float16 or bfloat16; statistics and gamma/beta
// are float32.
//
// Layout: channels-last [N, S..., C] or channels-first [N, C, S...] with one
// to three spatial axes (ranks 3 to 5), seen as [N, S, C] or [N, C, S].
//
// Work is split into units of (sample, block of whole groups), sized so that
// a unit's slice of the input stays in cache between two passes over it:
// forward is "statistics, then normalize", backward is "reduce dy and
// dy * xhat, then write dx"; the second pass re-reads the slice from cache.
// Units run on TensorFlow's intra-op thread pool.
//
// Numerics:
// - Statistics are one pass over data shifted by one of its own values per
//   channel, combined per group with Chan et al.'s pairwise formula in
//   float64: no E[x^2] - E[x]^2 cancellation for inputs with a large offset.
// - The centering is (x - ref) - (mean - ref), with ref the group's first
//   value (its first channel at position 0) and mean - ref rounded to float32
//   from float64: x - ref is exact for data close to ref, so a large common
//   offset (1e6 + N(0, 1)) costs no accuracy in the output either. The `mean`
//   output is this mean - ref; the gradient reads ref from x the same way.
// - Sums run in float32 over chunks of at most kChunk positions per channel
//   and are then added up in float64.
// - Every per-channel and per-group sum is computed by one unit in a fixed
//   order, and dgamma/dbeta are reduced over the batch in sample order, so
//   results do not depend on the number of threads or on the unit sizes.
//
// GPU: built with -DGOOGLE_CUDA=1 (keras_gn/fused/builder.py, `cuda=True`),
// this file also registers DEVICE_GPU kernels for both ops that call the
// CUDA launchers of group_norm_kernels.h (same math, same mean/rstd outputs).
// The launchers pass the GPU check (benchmarks/gpu/run.sh); these TensorFlow
// front ends have not yet run on a GPU (keras_gn.fused.TENSORFLOW_GPU_OP_VERIFIED).

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

#if GOOGLE_CUDA
#include "group_norm_kernels.h"
#endif

namespace keras_gn {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

constexpr int64_t kChunk = 64;  // positions summed in float32 before float64
#ifndef KERAS_GN_UNIT_BYTES_CF
#define KERAS_GN_UNIT_BYTES_CF (512 * 1024)
#endif
#ifndef KERAS_GN_UNIT_BYTES_CL
#define KERAS_GN_UNIT_BYTES_CL (16 * 1024 * 1024)
#endif
#ifndef KERAS_GN_ROW_BLOCK_BYTES
#define KERAS_GN_ROW_BLOCK_BYTES (512 * 1024)
#endif
// Target size of one unit's input slice. Channels-first slices are
// contiguous and sized for the per-core L2 cache; channels-last slices are
// strided rows of the unit's channels, and wide rows (whole samples where
// they fit the shared L3) stream much better than narrow ones.
constexpr int64_t kUnitBytesChannelsFirst = KERAS_GN_UNIT_BYTES_CF;
constexpr int64_t kUnitBytesChannelsLast = KERAS_GN_UNIT_BYTES_CL;
// Channels-last samples larger than kUnitBytesChannelsLast, or too few
// samples to occupy the threads, go by row blocks instead (see RowBlocking):
// about this many bytes of whole rows each.
constexpr int64_t kRowBlockBytes = KERAS_GN_ROW_BLOCK_BYTES;

enum class Activation { kNone, kRelu, kSilu };

inline float Sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

template <Activation A>
inline float Activate(float z) {
  if (A == Activation::kRelu) return z > 0.0f ? z : 0.0f;
  if (A == Activation::kSilu) return z * Sigmoid(z);
  return z;
}

// d Activate(z) / dz
template <Activation A>
inline float ActivationGrad(float z) {
  if (A == Activation::kRelu) return z > 0.0f ? 1.0f : 0.0f;
  if (A == Activation::kSilu) {
    const float s = Sigmoid(z);
    return s * (1.0f + z * (1.0f - s));
  }
  return 1.0f;
}

// The elements as the loops see them: bfloat16 as its bits (an enum over
// uint16_t), converted with integer arithmetic and a select, so that the
// loops vectorize. Eigen's bfloat16 struct converts with a NaN branch per
// element, which left the channels-first loops scalar (3x slower than
// float32). Rounding as Eigen's, to nearest even; a NaN stays a quiet NaN.
// float16 keeps Eigen::half: the same treatment (exact bit conversions with
// selects) vectorized in isolation but made the op 2x slower, and GCC 12
// does not vectorize _Float16 without AVX512-FP16. float16 runs about 3x
// slower than float32 (open). Compilers without __builtin_bit_cast (GCC
// before 11), or -DKERAS_GN_NO_BFLOAT16_BITS, keep Eigen's bfloat16 too:
// the same results, slower.
#if defined(__has_builtin) && !defined(KERAS_GN_NO_BFLOAT16_BITS)
#if __has_builtin(__builtin_bit_cast)
#define KERAS_GN_BFLOAT16_BITS 1
#endif
#endif

template <typename T>
struct Storage {
  using type = T;
};

inline float ToFloat(float v) { return v; }
inline float ToFloat(Eigen::half v) { return static_cast<float>(v); }
inline float ToFloat(Eigen::bfloat16 v) { return static_cast<float>(v); }

template <typename S>
inline S FromFloat(float f) {
  return static_cast<S>(f);
}

#ifdef KERAS_GN_BFLOAT16_BITS
enum class BFloat16Bits : uint16_t {};

template <>
struct Storage<Eigen::bfloat16> {
  using type = BFloat16Bits;
};

inline float ToFloat(BFloat16Bits v) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(v) << 16);
}

template <>
inline BFloat16Bits FromFloat<BFloat16Bits>(float f) {
  const uint32_t u = __builtin_bit_cast(uint32_t, f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return static_cast<BFloat16Bits>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}
#endif

template <typename T>
const typename Storage<T>::type* Elements(const Tensor& t) {
  return reinterpret_cast<const typename Storage<T>::type*>(t.flat<T>().data());
}
template <typename T>
typename Storage<T>::type* Elements(Tensor* t) {
  return reinterpret_cast<typename Storage<T>::type*>(t->flat<T>().data());
}

// The tensor seen as [N, S, C] (channels last) or [N, C, S].
struct Geometry {
  int64_t n, s, c, groups, group_size;
  bool channels_last;

  int64_t GroupElements() const { return s * group_size; }
  // Element (sample, position, channel) of the flat tensor.
  int64_t Index(int64_t sample, int64_t position, int64_t channel) const {
    return channels_last ? (sample * s + position) * c + channel
                         : (sample * c + channel) * s + position;
  }
};

// Units of (sample, [first_group, end_group)).
struct Blocking {
  int64_t groups_per_unit, units_per_sample;

  Blocking(const Geometry& g, int num_threads) {
    const int64_t group_bytes = std::max<int64_t>(1, g.GroupElements() * 4);
    int64_t per_unit = 1;  // a power of two: aligned channel blocks
    const int64_t budget = g.channels_last ? kUnitBytesChannelsLast : kUnitBytesChannelsFirst;
    while (per_unit * 2 * group_bytes <= budget) per_unit *= 2;
    // Enough units to keep every thread busy.
    const int64_t wanted_units = 4 * static_cast<int64_t>(num_threads);
    while (per_unit > 1 && g.n * ((g.groups + per_unit - 1) / per_unit) < wanted_units) {
      per_unit /= 2;
    }
    groups_per_unit = std::min(per_unit, g.groups);
    units_per_sample = (g.groups + groups_per_unit - 1) / groups_per_unit;
  }
};

// Channels-last by blocks of whole rows (all C channels of `rows`
// positions, a multiple of kChunk): the statistics pass sums each block's
// chunks, each sample's chunk sums are added in order, then the output
// pass maps each block. Used where a sample does not fit
// kUnitBytesChannelsLast (its second pass would miss the cache whatever
// the channel split, and narrow channel slices stream badly: a (4, 8, 56,
// 56, 256) tensor took 3x its channels-first twin's time) or where the
// samples are fewer than the units wanted; contiguous rows stream like
// channels-first. Both ways sum each chunk of kChunk positions in float32
// and add the chunks in order in float64 (AddChunks): the same bits,
// whatever the batch or the number of threads.
struct RowBlocking {
  int64_t rows = 0, blocks = 0;  // positions per block, blocks per sample

  RowBlocking(const Geometry& g, int num_threads) {
    if (!g.channels_last) return;
    const int64_t row_bytes = std::max<int64_t>(1, g.c * 4);
    const int64_t r = std::max<int64_t>(1, kRowBlockBytes / row_bytes / kChunk) * kChunk;
    const int64_t b = (g.s + r - 1) / r;
    const bool large = g.s * row_bytes > kUnitBytesChannelsLast;
    const bool few = g.n < 4 * static_cast<int64_t>(num_threads);
    if (b >= 2 && (large || few)) {
      rows = r;
      blocks = b;
    }
  }
  bool active() const { return blocks > 0; }
};

// Runs fn(sample, first_position, end_position) for every row block.
template <typename F>
void ForEachRowBlock(OpKernelContext* ctx, const Geometry& g, const RowBlocking& rb,
                     int64_t cost_per_element, F fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t cost = cost_per_element * rb.rows * g.c;
  pool->ParallelFor(g.n * rb.blocks, cost, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t sample = u / rb.blocks, p0 = (u % rb.blocks) * rb.rows;
      fn(sample, p0, std::min(g.s, p0 + rb.rows));
    }
  });
}

int NumThreads(OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads();
}

// One unit of work: groups [g0, g1) = channels [c0, c0 + width) of a sample.
struct Unit {
  int64_t sample, g0, g1, c0, width;
};

// Runs fn(unit) for every unit on the intra-op thread pool;
// `cost_per_element` is a rough count of operations per input element.
template <typename F>
void ForEachUnit(OpKernelContext* ctx, const Geometry& g, int64_t cost_per_element, F fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const Blocking blocking(g, pool->NumThreads());
  const int64_t cost = cost_per_element * g.GroupElements() * blocking.groups_per_unit;
  pool->ParallelFor(g.n * blocking.units_per_sample, cost, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      Unit unit;
      unit.sample = u / blocking.units_per_sample;
      unit.g0 = (u % blocking.units_per_sample) * blocking.groups_per_unit;
      unit.g1 = std::min(g.groups, unit.g0 + blocking.groups_per_unit);
      unit.c0 = unit.g0 * g.group_size;
      unit.width = (unit.g1 - unit.g0) * g.group_size;
      fn(unit);
    }
  });
}

int64_t Chunks(int64_t positions) { return (positions + kChunk - 1) / kChunk; }

// Channels-last shifts: each channel's value at position 0.
template <typename T>
void RowShifts(const Geometry& g, const T* x, int64_t sample, int64_t c0, int64_t width,
               float* shift) {
  const T* first = x + g.Index(sample, 0, c0);
  for (int64_t k = 0; k < width; ++k) shift[k] = ToFloat(first[k]);
}

// Channels-last, positions [p0, p1) (p0 a multiple of kChunk): for each
// chunk of kChunk positions, the float32 sums over the chunk of the pair
// f(k, i, &a, &b) (k: the channel from c0; i: the element's flat index),
// into chunk_a / chunk_b ([chunk][width], from p0's chunk).
template <typename F>
void RowChunkSums(const Geometry& g, int64_t sample, int64_t p0, int64_t p1, int64_t c0,
                  int64_t width, float* chunk_a, float* chunk_b, F f) {
  for (int64_t begin = p0; begin < p1; begin += kChunk) {
    float* sa = chunk_a + (begin - p0) / kChunk * width;
    float* sb = chunk_b + (begin - p0) / kChunk * width;
    std::fill(sa, sa + width, 0.0f);
    std::fill(sb, sb + width, 0.0f);
    const int64_t end = std::min(p1, begin + kChunk);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t base = g.Index(sample, p, c0);
#pragma omp simd
      for (int64_t k = 0; k < width; ++k) {
        float a, b;
        f(k, base + k, &a, &b);
        sa[k] += a;
        sb[k] += b;
      }
    }
  }
}

// The shifted sums (x - shift, (x - shift)^2) for RowChunkSums.
template <typename T>
struct ShiftedMoments {
  const T* x;
  const float* shift;
  void operator()(int64_t k, int64_t i, float* a, float* b) const {
    const float d = ToFloat(x[i]) - shift[k];
    *a = d;
    *b = d * d;
  }
};

// sum[k] = the chunks' values of channel k added in chunk order, in float64:
// the same result however the chunks were split between threads.
void AddChunks(const float* chunks, int64_t count, int64_t width, double* sum) {
  std::fill(sum, sum + width, 0.0);
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t k = 0; k < width; ++k) sum[k] += chunks[i * width + k];
  }
}

// Per-channel shifted sums over the positions of one sample, for channels
// [c0, c0 + width): sum1 = sum(x - shift), sum2 = sum((x - shift)^2), with
// shift = the channel's value at position 0. Shifting by a value of the data
// keeps the one-pass variance sum2 / n - (sum1 / n)^2 free of cancellation
// for inputs with a large offset. Float32 within chunks, float64 across.
template <typename T>
void ChannelMoments(const Geometry& g, const T* x, int64_t sample, int64_t c0,
                    int64_t width, float* shift, double* sum1, double* sum2) {
  if (g.channels_last) {
    const int64_t chunks = Chunks(g.s);
    std::vector<float> chunk1(chunks * width), chunk2(chunks * width);
    RowShifts(g, x, sample, c0, width, shift);
    RowChunkSums(g, sample, 0, g.s, c0, width, chunk1.data(), chunk2.data(),
                 ShiftedMoments<T>{x, shift});
    AddChunks(chunk1.data(), chunks, width, sum1);
    AddChunks(chunk2.data(), chunks, width, sum2);
  } else {
    std::fill(sum1, sum1 + width, 0.0);
    std::fill(sum2, sum2 + width, 0.0);
    for (int64_t k = 0; k < width; ++k) {
      const T* channel = x + g.Index(sample, 0, c0 + k);
      const float k_shift = ToFloat(channel[0]);
      shift[k] = k_shift;
      for (int64_t begin = 0; begin < g.s; begin += kChunk) {
        const int64_t end = std::min(g.s, begin + kChunk);
        float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t p = begin; p < end; ++p) {
          const float d = ToFloat(channel[p]) - k_shift;
          s1 += d;
          s2 += d * d;
        }
        sum1[k] += s1;
        sum2[k] += s2;
      }
    }
  }
}

// Two inputs (x and dy) at once: sums of f(channel, x, dy) into out_a, out_b.
template <typename T, typename F>
void ChannelSums2(const Geometry& g, const T* x, const T* dy, int64_t sample,
                  int64_t c0, int64_t width, double* out_a, double* out_b, F f) {
  if (g.channels_last) {
    const int64_t chunks = Chunks(g.s);
    std::vector<float> chunk_a(chunks * width), chunk_b(chunks * width);
    RowChunkSums(g, sample, 0, g.s, c0, width, chunk_a.data(), chunk_b.data(),
                 [x, dy, &f](int64_t k, int64_t i, float* a, float* b) {
                   f(k, ToFloat(x[i]), ToFloat(dy[i]), a, b);
                 });
    AddChunks(chunk_a.data(), chunks, width, out_a);
    AddChunks(chunk_b.data(), chunks, width, out_b);
  } else {
    std::fill(out_a, out_a + width, 0.0);
    std::fill(out_b, out_b + width, 0.0);
    for (int64_t k = 0; k < width; ++k) {
      const int64_t base = g.Index(sample, 0, c0 + k);
      for (int64_t begin = 0; begin < g.s; begin += kChunk) {
        const int64_t end = std::min(g.s, begin + kChunk);
        float sa = 0.0f, sb = 0.0f;
#pragma omp simd reduction(+ : sa, sb)
        for (int64_t p = begin; p < end; ++p) {
          float a, b;
          f(k, ToFloat(x[base + p]), ToFloat(dy[base + p]), &a, &b);
          sa += a;
          sb += b;
        }
        out_a[k] += sa;
        out_b[k] += sb;
      }
    }
  }
}

// Channels-last: ChannelMap over positions [p0, p1) only.
template <typename T, typename F>
void RowMap(const Geometry& g, const T* x, T* out, int64_t sample, int64_t p0, int64_t p1,
            int64_t c0, int64_t width, F f) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t base = g.Index(sample, p, c0);
    for (int64_t k = 0; k < width; ++k) {
      out[base + k] = FromFloat<T>(f(k, ToFloat(x[base + k])));
    }
  }
}

// out[i] = f(channel, x[i]) over channels [c0, c0 + width) of one sample.
template <typename T, typename F>
void ChannelMap(const Geometry& g, const T* x, T* out, int64_t sample, int64_t c0,
                int64_t width, F f) {
  if (g.channels_last) {
    RowMap(g, x, out, sample, 0, g.s, c0, width, f);
  } else {
    for (int64_t k = 0; k < width; ++k) {
      const int64_t base = g.Index(sample, 0, c0 + k);
#pragma omp simd
      for (int64_t p = 0; p < g.s; ++p) {
        out[base + p] = FromFloat<T>(f(k, ToFloat(x[base + p])));
      }
    }
  }
}

// Channels-last: ChannelMap2 over positions [p0, p1) only.
template <typename T, typename F>
void RowMap2(const Geometry& g, const T* x, const T* dy, T* out, int64_t sample, int64_t p0,
             int64_t p1, int64_t c0, int64_t width, F f) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t base = g.Index(sample, p, c0);
    for (int64_t k = 0; k < width; ++k) {
      out[base + k] = FromFloat<T>(f(k, ToFloat(x[base + k]), ToFloat(dy[base + k])));
    }
  }
}

// out[i] = f(channel, x[i], dy[i]).
template <typename T, typename F>
void ChannelMap2(const Geometry& g, const T* x, const T* dy, T* out, int64_t sample,
                 int64_t c0, int64_t width, F f) {
  if (g.channels_last) {
    RowMap2(g, x, dy, out, sample, 0, g.s, c0, width, f);
  } else {
    for (int64_t k = 0; k < width; ++k) {
      const int64_t base = g.Index(sample, 0, c0 + k);
#pragma omp simd
      for (int64_t p = 0; p < g.s; ++p) {
        out[base + p] = FromFloat<T>(
            f(k, ToFloat(x[base + p]), ToFloat(dy[base + p])));
      }
    }
  }
}

// The attr is validated by the op registration: one of none/relu/silu.
Activation ParseActivation(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "silu") return Activation::kSilu;
  return Activation::kNone;
}

// Checks x / gamma / beta and returns the geometry, or sets an error.
bool MakeGeometry(OpKernelContext* ctx, const Tensor& x, const Tensor& gamma,
                  const Tensor& beta, int64_t groups, bool channels_last,
                  Geometry* g) {
  const int rank = x.dims();
  if (rank < 3 || rank > 5) {
    ctx->SetStatus(InvalidArgument(
        "KerasGnGroupNorm: x must have rank 3, 4 or 5 (batch, 1 to 3 spatial "
        "axes, channels); received shape ",
        x.shape().DebugString()));
    return false;
  }
  const int channel_axis = channels_last ? rank - 1 : 1;
  g->n = x.dim_size(0);
  g->c = x.dim_size(channel_axis);
  g->s = 1;
  for (int d = 1; d < rank; ++d) {
    if (d != channel_axis) g->s *= x.dim_size(d);
  }
  g->channels_last = channels_last;
  g->groups = groups;
  if (g->c < 1 || groups > g->c) {
    ctx->SetStatus(InvalidArgument("KerasGnGroupNorm: groups=", groups, " for ", g->c,
                                   " channels; groups must be between 1 and the number of "
                                   "channels, and x must have at least one channel"));
    return false;
  }
  if (g->c % groups != 0) {
    ctx->SetStatus(InvalidArgument("KerasGnGroupNorm: ", g->c,
                                   " channels are not divisible by groups=", groups));
    return false;
  }
  g->group_size = g->c / groups;
  for (const Tensor* t : {&gamma, &beta}) {
    if (t->dims() != 1 || t->dim_size(0) != g->c) {
      ctx->SetStatus(InvalidArgument("KerasGnGroupNorm: gamma and beta must have shape [",
                                     g->c, "] (the channels of x), received ",
                                     t->shape().DebugString()));
      return false;
    }
  }
  return true;
}

// Per-channel constants of the output pass, for channels [c0, c0 + width).
struct Tables {
  std::vector<float> reference, center, scale;
  explicit Tables(int64_t width) : reference(width), center(width), scale(width) {}
};

// Groups [g0, g1) of a sample (their channels from c0 = g0 * group_size)
// from the channels' shifted sums over all S positions: mean / rstd outputs
// and the tables. Per channel c (n = S): mean_c = shift_c + sum1_c / n,
// M2_c = sum2_c - sum1_c^2 / n; per group (Chan et al.'s pairwise
// combination): mean = avg(mean_c), M2 = sum(M2_c + n * (mean_c - mean)^2).
// gamma, shift, sum1, sum2 and the tables start at channel c0.
void GroupStatistics(const Geometry& g, int64_t sample, int64_t g0, int64_t g1,
                     const float* shift, const double* sum1, const double* sum2,
                     const float* gamma, double epsilon, float* mean_out, float* rstd_out,
                     Tables* tables) {
  const double n = static_cast<double>(g.s);
  const double count = static_cast<double>(g.GroupElements());
  std::vector<double> channel_mean(g.group_size);
  for (int64_t gi = g0; gi < g1; ++gi) {
    const int64_t k0 = (gi - g0) * g.group_size, k1 = k0 + g.group_size;
    double mean = 0.0;
    for (int64_t k = k0; k < k1; ++k) {
      channel_mean[k - k0] = shift[k] + sum1[k] / n;
      mean += channel_mean[k - k0];
    }
    mean /= g.group_size;
    double m2 = 0.0;
    for (int64_t k = k0; k < k1; ++k) {
      const double d = channel_mean[k - k0] - mean;
      m2 += std::max(0.0, sum2[k] - sum1[k] * sum1[k] / n) + n * d * d;
    }
    const float r = static_cast<float>(1.0 / std::sqrt(m2 / count + epsilon));
    const float ref = shift[k0];  // the group's first value
    const float rel = static_cast<float>(mean - ref);
    mean_out[sample * g.groups + gi] = rel;
    rstd_out[sample * g.groups + gi] = r;
    for (int64_t k = k0; k < k1; ++k) {
      tables->reference[k] = ref;
      tables->center[k] = rel;
      tables->scale[k] = r * gamma[k];
    }
  }
}

// y = act(((x - ref) - (mean - ref)) * rstd * gamma + beta), per channel k.
template <Activation A>
struct Normalizer {
  const float *ref, *center, *scale, *beta;
  Normalizer(const Tables& t, const float* beta_c0)
      : ref(t.reference.data()), center(t.center.data()), scale(t.scale.data()), beta(beta_c0) {}
  float operator()(int64_t k, float v) const {
    return Activate<A>(((v - ref[k]) - center[k]) * scale[k] + beta[k]);
  }
};

// The attributes, input checks and outputs that the CPU and GPU kernels
// share: each device's kernel only computes (`Forward` / `Backward`).
class GroupNormKernelBase : public OpKernel {
 public:
  explicit GroupNormKernelBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("channels_last", &channels_last_));
    std::string activation;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation", &activation));
    activation_ = ParseActivation(activation);
  }

 protected:
  int64_t groups_;
  bool channels_last_;
  Activation activation_;
};

class GroupNormForwardBase : public GroupNormKernelBase {
 public:
  explicit GroupNormForwardBase(OpKernelConstruction* ctx) : GroupNormKernelBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& gamma = ctx->input(1);
    const Tensor& beta = ctx->input(2);
    Geometry g;
    if (!MakeGeometry(ctx, x, gamma, beta, groups_, channels_last_, &g)) return;
    Tensor *y, *mean, *rstd;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({g.n, g.groups}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({g.n, g.groups}), &rstd));
    Forward(ctx, g, x, gamma, beta, y, mean, rstd);
  }

 protected:
  virtual void Forward(OpKernelContext* ctx, const Geometry& g, const Tensor& x,
                       const Tensor& gamma, const Tensor& beta, Tensor* y, Tensor* mean,
                       Tensor* rstd) = 0;

  float epsilon_;
};

class GroupNormBackwardBase : public GroupNormKernelBase {
 public:
  using GroupNormKernelBase::GroupNormKernelBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    const Tensor& beta = ctx->input(3);
    const Tensor& mean = ctx->input(4);
    const Tensor& rstd = ctx->input(5);
    Geometry g;
    if (!MakeGeometry(ctx, x, gamma, beta, groups_, channels_last_, &g)) return;
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                InvalidArgument("KerasGnGroupNormGrad: dy has shape ", dy.shape().DebugString(),
                                " but x has shape ", x.shape().DebugString()));
    const TensorShape stats_shape({g.n, g.groups});
    OP_REQUIRES(ctx, mean.shape() == stats_shape && rstd.shape() == stats_shape,
                InvalidArgument("KerasGnGroupNormGrad: mean and rstd must have shape ",
                                stats_shape.DebugString(), ", received ",
                                mean.shape().DebugString(), " and ", rstd.shape().DebugString()));
    Tensor *dx, *dgamma, *dbeta;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, gamma.shape(), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, beta.shape(), &dbeta));
    Backward(ctx, g, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta);
  }

 protected:
  virtual void Backward(OpKernelContext* ctx, const Geometry& g, const Tensor& dy,
                        const Tensor& x, const Tensor& gamma, const Tensor& beta,
                        const Tensor& mean, const Tensor& rstd, Tensor* dx, Tensor* dgamma,
                        Tensor* dbeta) = 0;
};

template <typename T>
class GroupNormOp : public GroupNormForwardBase {
 public:
  using GroupNormForwardBase::GroupNormForwardBase;

 protected:
  void Forward(OpKernelContext* ctx, const Geometry& g, const Tensor& x, const Tensor& gamma,
               const Tensor& beta, Tensor* y, Tensor* mean, Tensor* rstd) override {
    if (x.NumElements() == 0) {
      mean->flat<float>().setZero();
      rstd->flat<float>().setZero();
      return;
    }
    switch (activation_) {
      case Activation::kRelu: Run<Activation::kRelu>(ctx, g, x, gamma, beta, y, mean, rstd); break;
      case Activation::kSilu: Run<Activation::kSilu>(ctx, g, x, gamma, beta, y, mean, rstd); break;
      default: Run<Activation::kNone>(ctx, g, x, gamma, beta, y, mean, rstd);
    }
  }

 private:
  template <Activation A>
  void Run(OpKernelContext* ctx, const Geometry& g, const Tensor& x_t, const Tensor& gamma_t,
           const Tensor& beta_t, Tensor* y_t, Tensor* mean_t, Tensor* rstd_t) {
    const auto* x = Elements<T>(x_t);
    const float* gamma = gamma_t.flat<float>().data();
    const float* beta = beta_t.flat<float>().data();
    auto* y = Elements<T>(y_t);
    float* mean_out = mean_t->flat<float>().data();
    float* rstd_out = rstd_t->flat<float>().data();
    const double epsilon = epsilon_;
    const RowBlocking rb(g, NumThreads(ctx));
    if (rb.active()) {
      RunByRows<A>(ctx, g, rb, x, gamma, beta, y, mean_out, rstd_out);
      return;
    }

    ForEachUnit(ctx, g, 10, [&](const Unit& unit) {
      const int64_t c0 = unit.c0, width = unit.width;
      std::vector<double> sum1(width), sum2(width);
      std::vector<float> shift(width);
      Tables tables(width);
      // Pass 1: statistics; pass 2: y from cache.
      ChannelMoments(g, x, unit.sample, c0, width, shift.data(), sum1.data(), sum2.data());
      GroupStatistics(g, unit.sample, unit.g0, unit.g1, shift.data(), sum1.data(), sum2.data(),
                      gamma + c0, epsilon, mean_out, rstd_out, &tables);
      ChannelMap(g, x, y, unit.sample, c0, width, Normalizer<A>(tables, beta + c0));
    });
  }

  // Channels-last by row blocks (RowBlocking): each block's chunk sums,
  // added per sample in chunk order, then y block by block.
  template <Activation A>
  void RunByRows(OpKernelContext* ctx, const Geometry& g, const RowBlocking& rb,
                 const typename Storage<T>::type* x, const float* gamma, const float* beta,
                 typename Storage<T>::type* y, float* mean_out, float* rstd_out) {
    const int64_t C = g.c, chunks = Chunks(g.s);
    std::vector<float> shift(g.n * C);
    for (int64_t sample = 0; sample < g.n; ++sample) {
      RowShifts(g, x, sample, 0, C, shift.data() + sample * C);
    }
    std::vector<float> chunk1(g.n * chunks * C), chunk2(g.n * chunks * C);
    ForEachRowBlock(ctx, g, rb, 4, [&](int64_t sample, int64_t p0, int64_t p1) {
      const int64_t at = (sample * chunks + p0 / kChunk) * C;
      RowChunkSums(g, sample, p0, p1, 0, C, chunk1.data() + at, chunk2.data() + at,
                   ShiftedMoments<typename Storage<T>::type>{x, shift.data() + sample * C});
    });
    std::vector<Tables> tables;
    tables.reserve(g.n);
    std::vector<double> sum1(C), sum2(C);
    for (int64_t sample = 0; sample < g.n; ++sample) {
      AddChunks(chunk1.data() + sample * chunks * C, chunks, C, sum1.data());
      AddChunks(chunk2.data() + sample * chunks * C, chunks, C, sum2.data());
      tables.emplace_back(C);
      GroupStatistics(g, sample, 0, g.groups, shift.data() + sample * C, sum1.data(),
                      sum2.data(), gamma, epsilon_, mean_out, rstd_out, &tables.back());
    }
    ForEachRowBlock(ctx, g, rb, 6, [&](int64_t sample, int64_t p0, int64_t p1) {
      RowMap(g, x, y, sample, p0, p1, 0, C, Normalizer<A>(tables[sample], beta));
    });
  }

};

// Per-channel constants of the backward passes, for channels [c0, c0 + width)
// of a sample: the forward's (mean is relative to the group's first value)
// and, once the channels' sums are known, dx's coefficients.
struct GradTables {
  std::vector<float> reference, center, inv, gam, bet, coef_x, coef_0;

  template <typename S>
  GradTables(const Geometry& g, const S* x, const float* gamma, const float* beta,
             const float* mean, const float* rstd, int64_t sample, int64_t c0, int64_t width)
      : reference(width), center(width), inv(width), gam(width), bet(width), coef_x(width),
        coef_0(width) {
    for (int64_t k = 0; k < width; ++k) {
      const int64_t gi = (c0 + k) / g.group_size;
      reference[k] = ToFloat(x[g.Index(sample, 0, gi * g.group_size)]);
      center[k] = mean[sample * g.groups + gi];
      inv[k] = rstd[sample * g.groups + gi];
      gam[k] = gamma[c0 + k];
      bet[k] = beta[c0 + k];
    }
  }

  // dx = rstd * (gamma * dz - mean_g(gamma * dz) - xhat * mean_g(gamma * dz * xhat)),
  // the bracket first: its terms cancel (exactly, for one-element groups),
  // and rstd, up to 1 / sqrt(epsilon), would amplify their rounding. Groups
  // [g0, g1) from their channels' sums of dz and dz * xhat over all positions.
  void SetCoefficients(const Geometry& g, int64_t g0, int64_t g1, const double* sum_dz,
                       const double* sum_dz_xhat) {
    const double count = static_cast<double>(g.GroupElements());
    for (int64_t gi = g0; gi < g1; ++gi) {
      double mean_gdz = 0.0, mean_gdz_xhat = 0.0;
      const int64_t k0 = (gi - g0) * g.group_size, k1 = k0 + g.group_size;
      for (int64_t k = k0; k < k1; ++k) {
        mean_gdz += gam[k] * sum_dz[k];
        mean_gdz_xhat += gam[k] * sum_dz_xhat[k];
      }
      mean_gdz /= count;
      mean_gdz_xhat /= count;
      for (int64_t k = k0; k < k1; ++k) {
        coef_x[k] = static_cast<float>(mean_gdz_xhat);
        coef_0[k] = static_cast<float>(mean_gdz);
      }
    }
  }
};

// (dz, dz * xhat), where z is the normalized output before the activation
// and dz = dy * act'(z).
template <Activation A>
struct GradSums {
  const float *ref, *m, *r, *ga, *be;
  explicit GradSums(const GradTables& t)
      : ref(t.reference.data()), m(t.center.data()), r(t.inv.data()), ga(t.gam.data()),
        be(t.bet.data()) {}
  void operator()(int64_t k, float xv, float dyv, float* a, float* b) const {
    const float xhat = ((xv - ref[k]) - m[k]) * r[k];
    const float dz = dyv * ActivationGrad<A>(xhat * ga[k] + be[k]);
    *a = dz;
    *b = dz * xhat;
  }
};

template <Activation A>
struct InputGrad {
  const float *ref, *m, *r, *ga, *be, *cx, *c0;
  explicit InputGrad(const GradTables& t)
      : ref(t.reference.data()), m(t.center.data()), r(t.inv.data()), ga(t.gam.data()),
        be(t.bet.data()), cx(t.coef_x.data()), c0(t.coef_0.data()) {}
  float operator()(int64_t k, float xv, float dyv) const {
    const float xhat = ((xv - ref[k]) - m[k]) * r[k];
    const float dz = dyv * ActivationGrad<A>(xhat * ga[k] + be[k]);
    return (ga[k] * dz - cx[k] * xhat - c0[k]) * r[k];
  }
};

template <typename T>
class GroupNormGradOp : public GroupNormBackwardBase {
 public:
  using GroupNormBackwardBase::GroupNormBackwardBase;

 protected:
  void Backward(OpKernelContext* ctx, const Geometry& g, const Tensor& dy, const Tensor& x,
                const Tensor& gamma, const Tensor& beta, const Tensor& mean, const Tensor& rstd,
                Tensor* dx, Tensor* dgamma, Tensor* dbeta) override {
    dgamma->flat<float>().setZero();
    dbeta->flat<float>().setZero();
    if (x.NumElements() == 0) return;
    switch (activation_) {
      case Activation::kRelu: Run<Activation::kRelu>(ctx, g, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta); break;
      case Activation::kSilu: Run<Activation::kSilu>(ctx, g, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta); break;
      default: Run<Activation::kNone>(ctx, g, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta);
    }
  }

 private:
  template <Activation A>
  void Run(OpKernelContext* ctx, const Geometry& g, const Tensor& dy_t, const Tensor& x_t,
           const Tensor& gamma_t, const Tensor& beta_t, const Tensor& mean_t,
           const Tensor& rstd_t, Tensor* dx_t, Tensor* dgamma_t, Tensor* dbeta_t) {
    const auto* dy = Elements<T>(dy_t);
    const auto* x = Elements<T>(x_t);
    const float* gamma = gamma_t.flat<float>().data();
    const float* beta = beta_t.flat<float>().data();
    const float* mean = mean_t.flat<float>().data();
    const float* rstd = rstd_t.flat<float>().data();
    auto* dx = Elements<T>(dx_t);
    // Per-sample partial sums of dbeta and dgamma, reduced in sample order.
    std::vector<double> partial_dbeta(g.n * g.c), partial_dgamma(g.n * g.c);
    const RowBlocking rb(g, NumThreads(ctx));

    if (rb.active()) {
      // Channels-last by row blocks (RowBlocking): each block's chunk sums,
      // added per sample in chunk order, then dx block by block.
      const int64_t C = g.c;
      std::vector<GradTables> tables;
      tables.reserve(g.n);
      for (int64_t sample = 0; sample < g.n; ++sample) {
        tables.emplace_back(g, x, gamma, beta, mean, rstd, sample, 0, C);
      }
      const int64_t chunks = Chunks(g.s);
      std::vector<float> chunk_a(g.n * chunks * C), chunk_b(g.n * chunks * C);
      ForEachRowBlock(ctx, g, rb, 8, [&](int64_t sample, int64_t p0, int64_t p1) {
        const int64_t at = (sample * chunks + p0 / kChunk) * C;
        const GradSums<A> sums(tables[sample]);
        RowChunkSums(g, sample, p0, p1, 0, C, chunk_a.data() + at, chunk_b.data() + at,
                     [x, dy, &sums](int64_t k, int64_t i, float* a, float* b) {
                       sums(k, ToFloat(x[i]), ToFloat(dy[i]), a, b);
                     });
      });
      for (int64_t sample = 0; sample < g.n; ++sample) {
        double* sum_dz = partial_dbeta.data() + sample * C;
        double* sum_dz_xhat = partial_dgamma.data() + sample * C;
        AddChunks(chunk_a.data() + sample * chunks * C, chunks, C, sum_dz);
        AddChunks(chunk_b.data() + sample * chunks * C, chunks, C, sum_dz_xhat);
        tables[sample].SetCoefficients(g, 0, g.groups, sum_dz, sum_dz_xhat);
      }
      ForEachRowBlock(ctx, g, rb, 8, [&](int64_t sample, int64_t p0, int64_t p1) {
        RowMap2(g, x, dy, dx, sample, p0, p1, 0, C, InputGrad<A>(tables[sample]));
      });
    } else {
      ForEachUnit(ctx, g, 16, [&](const Unit& unit) {
        const int64_t sample = unit.sample, c0 = unit.c0, width = unit.width;
        GradTables tables(g, x, gamma, beta, mean, rstd, sample, c0, width);
        double* sum_dz = partial_dbeta.data() + sample * g.c + c0;
        double* sum_dz_xhat = partial_dgamma.data() + sample * g.c + c0;
        // Pass 1: per channel, sums of dz and dz * xhat; pass 2: dx (from cache).
        ChannelSums2(g, x, dy, sample, c0, width, sum_dz, sum_dz_xhat, GradSums<A>(tables));
        tables.SetCoefficients(g, unit.g0, unit.g1, sum_dz, sum_dz_xhat);
        ChannelMap2(g, x, dy, dx, sample, c0, width, InputGrad<A>(tables));
      });
    }

    float* dgamma = dgamma_t->flat<float>().data();
    float* dbeta = dbeta_t->flat<float>().data();
    for (int64_t c = 0; c < g.c; ++c) {
      double sg = 0.0, sb = 0.0;
      for (int64_t n = 0; n < g.n; ++n) {
        sg += partial_dgamma[n * g.c + c];
        sb += partial_dbeta[n * g.c + c];
      }
      dgamma[c] = static_cast<float>(sg);
      dbeta[c] = static_cast<float>(sb);
    }
  }

};


#if GOOGLE_CUDA

// GPU kernels: the same attributes and checks as the CPU kernels, the work
// done by the CUDA launchers (group_norm_kernels.h) on TensorFlow's stream.

template <typename T>
struct CudaType;
template <>
struct CudaType<float> {
  static constexpr cuda::DType value = cuda::DType::kFloat32;
};
template <>
struct CudaType<Eigen::half> {
  static constexpr cuda::DType value = cuda::DType::kFloat16;
};
template <>
struct CudaType<Eigen::bfloat16> {
  static constexpr cuda::DType value = cuda::DType::kBFloat16;
};

cuda::Activation CudaActivation(Activation activation) {
  switch (activation) {
    case Activation::kRelu: return cuda::Activation::kRelu;
    case Activation::kSilu: return cuda::Activation::kSilu;
    default: return cuda::Activation::kNone;
  }
}

// [N, S, C] is [n, a=S, c, b=1]; [N, C, S] is [n, a=1, c, b=S].
cuda::Shape CudaShape(const Geometry& g) {
  cuda::Shape shape;
  shape.n = g.n;
  shape.a = g.channels_last ? g.s : 1;
  shape.c = g.c;
  shape.b = g.channels_last ? 1 : g.s;
  shape.groups = g.groups;
  return shape;
}

::tensorflow::Status CudaStatus(const char* op, const char* what, cudaError_t error) {
  if (error == cudaSuccess) return ::tensorflow::OkStatus();
  return ::tensorflow::errors::Internal(op, ": ", what, " failed: ", cudaGetErrorName(error), " (",
                                        cudaGetErrorString(error), ")");
}

// Scratch memory of `bytes` for one launch (no allocation for 0 bytes).
::tensorflow::Status Workspace(OpKernelContext* ctx, size_t bytes, Tensor* workspace,
                               void** data) {
  *data = nullptr;
  if (bytes == 0) return ::tensorflow::OkStatus();
  TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_INT8,
                                        TensorShape({static_cast<int64_t>(bytes)}), workspace));
  *data = workspace->flat<int8_t>().data();
  return ::tensorflow::OkStatus();
}

template <typename T>
class GroupNormGpuOp : public GroupNormForwardBase {
 public:
  using GroupNormForwardBase::GroupNormForwardBase;

 protected:
  void Forward(OpKernelContext* ctx, const Geometry& g, const Tensor& x, const Tensor& gamma,
               const Tensor& beta, Tensor* y, Tensor* mean, Tensor* rstd) override {
    const cuda::Shape shape = CudaShape(g);
    const cuda::DType dtype = CudaType<T>::value;
    size_t bytes = 0;
    OP_REQUIRES_OK(ctx, CudaStatus("KerasGnGroupNorm", "workspace size",
                                   cuda::GroupNormForwardWorkspaceSize(shape, dtype, &bytes)));
    Tensor workspace;
    void* scratch;
    OP_REQUIRES_OK(ctx, Workspace(ctx, bytes, &workspace, &scratch));
    const cudaStream_t stream = ctx->eigen_device<Eigen::GpuDevice>().stream();
    OP_REQUIRES_OK(
        ctx, CudaStatus("KerasGnGroupNorm", "launch",
                        cuda::GroupNormForward(
                            shape, dtype, CudaActivation(activation_), epsilon_,
                            x.flat<T>().data(), gamma.flat<float>().data(),
                            beta.flat<float>().data(), y->flat<T>().data(),
                            mean->flat<float>().data(), rstd->flat<float>().data(), scratch,
                            bytes, stream)));
  }
};

template <typename T>
class GroupNormGradGpuOp : public GroupNormBackwardBase {
 public:
  using GroupNormBackwardBase::GroupNormBackwardBase;

 protected:
  void Backward(OpKernelContext* ctx, const Geometry& g, const Tensor& dy, const Tensor& x,
                const Tensor& gamma, const Tensor& beta, const Tensor& mean, const Tensor& rstd,
                Tensor* dx, Tensor* dgamma, Tensor* dbeta) override {
    const cuda::Shape shape = CudaShape(g);
    const cuda::DType dtype = CudaType<T>::value;
    size_t bytes = 0;
    OP_REQUIRES_OK(ctx, CudaStatus("KerasGnGroupNormGrad", "workspace size",
                                   cuda::GroupNormBackwardWorkspaceSize(shape, dtype, &bytes)));
    Tensor workspace;
    void* scratch;
    OP_REQUIRES_OK(ctx, Workspace(ctx, bytes, &workspace, &scratch));
    const cudaStream_t stream = ctx->eigen_device<Eigen::GpuDevice>().stream();
    OP_REQUIRES_OK(
        ctx, CudaStatus("KerasGnGroupNormGrad", "launch",
                        cuda::GroupNormBackward(
                            shape, dtype, CudaActivation(activation_), dy.flat<T>().data(),
                            x.flat<T>().data(), gamma.flat<float>().data(),
                            beta.flat<float>().data(), mean.flat<float>().data(),
                            rstd.flat<float>().data(), dx->flat<T>().data(),
                            dgamma->flat<float>().data(), dbeta->flat<float>().data(), scratch,
                            bytes, stream)));
  }
};

#endif  // GOOGLE_CUDA

}  // namespace

REGISTER_OP("KerasGnGroupNorm")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: T")
    .Output("mean: float")
    .Output("rstd: float")
    .Attr("T: {float, half, bfloat16}")
    .Attr("groups: int >= 1")
    .Attr("epsilon: float")
    .Attr("channels_last: bool = true")
    .Attr("activation: {'none', 'relu', 'silu'} = 'none'")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      ::tensorflow::int64 groups;
      TF_RETURN_IF_ERROR(c->GetAttr("groups", &groups));
      auto batch = c->UnknownDim();
      if (c->RankKnown(c->input(0))) batch = c->Dim(c->input(0), 0);
      auto stats = c->MakeShape({batch, c->MakeDim(groups)});
      c->set_output(1, stats);
      c->set_output(2, stats);
      return ::tensorflow::OkStatus();
    })
    .Doc("Fused Group Normalization (keras_gn): y = act(GN(x) * gamma + beta).");

REGISTER_OP("KerasGnGroupNormGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("rstd: float")
    .Output("dx: T")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("T: {float, half, bfloat16}")
    .Attr("groups: int >= 1")
    .Attr("channels_last: bool = true")
    .Attr("activation: {'none', 'relu', 'silu'} = 'none'")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(3));
      return ::tensorflow::OkStatus();
    })
    .Doc("Gradient of KerasGnGroupNorm with respect to x, gamma and beta.");

#define REGISTER_KERNELS(T)                                                        \
  REGISTER_KERNEL_BUILDER(                                                         \
      Name("KerasGnGroupNorm").Device(DEVICE_CPU).TypeConstraint<T>("T"),          \
      GroupNormOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(                                                         \
      Name("KerasGnGroupNormGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      GroupNormGradOp<T>);

REGISTER_KERNELS(float);
REGISTER_KERNELS(Eigen::half);
REGISTER_KERNELS(Eigen::bfloat16);

#if GOOGLE_CUDA
#define REGISTER_GPU_KERNELS(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                         \
      Name("KerasGnGroupNorm").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
      GroupNormGpuOp<T>);                                                          \
  REGISTER_KERNEL_BUILDER(                                                         \
      Name("KerasGnGroupNormGrad").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
      GroupNormGradGpuOp<T>);

REGISTER_GPU_KERNELS(float);
REGISTER_GPU_KERNELS(Eigen::half);
REGISTER_GPU_KERNELS(Eigen::bfloat16);
#endif  // GOOGLE_CUDA

}  // namespace keras_gn
