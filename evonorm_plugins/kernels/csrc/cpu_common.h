// Helpers shared by the hand-written CPU kernels (sample_cpu.cpp, batch_cpu.cpp; see kernels/native.py).
#pragma once
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#endif

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace evonorm_cpu {

using at::Tensor;
using at::vec::Vectorized;

// body(i, count) over [0, n) in vectors: full ones with the count a compile-time constant (whatever the
// inliner decides, a plain load and store; a runtime count goes through a copy), then the tail.
template <typename T, typename Body>
inline void for_each_vector(int64_t n, const Body& body) {
  constexpr int64_t size = Vectorized<T>::size();
  int64_t i = 0;
  for (; i + size <= n; i += size) body(i, std::integral_constant<int64_t, size>{});
  if (i < n) body(i, n - i);
}

// Tensors of a half type (BFloat16, Half) are computed in float: vectors are converted in registers as
// they are loaded and stored, not through float32 copies of the tensors. ``load`` reads n ≤ size values.
template <typename T, typename In>
inline Vectorized<T> load(const In* p, int64_t n) {
  if constexpr (std::is_same_v<T, In>) {
    return Vectorized<T>::loadu(p, n);
  } else {
    if (n == Vectorized<T>::size()) {
      Vectorized<float> out;
      at::vec::load_to_float(p, out);
      return out;
    }
    T values[Vectorized<T>::size()] = {};
    for (int64_t i = 0; i < n; ++i) values[i] = T(p[i]);
    return Vectorized<T>::loadu(values);
  }
}

template <typename T, typename In>
inline void store(const Vectorized<T>& v, In* p, int64_t n) {
  if constexpr (std::is_same_v<T, In>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<In>(v, v).store(p, n);
  }
}

// The lanes of an accumulator, added in double.
template <typename T>
inline double lane_sum(const Vectorized<T>& acc) {
  T lanes[Vectorized<T>::size()];
  acc.store(lanes);
  double s = 0;
  for (int64_t k = 0; k < Vectorized<T>::size(); ++k) s += lanes[k];
  return s;
}

// Sum of a row: vector lanes, then their combine and the tail in double.
template <typename In>
inline double row_sum(const In* x, int64_t n) {
  using T = at::opmath_type<In>;
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) acc += load<T>(x + i, V::size());
  double s = lane_sum(acc);
  for (; i < n; ++i) s += double(x[i]);
  return s;
}

template <typename In>
inline double row_centred_squares(const In* x, int64_t n, at::opmath_type<In> mean) {
  using T = at::opmath_type<In>;
  using V = Vectorized<T>;
  V acc(T(0));
  const V m(mean);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    V d = load<T>(x + i, V::size()) - m;
    acc = at::vec::fmadd(d, d, acc);
  }
  double s = lane_sum(acc);
  for (; i < n; ++i) s += (double(x[i]) - double(mean)) * (double(x[i]) - double(mean));
  return s;
}

// Channels-last (N, L, C): per-channel sums over blocks of L, shifted by the instance's first value of
// the channel (one pass, accurate when the shift is near the mean), combined by the caller. ``also(l, c,
// x, count)`` sees each vector as it is read (row l of the block, channels from c), for a kernel that
// does more in the same pass.
constexpr int64_t kBlock = 256;

struct Nothing {
  template <typename... Args>
  void operator()(Args&&...) const {}
};

template <typename In, typename Also = Nothing>
void channel_block_moments(const In* x, int64_t rows, int64_t C, const In* shift, double* s1, double* s2,
                           const Also& also = {}) {
  using T = at::opmath_type<In>;
  using V = Vectorized<T>;
  std::vector<T> acc(2 * C, T(0));  // row by row, the running sums in an L1-resident block
  T *a1 = acc.data(), *a2 = acc.data() + C;
  for (int64_t l = 0; l < rows; ++l) {
    for_each_vector<T>(C, [&](int64_t c, auto cnt) {
      const V xv = load<T>(x + l * C + c, cnt);
      V d = xv - load<T>(shift + c, cnt);
      (V::loadu(a1 + c, cnt) + d).store(a1 + c, cnt);
      at::vec::fmadd(d, d, V::loadu(a2 + c, cnt)).store(a2 + c, cnt);
      also(l, c, xv, cnt);
    });
  }
  for (int64_t c = 0; c < C; ++c) {
    s1[c] += a1[c];
    s2[c] += a2[c];
  }
}

inline bool is_channels_last(const Tensor& x) {
  if (x.is_contiguous()) return false;
  if (x.dim() == 4) return x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

// What every kernel takes: a CPU tensor (N, C, ...), contiguous or channels-last.
inline void check_input(const Tensor& x, const char* kernels) {
  TORCH_CHECK(x.device().is_cpu(), "evonorm ", kernels, " kernels: CPU tensors only");
  TORCH_CHECK(x.dim() >= 2, "evonorm ", kernels, " kernels: an (N, C, ...) input");
  TORCH_CHECK(x.is_contiguous() || is_channels_last(x), "evonorm ", kernels, " kernels: contiguous or channels-last input");
}

}  // namespace evonorm_cpu
