// detloss fast path, rotated boxes: the Gaussian losses (ProbIoU, KLD, GWD, KFIoU) of aligned pairs
// of cxcywha boxes (angles in radians), forward and backward, one pass over the data each.
// The math is that of detloss.boxes.rotated (gaussian_core: _bhattacharyya, _kl_target_pred,
// _wasserstein2 on _gaussian_pair) and of the losses' transforms in detloss.functional.rotated,
// step for step and in the input's precision, with the subgradients autograd takes there:
// clamp(min=0) passes the gradient at 0, and finite_pow's square root has none below its floor.
//
// Vectorized: the pairs are gathered, a block at a time, into coordinate-major rows, and every
// loop over a block is branch-free code that GCC turns into vector instructions (8 float or 4
// double pairs per AVX2 instruction), with no libm call: sine and cosine, exp, log, log1p, expm1
// and sinh are the polynomials below and in kernels.h (angles beyond a few thousand radians,
// rare, take libm's sine and cosine in a scalar pass). The backward is forward-mode
// differentiation of the forward's own code: each value carries its partial derivatives with
// respect to the eight quantities a pair's distance depends on (the centres' offset, the four
// sides, the two angles), so the gradient is exact and the two cannot disagree; the loss's
// transform of the distance is a slope applied to those eight partials at the end.
//
// Registered as the CPU kernels of detloss::rotated_gaussian_loss and its backward, whose
// schemas, fake kernels and autograd detloss._fused.ops defines.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

// No fused multiply-adds: the cross product of two equal directions must be exactly 0, as in
// the reference (a thin box's angle term multiplies it by up to (h / w)^2). Before kernels.h,
// whose functions are inlined here and must be compiled with the same options.
#pragma GCC optimize("fp-contract=off")
#include "kernels.h"

namespace {

using detloss_kernels::exp_nonpos;

constexpr int64_t kBlock = 256;          // pairs per block: the staged rows stay in L1
constexpr int64_t kRotatedGrain = 2048;  // pairs per thread task at least
constexpr int kPartials = 8;

// The partials a Dual carries: with respect to the centres' offset pred - target, the four sides
// (after clamp(min=0), before + eps) and the two angles.
enum Partial : int { kDx = 0, kDy = 1, kWp = 2, kHp = 3, kWt = 4, kHt = 5, kAp = 6, kAt = 7 };

// ---------------------------------------------------------------- scalar math that vectorizes

template <typename S> DETLOSS_INLINE S sel(bool c, S a, S b) { return c ? a : b; }

// sqrt(x) for x >= 0 (0, inf and NaN pass through; x normal or 0): std::sqrt keeps a branch for errno that stops
// the vectorizer, so 1 / sqrt(x) by Newton's iteration from the exponent's half, then sqrt(x) =
// x / sqrt(x) with one correction (within an ulp or two of the correctly rounded root).
DETLOSS_INLINE float sqrt_pos(float x) {
  float y = __builtin_bit_cast(float, 0x5F3759DF - (__builtin_bit_cast(int32_t, x) >> 1));
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) y = y * (1.5f - (0.5f * x) * (y * y));
  const float s = x * y;
  const float r = s + (0.5f * y) * (x - s * s);
  return x > 0.0f && x <= std::numeric_limits<float>::max() ? r : x;
}
DETLOSS_INLINE double sqrt_pos(double x) {
  double y = __builtin_bit_cast(double, 0x5FE6EB50C7B537A9LL - (__builtin_bit_cast(int64_t, x) >> 1));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) y = y * (1.5 - (0.5 * x) * (y * y));
  const double s = x * y;
  const double r = s + (0.5 * y) * (x - s * s);
  return x > 0.0 && x <= std::numeric_limits<double>::max() ? r : x;
}

// log(x) for x > 0: x = 2^k m, log(x) = k ln 2 + log(m) (ln 2 in two parts, k ln 2's high part
// exact); inf and NaN pass through.
DETLOSS_INLINE float log_pos(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  const float k = static_cast<float>((bits >> 23) - 127);
  const float m = __builtin_bit_cast(float, (bits & 0x007FFFFF) | 0x3F800000);  // [1, 2)
  const float r = k * 0.693145751953125f + (detloss_kernels::log_1to2(m) + k * 1.428606765330187e-06f);
  return x <= std::numeric_limits<float>::max() ? r : x;
}

DETLOSS_INLINE double log_pos(double x) {
  const int64_t bits = __builtin_bit_cast(int64_t, x);
  // the biased exponent as a double without an integer conversion (AVX2 has none for 64 bits)
  const double biased = __builtin_bit_cast(double, 0x4330000000000000LL | ((bits >> 52) & 0x7FF)) - 4503599627370496.0;
  const double m1 = __builtin_bit_cast(double, (bits & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);  // [1, 2)
  const bool high = m1 > 1.41421356237309504880;
  const double m = high ? 0.5 * m1 : m1;  // [sqrt(2)/2, sqrt(2)]
  const double k = biased - 1023.0 + (high ? 1.0 : 0.0);
  const double r = k * 6.93147180369123816490e-01 + (detloss_kernels::log1p_reduced(m - 1.0) + k * 1.90821492927058770002e-10);
  return x <= std::numeric_limits<double>::max() ? r : x;
}

// log(1 + d), d >= 0: log(s) of s = 1 + d rounded, plus the rounding's first-order term
template <typename S> DETLOSS_INLINE S log1p_pos(S d) {
  const S s = S(1) + d;
  const S lost = d - (s - S(1));  // exact; 0 where s is d (d huge or infinite)
  const S c = (s - S(1)) == d ? S(0) : lost;
  return log_pos(s) + c / s;
}

// 1 / k!, k <= 19: the double polynomials' coefficients
struct InvFactorials {
  double v[20];
  constexpr InvFactorials() : v{} {
    double f = 1.0;
    v[0] = 1.0;
    for (int k = 1; k < 20; ++k) {
      f *= k;
      v[k] = 1.0 / f;
    }
  }
};
constexpr InvFactorials kInvFactorial{};

// Taylor polynomials on |x| <= 1/2 (their error is below the type's rounding there)
DETLOSS_INLINE float expm1_small(float x) {  // e^x - 1
  return x * (1.0f + x * (1.0f / 2 + x * (1.0f / 6 + x * (1.0f / 24 + x * (1.0f / 120 + x * (1.0f / 720 + x * (1.0f / 5040 + x * (1.0f / 40320 + x * (1.0f / 362880)))))))));
}
DETLOSS_INLINE double expm1_small(double x) {
  double p = kInvFactorial.v[17];
#pragma GCC unroll 16
  for (int k = 16; k >= 1; --k) p = kInvFactorial.v[k] + x * p;
  return x * p;
}

DETLOSS_INLINE float excess_small(float x) {  // e^x - 1 - x
  return x * x * (1.0f / 2 + x * (1.0f / 6 + x * (1.0f / 24 + x * (1.0f / 120 + x * (1.0f / 720 + x * (1.0f / 5040 + x * (1.0f / 40320 + x * (1.0f / 362880))))))));
}
DETLOSS_INLINE double excess_small(double x) {
  double p = kInvFactorial.v[17];
#pragma GCC unroll 16
  for (int k = 16; k >= 2; --k) p = kInvFactorial.v[k] + x * p;
  return x * x * p;
}

DETLOSS_INLINE float sinh_small(float u) {
  const float z = u * u;
  return u * (1.0f + z * (1.0f / 6 + z * (1.0f / 120 + z * (1.0f / 5040 + z * (1.0f / 362880)))));
}
DETLOSS_INLINE double sinh_small(double u) {
  const double z = u * u;
  double p = kInvFactorial.v[17];
#pragma GCC unroll 8
  for (int k = 15; k >= 1; k -= 2) p = kInvFactorial.v[k] + z * p;
  return u * p;
}

// e^x for any x: e^-|x| by kernels.h, inverted for x > 0 (inf beyond the type's range)
template <typename S> DETLOSS_INLINE S exp_any(S x) {
  const S e = exp_nonpos(-std::abs(x));
  return x > S(0) ? S(1) / e : e;
}

template <typename S> DETLOSS_INLINE S expm1_any(S x) {
  return std::abs(x) <= S(0.5) ? expm1_small(x) : exp_any(x) - S(1);
}

// e^x - 1 - x >= 0, and its derivative e^x - 1
template <typename S> DETLOSS_INLINE S excess_any(S x) {
  const S r = std::abs(x) <= S(0.5) ? excess_small(x) : (exp_any(x) - S(1)) - x;
  return r < S(0) ? S(0) : r;
}

template <typename S> struct SinhCosh {
  S sinh, cosh;
};
template <typename S> DETLOSS_INLINE SinhCosh<S> sinh_cosh(S u) {
  const S a = std::abs(u);
  const S en = exp_nonpos(-a), ep = S(1) / en;
  const S big = S(0.5) * (ep - en);
  const S sh = a <= S(0.5) ? sinh_small(a) : big;
  return {u < S(0) ? -sh : sh, S(0.5) * (ep + en)};
}

// sine and cosine: x = n pi/2 + r, |r| <= pi/4, pi/2 in three parts whose products with n are
// exact for |x| below kSinCosLimit; Taylor polynomials of r; the quadrant n mod 4.
template <typename S> struct SinCos {
  S sin, cos;
};
template <typename S> struct Reduction;
template <> struct Reduction<float> {
  static constexpr float kLimit = 1e4f;
  static constexpr float kC1 = 1.5703125f, kC2 = 4.837512969970703e-4f, kC3 = 7.549790126404332e-08f;
};
template <> struct Reduction<double> {
  static constexpr double kLimit = 1e6;
  static constexpr double kC1 = 1.5707963267341256, kC2 = 6.077100506303966e-11, kC3 = 2.0222662487959506e-21;
};

DETLOSS_INLINE float sin_poly(float r, float z) {
  return r + r * z * (-1.0f / 6 + z * (1.0f / 120 + z * (-1.0f / 5040 + z * (1.0f / 362880))));
}
DETLOSS_INLINE float cos_poly(float z) {
  return 1.0f + z * (-1.0f / 2 + z * (1.0f / 24 + z * (-1.0f / 720 + z * (1.0f / 40320 + z * (-1.0f / 3628800)))));
}
DETLOSS_INLINE double sin_poly(double r, double z) {  // to r^17: the terms' signs alternate
  double p = kInvFactorial.v[17];
#pragma GCC unroll 8
  for (int k = 15; k >= 3; k -= 2) p = ((k - 1) / 2 % 2 == 1 ? -kInvFactorial.v[k] : kInvFactorial.v[k]) + z * p;
  return r + r * z * p;
}
DETLOSS_INLINE double cos_poly(double z) {  // to r^18
  double p = -kInvFactorial.v[18];
#pragma GCC unroll 8
  for (int k = 16; k >= 2; k -= 2) p = (k / 2 % 2 == 1 ? -kInvFactorial.v[k] : kInvFactorial.v[k]) + z * p;
  return 1.0 + z * p;
}

DETLOSS_INLINE int quadrant(float m) { return __builtin_bit_cast(int32_t, m) & 3; }
DETLOSS_INLINE int64_t quadrant(double m) { return __builtin_bit_cast(int64_t, m) & 3; }

template <typename S> DETLOSS_INLINE SinCos<S> sin_cos(S x) {
  using R = Reduction<S>;
  const S magic = sizeof(S) == 4 ? S(12582912.0) : S(6755399441055744.0);  // 1.5 * 2^mantissa bits
  const S xc = std::abs(x) <= R::kLimit ? x : S(0);                       // others: the scalar pass
  const S m = xc * S(0.63661977236758134308) + magic;
  const S n = m - magic;
  const S r = ((xc - n * R::kC1) - n * R::kC2) - n * R::kC3;
  const S z = r * r;
  const S s = sin_poly(r, z), c = cos_poly(z);
  const auto q = quadrant(m);
  const S sin = q == 0 ? s : (q == 1 ? c : (q == 2 ? -s : -c));
  const S cos = q == 0 ? c : (q == 1 ? -s : (q == 2 ? -c : s));
  return {sin, cos};
}

// ---------------------------------------------------------------- values with their partials

template <typename S> struct Dual {
  S v;
  S d[kPartials];
};

template <typename S> DETLOSS_INLINE Dual<S> chain(const Dual<S>& a, S v, S slope) {
  Dual<S> r;
  r.v = v;
#pragma GCC unroll 8
  for (int i = 0; i < kPartials; ++i) r.d[i] = slope * a.d[i];
  return r;
}
template <typename S> DETLOSS_INLINE Dual<S> operator+(const Dual<S>& a, const Dual<S>& b) {
  Dual<S> r;
  r.v = a.v + b.v;
#pragma GCC unroll 8
  for (int i = 0; i < kPartials; ++i) r.d[i] = a.d[i] + b.d[i];
  return r;
}
template <typename S> DETLOSS_INLINE Dual<S> operator-(const Dual<S>& a, const Dual<S>& b) {
  Dual<S> r;
  r.v = a.v - b.v;
#pragma GCC unroll 8
  for (int i = 0; i < kPartials; ++i) r.d[i] = a.d[i] - b.d[i];
  return r;
}
template <typename S> DETLOSS_INLINE Dual<S> operator*(const Dual<S>& a, const Dual<S>& b) {
  Dual<S> r;
  r.v = a.v * b.v;
#pragma GCC unroll 8
  for (int i = 0; i < kPartials; ++i) r.d[i] = a.d[i] * b.v + a.v * b.d[i];
  return r;
}
template <typename S> DETLOSS_INLINE Dual<S> operator/(const Dual<S>& a, const Dual<S>& b) {
  Dual<S> r;
  r.v = a.v / b.v;
  const S rb = S(1) / b.v;
#pragma GCC unroll 8
  for (int i = 0; i < kPartials; ++i) r.d[i] = (a.d[i] - r.v * b.d[i]) * rb;
  return r;
}
template <typename S> DETLOSS_INLINE Dual<S> operator*(const Dual<S>& a, S b) { return chain(a, a.v * b, b); }
template <typename S> DETLOSS_INLINE Dual<S> operator*(S b, const Dual<S>& a) { return chain(a, a.v * b, b); }
template <typename S> DETLOSS_INLINE Dual<S> operator/(const Dual<S>& a, S b) { return chain(a, a.v / b, S(1) / b); }
template <typename S> DETLOSS_INLINE Dual<S> operator/(S b, const Dual<S>& a) {
  const S r = b / a.v;
  return chain(a, r, -r / a.v);
}
template <typename S> DETLOSS_INLINE Dual<S> operator+(const Dual<S>& a, S b) { return chain(a, a.v + b, S(1)); }
template <typename S> DETLOSS_INLINE Dual<S> operator-(const Dual<S>& a) { return chain(a, -a.v, S(-1)); }
template <typename S> DETLOSS_INLINE Dual<S> operator-(S b, const Dual<S>& a) { return chain(a, b - a.v, S(-1)); }

template <typename S> DETLOSS_INLINE S value(S x) { return x; }
template <typename S> DETLOSS_INLINE S value(const Dual<S>& x) { return x.v; }

DETLOSS_INLINE float f_log(float x) { return log_pos(x); }
DETLOSS_INLINE double f_log(double x) { return log_pos(x); }
template <typename S> DETLOSS_INLINE Dual<S> f_log(const Dual<S>& a) { return chain(a, log_pos(a.v), S(1) / a.v); }
DETLOSS_INLINE float f_log1p(float x) { return log1p_pos(x); }
DETLOSS_INLINE double f_log1p(double x) { return log1p_pos(x); }
template <typename S> DETLOSS_INLINE Dual<S> f_log1p(const Dual<S>& a) { return chain(a, log1p_pos(a.v), S(1) / (S(1) + a.v)); }
DETLOSS_INLINE float f_sqrt(float x) { return sqrt_pos(x); }
DETLOSS_INLINE double f_sqrt(double x) { return sqrt_pos(x); }
template <typename S> DETLOSS_INLINE Dual<S> f_sqrt(const Dual<S>& a) {
  const S r = sqrt_pos(a.v);
  return chain(a, r, S(0.5) / r);
}
DETLOSS_INLINE float f_sinh(float x) { return sinh_cosh(x).sinh; }
DETLOSS_INLINE double f_sinh(double x) { return sinh_cosh(x).sinh; }
template <typename S> DETLOSS_INLINE Dual<S> f_sinh(const Dual<S>& a) {
  const SinhCosh<S> h = sinh_cosh(a.v);
  return chain(a, h.sinh, h.cosh);
}
DETLOSS_INLINE float f_cosh(float x) { return sinh_cosh(x).cosh; }
DETLOSS_INLINE double f_cosh(double x) { return sinh_cosh(x).cosh; }
template <typename S> DETLOSS_INLINE Dual<S> f_cosh(const Dual<S>& a) {
  const SinhCosh<S> h = sinh_cosh(a.v);
  return chain(a, h.cosh, h.sinh);
}
DETLOSS_INLINE float f_excess(float x) { return excess_any(x); }
DETLOSS_INLINE double f_excess(double x) { return excess_any(x); }
template <typename S> DETLOSS_INLINE Dual<S> f_excess(const Dual<S>& a) {  // clamp(expm1(x) - x, min=0)
  const S r = excess_any(a.v);
  return chain(a, r, expm1_any(a.v));
}

DETLOSS_INLINE float f_exp_nonpos(float x) { return exp_nonpos(x); }
DETLOSS_INLINE double f_exp_nonpos(double x) { return exp_nonpos(x); }
template <typename S> DETLOSS_INLINE Dual<S> f_exp_nonpos(const Dual<S>& a) {
  const S e = exp_nonpos(a.v);
  return chain(a, e, e);
}
DETLOSS_INLINE float f_expm1(float x) { return expm1_any(x); }
DETLOSS_INLINE double f_expm1(double x) { return expm1_any(x); }
template <typename S> DETLOSS_INLINE Dual<S> f_expm1(const Dual<S>& a) { return chain(a, expm1_any(a.v), exp_any(a.v)); }

// clamp(min=floor): the gradient passes where x >= floor
DETLOSS_INLINE float clamp_min(float x, float floor) { return x < floor ? floor : x; }
DETLOSS_INLINE double clamp_min(double x, double floor) { return x < floor ? floor : x; }
template <typename S> DETLOSS_INLINE Dual<S> clamp_min(const Dual<S>& x, S floor) {
  return chain(x, x.v < floor ? floor : x.v, x.v >= floor ? S(1) : S(0));
}

// smooth L1 of x against 0 with width beta (beta = 0: |x|), as detloss.functional.smooth_l1_loss:
// 0.5 min(|x|, beta)^2 / beta + relu(|x| - beta), its gradient sign(x) min(|x| / beta, 1)
template <typename S> struct SmoothL1 {
  S value, slope;
};
template <typename S> DETLOSS_INLINE SmoothL1<S> smooth_l1_of(S x, S beta) {
  const S a = std::abs(x);
  const S inv = beta > S(0) ? S(1) / beta : S(0);
  const bool quadratic = a <= beta;
  const S sign = x > S(0) ? S(1) : (x < S(0) ? S(-1) : S(0));
  return {quadratic ? S(0.5) * a * a * inv : a - S(0.5) * beta, quadratic ? sign * a * inv : sign};
}
DETLOSS_INLINE float smooth_l1(float x, float beta) { return smooth_l1_of(x, beta).value; }
DETLOSS_INLINE double smooth_l1(double x, double beta) { return smooth_l1_of(x, beta).value; }
template <typename S> DETLOSS_INLINE Dual<S> smooth_l1(const Dual<S>& x, S beta) {
  const SmoothL1<S> r = smooth_l1_of(x.v, beta);
  return chain(x, r.value, r.slope);
}

template <typename T> DETLOSS_INLINE T square(const T& x) { return x * x; }
template <typename S> DETLOSS_INLINE S abs_value(S x) { return std::abs(x); }
template <typename S> DETLOSS_INLINE S abs_value(const Dual<S>& x) { return std::abs(x.v); }

// ---------------------------------------------------------------- the Gaussian distances

template <typename T> struct Pair {  // _gaussian_pair: sides + eps, the centres' offset, the angle between the boxes
  T dx, dy, wp, hp, wt, ht, cos, sin, cos2, sin2, upx, upy, utx, uty;
};

template <typename T> DETLOSS_INLINE Pair<T> make_pair(T dx, T dy, T wp, T hp, T wt, T ht, T upx, T upy, T utx, T uty) {
  Pair<T> g{dx, dy, wp, hp, wt, ht, upx, upy, upx, upy, upx, upy, utx, uty};
  g.cos = upx * utx + upy * uty;
  g.sin = upx * uty - upy * utx;
  g.cos2 = g.cos * g.cos;
  g.sin2 = g.sin * g.sin;
  return g;
}

template <typename T> DETLOSS_INLINE T log_volume_ratio(const Pair<T>& g) {
  const T lwp = f_log(g.wp), lhp = f_log(g.hp), lwt = f_log(g.wt), lht = f_log(g.ht);
  using S = decltype(value(lwp));
  // differences of logs of sides first: exactly 0 where the sides are equal
  const T excess = square(f_sinh(S(0.5) * ((lwp - lwt) + (lhp - lht)))) +
                   g.cos2 * square(f_sinh(S(0.5) * ((lhp - lht) + (lwt - lwp)))) +
                   g.sin2 * square(f_sinh(S(0.5) * ((lhp - lwp) + (lht - lwt))));
  return f_log1p(excess);
}

template <typename T> DETLOSS_INLINE T bhattacharyya(const Pair<T>& g) {
  using S = decltype(value(g.wp));
  const S k = 12;
  const T parts[6] = {g.wp * g.hp, g.wt * g.ht, g.cos * g.hp * g.wt, g.cos * g.wp * g.ht, g.sin * g.hp * g.ht, g.sin * g.wp * g.wt};
  S scale = std::numeric_limits<S>::min();
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    const S a = abs_value(parts[i]);
    scale = a > scale ? a : scale;
  }
  const S inv_scale = S(1) / scale;
  T sum = square(parts[0] * inv_scale);
#pragma GCC unroll 5
  for (int i = 1; i < 6; ++i) sum = sum + square(parts[i] * inv_scale);
  const T root_det = scale * f_sqrt(sum);
  // the boxes' w directions u and h directions v = rot90(u)
  const T along_p = g.upx * g.dx + g.upy * g.dy, across_p = g.upx * g.dy - g.upy * g.dx;
  const T along_t = g.utx * g.dx + g.uty * g.dy, across_t = g.utx * g.dy - g.uty * g.dx;
  const T mahalanobis = square(g.hp * along_p / root_det) + square(g.wp * across_p / root_det) +
                        square(g.ht * along_t / root_det) + square(g.wt * across_t / root_det);
  return S(0.25) * k * mahalanobis + S(0.5) * log_volume_ratio(g);
}

template <typename T> DETLOSS_INLINE T kl_target_pred(const Pair<T>& g) {
  using S = decltype(value(g.wp));
  const S k = 4;
  const T lwp = f_log(g.wp), lhp = f_log(g.hp), lwt = f_log(g.wt), lht = f_log(g.ht);
  const T shape = g.cos2 * (f_excess(S(2) * (lwt - lwp)) + f_excess(S(2) * (lht - lhp))) +
                  g.sin2 * (f_excess(S(2) * (lht - lwp)) + f_excess(S(2) * (lwt - lhp)));
  const T along = g.upx * g.dx + g.upy * g.dy, across = g.upx * g.dy - g.upy * g.dx;
  const T centre = k * (square(along / g.wp) + square(across / g.hp));
  return S(0.5) * (shape + centre);
}

// 2^e, e the binary exponent of x > 0 as frexp gives it (x / 2^e in [0.5, 1)), and its inverse
DETLOSS_INLINE float power_of_two_above(float x) {
  return 2.0f * __builtin_bit_cast(float, __builtin_bit_cast(int32_t, x) & 0x7F800000);
}
DETLOSS_INLINE double power_of_two_above(double x) {
  return 2.0 * __builtin_bit_cast(double, __builtin_bit_cast(int64_t, x) & 0x7FF0000000000000LL);
}

template <typename T> DETLOSS_INLINE T wasserstein2(const Pair<T>& g) {
  using S = decltype(value(g.wp));
  // the degree-4 terms on the sides over a power of two (exact), as _power_of_two_scale
  const S largest = std::max(std::max(value(g.wp), value(g.hp)), std::max(value(g.wt), value(g.ht)));
  const S scale = power_of_two_above(largest), inv = S(1) / scale;
  const T wp = g.wp * inv, hp = g.hp * inv, wt = g.wt * inv, ht = g.ht * inv;
  const T x = square(wp) + square(hp) + square(wt) + square(ht);
  const T p = wp * wt + hp * ht;
  const T q = wp * ht + hp * wt;
  const T aligned = square(wp - wt) + square(hp - ht);
  const T crossed = square(wp - ht) + square(hp - wt);
  const T root = f_sqrt(g.cos2 * p * p + g.sin2 * q * q);
  const T shape = (g.cos2 * aligned * (x + S(2) * p) + g.sin2 * crossed * (x + S(2) * q)) / (x + S(2) * root);
  return square(g.dx) + square(g.dy) + S(0.25) * shape * scale * scale;
}

// KFIoU loss (detloss.functional.kfiou_loss, with kfiou_core): the centre term (the predicted
// centre in the target's frame over the target's sides, smooth L1 of width beta) plus f(KFIoU).
// KFIoU = V / (V_p + V_t - V) with V = sqrt(V_p V_t / (4 psi)) (V_p, V_t the areas), written
// from the log-ratios of the sides as log_volume_ratio's terms: (V_p + V_t) / V =
// 4 sqrt(psi) cosh(A / 2), A = ln(V_p / V_t), so KFIoU = 1 / (4 sqrt(psi) cosh(A / 2) - 1). The
// same value as the areas' quotient, but its gradient has no cancellation between terms of the
// size of 1 / w where a side is near 0 (in float32 the quotient's is off by ~0.4 at w = 0).
enum KFIoUMode : int64_t { kLn = 0, kLinear = 1, kExp = 2 };
template <int64_t M, typename T, typename S> DETLOSS_INLINE T kfiou_loss_of(const Pair<T>& g, S beta, S eps) {
  const T along = (g.dx * g.utx + g.dy * g.uty) / g.wt;
  const T across = (g.dy * g.utx - g.dx * g.uty) / g.ht;
  const T centre = smooth_l1(along, beta) + smooth_l1(across, beta);
  const T lwp = f_log(g.wp), lhp = f_log(g.hp), lwt = f_log(g.wt), lht = f_log(g.ht);
  const T half_a = S(0.5) * ((lwp - lwt) + (lhp - lht));
  const T excess = square(f_sinh(half_a)) + g.cos2 * square(f_sinh(S(0.5) * ((lhp - lht) + (lwt - lwp)))) +
                   g.sin2 * square(f_sinh(S(0.5) * ((lhp - lwp) + (lht - lwt))));
  const T kfiou = S(1) / (S(4) * f_sqrt(excess + S(1)) * f_cosh(half_a) + S(-1));
  if constexpr (M == kLn) {
    return centre + -f_log(clamp_min(kfiou, eps));
  } else if constexpr (M == kLinear) {
    return centre + (S(1) - kfiou);
  } else {
    return centre + f_expm1(S(1) - kfiou);
  }
}

// The distances, and the KFIoU loss in its three modes (its "distance" is the loss: fun "none")
enum Kind : int64_t { kBhattacharyya = 0, kKLD = 1, kGWD = 2, kKFIoULn = 3, kKFIoULinear = 4, kKFIoUExp = 5 };
enum Fun : int64_t { kHellinger = 0, kIdentity = 1, kLog1p = 2, kSqrt = 3 };

template <int64_t K, typename T, typename S> DETLOSS_INLINE T distance(const Pair<T>& g, S beta, S eps) {
  if constexpr (K == kBhattacharyya) {
    return bhattacharyya(g);
  } else if constexpr (K == kKLD) {
    return kl_target_pred(g);
  } else if constexpr (K == kGWD) {
    return wasserstein2(g);
  } else {
    return kfiou_loss_of<K - kKFIoULn>(g, beta, eps);
  }
}

// The loss of a distance d and its slope d loss / d d (gaussian_transform)
template <typename S> struct Slope {
  S loss, slope;
};
template <int64_t F, typename S> DETLOSS_INLINE Slope<S> transform(S d, S tau, S eps) {
  if constexpr (F == kIdentity) {
    return {d, S(1)};
  } else if constexpr (F == kHellinger) {  // finite_sqrt(-expm1(-d), eps)
    const S nd = d > S(0) ? -d : S(0);   // d >= 0 but for rounding
    const S y = -(std::abs(nd) <= S(0.5) ? expm1_small(nd) : exp_nonpos(nd) - S(1));
    const S yc = y > S(0) ? y : S(0);
    const S r = sqrt_pos(yc);
    const S slope = y < eps ? S(0) : S(0.5) * exp_nonpos(-d > S(0) ? S(0) : -d) / (r > S(0) ? r : S(1));
    return {r, slope};
  } else if constexpr (F == kLog1p) {  // 1 - 1 / (tau + log1p(d))
    const S dc = d > S(0) ? d : S(0);
    const S den = tau + log1p_pos(dc);
    return {S(1) - S(1) / den, S(1) / (den * den * (S(1) + d))};
  } else {  // 1 - 1 / (tau + finite_sqrt(d, eps))
    const S r = sqrt_pos(d > S(0) ? d : S(0));
    const S den = tau + r;
    const S slope = d < eps ? S(0) : S(0.5) / ((r > S(0) ? r : S(1)) * den * den);
    return {S(1) - S(1) / den, slope};
  }
}

// ---------------------------------------------------------------- the block loops

// in[5 j + c] -> rows[c][j], j < m
template <typename S> void gather5(const S* __restrict in, S (*__restrict rows)[kBlock], int64_t m) {
  for (int64_t j = 0; j < m; ++j) {
#pragma GCC unroll 5
    for (int c = 0; c < 5; ++c) rows[c][j] = in[5 * j + c];
  }
}

// sine and cosine of m angles; those beyond the reduction's range by libm, one at a time
template <typename S> void sin_cos_block(const S* __restrict a, S* __restrict s, S* __restrict c, int64_t m) {
  int far = 0;
#pragma omp simd reduction(| : far)
  for (int64_t j = 0; j < m; ++j) {
    const SinCos<S> sc = sin_cos(a[j]);
    s[j] = sc.sin;
    c[j] = sc.cos;
    far |= std::abs(a[j]) <= Reduction<S>::kLimit ? 0 : 1;
  }
  if (far != 0) {
    for (int64_t j = 0; j < m; ++j) {
      if (!(std::abs(a[j]) <= Reduction<S>::kLimit)) {
        s[j] = std::sin(a[j]);
        c[j] = std::cos(a[j]);
      }
    }
  }
}

template <typename S> struct Staged {
  alignas(64) S p[5][kBlock];
  alignas(64) S t[5][kBlock];
  alignas(64) S sp[kBlock];
  alignas(64) S cp[kBlock];
  alignas(64) S st[kBlock];
  alignas(64) S ct[kBlock];

  void load(const S* pred, const S* target, int64_t m) {
    gather5(pred, p, m);
    gather5(target, t, m);
    sin_cos_block(p[4], sp, cp, m);
    sin_cos_block(t[4], st, ct, m);
  }
};

template <typename S> DETLOSS_INLINE S side(S raw, S eps) { return (raw < S(0) ? S(0) : raw) + eps; }

// One pair's distance from its coordinates (by value: a loop under omp simd privatizes the locals
// whose address is taken in its body into per-lane arrays, which GCC then gathers from; locals of
// an inlined function are plain values).
template <int64_t K, typename S>
DETLOSS_INLINE S pair_distance(S px, S py, S pw, S ph, S tx, S ty, S tw, S th, S cp, S sp, S ct, S st, S tau, S eps) {
  const Pair<S> g = make_pair<S>(px - tx, py - ty, side(pw, eps), side(ph, eps), side(tw, eps), side(th, eps), cp, sp, ct, st);
  return distance<K>(g, tau, eps);
}

template <int64_t K, typename S> void distance_block(const Staged<S>& x, S tau, S eps, S* __restrict out, int64_t m) {
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    out[j] = pair_distance<K, S>(x.p[0][j], x.p[1][j], x.p[2][j], x.p[3][j], x.t[0][j], x.t[1][j], x.t[2][j], x.t[3][j],
                                 x.cp[j], x.sp[j], x.ct[j], x.st[j], tau, eps);
  }
}

template <typename S> DETLOSS_INLINE Dual<S> seed(S v, int i, S slope) {
  Dual<S> r;
  r.v = v;
#pragma GCC unroll 8
  for (int k = 0; k < kPartials; ++k) r.d[k] = k == i ? slope : S(0);
  return r;
}
template <typename S> DETLOSS_INLINE Dual<S> seed_side(S raw, int i, S eps) {
  return seed(side(raw, eps), i, raw >= S(0) ? S(1) : S(0));  // clamp(min=0) passes the gradient at 0
}

template <int64_t K, typename S>
DETLOSS_INLINE Dual<S> pair_distance_partials(S px, S py, S pw, S ph, S tx, S ty, S tw, S th, S cp, S sp, S ct, S st, S tau,
                                              S eps) {
  const Pair<Dual<S>> g = make_pair<Dual<S>>(seed(px - tx, kDx, S(1)), seed(py - ty, kDy, S(1)), seed_side(pw, kWp, eps),
                                             seed_side(ph, kHp, eps), seed_side(tw, kWt, eps), seed_side(th, kHt, eps),
                                             seed(cp, kAp, -sp), seed(sp, kAp, cp), seed(ct, kAt, -st), seed(st, kAt, ct));
  return distance<K>(g, tau, eps);
}

// The distance of m pairs with its partials: d[0][j] the value, d[1 + i][j] the partial i.
template <int64_t K, typename S>
void distance_partials_block(const Staged<S>& x, S tau, S eps, S (*__restrict d)[kBlock], int64_t m) {
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const Dual<S> r = pair_distance_partials<K, S>(x.p[0][j], x.p[1][j], x.p[2][j], x.p[3][j], x.t[0][j], x.t[1][j], x.t[2][j],
                                                   x.t[3][j], x.cp[j], x.sp[j], x.ct[j], x.st[j], tau, eps);
    d[0][j] = r.v;
#pragma GCC unroll 8
    for (int i = 0; i < kPartials; ++i) d[1 + i][j] = r.d[i];
  }
}

template <int64_t F, typename S> void loss_block(const S* __restrict d, S* __restrict out, int64_t m, S tau, S eps) {
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) out[j] = transform<F>(d[j], tau, eps).loss;
}

template <int64_t F, typename S> void slope_block(const S* __restrict d, const S* __restrict g, S* __restrict out, int64_t m, S tau, S eps) {
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) out[j] = g[j] * transform<F>(d[j], tau, eps).slope;
}

template <typename F> void with_fun(int64_t fun, F&& f) {
  switch (fun) {
    case kHellinger: f(std::integral_constant<int64_t, kHellinger>{}); break;
    case kIdentity: f(std::integral_constant<int64_t, kIdentity>{}); break;
    case kLog1p: f(std::integral_constant<int64_t, kLog1p>{}); break;
    default: f(std::integral_constant<int64_t, kSqrt>{}); break;
  }
}
template <typename F> void with_kind(int64_t kind, F&& f) {
  switch (kind) {
    case kBhattacharyya: f(std::integral_constant<int64_t, kBhattacharyya>{}); break;
    case kKLD: f(std::integral_constant<int64_t, kKLD>{}); break;
    case kGWD: f(std::integral_constant<int64_t, kGWD>{}); break;
    case kKFIoULn: f(std::integral_constant<int64_t, kKFIoULn>{}); break;
    case kKFIoULinear: f(std::integral_constant<int64_t, kKFIoULinear>{}); break;
    default: f(std::integral_constant<int64_t, kKFIoUExp>{}); break;
  }
}

// ---------------------------------------------------------------- the operators' CPU kernels

// kind "kfiou" takes its mode as fun ("ln", "linear", "exp") and beta as tau
int64_t kind_id(c10::string_view kind, c10::string_view fun) {
  if (kind == "bhattacharyya") return kBhattacharyya;
  if (kind == "kld") return kKLD;
  if (kind == "gwd") return kGWD;
  if (kind == "kfiou") {
    if (fun == "ln") return kKFIoULn;
    if (fun == "linear") return kKFIoULinear;
    if (fun == "exp") return kKFIoUExp;
    TORCH_CHECK(false, "detloss::rotated_gaussian_loss: kind kfiou takes fun ln, linear or exp, got ", fun);
  }
  TORCH_CHECK(false, "detloss::rotated_gaussian_loss: kind must be one of bhattacharyya, kld, gwd, kfiou, got ", kind);
}

int64_t fun_id(c10::string_view kind, c10::string_view fun) {
  if (kind == "kfiou") return kIdentity;
  if (fun == "hellinger") return kHellinger;
  if (fun == "none") return kIdentity;
  if (fun == "log1p") return kLog1p;
  if (fun == "sqrt") return kSqrt;
  TORCH_CHECK(false, "detloss::rotated_gaussian_loss: fun must be one of hellinger, none, log1p, sqrt, got ", fun);
}

void check_pairs(const at::Tensor& p, const at::Tensor& t) {
  TORCH_CHECK(p.device().is_cpu() && t.device().is_cpu(), "detloss::rotated_gaussian_loss (native kernel): CPU tensors only");
  TORCH_CHECK(p.dim() == 2 && p.size(1) == 5 && p.sizes() == t.sizes(), "detloss::rotated_gaussian_loss: pred and target of shape (N, 5)");
  TORCH_CHECK(p.scalar_type() == t.scalar_type(), "detloss::rotated_gaussian_loss: pred and target of one dtype");
  TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble, "detloss::rotated_gaussian_loss: float32 or float64");
}

template <typename S>
void forward_range(const S* pred, const S* target, S* out, int64_t lo, int64_t hi, int64_t kind, int64_t fun, S tau, S eps) {
  Staged<S> x;
  alignas(64) S d[kBlock];
  for (int64_t b = lo; b < hi; b += kBlock) {
    const int64_t m = std::min(kBlock, hi - b);
    x.load(pred + 5 * b, target + 5 * b, m);
    with_kind(kind, [&](auto k) { distance_block<decltype(k)::value>(x, tau, eps, d, m); });
    with_fun(fun, [&](auto f) { loss_block<decltype(f)::value>(d, out + b, m, tau, eps); });
  }
}

template <typename S>
void backward_range(const S* pred, const S* target, const S* grad, S* dp, S* dt, int64_t lo, int64_t hi, int64_t kind,
                    int64_t fun, S tau, S eps) {
  Staged<S> x;
  alignas(64) S d[1 + kPartials][kBlock];
  alignas(64) S slope[kBlock];
  for (int64_t b = lo; b < hi; b += kBlock) {
    const int64_t m = std::min(kBlock, hi - b);
    x.load(pred + 5 * b, target + 5 * b, m);
    with_kind(kind, [&](auto k) { distance_partials_block<decltype(k)::value>(x, tau, eps, d, m); });
    with_fun(fun, [&](auto f) { slope_block<decltype(f)::value>(d[0], grad + b, slope, m, tau, eps); });
    S* gp = dp + 5 * b;
    for (int64_t j = 0; j < m; ++j) {
      const S s = slope[j];
      gp[5 * j + 0] = s * d[1 + kDx][j];
      gp[5 * j + 1] = s * d[1 + kDy][j];
      gp[5 * j + 2] = s * d[1 + kWp][j];
      gp[5 * j + 3] = s * d[1 + kHp][j];
      gp[5 * j + 4] = s * d[1 + kAp][j];
    }
    if (dt != nullptr) {
      S* gt = dt + 5 * b;
      for (int64_t j = 0; j < m; ++j) {
        const S s = slope[j];
        gt[5 * j + 0] = -(s * d[1 + kDx][j]);
        gt[5 * j + 1] = -(s * d[1 + kDy][j]);
        gt[5 * j + 2] = s * d[1 + kWt][j];
        gt[5 * j + 3] = s * d[1 + kHt][j];
        gt[5 * j + 4] = s * d[1 + kAt][j];
      }
    }
  }
}

at::Tensor rotated_gaussian_loss(const at::Tensor& pred_in, const at::Tensor& target_in, c10::string_view kind_name,
                                 c10::string_view fun_name, double tau, double eps) {
  check_pairs(pred_in, target_in);
  const int64_t kind = kind_id(kind_name, fun_name), fun = fun_id(kind_name, fun_name);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  at::Tensor loss = at::empty({n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_rotated_gaussian_loss", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    scalar_t* out = loss.data_ptr<scalar_t>();
    at::parallel_for(0, n, kRotatedGrain, [&](int64_t lo, int64_t hi) {
      forward_range<scalar_t>(pp, tp, out, lo, hi, kind, fun, static_cast<scalar_t>(tau), static_cast<scalar_t>(eps));
    });
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> rotated_gaussian_loss_backward(const at::Tensor& pred_in, const at::Tensor& target_in,
                                                                  const std::optional<at::Tensor>& grad_in,
                                                                  c10::string_view kind_name, c10::string_view fun_name,
                                                                  double tau, double eps, bool target_grad) {
  check_pairs(pred_in, target_in);
  const int64_t kind = kind_id(kind_name, fun_name), fun = fun_id(kind_name, fun_name);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  if (!grad_in.has_value() || !grad_in->defined()) {
    return {at::zeros_like(pred), target_grad ? at::zeros_like(target) : at::empty({0}, pred.options())};
  }
  at::Tensor grad_pred = at::empty_like(pred);
  at::Tensor grad_target = target_grad ? at::empty_like(target) : at::empty({0}, pred.options());
  const at::Tensor grad = grad_in->to(pred.scalar_type()).expand({n}).contiguous();
  TORCH_CHECK(grad.numel() == n, "detloss::rotated_gaussian_loss_backward: a gradient of ", n, " elements");
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_rotated_gaussian_loss_backward", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* dp = grad_pred.data_ptr<scalar_t>();
    scalar_t* dt = target_grad ? grad_target.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, kRotatedGrain, [&](int64_t lo, int64_t hi) {
      backward_range<scalar_t>(pp, tp, gp, dp, dt, lo, hi, kind, fun, static_cast<scalar_t>(tau), static_cast<scalar_t>(eps));
    });
  });
  return {grad_pred, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(detloss, CPU, m) {
  m.impl("rotated_gaussian_loss", &rotated_gaussian_loss);
  m.impl("rotated_gaussian_loss_backward", &rotated_gaussian_loss_backward);
}
