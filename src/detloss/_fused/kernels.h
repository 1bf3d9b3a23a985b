// detloss fast path, the math: loss and analytic gradient of the IoU family and of the binary
// classification family per element, and the single-thread loops over a range of elements that
// the operators of kernels.cpp (aligned pairs, binary) and pairwise.cpp (all-pairs matrices)
// split across threads. Plain C++, no torch: a benchmark or a test can compile this header alone.
//
// The math is that of detloss.boxes.iou.box_similarity and detloss._fused.torch_impl, step for
// step, including the subgradients autograd takes at kinks: clamp(min=0) passes the gradient at
// 0, min/max split it in half on ties, |x| has gradient 0 at 0. Built without -ffast-math: a
// finite input never becomes a NaN here. Every loop is written so that GCC vectorizes it for
// float and double on AVX2 and AVX-512 (checked with -fopt-info-vec; the build adds
// -fno-trapping-math, which lets a vector select compute both sides of a branch, and changes
// no value): branch-free math, every option that changes the code a template parameter.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace detloss_kernels {

// Inlining is forced: GCC vectorizes a loop only if the per-element function is inlined into
// it, and its own inlining heuristics drop the larger kinds (SIoU) in some instantiations.
#define DETLOSS_INLINE __attribute__((always_inline)) inline

// ---------------------------------------------------------------- math that vectorizes
// libm calls stop GCC's vectorizer (without -ffast-math); these branch-free versions do not.
// Cephes-style range reductions and polynomials (S. L. Moshier's Cephes library), float and
// double, about 1-2 ulp each; tests/_fused/test_fused.py holds the kernels' values and gradients to the
// reference's (libm through torch): float32 rounding, 1e-10 relative in float64.

DETLOSS_INLINE float atan_nonneg(float x) {  // x >= 0, may be +inf
  const bool big = x > 2.414213562373095f;  // tan(3 pi / 8)
  const bool mid = x > 0.4142135623730950f;  // tan(pi / 8)
  const float a = big ? -1.0f / x : (mid ? (x - 1.0f) / (x + 1.0f) : x);
  const float base = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.0f);
  const float z = a * a;
  return base + ((((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z - 3.33329491539e-1f) * z * a + a);
}

DETLOSS_INLINE double atan_nonneg(double x) {  // x >= 0, may be +inf
  const bool big = x > 2.41421356237309504880;  // tan(3 pi / 8)
  const bool mid = x > 0.66;
  const double a = big ? -1.0 / x : (mid ? (x - 1.0) / (x + 1.0) : x);
  const double base = big ? 1.57079632679489661923 : (mid ? 0.78539816339744830962 : 0.0);
  const double tail = big ? 6.123233995736765886130e-17 : (mid ? 3.061616997868382943065e-17 : 0.0);  // pi/2, pi/4 - base
  const double z = a * a;
  const double p = (((-8.750608600031904122785e-1 * z - 1.615753718733365076637e1) * z - 7.500855792314704667340e1) * z -
                    1.228866684490136173410e2) * z - 6.485021904942025371773e1;
  const double q = ((((z + 2.485846490142306297962e1) * z + 1.650270098316988542046e2) * z + 4.328810604912902668951e2) * z +
                    4.853903996359136964868e2) * z + 1.945506571482613964425e2;
  return base + ((a * (z * p / q) + a) + tail);
}

DETLOSS_INLINE float exp_nonpos(float x) {  // x <= 0: exp(x), 0 below float's normal range (1.2e-38)
  const float lo = -87.33654f;
  const float xc = x < lo ? lo : x;                           // NaN passes through
  const float m = xc * 1.44269504088896341f + 12582912.0f;    // + 1.5 * 2^23 rounds to an integer n
  const float n = m - 12582912.0f;
  const int32_t k = __builtin_bit_cast(int32_t, m) - 0x4B400000;  // n as an integer (no conversion)
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;   // x - n ln 2 in two steps
  const float z = r * r;
  const float y = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                    1.6666665459e-1f) * r + 5.0000001201e-1f) * z + r + 1.0f;
  return x < lo ? 0.0f : y * __builtin_bit_cast(float, (k + 127) << 23);
}

DETLOSS_INLINE double exp_nonpos(double x) {  // x <= 0: exp(x), 0 below double's normal range (2.2e-308)
  const double lo = -708.3964185322641;        // log of the smallest normal double
  const double xc = x < lo ? lo : x;
  const double m = xc * 1.4426950408889634074 + 6755399441055744.0;  // + 1.5 * 2^52 rounds to an integer n
  const double n = m - 6755399441055744.0;
  const int64_t k = __builtin_bit_cast(int64_t, m) - 0x4338000000000000LL;
  const double r = (xc - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;  // x - n ln 2 in two steps
  const double z = r * r;
  const double px = r * ((1.26177193074810590878e-4 * z + 3.02994407707441961300e-2) * z + 9.99999999999999999910e-1);
  const double qx = ((3.00198505138664455042e-6 * z + 2.52448340349684104192e-3) * z + 2.27265548208155028766e-1) * z +
                    2.00000000000000000009e0;
  const double y = 1.0 + 2.0 * (px / (qx - px));  // exp(r), the Pade form
  return x < lo ? 0.0 : y * __builtin_bit_cast(double, (k + 1023) << 52);
}

DETLOSS_INLINE float log_1to2(float s) {  // log(s) for s in [1, 2]: 2 atanh(z), z = (s - 1) / (s + 1) <= 1/3
  const float z = (s - 1.0f) / (s + 1.0f);
  const float w = z * z;
  const float p = ((((((w * (1.0f / 13) + 1.0f / 11) * w + 1.0f / 9) * w + 1.0f / 7) * w + 1.0f / 5) * w + 1.0f / 3) * w + 1.0f);
  return 2.0f * z * p;
}

DETLOSS_INLINE float log1p_unit(float u) {  // log(1 + u) for u in [0, 1]: log(s) u / (s - 1), s = 1 + u rounded
  const float s = 1.0f + u;
  const float d = s - 1.0f;
  const float safe = d == 0.0f ? 1.0f : d;  // no division by zero: the loop stays branch-free
  return d == 0.0f ? u : log_1to2(s) * (u / safe);
}

// log(1 + f) for f in [sqrt(2)/2 - 1, sqrt(2) - 1]: f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f),
// R the minimax polynomial of the classic fdlibm log.
DETLOSS_INLINE double log1p_reduced(double f) {
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double w = z * z;
  const double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
  const double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
  const double hfsq = 0.5 * f * f;
  return f - (hfsq - s * (hfsq + (t1 + t2)));
}

DETLOSS_INLINE double log1p_unit(double u) {  // log(1 + u) for u in [0, 1]
  // u <= sqrt(2) - 1: reduced already (exact). Else log(1 + u) = ln 2 + log(s / 2), s = 1 + u
  // rounded, corrected by c / s for the rounding c = (1 - s) + u (exact, since 1 >= u).
  const bool small = u <= 0.41421356237309504880;
  const double s = 1.0 + u;
  const double c = (1.0 - s) + u;
  const double f = small ? u : 0.5 * s - 1.0;  // exact for s in [1.41, 2]
  const double big = 6.93147180369123816490e-01 + (log1p_reduced(f) + (1.90821492927058770002e-10 + c / s));
  return small ? log1p_reduced(f) : big;
}

// log(x) for x in (0, 1], subnormals included: x = 2^k f with f in [sqrt(2)/2, sqrt(2)), log x =
// k ln 2 + log f, ln 2 in two parts (those of exp_nonpos) so that k ln 2 carries no rounding.
// log_1to2's series 2 atanh(z) holds for f in that range too (|z| <= 0.172 < 1/3).
DETLOSS_INLINE float log_unit(float x) {
  const bool sub = x < 1.17549435e-38f;                 // below the smallest normal: scaled by 2^23
  const int32_t bits = __builtin_bit_cast(int32_t, sub ? x * 8388608.0f : x);
  const float f1 = __builtin_bit_cast(float, (bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool high = f1 > 1.41421356237309504880f;
  const float f = high ? 0.5f * f1 : f1;
  const float k = static_cast<float>((bits >> 23) - 127 + (high ? 1 : 0)) - (sub ? 23.0f : 0.0f);
  return k * 0.693359375f + (log_1to2(f) - k * 2.12194440e-4f);
}

DETLOSS_INLINE double log_unit(double x) {
  const bool sub = x < 2.2250738585072014e-308;  // below the smallest normal: scaled by 2^54
  const int64_t bits = __builtin_bit_cast(int64_t, sub ? x * 18014398509481984.0 : x);
  // the biased exponent as a double without an integer conversion (AVX2 has none for 64 bits)
  const double biased = __builtin_bit_cast(double, (bits >> 52) | 0x4330000000000000LL) - 4503599627370496.0;
  const double f1 = __builtin_bit_cast(double, (bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);  // [1, 2)
  const bool high = f1 > 1.41421356237309504880;
  const double f = high ? 0.5 * f1 : f1;
  const double k = (biased - 1023.0) + (high ? 1.0 : 0.0) - (sub ? 54.0 : 0.0);
  return k * 6.93147180369123816490e-01 + (log1p_reduced(f - 1.0) + k * 1.90821492927058770002e-10);
}

// x^e for x in [0, 1] (below 0: as 0, as clamp(min=0)) and e >= 0, as exp(e log x): 1 for e = 0
// (0^0 included), 0 for x = 0 < e, 1 at x = 1, NaN for a NaN x; branch-free, and with no select
// on e (GCC does not vectorize a select whose condition is loop-invariant). Relative error about
// (2 + e |log x|) ulp: the rounding of e log x, which exp carries over.
template <typename T> DETLOSS_INLINE T pow_unit(T x, T e) {
  const T lowest = -std::numeric_limits<T>::max();  // e * lowest: -inf, or -0 for e = 0
  const T l = x > T(0) ? log_unit(x) : (x == x ? lowest : x);
  return exp_nonpos(e * l);
}

// Where the math comes from, and in which form: the vectorizable functions above, a quotient by a
// denominator used more than once as a product with its reciprocal (one division instead of up
// to three: division is the slowest vector instruction), and CIoU's angle difference
// atan(a) - atan(b) as one arctangent, atan((a - b) / (1 + a b)). A Variant names it (M), so that
// another form (libm, every quotient a division) can be a second struct with the same members.
struct FastMath {
  static constexpr bool kReciprocal = true;
  template <typename T> static DETLOSS_INLINE T atan2_pos(T y, T x) { return atan_nonneg(y / x); }
  template <typename T> static DETLOSS_INLINE T exp_neg(T x) { return exp_nonpos(x); }
  template <typename T> static DETLOSS_INLINE T log1p_unit(T u) { return detloss_kernels::log1p_unit(u); }
  // atan(yt / xt) - atan(yp / xp) for positive arguments: both angles lie in (0, pi/2), so their
  // difference is atan of tan(difference) = (yt xp - xt yp) / (xt xp + yt yp), exactly
  template <typename T> static DETLOSS_INLINE T angle_diff(T yt, T xt, T yp, T xp) {
    const T z = (yt * xp - xt * yp) / (xt * xp + yt * yp);
    const T a = atan_nonneg(std::abs(z));
    return z < T(0) ? -a : a;
  }
};

// a / b, written a * rb with rb = 1 / b where the math allows it (kReciprocal): b's reciprocal
// is computed once for every quotient by b.
template <typename M, typename T> DETLOSS_INLINE T quot(T a, T b, T rb) {
  if constexpr (M::kReciprocal) {
    return a * rb;
  } else {
    return a / b;
  }
}
template <typename M, typename T> DETLOSS_INLINE T recip(T b) { return M::kReciprocal ? T(1) / b : T(0); }

template <typename T> DETLOSS_INLINE T pos(T v) { return v < T(0) ? T(0) : v; }            // clamp(min=0)
template <typename T> DETLOSS_INLINE T pass(T v) { return v >= T(0) ? T(1) : T(0); }       // its gradient
template <typename T> DETLOSS_INLINE T lt(T a, T b) { return a < b ? T(1) : (a == b ? T(0.5) : T(0)); }  // d min(a,b)/da
template <typename T> DETLOSS_INLINE T gt(T a, T b) { return a > b ? T(1) : (a == b ? T(0.5) : T(0)); }  // d max(a,b)/da
template <typename T> DETLOSS_INLINE T sgn(T v) { return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0)); }
template <typename T> DETLOSS_INLINE T mn(T a, T b) { return a < b ? a : b; }
template <typename T> DETLOSS_INLINE T mx(T a, T b) { return a > b ? a : b; }

template <int K> using Int = std::integral_constant<int, K>;

// Calls f(std::true_type{}) or f(std::false_type{}): a runtime flag as a compile-time one.
template <typename F>
void with_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---------------------------------------------------------------- the IoU family

enum IoUKind { IOU = 0, GIOU = 1, DIOU = 2, CIOU = 3, EIOU = 4, SIOU = 5, SIOU4 = 6 };  // SIOU4: theta = 4
constexpr double kFourOverPi2 = 0.40528473456935108578;  // 4 / pi^2

// What the options change, known at compile time: CIoU's journal gate (alpha = 0 where IoU <
// 0.5) and its paper gradient (the gradient of v times w^2 + h^2).
template <int K_, bool GATE_ = false, bool PAPER_ = false, typename M_ = FastMath, bool BOX_ANGLES_ = false>
struct Variant {
  static constexpr int K = K_;
  static constexpr bool GATE = GATE_, PAPER = PAPER_;
  using M = M_;
  // CIoU's angle difference from each box's own angle (Box::ang, computed once per box: the
  // pairwise matrices), else from the pair at once (M::angle_diff)
  static constexpr bool BOX_ANGLES = BOX_ANGLES_;
};

// One box's own terms: computed once per box (pairwise matrices precompute them for a column).
template <typename T>
struct Box {
  T x1, y1, x2, y2;
  T wr, hr;        // x2 - x1, y2 - y1
  T w, h;          // clamped at 0
  T l, r, t, b;    // the extent: an inverted side's corners sorted
  T ang;           // CIoU with BOX_ANGLES: atan((w + eps) / (h + eps))
};

template <typename T, typename V>
DETLOSS_INLINE Box<T> box_terms(T x1, T y1, T x2, T y2, T eps) {
  Box<T> o;
  o.x1 = x1, o.y1 = y1, o.x2 = x2, o.y2 = y2;
  o.wr = x2 - x1, o.hr = y2 - y1;
  o.w = pos(o.wr), o.h = pos(o.hr);
  const bool vx = x2 >= x1, vy = y2 >= y1;
  o.l = vx ? x1 : x2, o.r = vx ? x2 : x1, o.t = vy ? y1 : y2, o.b = vy ? y2 : y1;
  o.ang = V::K == CIOU && V::BOX_ANGLES ? V::M::atan2_pos(o.w + eps, o.h + eps) : T(0);
  return o;
}

// The forward of one pair: similarity S, IoU, and every term the backward reuses (r*: the
// reciprocals where M::kReciprocal, else 0).
template <typename T>
struct Pair {
  T S, iou;
  T iwr, ihr, iw, ih, inter, uni_area, uni, runi;
  T cw, ch, dx, dy, rho2;
  T E, rE, D, rD, Aw, Ah, aw, ah, dA, alpha;                                         // GIoU, DIoU, CIoU, EIoU
  T R, rR, angle, gamma, cwe, rcwe, che, rche, rx, ry, ex, ey, Mw, rMw, Mh, rMh, ow, oh, sw, sh;  // SIoU
};

template <typename T, typename V>
DETLOSS_INLINE Pair<T> pair_forward(const Box<T>& p, const Box<T>& t, const T eps, const T theta) {
  constexpr int K = V::K;
  using M = typename V::M;
  Pair<T> f;
  f.iwr = mn(p.x2, t.x2) - mx(p.x1, t.x1);
  f.ihr = mn(p.y2, t.y2) - mx(p.y1, t.y1);
  f.iw = pos(f.iwr), f.ih = pos(f.ihr);
  f.inter = f.iw * f.ih;
  f.uni_area = p.w * p.h + t.w * t.h - f.inter;
  f.uni = f.uni_area + eps;
  f.runi = recip<M>(f.uni);
  f.iou = f.inter / f.uni;
  T s = f.iou;
  f.cw = f.ch = f.dx = f.dy = f.rho2 = T(0);
  if (K != IOU) {  // the enclosing box over each box's extent, as the reference
    f.cw = mx(p.r, t.r) - mn(p.l, t.l);
    f.ch = mx(p.b, t.b) - mn(p.t, t.t);
  }
  if (K == DIOU || K == CIOU || K == EIOU || K == SIOU || K == SIOU4) {
    f.dx = T(0.5) * ((t.x1 + t.x2) - (p.x1 + p.x2));
    f.dy = T(0.5) * ((t.y1 + t.y2) - (p.y1 + p.y2));
    f.rho2 = f.dx * f.dx + f.dy * f.dy;
  }
  if (K == GIOU) {
    f.E = f.cw * f.ch + eps;
    f.rE = recip<M>(f.E);
    s = f.iou - quot<M>(f.E - f.uni, f.E, f.rE);
  } else if (K == DIOU || K == CIOU || K == EIOU) {
    f.D = f.cw * f.cw + f.ch * f.ch + eps;
    f.rD = recip<M>(f.D);
    s = f.iou - quot<M>(f.rho2, f.D, f.rD);
    if (K == EIOU) {
      f.aw = p.w - t.w;
      f.ah = p.h - t.h;
      f.Aw = f.cw * f.cw + eps;
      f.Ah = f.ch * f.ch + eps;
      s = s - f.aw * f.aw / f.Aw - f.ah * f.ah / f.Ah;
    } else if (K == CIOU) {
      if constexpr (V::BOX_ANGLES) {
        f.dA = t.ang - p.ang;
      } else {
        f.dA = M::angle_diff(t.w + eps, t.h + eps, p.w + eps, p.h + eps);
      }
      const T v = T(kFourOverPi2) * (f.dA * f.dA);
      f.alpha = v / (T(1) - f.iou + v + eps);
      // journal gate IoU >= 0.5, decided on the areas without eps (detloss.boxes.iou.ciou_gate)
      if (V::GATE) f.alpha = T(2) * f.inter >= f.uni_area ? (f.inter > T(0) ? f.alpha : T(0)) : T(0);
      s = s - f.alpha * v;
    }
  } else if (K == SIOU || K == SIOU4) {
    f.R = f.rho2 + eps;
    f.rR = recip<M>(f.R);
    const T m = f.dx * f.dy;
    f.angle = quot<M>(T(2) * std::abs(m), f.R, f.rR);
    f.gamma = T(2) - f.angle;
    f.cwe = f.cw + eps;
    f.che = f.ch + eps;
    f.rcwe = recip<M>(f.cwe);
    f.rche = recip<M>(f.che);
    f.rx = quot<M>(f.dx, f.cwe, f.rcwe);
    f.ry = quot<M>(f.dy, f.che, f.rche);
    f.ex = M::exp_neg(-f.gamma * (f.rx * f.rx));
    f.ey = M::exp_neg(-f.gamma * (f.ry * f.ry));
    const T distance = (T(1) - f.ex) + (T(1) - f.ey);
    f.aw = p.w - t.w;
    f.ah = p.h - t.h;
    f.Mw = mx(p.w, t.w) + eps;
    f.Mh = mx(p.h, t.h) + eps;
    f.rMw = recip<M>(f.Mw);
    f.rMh = recip<M>(f.Mh);
    f.ow = quot<M>(std::abs(f.aw), f.Mw, f.rMw);
    f.oh = quot<M>(std::abs(f.ah), f.Mh, f.rMh);
    f.sw = T(1) - M::exp_neg(-f.ow);
    f.sh = T(1) - M::exp_neg(-f.oh);
    const T shape = K == SIOU4 ? (f.sw * f.sw) * (f.sw * f.sw) + (f.sh * f.sh) * (f.sh * f.sh)
                               : pow_unit(f.sw, theta) + pow_unit(f.sh, theta);
    s = f.iou - T(0.5) * (distance + shape);
  }
  f.S = s;
  return f;
}

// The backward of one pair in two steps, so that a loop can run them apart (fewer values live
// at once: AVX2 has 16 vector registers). pair_interior: the gradients of gS * S + gI * IoU with
// respect to the intermediate lengths (raw intersection sides, raw box sides, centre offsets,
// enclosing sides); pair_corners: those routed back to both boxes' corners (dp, dt: 4 each).
template <typename T>
struct Interior {
  T iwr, ihr;            // raw intersection width and height
  T pwr, phr, twr, thr;  // raw sides of both boxes
  T hx, hy;              // half the gradient of the centre offsets dx, dy
  T cw, ch;              // enclosing width and height
};

template <typename T, typename V>
DETLOSS_INLINE Interior<T> pair_interior(const Box<T>& p, const Box<T>& t, const Pair<T>& f, const T eps, const T theta,
                                         T gS, T gI) {
  constexpr int K = V::K;
  using M = typename V::M;
  T g_uni = 0, g_inter = 0, g_pw = 0, g_ph = 0, g_tw = 0, g_th = 0, g_cw = 0, g_ch = 0, g_dx = 0, g_dy = 0;
  const T g_iou = gI + gS;  // every S is IoU minus a penalty (CIoU's alpha is a constant)
  if (K == GIOU) {
    g_uni += quot<M>(gS, f.E, f.rE);
    const T gE = M::kReciprocal ? -gS * f.uni * (f.rE * f.rE) : -gS * f.uni / (f.E * f.E);
    g_cw += gE * f.ch;
    g_ch += gE * f.cw;
  } else if (K == DIOU || K == CIOU || K == EIOU) {
    const T g_rho2 = quot<M>(-gS, f.D, f.rD);
    const T gD = M::kReciprocal ? -g_rho2 * f.rho2 * f.rD : gS * f.rho2 / (f.D * f.D);
    g_cw += T(2) * gD * f.cw;
    g_ch += T(2) * gD * f.ch;
    g_dx += T(2) * g_rho2 * f.dx;
    g_dy += T(2) * g_rho2 * f.dy;
    if (K == EIOU) {
      const T gaw = -gS * T(2) * f.aw / f.Aw, gah = -gS * T(2) * f.ah / f.Ah;
      const T gAw = gS * f.aw * f.aw / (f.Aw * f.Aw), gAh = gS * f.ah * f.ah / (f.Ah * f.Ah);
      g_pw += gaw;
      g_tw -= gaw;
      g_ph += gah;
      g_th -= gah;
      g_cw += T(2) * gAw * f.cw;
      g_ch += T(2) * gAh * f.ch;
    } else if (K == CIOU) {
      T gv = -gS * f.alpha;
      if (V::PAPER) gv = gv * (p.w * p.w + p.h * p.h);
      const T gdA = gv * T(kFourOverPi2) * T(2) * f.dA;  // dv/d(dA), dA = angle(target) - angle(pred)
      const T yp = p.w + eps, xp = p.h + eps, rp = xp * xp + yp * yp;
      const T yt = t.w + eps, xt = t.h + eps, rt = xt * xt + yt * yt;
      const T rrp = recip<M>(rp), rrt = recip<M>(rt);
      g_pw -= quot<M>(gdA * xp, rp, rrp);
      g_ph += quot<M>(gdA * yp, rp, rrp);
      g_tw += quot<M>(gdA * xt, rt, rrt);
      g_th -= quot<M>(gdA * yt, rt, rrt);
    }
  } else if (K == SIOU || K == SIOU4) {
    const T gd = T(-0.5) * gS;  // d/d distance and d/d shape
    const T qx = f.rx * f.rx, qy = f.ry * f.ry;
    const T g_gamma = gd * (f.ex * qx + f.ey * qy);
    const T g_rx = gd * f.ex * f.gamma * T(2) * f.rx, g_ry = gd * f.ey * f.gamma * T(2) * f.ry;
    g_dx += quot<M>(g_rx, f.cwe, f.rcwe);
    g_cw -= quot<M>(g_rx * f.rx, f.cwe, f.rcwe);
    g_dy += quot<M>(g_ry, f.che, f.rche);
    g_ch -= quot<M>(g_ry * f.ry, f.che, f.rche);
    const T g_angle = -g_gamma;
    const T g_m = quot<M>(g_angle * T(2) * sgn(f.dx * f.dy), f.R, f.rR);
    const T g_rho2 = quot<M>(-g_angle * f.angle, f.R, f.rR);
    g_dx += g_m * f.dy + T(2) * g_rho2 * f.dx;
    g_dy += g_m * f.dx + T(2) * g_rho2 * f.dy;
    const T pw3 = K == SIOU4 ? f.sw * f.sw * f.sw : pow_unit(f.sw, theta - T(1));  // theta >= 1
    const T ph3 = K == SIOU4 ? f.sh * f.sh * f.sh : pow_unit(f.sh, theta - T(1));
    const T th_ = K == SIOU4 ? T(4) : theta;
    const T g_ow = gd * th_ * pw3 * (T(1) - f.sw);
    const T g_oh = gd * th_ * ph3 * (T(1) - f.sh);
    const T g_aw = quot<M>(g_ow * sgn(f.aw), f.Mw, f.rMw), g_ah = quot<M>(g_oh * sgn(f.ah), f.Mh, f.rMh);
    const T g_Mw = quot<M>(-g_ow * f.ow, f.Mw, f.rMw), g_Mh = quot<M>(-g_oh * f.oh, f.Mh, f.rMh);
    const T kw = gt(p.w, t.w), kh = gt(p.h, t.h);
    g_pw += g_aw + g_Mw * kw;
    g_tw += -g_aw + g_Mw * (T(1) - kw);
    g_ph += g_ah + g_Mh * kh;
    g_th += -g_ah + g_Mh * (T(1) - kh);
  }
  // iou = inter / uni;  uni = pw ph + tw th - inter + eps;  inter = iw ih
  g_inter += quot<M>(g_iou, f.uni, f.runi);
  g_uni -= M::kReciprocal ? g_iou * f.iou * f.runi : g_iou * f.iou / f.uni;
  g_pw += g_uni * p.h;
  g_ph += g_uni * p.w;
  g_tw += g_uni * t.h;
  g_th += g_uni * t.w;
  g_inter -= g_uni;
  Interior<T> g;
  g.iwr = g_inter * f.ih * pass(f.iwr), g.ihr = g_inter * f.iw * pass(f.ihr);
  g.pwr = g_pw * pass(p.wr), g.phr = g_ph * pass(p.hr), g.twr = g_tw * pass(t.wr), g.thr = g_th * pass(t.hr);
  g.hx = T(0.5) * g_dx, g.hy = T(0.5) * g_dy;
  g.cw = g_cw, g.ch = g_ch;
  return g;
}

template <typename T, int K>
DETLOSS_INLINE void pair_corners(const Box<T>& p, const Box<T>& t, const Interior<T>& g, T (&dp)[4], T (&dt)[4]) {
  // corners: iwr = min(x2) - max(x1); dx = (t1 + t2 - p1 - p2) / 2; pwr = x2 - x1
  const T a2 = lt(p.x2, t.x2), a1 = gt(p.x1, t.x1), b2 = lt(p.y2, t.y2), b1 = gt(p.y1, t.y1);
  T p0 = -g.iwr * a1 - g.hx - g.pwr, p1 = -g.ihr * b1 - g.hy - g.phr;
  T p2 = g.iwr * a2 - g.hx + g.pwr, p3 = g.ihr * b2 - g.hy + g.phr;
  T t0 = -g.iwr * (T(1) - a1) + g.hx - g.twr, t1 = -g.ihr * (T(1) - b1) + g.hy - g.thr;
  T t2 = g.iwr * (T(1) - a2) + g.hx + g.twr, t3 = g.ihr * (T(1) - b2) + g.hy + g.thr;
  if (K != IOU) {  // cw = max(pr, tr) - min(pl, tl), each end routed back to the corner it came from
    const T cr = gt(p.r, t.r), cl = lt(p.l, t.l), cb = gt(p.b, t.b), ct = lt(p.t, t.t);
    const T g_pr = g.cw * cr, g_tr = g.cw * (T(1) - cr), g_pl = -g.cw * cl, g_tl = -g.cw * (T(1) - cl);
    const T g_pb = g.ch * cb, g_tb = g.ch * (T(1) - cb), g_pt = -g.ch * ct, g_tt = -g.ch * (T(1) - ct);
    const bool vpx = p.x2 >= p.x1, vpy = p.y2 >= p.y1, vtx = t.x2 >= t.x1, vty = t.y2 >= t.y1;
    p0 += vpx ? g_pl : g_pr;
    p2 += vpx ? g_pr : g_pl;
    p1 += vpy ? g_pt : g_pb;
    p3 += vpy ? g_pb : g_pt;
    t0 += vtx ? g_tl : g_tr;
    t2 += vtx ? g_tr : g_tl;
    t1 += vty ? g_tt : g_tb;
    t3 += vty ? g_tb : g_tt;
  }
  dp[0] = p0, dp[1] = p1, dp[2] = p2, dp[3] = p3;
  dt[0] = t0, dt[1] = t1, dt[2] = t2, dt[3] = t3;
}

// Both steps at once: the gradients of gS * S + gI * IoU with respect to both boxes' corners.
template <typename T, typename V>
DETLOSS_INLINE void pair_backward(const Box<T>& p, const Box<T>& t, const Pair<T>& f, const T eps, const T theta, T gS,
                                  T gI, T (&dp)[4], T (&dt)[4]) {
  pair_corners<T, V::K>(p, t, pair_interior<T, V>(p, t, f, eps, theta, gS, gI), dp, dt);
}

// Upstream gradient of a block, read contiguously by the pair loop whatever its layout: g has
// element stride s (0: an expanded scalar) or is absent (nullptr: 0). A Staged is filled once
// when its values do not change from block to block, else copied per block, times `sign`.
template <typename T, int64_t B>
struct Staged {
  alignas(64) T v[B];
  const T* g;
  int64_t s;
  T sign;
  Staged(const T* g_, int64_t s_, T sign_) : g(g_), s(s_), sign(sign_) {
    const T c = g ? sign * g[0] : T(0);
    if (!g || s == 0) {
      for (int64_t j = 0; j < B; ++j) v[j] = c;
    }
  }
  void load(int64_t b, int64_t m) {
    if (!g || s == 0) return;
    if (s == 1) {
      const T* gb = g + b;
      for (int64_t j = 0; j < m; ++j) v[j] = sign * gb[j];
    } else {
      for (int64_t j = 0; j < m; ++j) v[j] = sign * g[(b + j) * s];
    }
  }
};

// rows[c][j] -> out[4 j + c], j < m: a coordinate-major block of gradients into the (N, 4)
// layout. The pair loop stores whole vectors into rows; GCC's own interleaving of four strided
// streams is element by element, so this transposes whole vectors: 16 float pairs at a time with
// AVX-512, 8 float or 4 double pairs with AVX2; the tail (and other CPUs) element by element.
template <typename T, int64_t B>
DETLOSS_INLINE void interleave4(const T (&rows)[4][B], T* __restrict out, int64_t m) {
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 16 <= m; j += 16) {
      const __m512 a = _mm512_load_ps(rows[0] + j), b = _mm512_load_ps(rows[1] + j);
      const __m512 c = _mm512_load_ps(rows[2] + j), d = _mm512_load_ps(rows[3] + j);
      // within each 128-bit lane k: pairs 4k..4k+3; r_i holds pair 4k+i of every lane k
      const __m512d ab0 = _mm512_castps_pd(_mm512_unpacklo_ps(a, b)), ab1 = _mm512_castps_pd(_mm512_unpackhi_ps(a, b));
      const __m512d cd0 = _mm512_castps_pd(_mm512_unpacklo_ps(c, d)), cd1 = _mm512_castps_pd(_mm512_unpackhi_ps(c, d));
      const __m512 r0 = _mm512_castpd_ps(_mm512_unpacklo_pd(ab0, cd0)), r1 = _mm512_castpd_ps(_mm512_unpackhi_pd(ab0, cd0));
      const __m512 r2 = _mm512_castpd_ps(_mm512_unpacklo_pd(ab1, cd1)), r3 = _mm512_castpd_ps(_mm512_unpackhi_pd(ab1, cd1));
      // 4 x 4 transpose of 128-bit lanes: pairs in order
      const __m512 s0 = _mm512_shuffle_f32x4(r0, r1, 0x44), s1 = _mm512_shuffle_f32x4(r0, r1, 0xEE);
      const __m512 s2 = _mm512_shuffle_f32x4(r2, r3, 0x44), s3 = _mm512_shuffle_f32x4(r2, r3, 0xEE);
      _mm512_storeu_ps(out + 4 * j, _mm512_shuffle_f32x4(s0, s2, 0x88));
      _mm512_storeu_ps(out + 4 * j + 16, _mm512_shuffle_f32x4(s0, s2, 0xDD));
      _mm512_storeu_ps(out + 4 * j + 32, _mm512_shuffle_f32x4(s1, s3, 0x88));
      _mm512_storeu_ps(out + 4 * j + 48, _mm512_shuffle_f32x4(s1, s3, 0xDD));
    }
  }
#endif
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 8 <= m; j += 8) {
      const __m256 a = _mm256_load_ps(rows[0] + j), b = _mm256_load_ps(rows[1] + j);
      const __m256 c = _mm256_load_ps(rows[2] + j), d = _mm256_load_ps(rows[3] + j);
      // per 128-bit half h: u_i = (a, b, c, d) of pair 4h + i
      const __m256 ab0 = _mm256_unpacklo_ps(a, b), ab1 = _mm256_unpackhi_ps(a, b);
      const __m256 cd0 = _mm256_unpacklo_ps(c, d), cd1 = _mm256_unpackhi_ps(c, d);
      const __m256 u0 = _mm256_shuffle_ps(ab0, cd0, 0x44), u1 = _mm256_shuffle_ps(ab0, cd0, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(ab1, cd1, 0x44), u3 = _mm256_shuffle_ps(ab1, cd1, 0xEE);
      _mm256_storeu_ps(out + 4 * j, _mm256_permute2f128_ps(u0, u1, 0x20));       // pairs 0, 1
      _mm256_storeu_ps(out + 4 * j + 8, _mm256_permute2f128_ps(u2, u3, 0x20));   // pairs 2, 3
      _mm256_storeu_ps(out + 4 * j + 16, _mm256_permute2f128_ps(u0, u1, 0x31));  // pairs 4, 5
      _mm256_storeu_ps(out + 4 * j + 24, _mm256_permute2f128_ps(u2, u3, 0x31));  // pairs 6, 7
    }
  }
  if constexpr (std::is_same_v<T, double>) {
    for (; j + 4 <= m; j += 4) {
      const __m256d a = _mm256_load_pd(rows[0] + j), b = _mm256_load_pd(rows[1] + j);
      const __m256d c = _mm256_load_pd(rows[2] + j), d = _mm256_load_pd(rows[3] + j);
      const __m256d ab0 = _mm256_unpacklo_pd(a, b), ab1 = _mm256_unpackhi_pd(a, b);  // pairs (0, 2), (1, 3)
      const __m256d cd0 = _mm256_unpacklo_pd(c, d), cd1 = _mm256_unpackhi_pd(c, d);
      _mm256_storeu_pd(out + 4 * j, _mm256_permute2f128_pd(ab0, cd0, 0x20));
      _mm256_storeu_pd(out + 4 * j + 4, _mm256_permute2f128_pd(ab1, cd1, 0x20));
      _mm256_storeu_pd(out + 4 * j + 8, _mm256_permute2f128_pd(ab0, cd0, 0x31));
      _mm256_storeu_pd(out + 4 * j + 12, _mm256_permute2f128_pd(ab1, cd1, 0x31));
    }
  }
#endif
  for (; j < m; ++j) {
    for (int c = 0; c < 4; ++c) out[4 * j + c] = rows[c][j];
  }
}

// in[4 j + c] -> rows[c][j], j < m: the (N, 4) layout into coordinate-major rows, so that the
// pair loops read whole vectors of one coordinate (GCC's own de-interleaving of four strided
// streams takes three times the instructions and the registers). The inverse of interleave4.
template <typename T, int64_t B>
DETLOSS_INLINE void deinterleave4(const T* __restrict in, T (&rows)[4][B], int64_t m) {
  int64_t j = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 8 <= m; j += 8) {
      const __m256 r0 = _mm256_loadu_ps(in + 4 * j), r1 = _mm256_loadu_ps(in + 4 * j + 8);  // pairs 0 1, 2 3
      const __m256 r2 = _mm256_loadu_ps(in + 4 * j + 16), r3 = _mm256_loadu_ps(in + 4 * j + 24);
      const __m256 u0 = _mm256_permute2f128_ps(r0, r2, 0x20), u1 = _mm256_permute2f128_ps(r0, r2, 0x31);  // 0|4, 1|5
      const __m256 u2 = _mm256_permute2f128_ps(r1, r3, 0x20), u3 = _mm256_permute2f128_ps(r1, r3, 0x31);  // 2|6, 3|7
      const __m256 t0 = _mm256_unpacklo_ps(u0, u1), t1 = _mm256_unpackhi_ps(u0, u1);
      const __m256 t2 = _mm256_unpacklo_ps(u2, u3), t3 = _mm256_unpackhi_ps(u2, u3);
      _mm256_store_ps(rows[0] + j, _mm256_shuffle_ps(t0, t2, 0x44));
      _mm256_store_ps(rows[1] + j, _mm256_shuffle_ps(t0, t2, 0xEE));
      _mm256_store_ps(rows[2] + j, _mm256_shuffle_ps(t1, t3, 0x44));
      _mm256_store_ps(rows[3] + j, _mm256_shuffle_ps(t1, t3, 0xEE));
    }
  }
  if constexpr (std::is_same_v<T, double>) {
    for (; j + 4 <= m; j += 4) {
      const __m256d r0 = _mm256_loadu_pd(in + 4 * j), r1 = _mm256_loadu_pd(in + 4 * j + 4);
      const __m256d r2 = _mm256_loadu_pd(in + 4 * j + 8), r3 = _mm256_loadu_pd(in + 4 * j + 12);
      const __m256d t0 = _mm256_permute2f128_pd(r0, r2, 0x20), t1 = _mm256_permute2f128_pd(r0, r2, 0x31);
      const __m256d t2 = _mm256_permute2f128_pd(r1, r3, 0x20), t3 = _mm256_permute2f128_pd(r1, r3, 0x31);
      _mm256_store_pd(rows[0] + j, _mm256_unpacklo_pd(t0, t2));
      _mm256_store_pd(rows[1] + j, _mm256_unpackhi_pd(t0, t2));
      _mm256_store_pd(rows[2] + j, _mm256_unpacklo_pd(t1, t3));
      _mm256_store_pd(rows[3] + j, _mm256_unpackhi_pd(t1, t3));
    }
  }
#endif
  for (; j < m; ++j) {
    for (int c = 0; c < 4; ++c) rows[c][j] = in[4 * j + c];
  }
}

struct IoUOptions {
  double eps;
  double theta;  // SIoU shape exponent
};

// The pair loops work on blocks of kBlock pairs, staged coordinate-major (deinterleave4,
// interleave4): 2 x 4 x 256 floats stay in L1.
constexpr int64_t kBlock = 256;

// Pairs [0, m) of p, t (N, 4), m <= kBlock: loss = 1 - S and IoU.
template <typename T, typename V>
void iou_forward_block(const T* __restrict p, const T* __restrict t, T* __restrict loss, T* __restrict iou, int64_t m,
                       const IoUOptions& o) {
  alignas(64) T pc[4][kBlock], tc[4][kBlock];
  deinterleave4(p, pc, m);
  deinterleave4(t, tc, m);
  const T eps = T(o.eps), theta = T(o.theta);
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) {
    const Box<T> bp = box_terms<T, V>(pc[0][i], pc[1][i], pc[2][i], pc[3][i], eps);
    const Box<T> bt = box_terms<T, V>(tc[0][i], tc[1][i], tc[2][i], tc[3][i], eps);
    const Pair<T> f = pair_forward<T, V>(bp, bt, eps, theta);
    loss[i] = T(1) - f.S;
    iou[i] = f.iou;
  }
}

// Gradients of sum(gl * loss + gi * iou) for pairs [0, m), m <= kBlock, staged: gS, gI hold
// -gl and gi of these pairs. dt is written only if GT (the target needs a gradient). Two loops:
// the interior gradients of every pair, then their routing to the corners.
template <typename T, typename V, bool GT>
void iou_backward_block(const T* __restrict p, const T* __restrict t, const T* __restrict gS, const T* __restrict gI,
                        T* __restrict dp, T* __restrict dt, int64_t m, const IoUOptions& o) {
  constexpr int K = V::K;
  alignas(64) T pc[4][kBlock], tc[4][kBlock];
  alignas(64) T gi[10][kBlock];                           // the Interior of each pair
  alignas(64) T dpc[4][kBlock], dtc[GT ? 4 : 1][kBlock];  // gradients, coordinate-major
  deinterleave4(p, pc, m);
  deinterleave4(t, tc, m);
  const T eps = T(o.eps), theta = T(o.theta);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const Box<T> bp = box_terms<T, V>(pc[0][j], pc[1][j], pc[2][j], pc[3][j], eps);
    const Box<T> bt = box_terms<T, V>(tc[0][j], tc[1][j], tc[2][j], tc[3][j], eps);
    const Pair<T> f = pair_forward<T, V>(bp, bt, eps, theta);
    const Interior<T> g = pair_interior<T, V>(bp, bt, f, eps, theta, gS[j], gI[j]);
    gi[0][j] = g.iwr, gi[1][j] = g.ihr, gi[2][j] = g.pwr, gi[3][j] = g.phr, gi[4][j] = g.twr, gi[5][j] = g.thr;
    gi[6][j] = g.hx, gi[7][j] = g.hy, gi[8][j] = g.cw, gi[9][j] = g.ch;
  }
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const Box<T> bp = box_terms<T, Variant<IOU>>(pc[0][j], pc[1][j], pc[2][j], pc[3][j], eps);
    const Box<T> bt = box_terms<T, Variant<IOU>>(tc[0][j], tc[1][j], tc[2][j], tc[3][j], eps);
    const Interior<T> g{gi[0][j], gi[1][j], gi[2][j], gi[3][j], gi[4][j], gi[5][j], gi[6][j], gi[7][j], gi[8][j], gi[9][j]};
    T gp[4], gt_[4];
    pair_corners<T, K>(bp, bt, g, gp, gt_);
    for (int c = 0; c < 4; ++c) dpc[c][j] = gp[c];
    if constexpr (GT) {
      for (int c = 0; c < 4; ++c) dtc[c][j] = gt_[c];
    }
  }
  interleave4(dpc, dp, m);
  if constexpr (GT) interleave4(dtc, dt, m);
}

// ---------------------------------------------------------------- all-pairs matrices
// Pairwise similarity of boxes1 (n, 4) and boxes2 (m, 4): each box's own terms (Box) are computed
// once, into coordinate-major tables, so that a pair costs only the terms of the pair, and the
// loop over a block of columns reads whole vectors of them.
template <typename T>
struct BoxTable {
  T* f[11];  // x1, y1, x2, y2, w, h, l, r, t, b, ang; each of n entries
  DETLOSS_INLINE Box<T> get(int64_t j) const {
    Box<T> o;
    o.x1 = f[0][j], o.y1 = f[1][j], o.x2 = f[2][j], o.y2 = f[3][j], o.w = f[4][j], o.h = f[5][j];
    o.l = f[6][j], o.r = f[7][j], o.t = f[8][j], o.b = f[9][j], o.ang = f[10][j];
    o.wr = o.x2 - o.x1, o.hr = o.y2 - o.y1;  // not read by the forward
    return o;
  }
};
constexpr int kTableFields = 11;

// Box terms of boxes [lo, hi) of b (N, 4) into table rows [lo, hi).
template <typename T, typename V>
void fill_box_table(const T* __restrict b, const BoxTable<T>& table, int64_t lo, int64_t hi, const T eps) {
  for (int64_t j = lo; j < hi; ++j) {
    const Box<T> o = box_terms<T, V>(b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3], eps);
    const T v[kTableFields] = {o.x1, o.y1, o.x2, o.y2, o.w, o.h, o.l, o.r, o.t, o.b, o.ang};
    for (int c = 0; c < kTableFields; ++c) table.f[c][j] = v[c];
  }
}

// Similarities of rows [r0, r1) against columns [c0, c1): out row i holds the m similarities of
// box i (out + i * m), the columns in blocks that stay in cache while every row passes over them.
template <typename T, typename V>
void pairwise_block(const BoxTable<T>& rows, const BoxTable<T>& cols, T* __restrict out, int64_t m, int64_t r0,
                    int64_t r1, int64_t c0, int64_t c1, const IoUOptions& o) {
  const T eps = T(o.eps), theta = T(o.theta);
  for (int64_t i = r0; i < r1; ++i) {
    const Box<T> p = rows.get(i);
    T* __restrict row = out + i * m;
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) row[j] = pair_forward<T, V>(p, cols.get(j), eps, theta).S;
  }
}

// ---------------------------------------------------------------- binary classification family
// x: logit, y: target in [0, 1]; p = sigmoid(x), q = 1 - p = sigmoid(-x) (each computed
// without cancellation); ce = BCE-with-logits(x, y) = max(x, 0) - x y + log(1 + exp(-|x|)).
//   bce:       ce
//   focal:     ce m^gamma alpha_t,  m = 1 - p_t = y q + (1 - y) p,  alpha_t = alpha y + (1 - alpha)(1 - y)
//   quality:   ce |y q - (1 - y) p|^beta  (= |y - p|^beta; QFL, beta passed as gamma)
//   varifocal: ce (y > 0 ? y : alpha p^gamma)
// Exponents are 0 or >= 1 here (the dispatcher keeps (0, 1) on the reference path).
enum BinaryKind { BCE = 0, FOCAL = 1, QUALITY = 2, VARIFOCAL = 3 };

struct BinaryOptions {
  double alpha;
  bool has_alpha;
  double gamma;
};

// x^e from x^(e - 1) for e = 0 or e >= 1 (one pow_unit serves the value and its slope): x x^(e - 1),
// and exactly 1 for e = 0, blended by an invariant weight (a select on e stops the vectorizer).
template <typename T> DETLOSS_INLINE T pow_from_lower(T x, T e, T lower) {
  const T zero = e == T(0) ? T(1) : T(0);
  return zero + (T(1) - zero) * (x * lower);
}

// G2: gamma == 2 (the papers' default), powers by multiplication so that the loop vectorizes.
template <typename T, int K, bool G2, bool GRAD, typename M = FastMath>
DETLOSS_INLINE void binary_elem(T x, T y, const T alpha, const T gamma, const bool has_alpha, T& L, T g, T& dx, T& dy) {
  const T u = M::exp_neg(-std::abs(x));  // exp(-|x|)
  const T r = T(1) / (T(1) + u);
  const T p = x >= T(0) ? r : u * r;
  const T q = x >= T(0) ? u * r : r;
  const T ce = (x > T(0) ? x : T(0)) - x * y + M::log1p_unit(u);
  T w = T(1), dw_dp = T(0), dw_dy = T(0);
  if (K == FOCAL || K == QUALITY) {
    // m and its partials dm/dp, dm/dy
    T m, mp, my;
    if (K == FOCAL) {
      m = y * q + (T(1) - y) * p;
      mp = T(1) - T(2) * y;
      my = T(1) - T(2) * p;
    } else {
      const T d = y * q - (T(1) - y) * p;  // y - p
      m = std::abs(d);
      mp = -sgn(d);
      my = sgn(d);
    }
    const T lower = G2 ? m : pow_unit(m, mx(gamma - T(1), T(0)));  // m^(gamma - 1); 1 for gamma 0
    const T dw_dm = gamma * lower;
    w = G2 ? m * m : pow_from_lower(m, gamma, lower);
    dw_dp = dw_dm * mp;
    dw_dy = dw_dm * my;
    if (K == FOCAL && has_alpha) {
      const T at = alpha * y + (T(1) - alpha) * (T(1) - y);
      dw_dp = at * dw_dp;
      dw_dy = at * dw_dy + (T(2) * alpha - T(1)) * w;
      w = at * w;
    }
  } else if (K == VARIFOCAL) {
    const bool positive = y > T(0);
    const T lower = G2 ? p : pow_unit(p, mx(gamma - T(1), T(0)));  // p^(gamma - 1)
    const T dpg = gamma * lower;
    const T pg = G2 ? p * p : pow_from_lower(p, gamma, lower);
    w = positive ? y : alpha * pg;
    dw_dp = positive ? T(0) : alpha * dpg;
    dw_dy = positive ? T(1) : T(0);
  }
  L = ce * w;
  if (!GRAD) return;
  // dce/dx = p - y = (1 - y) p - y q (exact -q for y = 1, where p - 1 rounds to 0), dce/dy = -x,
  // dp/dx = p q
  dx = g * (((T(1) - y) * p - y * q) * w + ce * dw_dp * (p * q));
  dy = g * (-x * w + ce * dw_dy);
}

template <typename T, int K, bool G2>
void binary_forward_block(const T* __restrict x, const T* __restrict y, T* __restrict out, int64_t m, const BinaryOptions& o) {
  const T alpha = T(o.alpha), gamma = T(o.gamma);
  // has_alpha a compile-time constant in the loop: GCC does not vectorize a select on a
  // loop-invariant bool ("relevant stmt not supported"), and the focal loop ran scalar
  with_flag(o.has_alpha, [&](auto has_alpha) {
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      T L, dx, dy;
      binary_elem<T, K, G2, false>(x[i], y[i], alpha, gamma, decltype(has_alpha)::value, L, T(0), dx, dy);
      out[i] = L;
    }
  });
}

// g: the staged upstream gradient of these elements; gy is written only if GY.
template <typename T, int K, bool G2, bool GY>
void binary_backward_block(const T* __restrict x, const T* __restrict y, const T* __restrict g, T* __restrict gx,
                           T* __restrict gy, int64_t m, const BinaryOptions& o) {
  const T alpha = T(o.alpha), gamma = T(o.gamma);
  with_flag(o.has_alpha, [&](auto has_alpha) {  // a compile-time constant, as in the forward
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      T L, dx, dy;
      binary_elem<T, K, G2, true>(x[j], y[j], alpha, gamma, decltype(has_alpha)::value, L, g[j], dx, dy);
      gx[j] = dx;
      if (GY) gy[j] = dy;
    }
  });
}

}  // namespace detloss_kernels
