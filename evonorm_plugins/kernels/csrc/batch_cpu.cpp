// EvoNorm-B0/B1/B2 forward and closed-form backward on CPU, hand-fused (see kernels/native.py).
//
// The spec is kernels/batch.py (same formulas, same notation); the test tying them is
// tests/evonorm_plugins/kernels/test_native.py. On the view (N, C, L), per channel c:
// left = √(s²_{N,L} + ε) (the running variance in eval); per instance: B0 right = v·x + si,
// si = √(s²_L + ε); B1 right = (x + 1)·ri, B2 right = ri − x, ri = √(μ_L(x²) + ε);
// d = max(left, right) (left alone without the activation); y = x/d·γ + β. The batch statistic couples
// a channel's N instances, so:
//  * contiguous input: each channel's N rows of L values (strided by C·L) are processed together while
//    they sit in L1/L2: instance and batch statistics, then output, from one read of x from memory; the
//    backward's reductions and dx likewise, recomputing d (no transcendental) in the dx pass;
//  * channels-last input (N, L, C): sums vectorized across the contiguous channels over blocks of L for
//    the threads, combined per instance and channel, then per channel, then an element-wise pass; the
//    backward's reductions pass writes dx's part at fixed statistics into dx, and the second pass adds
//    the statistics' part.
// Half-type tensors (bf16, fp16) are read and written as such and computed in float (load and store in
// cpu_common.h).
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cpu_common.h"

namespace {

using namespace evonorm_cpu;

// An instance's (mean, si or ri) from its mean and biased variance: B0 keeps the mean, B1 and B2 0.
template <typename T>
void instance_statistic(double mu, double var, int64_t variant, double eps, T* inst_mean, T* inst) {
  if (variant == 0) {
    *inst_mean = T(mu);
    *inst = T(std::sqrt(var + eps));
  } else {
    *inst_mean = T(0);
    *inst = T(std::sqrt(var + mu * mu + eps));
  }
}

// A channel's batch variance, mean and left from its N instances' means and biased variances (``stride``
// apart): mean instance variance + variance of the instance means; the running variance and mean 0 in
// eval.
template <typename T>
void batch_statistic(const double* means, const double* vars, int64_t N, int64_t stride, const T* running_var, int64_t c,
                     double eps, T* bvar, T* bmean, T* left) {
  if (running_var) {
    bvar[c] = running_var[c];
    bmean[c] = T(0);
  } else {
    double mean_sum = 0, var_sum = 0, spread = 0;
    for (int64_t n = 0; n < N; ++n) mean_sum += means[n * stride], var_sum += vars[n * stride];
    const double mu = mean_sum / double(N);
    for (int64_t n = 0; n < N; ++n) spread += (means[n * stride] - mu) * (means[n * stride] - mu);
    bvar[c] = T((var_sum + spread) / double(N));
    bmean[c] = T(mu);
  }
  left[c] = T(std::sqrt(double(bvar[c]) + eps));
}

// right for a vector of x (variant 0: v·x + si; 1: (x + 1)·ri; 2: ri − x).
template <typename T>
inline Vectorized<T> right_term(const Vectorized<T>& x, int64_t variant, const Vectorized<T>& v, const Vectorized<T>& inst) {
  if (variant == 0) return at::vec::fmadd(x, v, inst);
  if (variant == 1) return (x + Vectorized<T>(T(1))) * inst;
  return inst - x;
}

// ---- forward ------------------------------------------------------------------------------------------

template <typename T, typename In>
void output_row(const In* x, In* y, int64_t n, int64_t variant, T v, T left, T inst, T gamma, T beta, bool act) {
  using V = Vectorized<T>;
  const V vv(v), lv(left), iv(inst), gv(gamma), bv(beta);
  for_each_vector<T>(n, [&](int64_t i, auto cnt) {
    V xv = load<T>(x + i, cnt);
    V d = act ? at::vec::maximum(lv, right_term(xv, variant, vv, iv)) : lv;
    store(at::vec::fmadd(xv / d, gv, bv), y + i, cnt);
  });
}

// Outputs: y; per channel the batch variance, batch mean and left; per (N, C) the instance mean and
// statistic. ``running_var`` (eval) replaces the batch variance, the batch mean is then 0.
template <typename T, typename In>
void forward_contiguous(const Tensor& x, const T* vp, const T* wp, const T* bp, const T* running_var, Tensor& y,
                        T* bvar, T* bmean, T* left, T* imean, T* inst, int64_t variant, double eps, bool act) {
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1);
  const In* xp = x.const_data_ptr<In>();
  In* yp = y.mutable_data_ptr<In>();
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> means(N), vars(N);
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < N; ++n) {
        const In* row = xp + (n * C + c) * L;
        means[n] = row_sum(row, L) / double(L);
        vars[n] = row_centred_squares(row, L, T(means[n])) / double(L);
        instance_statistic(means[n], vars[n], variant, eps, imean + n * C + c, inst + n * C + c);
      }
      batch_statistic(means.data(), vars.data(), N, 1, running_var, c, eps, bvar, bmean, left);
      for (int64_t n = 0; n < N; ++n)
        output_row(xp + (n * C + c) * L, yp + (n * C + c) * L, L, variant, vp[c], left[c], inst[n * C + c], wp[c], bp[c], act);
    }
  });
}

template <typename T, typename In>
void forward_channels_last(const Tensor& x, const T* vp, const T* wp, const T* bp, const T* running_var, Tensor& y,
                           T* bvar, T* bmean, T* left, T* imean, T* inst, int64_t variant, double eps, bool act) {
  using V = Vectorized<T>;
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1);
  const int64_t blocks = (L + kBlock - 1) / kBlock;
  const In* xp = x.const_data_ptr<In>();
  In* yp = y.mutable_data_ptr<In>();
  std::vector<double> s1(N * blocks * C, 0.0), s2(N * blocks * C, 0.0);
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n = nb / blocks, l0 = (nb % blocks) * kBlock, rows = std::min(kBlock, L - l0);
      channel_block_moments(xp + (n * L + l0) * C, rows, C, xp + n * L * C, s1.data() + nb * C, s2.data() + nb * C);
    }
  });
  std::vector<double> means(N * C), vars(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double t1 = 0, t2 = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        t1 += s1[(n * blocks + blk) * C + c];
        t2 += s2[(n * blocks + blk) * C + c];
      }
      means[n * C + c] = double(xp[n * L * C + c]) + t1 / double(L);
      // clamped at 0 against rounding; a NaN stays NaN (std::max returns its first argument then)
      vars[n * C + c] = std::max((t2 - t1 * t1 / double(L)) / double(L), 0.0);
      instance_statistic(means[n * C + c], vars[n * C + c], variant, eps, imean + n * C + c, inst + n * C + c);
    }
  }
  for (int64_t c = 0; c < C; ++c)
    batch_statistic(means.data() + c, vars.data() + c, N, C, running_var, c, eps, bvar, bmean, left);
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n = nb / blocks, l0 = (nb % blocks) * kBlock, rows = std::min(kBlock, L - l0);
      const T* in = inst + n * C;
      for (int64_t l = l0; l < l0 + rows; ++l) {
        const int64_t row = (n * L + l) * C;
        for_each_vector<T>(C, [&](int64_t c, auto cnt) {
          V xv = load<T>(xp + row + c, cnt), lv = V::loadu(left + c, cnt);
          V d = act ? at::vec::maximum(lv, right_term(xv, variant, V::loadu(vp + c, cnt), V::loadu(in + c, cnt))) : lv;
          store(at::vec::fmadd(xv / d, V::loadu(wp + c, cnt), V::loadu(bp + c, cnt)), yp + row + c, cnt);
        });
      }
    }
  });
}

// ---- backward -----------------------------------------------------------------------------------------
//   inv_d = 1/d, out = x·inv_d, g = dy·γ·inv_d, −∂L/∂d = out·g, m = [right > left], ndr = m·out·g
//   per channel: dγ = Σ dy·out, dβ = Σ dy, dv = −Σ ndr·x (B0)
//   per instance: total = Σ out·g − Σ ndr (what goes to left), coef = −Σ ndr/(L·si) (B0),
//     −(Σ ndr·x + Σ ndr)/(L·ri) (B1), −Σ ndr/(L·ri) (B2)
//   left_coef = −Σ_N total/(N·L·left) (0 in eval)
//   dx = g − ndr·v (B0) / − ndr·ri (B1) / + ndr (B2) + (coef + left_coef)·(x − centre) + offset,
//   centre = μ_inst, offset = left_coef·(μ_inst − μ_batch) (B0); centre = μ_batch, offset = coef·μ_batch
//   (B1, B2): x − centre formed first (see batch.py's input_gradient).

// One element vector's backward quantities at fixed statistics.
template <typename T>
struct Local {
  Vectorized<T> out, g, ndr;
};

template <typename T>
inline Local<T> local_terms(const Vectorized<T>& x, const Vectorized<T>& dy, int64_t variant, const Vectorized<T>& v,
                            const Vectorized<T>& left, const Vectorized<T>& inst, const Vectorized<T>& gamma, bool act) {
  using V = Vectorized<T>;
  if (!act) {
    const V inv_d = V(T(1)) / left;
    const V out = x * inv_d;
    return {out, dy * gamma * inv_d, V(T(0))};
  }
  const V right = right_term(x, variant, v, inst);
  const V inv_d = V(T(1)) / at::vec::maximum(right, left);
  const V out = x * inv_d, g = dy * gamma * inv_d;
  return {out, g, V::blendv(V(T(0)), out * g, right > left)};
}

// dx at fixed statistics: g and the right term's direct part.
template <typename T>
inline Vectorized<T> direct_gradient(const Local<T>& t, int64_t variant, const Vectorized<T>& v, const Vectorized<T>& inst) {
  if (variant == 0) return t.g - t.ndr * v;
  if (variant == 1) return t.g - t.ndr * inst;
  return t.g + t.ndr;
}

// dx: the direct part plus the statistics'.
template <typename T>
inline Vectorized<T> input_gradient(const Vectorized<T>& direct, const Vectorized<T>& x, const Vectorized<T>& coef,
                                    const Vectorized<T>& centre, const Vectorized<T>& offset) {
  return at::vec::fmadd(x - centre, coef, direct) + offset;
}

// Per (N, C) sums of a row: Σ out·g, Σ ndr, Σ ndr·x; per channel: Σ dy·out, Σ dy.
struct RowSums {
  double dy_out = 0, dy = 0, total = 0, right = 0, right_x = 0;
};

template <typename T, typename In>
RowSums row_sums(const In* dy, const In* x, int64_t n, int64_t variant, T v, T left, T inst, T gamma, bool act) {
  using V = Vectorized<T>;
  const V vv(v), lv(left), iv(inst), gv(gamma);
  V a_dy_out(T(0)), a_dy(T(0)), a_total(T(0)), a_right(T(0)), a_right_x(T(0));
  for_each_vector<T>(n, [&](int64_t i, auto cnt) {  // partial loads fill with zeros: dy = 0 adds nothing
    V xv = load<T>(x + i, cnt), d = load<T>(dy + i, cnt);
    Local<T> t = local_terms(xv, d, variant, vv, lv, iv, gv, act);
    a_dy_out = at::vec::fmadd(d, t.out, a_dy_out);
    a_dy += d;
    a_total = at::vec::fmadd(t.out, t.g, a_total);
    a_right += t.ndr;
    a_right_x = at::vec::fmadd(t.ndr, xv, a_right_x);
  });
  return {lane_sum(a_dy_out), lane_sum(a_dy), lane_sum(a_total), lane_sum(a_right), lane_sum(a_right_x)};
}

// The (coef + left_coef, centre, offset) of dx for one (n, c), coef being the instance statistic's
// (0 without the activation, where the sums of ndr are 0).
struct DxCoefficients {
  double coef, centre, offset;
};

inline DxCoefficients dx_coefficients(const RowSums& s, int64_t variant, int64_t L, double inst, double imean,
                                      double bmean, double left_coef) {
  const double coef = variant == 1 ? -(s.right_x + s.right) / (double(L) * inst) : -s.right / (double(L) * inst);
  if (variant == 0) return {coef + left_coef, imean, left_coef * (imean - bmean)};
  return {coef + left_coef, bmean, coef * bmean};
}

// A channel's dγ, dβ, dv (into ``grads``, (3, C)) from its N instances' sums (``stride`` apart); returns
// left's coefficient in dx, −Σ_N total/(N·L·left) (0 in eval).
template <typename T>
double channel_gradients(const RowSums* sums, int64_t N, int64_t stride, int64_t C, int64_t c, int64_t L, T left,
                         bool batch_statistics, T* grads) {
  double d_weight = 0, d_bias = 0, d_v = 0, total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const RowSums& r = sums[n * stride];
    d_weight += r.dy_out, d_bias += r.dy, d_v -= r.right_x, total += r.total - r.right;
  }
  grads[c] = T(d_weight);
  grads[C + c] = T(d_bias);
  grads[2 * C + c] = T(d_v);
  return batch_statistics ? -total / (double(N * L) * double(left)) : 0.0;
}

template <typename T, typename In>
void backward_contiguous(const Tensor& dy, const Tensor& x, const T* vp, const T* wp, const T* bmean, const T* left,
                         const T* imean, const T* inst, Tensor& dx, T* grads, int64_t variant, bool act, bool batch_statistics) {
  using V = Vectorized<T>;
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1);
  const In *xp = x.const_data_ptr<In>(), *dyp = dy.const_data_ptr<In>();
  In* dxp = dx.mutable_data_ptr<In>();
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<RowSums> sums(N);
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = (n * C + c) * L;
        sums[n] = row_sums(dyp + off, xp + off, L, variant, vp[c], left[c], inst[n * C + c], wp[c], act);
      }
      const double left_coef = channel_gradients(sums.data(), N, 1, C, c, L, left[c], batch_statistics, grads);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = (n * C + c) * L;
        const DxCoefficients k = dx_coefficients(sums[n], variant, L, inst[n * C + c], imean[n * C + c], bmean[c], left_coef);
        const V vv(vp[c]), lv(left[c]), iv(inst[n * C + c]), gv(wp[c]), kc(T(k.coef)), kz(T(k.centre)), ko(T(k.offset));
        for_each_vector<T>(L, [&](int64_t i, auto cnt) {
          V xv = load<T>(xp + off + i, cnt);
          Local<T> t = local_terms(xv, load<T>(dyp + off + i, cnt), variant, vv, lv, iv, gv, act);
          store(input_gradient(direct_gradient(t, variant, vv, iv), xv, kc, kz, ko), dxp + off + i, cnt);
        });
      }
    }
  });
}

template <typename T, typename In>
void backward_channels_last(const Tensor& dy, const Tensor& x, const T* vp, const T* wp, const T* bmean, const T* left,
                            const T* imean, const T* inst, Tensor& dx, T* grads, int64_t variant, bool act,
                            bool batch_statistics) {
  using V = Vectorized<T>;
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(N * C, 1);
  const int64_t blocks = (L + kBlock - 1) / kBlock;
  const In *xp = x.const_data_ptr<In>(), *dyp = dy.const_data_ptr<In>();
  In* dxp = dx.mutable_data_ptr<In>();
  constexpr int64_t kSums = 5;  // per block and channel, the RowSums fields in order
  std::vector<double> block_sums(N * blocks * kSums * C, 0.0);
  // dx's part at fixed statistics goes into dx, or for a half-type dx into a float buffer (rounded once)
  const Tensor buffer = at::empty({std::is_same_v<T, In> ? 0 : x.numel()}, x.options().dtype(c10::CppTypeToScalarType<T>::value));
  T* const buffer_data = buffer.mutable_data_ptr<T>();
  const auto fixed_part = [&](int64_t offset) -> T* {
    if constexpr (std::is_same_v<T, In>) return dxp + offset;
    else return buffer_data + offset;
  };
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(kSums * C);  // row by row (each row's C values are contiguous), L1-resident sums
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n = nb / blocks, l0 = (nb % blocks) * kBlock, rows = std::min(kBlock, L - l0);
      std::fill(acc.begin(), acc.end(), T(0));
      T* a = acc.data();
      const T* in = inst + n * C;
      for (int64_t l = l0; l < l0 + rows; ++l) {
        const int64_t row = (n * L + l) * C;
        for_each_vector<T>(C, [&](int64_t c, auto cnt) {
          V xv = load<T>(xp + row + c, cnt), d = load<T>(dyp + row + c, cnt);
          V vv = V::loadu(vp + c, cnt), iv = V::loadu(in + c, cnt);
          Local<T> t = local_terms(xv, d, variant, vv, V::loadu(left + c, cnt), iv, V::loadu(wp + c, cnt), act);
          at::vec::fmadd(d, t.out, V::loadu(a + c, cnt)).store(a + c, cnt);
          (V::loadu(a + C + c, cnt) + d).store(a + C + c, cnt);
          at::vec::fmadd(t.out, t.g, V::loadu(a + 2 * C + c, cnt)).store(a + 2 * C + c, cnt);
          (V::loadu(a + 3 * C + c, cnt) + t.ndr).store(a + 3 * C + c, cnt);
          at::vec::fmadd(t.ndr, xv, V::loadu(a + 4 * C + c, cnt)).store(a + 4 * C + c, cnt);
          direct_gradient(t, variant, vv, iv).store(fixed_part(row + c), cnt);
        });
      }
      double* out = block_sums.data() + nb * kSums * C;
      for (int64_t j = 0; j < kSums * C; ++j) out[j] = acc[j];
    }
  });
  // per (n, c) sums, per channel gradients and left_coef, then per (n, c) dx coefficients
  std::vector<RowSums> sums(N * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const double* s = block_sums.data() + (n * blocks + blk) * kSums * C;
      for (int64_t c = 0; c < C; ++c) {
        RowSums& r = sums[n * C + c];
        r.dy_out += s[c], r.dy += s[C + c], r.total += s[2 * C + c], r.right += s[3 * C + c], r.right_x += s[4 * C + c];
      }
    }
  std::vector<double> left_coef(C);
  for (int64_t c = 0; c < C; ++c)
    left_coef[c] = channel_gradients(sums.data() + c, N, C, C, c, L, left[c], batch_statistics, grads);
  std::vector<T> kcoef(N * C), kcentre(N * C), koffset(N * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = n * C + c;
      const DxCoefficients k = dx_coefficients(sums[i], variant, L, inst[i], imean[i], bmean[c], left_coef[c]);
      kcoef[i] = T(k.coef), kcentre[i] = T(k.centre), koffset[i] = T(k.offset);
    }
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n = nb / blocks, l0 = (nb % blocks) * kBlock, rows = std::min(kBlock, L - l0);
      const T *kc = kcoef.data() + n * C, *kz = kcentre.data() + n * C, *ko = koffset.data() + n * C;
      for (int64_t l = l0; l < l0 + rows; ++l) {
        const int64_t row = (n * L + l) * C;
        for_each_vector<T>(C, [&](int64_t c, auto cnt) {
          store(input_gradient(V::loadu(fixed_part(row + c), cnt), load<T>(xp + row + c, cnt), V::loadu(kc + c, cnt),
                               V::loadu(kz + c, cnt), V::loadu(ko + c, cnt)),
                dxp + row + c, cnt);
        });
      }
    }
  });
}

// ---- operators ----------------------------------------------------------------------------------------

// y (x's dtype and layout); per channel (compute dtype) the batch variance, batch mean and left; per
// (N, C) the instance mean and statistic.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> batch_forward(
    const Tensor& x, const Tensor& v, const Tensor& w, const Tensor& b, const std::optional<Tensor>& running_var,
    int64_t variant, double eps, bool act) {
  check_input(x, "batch");
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool cl = is_channels_last(x);
  const auto layout = cl ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
  const Tensor vc = v.to(compute).contiguous(), wc = w.to(compute).contiguous(), bc = b.to(compute).contiguous();
  const Tensor rv = running_var ? running_var->to(compute).contiguous() : Tensor();
  Tensor y = at::empty_like(x, x.options(), layout);
  const int64_t N = x.size(0), C = x.size(1);
  const auto options = vc.options();
  Tensor bvar = at::empty({C}, options), bmean = at::empty({C}, options), left = at::empty({C}, options);
  Tensor imean = at::empty({N, C}, options), inst = at::empty({N, C}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "evonorm_batch_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const T* rvp = rv.defined() ? rv.const_data_ptr<T>() : nullptr;
    auto run = cl ? forward_channels_last<T, scalar_t> : forward_contiguous<T, scalar_t>;
    run(x, vc.const_data_ptr<T>(), wc.const_data_ptr<T>(), bc.const_data_ptr<T>(), rvp, y, bvar.mutable_data_ptr<T>(),
        bmean.mutable_data_ptr<T>(), left.mutable_data_ptr<T>(), imean.mutable_data_ptr<T>(), inst.mutable_data_ptr<T>(),
        variant, eps, act);
  });
  return {y, bvar, bmean, left, imean, inst};
}

// dx (x's dtype and layout) and the parameter gradients (3, C) in the compute dtype: dγ, dβ, dv.
std::tuple<Tensor, Tensor> batch_backward(const Tensor& dy_in, const Tensor& x, const Tensor& v, const Tensor& w,
                                          const Tensor& bmean, const Tensor& left, const Tensor& imean,
                                          const Tensor& inst, int64_t variant, bool act, bool batch_statistics) {
  check_input(x, "batch");
  const auto compute = left.scalar_type();
  const bool cl = is_channels_last(x);
  const auto layout = cl ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
  const Tensor dy = dy_in.to(x.scalar_type()).contiguous(layout);
  const Tensor vc = v.to(compute).contiguous(), wc = w.to(compute).contiguous();
  const Tensor bm = bmean.contiguous(), lf = left.contiguous(), im = imean.contiguous(), in = inst.contiguous();
  Tensor dx = at::empty_like(x, x.options(), layout);
  Tensor grads = at::empty({3, x.size(1)}, vc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "evonorm_batch_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    auto run = cl ? backward_channels_last<T, scalar_t> : backward_contiguous<T, scalar_t>;
    run(dy, x, vc.const_data_ptr<T>(), wc.const_data_ptr<T>(), bm.const_data_ptr<T>(), lf.const_data_ptr<T>(),
        im.const_data_ptr<T>(), in.const_data_ptr<T>(), dx, grads.mutable_data_ptr<T>(), variant, act, batch_statistics);
  });
  return {dx, grads};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(evonorm_cpu, m) {
  m.def("batch_forward(Tensor x, Tensor v, Tensor weight, Tensor bias, Tensor? running_var, int variant, float eps, bool act) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("batch_backward(Tensor dy, Tensor x, Tensor v, Tensor weight, Tensor batch_mean, Tensor left, Tensor inst_mean, Tensor inst, int variant, bool act, bool batch_statistics) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(evonorm_cpu, CPU, m) {
  m.impl("batch_forward", &batch_forward);
  m.impl("batch_backward", &batch_backward);
}
