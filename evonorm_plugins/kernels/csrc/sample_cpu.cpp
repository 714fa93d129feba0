// EvoNorm-S0/S1/S2 forward and closed-form backward on CPU, hand-fused (see kernels/native.py).
//
// The spec is kernels/sample.py (same formulas, same notation); the test tying them is
// tests/evonorm_plugins/kernels/test_native.py. What a hand-written kernel does that Inductor's
// generated loops do not:
//  * contiguous input: each group (C/G channels × L values, contiguous) is processed whole while it sits
//    in L1/L2: statistics and output in one read of x from memory, and a backward that keeps σ(v·x)
//    from its reduction pass for its dx pass in a per-thread scratch row (one σ per element instead of
//    two, and x and dy read from memory once);
//  * channels-last input (N, L, C): reductions vectorized across the contiguous channels over blocks of
//    L, combined per instance; a statistic then needs a whole instance before its second pass, so the
//    threads take whole instances where there are enough (see InstanceSchedule), and the backward's
//    reductions pass writes dx's part at fixed statistics (all that needs σ) into dx, and the second
//    pass adds the statistic's part;
//  * σ itself with its exp inlined (see sigmoid).
// Half-type tensors (bf16, fp16) are read and written as such and computed in float (load and store in
// cpu_common.h).
// Sums accumulate in vectors of the compute type, rows (and blocks) are combined in double.
#include <torch/library.h>

#include <atomic>
#include <tuple>

#include "cpu_common.h"

namespace {

using namespace evonorm_cpu;

// σ(z) = 1/(1 + e^−z). Vectorized<float>::exp() calls Sleef_expf8_u10 out of line, and around a call
// every vector register is saved and restored: a third of these kernels' time (single-threaded, AVX2).
// Inlined here with the same algorithm (Sleef's xexpf, 1 ULP: reduction by ln 2 in two parts, a
// degree-6 polynomial, scaling by 2^q). The argument is clamped to ±88, where e^−z is at most 2^±127,
// one normal power of two: beyond, 1 + e^−z is 1 or σ is below 1e-38, an error under 1e-38 absolute.
inline Vectorized<float> sigmoid(const Vectorized<float>& z) {
  using V = Vectorized<float>;
  using I = Vectorized<int32_t>;
  const V d = at::vec::clamp(z.neg(), V(-88.0f), V(88.0f));  // NaN stays NaN
  const V q = (d * V(1.442695040888963407359924681001892137f)).round();
  V s = at::vec::fmadd(q, V(-0.693145751953125f), d);
  s = at::vec::fmadd(q, V(-1.428606765330187045e-06f), s);
  V u(0.000198527617612853646278381f);
  u = at::vec::fmadd(u, s, V(0.00139304355252534151077271f));
  u = at::vec::fmadd(u, s, V(0.00833336077630519866943359f));
  u = at::vec::fmadd(u, s, V(0.0416664853692054748535156f));
  u = at::vec::fmadd(u, s, V(0.166666671633720397949219f));
  u = at::vec::fmadd(u, s, V(0.5f));
  u = V(1.0f) + at::vec::fmadd(s * s, u, s);
  const V two_q = at::vec::cast<float>((at::vec::convert_to_int_of_same_size(q) + I(127)) << I(23));
  return V(1.0f) / at::vec::fmadd(u, two_q, V(1.0f));
}

inline Vectorized<double> sigmoid(const Vectorized<double>& z) {
  const Vectorized<double> one(1.0);
  return one / (one + z.neg().exp());
}

// ---- forward ------------------------------------------------------------------------------------------
// y = a·(r·γ) + β, a = x·σ(v·x) (or x), r = (var + ε)^-½ (S0, S1) or (μ(x²) + ε)^-½ (S2) per group.

template <typename T, typename In>
void forward_row(const In* x, In* y, int64_t n, T v, T scale, T shift, bool act) {
  using V = Vectorized<T>;
  const V vv(v), sc(scale), sh(shift);
  for_each_vector<T>(n, [&](int64_t i, auto cnt) {
    V xv = load<T>(x + i, cnt);
    store(at::vec::fmadd(act ? xv * sigmoid(xv * vv) : xv, sc, sh), y + i, cnt);
  });
}

template <typename In>
void forward_contiguous(const Tensor& x, const Tensor& v, const Tensor& w, const Tensor& b, Tensor& y, Tensor& mean,
                        Tensor& rstd, int64_t groups, int64_t variant, double eps, bool act) {
  using T = at::opmath_type<In>;
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1), cg = C / groups;
  const In* xp = x.const_data_ptr<In>();
  const T *vp = v.const_data_ptr<T>(), *wp = w.const_data_ptr<T>(), *bp = b.const_data_ptr<T>();
  In* yp = y.mutable_data_ptr<In>();
  T *mp = mean.mutable_data_ptr<T>(), *rp = rstd.mutable_data_ptr<T>();
  const int64_t M = cg * L;
  at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t g = ng % groups;
      const In* xg = xp + ng * M;
      double mu = row_sum(xg, M) / double(M);
      double var = row_centred_squares(xg, M, T(mu)) / double(M);
      double r;
      if (variant == 2) {
        r = 1.0 / std::sqrt(var + mu * mu + eps);
        mu = 0.0;
      } else {
        r = 1.0 / std::sqrt(var + eps);
      }
      mp[ng] = T(mu);
      rp[ng] = T(r);
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = g * cg + k;
        forward_row(xg + k * L, yp + ng * M + k * L, L, vp[c], T(r) * wp[c], bp[c], act);
      }
    }
  });
}

// One channels-last instance's group statistics, mean and r per group, from its block sums (s1, s2:
// ``blocks`` rows of C, see channel_block_moments) and its first row ``x0``, the sums' shift.
template <typename T, typename In>
void instance_statistics(const double* s1, const double* s2, const In* x0, int64_t blocks, int64_t C, int64_t L,
                         int64_t groups, int64_t variant, double eps, T* mp, T* rp) {
  const int64_t cg = C / groups;
  for (int64_t g = 0; g < groups; ++g) {
    // per channel: mean_c and M2_c (sum of squares about mean_c); per group by the parallel-axis rule
    double sum_means = 0, sum_m2 = 0, sum_mean_sq = 0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      double t1 = 0, t2 = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        t1 += s1[blk * C + c];
        t2 += s2[blk * C + c];
      }
      const double mean_c = double(x0[c]) + t1 / double(L);
      sum_m2 += t2 - t1 * t1 / double(L);
      sum_means += mean_c;
      sum_mean_sq += mean_c * mean_c;
    }
    const double mu = sum_means / double(cg);
    // clamped at 0 against rounding; a NaN stays NaN (std::max returns its first argument then)
    const double var = std::max((sum_m2 + double(L) * (sum_mean_sq - cg * mu * mu)) / double(cg * L), 0.0);
    if (variant == 2) {
      mp[g] = T(0);
      rp[g] = T(1.0 / std::sqrt(var + mu * mu + eps));
    } else {
      mp[g] = T(mu);
      rp[g] = T(1.0 / std::sqrt(var + eps));
    }
  }
}

// Channels-last work is two passes over each instance (N, L, C): reductions over blocks of kBlock rows,
// the instance's statistics from its block sums, then the second pass, which should find the instance in
// cache and wait at as few barriers as possible. As many instances as fill every thread (the largest
// multiple of the thread count) go whole to one thread each, the next one not yet taken (a thread on a
// slower or busier core takes fewer), with no barrier, the second pass over the blocks in reverse, the
// most recently read first. The rest, fewer than the threads (a whole batch smaller than the thread
// count), go in chunks of instances whose blocks the threads share, the fewest instances that give every
// thread a block (at::parallel_for hands each thread the same blocks in both passes), at two barriers
// per chunk. ``slot``, in [0, slots()), names a scratch area for an instance from its first pass to its
// second: its thread's for a whole instance, its place in its chunk for a shared one.
class InstanceSchedule {
 public:
  InstanceSchedule(int64_t N, int64_t blocks)
      : N_(N), blocks_(blocks), threads_(at::get_num_threads()), whole_(N / threads_ * threads_),
        per_chunk_(std::min(N - whole_, std::max<int64_t>(1, (threads_ + blocks - 1) / blocks))) {}

  int64_t slots() const { return std::max(whole_ > 0 ? threads_ : 0, per_chunk_); }

  // reduce(n, blk, slot) for every block, statistics(n), then apply(n, blk, slot) for every block
  template <typename Reduce, typename Statistics, typename Apply>
  void run(const Reduce& reduce, const Statistics& statistics, const Apply& apply) const {
    if (whole_ > 0) {
      std::atomic<int64_t> next{0};
      at::parallel_for(0, threads_, 1, [&](int64_t begin, int64_t end) {
        for (int64_t slot = begin; slot < end; ++slot) {
          for (int64_t n = next++; n < whole_; n = next++) {
            for (int64_t blk = 0; blk < blocks_; ++blk) reduce(n, blk, slot);
            statistics(n);
            for (int64_t blk = blocks_ - 1; blk >= 0; --blk) apply(n, blk, slot);
          }
        }
      });
    }
    for (int64_t n0 = whole_; n0 < N_; n0 += per_chunk_) {
      const int64_t n1 = std::min(N_, n0 + per_chunk_);
      at::parallel_for(n0 * blocks_, n1 * blocks_, 1, [&](int64_t begin, int64_t end) {
        for (int64_t nb = begin; nb < end; ++nb) reduce(nb / blocks_, nb % blocks_, nb / blocks_ - n0);
      });
      for (int64_t n = n0; n < n1; ++n) statistics(n);
      at::parallel_for(n0 * blocks_, n1 * blocks_, 1, [&](int64_t begin, int64_t end) {
        for (int64_t nb = begin; nb < end; ++nb) apply(nb / blocks_, nb % blocks_, nb / blocks_ - n0);
      });
    }
  }

 private:
  int64_t N_, blocks_, threads_, whole_, per_chunk_;
};

template <typename In>
void forward_channels_last(const Tensor& x, const Tensor& v, const Tensor& w, const Tensor& b, Tensor& y,
                           Tensor& mean, Tensor& rstd, int64_t groups, int64_t variant, double eps, bool act) {
  using T = at::opmath_type<In>;
  using V = Vectorized<T>;
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1), cg = C / groups;
  const int64_t blocks = (L + kBlock - 1) / kBlock;
  const In* xp = x.const_data_ptr<In>();
  const T *vp = v.const_data_ptr<T>(), *wp = w.const_data_ptr<T>(), *bp = b.const_data_ptr<T>();
  In* yp = y.mutable_data_ptr<In>();
  T *mp = mean.mutable_data_ptr<T>(), *rp = rstd.mutable_data_ptr<T>();
  std::vector<double> s1(N * blocks * C, 0.0), s2(N * blocks * C, 0.0);
  std::vector<T> scale(N * C);
  // A float output takes a = x·σ(v·x) in the reductions pass, and the second pass only scales it: σ
  // overlaps the first pass's reads from memory, and the second reads y rather than x, as much but no
  // σ. A half-type y would round a twice, so it takes σ in the second pass.
  constexpr bool a_first = std::is_same_v<T, In>;
  InstanceSchedule(N, blocks).run(
      [&](int64_t n, int64_t blk, int64_t) {
        const int64_t l0 = blk * kBlock, offset = (n * blocks + blk) * C;
        In* const yb = yp + (n * L + l0) * C;
        const auto activation = [&](int64_t l, int64_t c, const V& xv, auto cnt) {
          if constexpr (a_first) (xv * sigmoid(xv * V::loadu(vp + c, cnt))).store(yb + l * C + c, cnt);
        };
        if (a_first && act)
          channel_block_moments(xp + (n * L + l0) * C, std::min(kBlock, L - l0), C, xp + n * L * C, s1.data() + offset,
                                s2.data() + offset, activation);
        else
          channel_block_moments(xp + (n * L + l0) * C, std::min(kBlock, L - l0), C, xp + n * L * C, s1.data() + offset,
                                s2.data() + offset);
      },
      [&](int64_t n) {
        instance_statistics(s1.data() + n * blocks * C, s2.data() + n * blocks * C, xp + n * L * C, blocks, C, L,
                            groups, variant, eps, mp + n * groups, rp + n * groups);
        for (int64_t c = 0; c < C; ++c) scale[n * C + c] = rp[n * groups + c / cg] * wp[c];
      },
      [&](int64_t n, int64_t blk, int64_t) {
        const int64_t l0 = blk * kBlock, rows = std::min(kBlock, L - l0);
        const T* sc = scale.data() + n * C;
        for (int64_t l = l0; l < l0 + rows; ++l) {
          const In* xr = xp + (n * L + l) * C;
          In* yr = yp + (n * L + l) * C;
          for_each_vector<T>(C, [&](int64_t c, auto cnt) {
            V a;
            if (a_first && act) {
              a = load<T>(yr + c, cnt);
            } else {
              V xv = load<T>(xr + c, cnt);
              a = act ? xv * sigmoid(xv * V::loadu(vp + c, cnt)) : xv;
            }
            store(at::vec::fmadd(a, V::loadu(sc + c, cnt), V::loadu(bp + c, cnt)), yr + c, cnt);
          });
        }
      });
}

// ---- backward -----------------------------------------------------------------------------------------
//   s = σ(v·x), a = x·s;  per channel sums Σdy·a, Σdy, Σdy·a·(1−s)·x
//   coef = −r³·Σ_group γ·Σdy·a / M;  dx = dy·γ·r·s·(1 + v·x·(1−s)) + (x − μ)·coef

template <typename T>
struct RowSums {
  T dy_a, dy, dv;
};

// Pass 1 over a row: the three sums, σ(v·x) kept in ``s_out``.
template <typename T, typename In>
RowSums<T> backward_row_sums(const In* dy, const In* x, T* s_out, int64_t n, T v, bool act) {
  using V = Vectorized<T>;
  const V vv(v), one(T(1));
  V acc_a(T(0)), acc_dy(T(0)), acc_v(T(0));
  for_each_vector<T>(n, [&](int64_t i, auto cnt) {  // partial loads fill with zeros: dy = 0 adds nothing
    V xv = load<T>(x + i, cnt), d = load<T>(dy + i, cnt);
    acc_dy += d;
    if (act) {
      V s = sigmoid(xv * vv);
      s.store(s_out + i, cnt);
      V da = d * xv * s;  // dy·a
      acc_a += da;
      acc_v = at::vec::fmadd(da * (one - s), xv, acc_v);
    } else {
      acc_a = at::vec::fmadd(d, xv, acc_a);
    }
  });
  return {T(lane_sum(acc_a)), T(lane_sum(acc_dy)), T(lane_sum(acc_v))};
}

template <typename T, typename In>
void backward_row_dx(const In* dy, const In* x, const T* s_in, In* dx, int64_t n, T v, T k, T mu, T coef, bool act) {
  using V = Vectorized<T>;
  const V vv(v), kk(k), mm(mu), cc(coef), one(T(1));
  for_each_vector<T>(n, [&](int64_t i, auto cnt) {
    V xv = load<T>(x + i, cnt), d = load<T>(dy + i, cnt) * kk;
    if (act) {
      V s = V::loadu(s_in + i, cnt);
      d = d * (s * at::vec::fmadd(xv * vv, one - s, one));
    }
    store(at::vec::fmadd(xv - mm, cc, d), dx + i, cnt);
  });
}

template <typename In>
void backward_contiguous(const Tensor& dy, const Tensor& x, const Tensor& v, const Tensor& w, const Tensor& mean,
                         const Tensor& rstd, Tensor& dx, Tensor& partial, int64_t groups, bool act) {
  using T = at::opmath_type<In>;
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1), cg = C / groups;
  const int64_t M = cg * L;
  const In *xp = x.const_data_ptr<In>(), *dyp = dy.const_data_ptr<In>();
  const T *vp = v.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  const T *mp = mean.const_data_ptr<T>(), *rp = rstd.const_data_ptr<T>();
  In* dxp = dx.mutable_data_ptr<In>();
  T* pp = partial.mutable_data_ptr<T>();  // (3, N, C): Σdy·a·r, Σdy, Σdy·a·(1−s)·x·γ·r per instance
  at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(act ? M : 0);
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / groups, g = ng % groups;
      const T r = rp[ng];
      double d_r = 0;
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = g * cg + k, off = ng * M + k * L;
        RowSums<T> s = backward_row_sums(dyp + off, xp + off, scratch.data() + k * L, L, vp[c], act);
        d_r += double(s.dy_a) * double(wp[c]);
        pp[n * C + c] = s.dy_a * r;
        pp[(N + n) * C + c] = s.dy;
        pp[(2 * N + n) * C + c] = s.dv * wp[c] * r;
      }
      const T coef = T(-double(r) * double(r) * double(r) * d_r / double(M));
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = g * cg + k, off = ng * M + k * L;
        backward_row_dx(dyp + off, xp + off, scratch.data() + k * L, dxp + off, L, vp[c], wp[c] * r, mp[ng], coef, act);
      }
    }
  });
}

template <typename In>
void backward_channels_last(const Tensor& dy, const Tensor& x, const Tensor& v, const Tensor& w, const Tensor& mean,
                            const Tensor& rstd, Tensor& dx, Tensor& partial, int64_t groups, bool act) {
  using T = at::opmath_type<In>;
  using V = Vectorized<T>;
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1), cg = C / groups;
  const int64_t blocks = (L + kBlock - 1) / kBlock;
  const In *xp = x.const_data_ptr<In>(), *dyp = dy.const_data_ptr<In>();
  const T *vp = v.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  const T *mp = mean.const_data_ptr<T>(), *rp = rstd.const_data_ptr<T>();
  In* dxp = dx.mutable_data_ptr<In>();
  T* pp = partial.mutable_data_ptr<T>();  // (3, N, C) as in backward_contiguous
  // per block: Σdy·a, Σdy, Σdy·a·(1−s)·x per channel
  std::vector<double> sums(N * blocks * 3 * C);
  // per instance and channel: γ·r and μ, known before the sums, and coef, known after them
  std::vector<T> kvec(N * C), mvec(N * C), cvec(N * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      kvec[n * C + c] = T(double(wp[c]) * double(rp[n * groups + c / cg]));
      mvec[n * C + c] = mp[n * groups + c / cg];
    }
  // The reductions pass also writes dx's part at fixed statistics, dy·γ·r·∂a/∂x, into dx, and the second
  // pass adds the statistic's (x − μ)·coef: σ once per element, and no buffer beside dx. A half-type dx
  // takes the part in a float buffer per slot instead, so that it is rounded once, at the end.
  const InstanceSchedule schedule(N, blocks);
  const Tensor buffer = at::empty({std::is_same_v<T, In> ? 0 : schedule.slots() * L * C},
                                  x.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* const buffer_data = buffer.mutable_data_ptr<T>();
  const auto fixed_part = [&](int64_t n, int64_t slot, int64_t offset) -> T* {
    if constexpr (std::is_same_v<T, In>) return dxp + offset;
    else return buffer_data + (offset + (slot - n) * L * C);
  };
  schedule.run(
      [&](int64_t n, int64_t blk, int64_t slot) {
        const int64_t l0 = blk * kBlock, rows = std::min(kBlock, L - l0);
        const T* kn = kvec.data() + n * C;
        std::vector<T> acc(3 * C, T(0));  // row by row (each row's C values are contiguous), L1-resident sums
        T *acc_a = acc.data(), *acc_dy = acc.data() + C, *acc_v = acc.data() + 2 * C;
        for (int64_t l = l0; l < l0 + rows; ++l) {
          const int64_t row = (n * L + l) * C;
          for_each_vector<T>(C, [&](int64_t c, auto cnt) {
            const V one(T(1));
            V xv = load<T>(xp + row + c, cnt), d = load<T>(dyp + row + c, cnt);
            V e = d * V::loadu(kn + c, cnt);
            (V::loadu(acc_dy + c, cnt) + d).store(acc_dy + c, cnt);
            if (act) {
              V vx = xv * V::loadu(vp + c, cnt), s = sigmoid(vx);
              V da = d * xv * s;
              (V::loadu(acc_a + c, cnt) + da).store(acc_a + c, cnt);
              at::vec::fmadd(da * (one - s), xv, V::loadu(acc_v + c, cnt)).store(acc_v + c, cnt);
              e = e * (s * at::vec::fmadd(vx, one - s, one));
            } else {
              at::vec::fmadd(d, xv, V::loadu(acc_a + c, cnt)).store(acc_a + c, cnt);
            }
            e.store(fixed_part(n, slot, row + c), cnt);
          });
        }
        std::copy(acc.begin(), acc.end(), sums.begin() + (n * blocks + blk) * 3 * C);
      },
      // the instance's channel sums, partial parameter gradients and coef
      [&](int64_t n) {
        std::vector<double> dy_a(C, 0.0), dys(C, 0.0), dvs(C, 0.0);
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const double* s = sums.data() + (n * blocks + blk) * 3 * C;
          for (int64_t c = 0; c < C; ++c) {
            dy_a[c] += s[c];
            dys[c] += s[C + c];
            dvs[c] += s[2 * C + c];
          }
        }
        for (int64_t g = 0; g < groups; ++g) {
          const double r = rp[n * groups + g];
          double d_r = 0;
          for (int64_t c = g * cg; c < (g + 1) * cg; ++c) d_r += dy_a[c] * double(wp[c]);
          const T coef = T(-r * r * r * d_r / double(cg * L));
          for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
            pp[n * C + c] = T(dy_a[c] * r);
            pp[(N + n) * C + c] = T(dys[c]);
            pp[(2 * N + n) * C + c] = T(dvs[c] * double(wp[c]) * r);
            cvec[n * C + c] = coef;
          }
        }
      },
      [&](int64_t n, int64_t blk, int64_t slot) {
        const int64_t l0 = blk * kBlock, rows = std::min(kBlock, L - l0);
        const T *mn = mvec.data() + n * C, *cn = cvec.data() + n * C;
        for (int64_t l = l0; l < l0 + rows; ++l) {
          const int64_t row = (n * L + l) * C;
          for_each_vector<T>(C, [&](int64_t c, auto cnt) {
            V xv = load<T>(xp + row + c, cnt);
            store(at::vec::fmadd(xv - V::loadu(mn + c, cnt), V::loadu(cn + c, cnt),
                                 V::loadu(fixed_part(n, slot, row + c), cnt)),
                  dxp + row + c, cnt);
          });
        }
      });
}

// ---- operators ----------------------------------------------------------------------------------------

void check(const Tensor& x, int64_t groups) {
  check_input(x, "sample");
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "evonorm sample kernels: bad groups");
}

std::tuple<Tensor, Tensor, Tensor> sample_forward(const Tensor& x, const Tensor& v, const Tensor& w, const Tensor& b,
                                                  int64_t groups, int64_t variant, double eps, bool act) {
  check(x, groups);
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto layout = is_channels_last(x) ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
  const Tensor vc = v.to(compute).contiguous(), wc = w.to(compute).contiguous(), bc = b.to(compute).contiguous();
  Tensor y = at::empty_like(x, x.options(), layout);
  const int64_t N = x.size(0);
  Tensor mean = at::empty({N, groups}, vc.options()), rstd = at::empty({N, groups}, vc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "evonorm_sample_forward", [&] {
    if (layout == at::MemoryFormat::Contiguous)
      forward_contiguous<scalar_t>(x, vc, wc, bc, y, mean, rstd, groups, variant, eps, act);
    else
      forward_channels_last<scalar_t>(x, vc, wc, bc, y, mean, rstd, groups, variant, eps, act);
  });
  return {y, mean, rstd};
}

// dx (x's dtype and layout) and the per-instance partial parameter gradients (3, N, C) in the compute
// dtype, summed over N by the caller: dγ, dβ, dv.
std::tuple<Tensor, Tensor> sample_backward(const Tensor& dy_in, const Tensor& x, const Tensor& v, const Tensor& w,
                                           const Tensor& mean, const Tensor& rstd, int64_t groups, bool act) {
  check(x, groups);
  const auto compute = mean.scalar_type();
  const bool cl = is_channels_last(x);
  const auto layout = cl ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
  const Tensor dy = dy_in.to(x.scalar_type()).contiguous(layout);
  const Tensor vc = v.to(compute).contiguous(), wc = w.to(compute).contiguous();
  Tensor dx = at::empty_like(x, x.options(), layout);
  Tensor partial = at::empty({3, x.size(0), x.size(1)}, vc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "evonorm_sample_backward", [&] {
    if (cl)
      backward_channels_last<scalar_t>(dy, x, vc, wc, mean, rstd, dx, partial, groups, act);
    else
      backward_contiguous<scalar_t>(dy, x, vc, wc, mean, rstd, dx, partial, groups, act);
  });
  return {dx, partial};
}

}  // namespace

TORCH_LIBRARY(evonorm_cpu, m) {
  m.def("sample_forward(Tensor x, Tensor v, Tensor weight, Tensor bias, int groups, int variant, float eps, bool act) -> (Tensor, Tensor, Tensor)");
  m.def("sample_backward(Tensor dy, Tensor x, Tensor v, Tensor weight, Tensor mean, Tensor rstd, int groups, bool act) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(evonorm_cpu, CPU, m) {
  m.impl("sample_forward", &sample_forward);
  m.impl("sample_backward", &sample_backward);
}
