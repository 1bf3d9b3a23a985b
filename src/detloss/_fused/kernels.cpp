// detloss fast path: loss and analytic gradient of the IoU family and of the binary
// classification family, one pass over the data each: OpenMP threads via at::parallel_for (which
// runs on one thread unless this file is built with -fopenmp) and SIMD via `#pragma omp simd`.
// The math is that of detloss.boxes.iou.box_similarity and detloss._fused.torch_impl, step for
// step, including the subgradients autograd takes at kinks: clamp(min=0) passes the gradient at
// 0, min/max split it in half on ties, |x| has gradient 0 at 0. Built without -ffast-math: a
// finite input never becomes a NaN here.
//
// The end of the file registers these loops as the CPU kernels of the detloss operators
// (torch.ops.detloss.*, whose schemas detloss._fused.ops defines) and gives them their autograd
// in C++, so that a call on CPU tensors runs no Python between the dispatcher and the loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <cmath>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kGrain = 2048;

// Inlining is forced: GCC vectorizes a loop only if the per-element function is inlined into
// it, and its own inlining heuristics drop the larger kinds (SIoU) in some instantiations.
#define DETLOSS_INLINE __attribute__((always_inline)) inline

// ---------------------------------------------------------------- float math that vectorizes
// libm calls stop GCC's vectorizer (without -ffast-math); these branch-free versions do not.
// float: Cephes-style range reduction + polynomials (about 1-2 ulp); double: libm.

DETLOSS_INLINE float atan_nonneg(float x) {  // x >= 0, may be +inf
  const bool big = x > 2.414213562373095f;  // tan(3 pi / 8)
  const bool mid = x > 0.4142135623730950f;  // tan(pi / 8)
  const float a = big ? -1.0f / x : (mid ? (x - 1.0f) / (x + 1.0f) : x);
  const float base = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.0f);
  const float z = a * a;
  return base + ((((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z - 3.33329491539e-1f) * z * a + a);
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

template <typename T> struct Math;
template <> struct Math<float> {
  static DETLOSS_INLINE float atan2_pos(float y, float x) { return atan_nonneg(y / x); }
  static DETLOSS_INLINE float exp_neg(float x) { return exp_nonpos(x); }
  static DETLOSS_INLINE float log1p_unit(float u) { return ::log1p_unit(u); }
};
template <> struct Math<double> {
  static double atan2_pos(double y, double x) { return std::atan2(y, x); }
  static double exp_neg(double x) { return std::exp(x); }
  static double log1p_unit(double u) { return std::log1p(u); }
};

template <typename T> DETLOSS_INLINE T pos(T v) { return v < T(0) ? T(0) : v; }            // clamp(min=0)
template <typename T> DETLOSS_INLINE T pass(T v) { return v >= T(0) ? T(1) : T(0); }       // its gradient
template <typename T> DETLOSS_INLINE T lt(T a, T b) { return a < b ? T(1) : (a == b ? T(0.5) : T(0)); }  // d min(a,b)/da
template <typename T> DETLOSS_INLINE T gt(T a, T b) { return a > b ? T(1) : (a == b ? T(0.5) : T(0)); }  // d max(a,b)/da
template <typename T> DETLOSS_INLINE T sgn(T v) { return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0)); }
template <typename T> DETLOSS_INLINE T powi(T b, T e) { return e == T(2) ? b * b : (e == T(1) ? b : std::pow(b, e)); }

enum IoUKind { IOU = 0, GIOU = 1, DIOU = 2, CIOU = 3, EIOU = 4, SIOU = 5, SIOU4 = 6 };  // SIOU4: theta = 4
constexpr double kFourOverPi2 = 0.40528473456935108578;  // 4 / pi^2

struct IoUOptions {
  double eps;
  bool gate;    // CIoU: alpha = 0 where IoU < 0.5
  bool paper;   // CIoU: gradient of v times (w^2 + h^2)
  double theta; // SIoU shape exponent
};

// One pair: similarity S and IoU; with GRAD, writes dL/dp (and dL/dt if GT) given gS = dL/dS,
// gI = dL/dIoU, coordinate c at dp[c * OS] (OS: the stride of a coordinate-major block).
template <typename T, int K, bool GRAD, bool GT, int64_t OS>
DETLOSS_INLINE void iou_pair(const T* __restrict p, const T* __restrict t, const T eps, const bool gate, const bool paper,
                     const T theta, T& S, T& I, T gS, T gI, T* __restrict dp, T* __restrict dt) {
  const T px1 = p[0], py1 = p[1], px2 = p[2], py2 = p[3];
  const T tx1 = t[0], ty1 = t[1], tx2 = t[2], ty2 = t[3];
  const T pwr = px2 - px1, phr = py2 - py1, twr = tx2 - tx1, thr = ty2 - ty1;
  const T pw = pos(pwr), ph = pos(phr), tw = pos(twr), th = pos(thr);
  const T iwr = (px2 < tx2 ? px2 : tx2) - (px1 > tx1 ? px1 : tx1);
  const T ihr = (py2 < ty2 ? py2 : ty2) - (py1 > ty1 ? py1 : ty1);
  const T iw = pos(iwr), ih = pos(ihr);
  const T inter = iw * ih;
  const T uni_area = pw * ph + tw * th - inter;
  const T uni = uni_area + eps;
  const T iou = inter / uni;
  I = iou;
  T s = iou;
  // enclosing box over each box's extent (an inverted side's corners sorted), as the reference
  const bool vpx = px2 >= px1, vpy = py2 >= py1, vtx = tx2 >= tx1, vty = ty2 >= ty1;
  const T pl = vpx ? px1 : px2, pr = vpx ? px2 : px1, pt = vpy ? py1 : py2, pb = vpy ? py2 : py1;
  const T tl = vtx ? tx1 : tx2, tr = vtx ? tx2 : tx1, tt = vty ? ty1 : ty2, tb = vty ? ty2 : ty1;
  T cw = 0, ch = 0, dx = 0, dy = 0, rho2 = 0;
  if (K != IOU) {
    cw = (pr > tr ? pr : tr) - (pl < tl ? pl : tl);
    ch = (pb > tb ? pb : tb) - (pt < tt ? pt : tt);
  }
  if (K == DIOU || K == CIOU || K == EIOU || K == SIOU || K == SIOU4) {
    dx = T(0.5) * ((tx1 + tx2) - (px1 + px2));
    dy = T(0.5) * ((ty1 + ty2) - (py1 + py2));
    rho2 = dx * dx + dy * dy;
  }
  // forward terms kept for the backward
  T E = 0, D = 0, Aw = 0, Ah = 0, aw = 0, ah = 0;
  T dA = 0, alpha = 0;
  T R = 0, angle = 0, gamma = 0, cwe = 0, che = 0, rx = 0, ry = 0, ex = 0, ey = 0, Mw = 0, Mh = 0, ow = 0, oh = 0,
    sw = 0, sh = 0;
  if (K == GIOU) {
    E = cw * ch + eps;
    s = iou - (E - uni) / E;
  } else if (K == DIOU || K == CIOU || K == EIOU) {
    D = cw * cw + ch * ch + eps;
    s = iou - rho2 / D;
    if (K == EIOU) {
      aw = pw - tw;
      ah = ph - th;
      Aw = cw * cw + eps;
      Ah = ch * ch + eps;
      s = s - aw * aw / Aw - ah * ah / Ah;
    } else if (K == CIOU) {
      dA = Math<T>::atan2_pos(tw + eps, th + eps) - Math<T>::atan2_pos(pw + eps, ph + eps);
      const T v = T(kFourOverPi2) * (dA * dA);
      alpha = v / (T(1) - iou + v + eps);
      // journal gate IoU >= 0.5, decided on the areas without eps (detloss.boxes.iou.ciou_gate)
      if (gate) alpha = ((T(2) * inter >= uni_area) & (inter > T(0))) ? alpha : T(0);
      s = s - alpha * v;
    }
  } else if (K == SIOU || K == SIOU4) {
    R = rho2 + eps;
    const T m = dx * dy;
    angle = T(2) * std::abs(m) / R;
    gamma = T(2) - angle;
    cwe = cw + eps;
    che = ch + eps;
    rx = dx / cwe;
    ry = dy / che;
    ex = Math<T>::exp_neg(-gamma * (rx * rx));
    ey = Math<T>::exp_neg(-gamma * (ry * ry));
    const T distance = (T(1) - ex) + (T(1) - ey);
    aw = pw - tw;
    ah = ph - th;
    Mw = (pw > tw ? pw : tw) + eps;
    Mh = (ph > th ? ph : th) + eps;
    ow = std::abs(aw) / Mw;
    oh = std::abs(ah) / Mh;
    sw = T(1) - Math<T>::exp_neg(-ow);
    sh = T(1) - Math<T>::exp_neg(-oh);
    const T th_ = theta;
    const T shape = K == SIOU4 ? (sw * sw) * (sw * sw) + (sh * sh) * (sh * sh) : powi(sw, th_) + powi(sh, th_);
    s = iou - T(0.5) * (distance + shape);
  }
  S = s;
  if (!GRAD) return;

  T g_uni = 0, g_inter = 0, g_pw = 0, g_ph = 0, g_tw = 0, g_th = 0, g_cw = 0, g_ch = 0, g_dx = 0, g_dy = 0;
  const T g_iou = gI + gS;  // every S is IoU minus a penalty (CIoU's alpha is a constant)
  if (K == GIOU) {
    g_uni += gS / E;
    const T gE = -gS * uni / (E * E);
    g_cw += gE * ch;
    g_ch += gE * cw;
  } else if (K == DIOU || K == CIOU || K == EIOU) {
    const T g_rho2 = -gS / D;
    const T gD = gS * rho2 / (D * D);
    g_cw += T(2) * gD * cw;
    g_ch += T(2) * gD * ch;
    g_dx += T(2) * g_rho2 * dx;
    g_dy += T(2) * g_rho2 * dy;
    if (K == EIOU) {
      const T gaw = -gS * T(2) * aw / Aw, gah = -gS * T(2) * ah / Ah;
      const T gAw = gS * aw * aw / (Aw * Aw), gAh = gS * ah * ah / (Ah * Ah);
      g_pw += gaw;
      g_tw -= gaw;
      g_ph += gah;
      g_th -= gah;
      g_cw += T(2) * gAw * cw;
      g_ch += T(2) * gAh * ch;
    } else if (K == CIOU) {
      T gv = -gS * alpha;
      if (paper) gv = gv * (pw * pw + ph * ph);
      const T gdA = gv * T(kFourOverPi2) * T(2) * dA;  // dv/d(dA), dA = angle(target) - angle(pred)
      const T yp = pw + eps, xp = ph + eps, rp = xp * xp + yp * yp;
      const T yt = tw + eps, xt = th + eps, rt = xt * xt + yt * yt;
      g_pw -= gdA * xp / rp;
      g_ph += gdA * yp / rp;
      g_tw += gdA * xt / rt;
      g_th -= gdA * yt / rt;
    }
  } else if (K == SIOU || K == SIOU4) {
    const T gd = T(-0.5) * gS;  // d/d distance and d/d shape
    const T qx = rx * rx, qy = ry * ry;
    const T g_gamma = gd * (ex * qx + ey * qy);
    const T g_rx = gd * ex * gamma * T(2) * rx, g_ry = gd * ey * gamma * T(2) * ry;
    g_dx += g_rx / cwe;
    g_cw -= g_rx * rx / cwe;
    g_dy += g_ry / che;
    g_ch -= g_ry * ry / che;
    const T g_angle = -g_gamma;
    const T g_m = g_angle * T(2) * sgn(dx * dy) / R;
    const T g_rho2 = -g_angle * angle / R;
    g_dx += g_m * dy + T(2) * g_rho2 * dx;
    g_dy += g_m * dx + T(2) * g_rho2 * dy;
    const T th_ = theta;
    const T pw3 = K == SIOU4 ? sw * sw * sw : powi(sw, th_ - T(1));
    const T ph3 = K == SIOU4 ? sh * sh * sh : powi(sh, th_ - T(1));
    const T g_ow = gd * th_ * pw3 * (T(1) - sw);
    const T g_oh = gd * th_ * ph3 * (T(1) - sh);
    const T g_aw = g_ow * sgn(aw) / Mw, g_ah = g_oh * sgn(ah) / Mh;
    const T g_Mw = -g_ow * ow / Mw, g_Mh = -g_oh * oh / Mh;
    const T kw = gt(pw, tw), kh = gt(ph, th);
    g_pw += g_aw + g_Mw * kw;
    g_tw += -g_aw + g_Mw * (T(1) - kw);
    g_ph += g_ah + g_Mh * kh;
    g_th += -g_ah + g_Mh * (T(1) - kh);
  }
  // iou = inter / uni;  uni = pw ph + tw th - inter + eps;  inter = iw ih
  g_inter += g_iou / uni;
  g_uni -= g_iou * iou / uni;
  g_pw += g_uni * ph;
  g_ph += g_uni * pw;
  g_tw += g_uni * th;
  g_th += g_uni * tw;
  g_inter -= g_uni;
  const T g_iwr = g_inter * ih * pass(iwr), g_ihr = g_inter * iw * pass(ihr);
  const T g_pwr = g_pw * pass(pwr), g_phr = g_ph * pass(phr), g_twr = g_tw * pass(twr), g_thr = g_th * pass(thr);
  // corners: iwr = min(x2) - max(x1); dx = (t1 + t2 - p1 - p2) / 2; pwr = x2 - x1
  const T a2 = lt(px2, tx2), a1 = gt(px1, tx1), b2 = lt(py2, ty2), b1 = gt(py1, ty1);
  const T hx = T(0.5) * g_dx, hy = T(0.5) * g_dy;
  T p0 = -g_iwr * a1 - hx - g_pwr, p1 = -g_ihr * b1 - hy - g_phr;
  T p2 = g_iwr * a2 - hx + g_pwr, p3 = g_ihr * b2 - hy + g_phr;
  T t0 = -g_iwr * (T(1) - a1) + hx - g_twr, t1 = -g_ihr * (T(1) - b1) + hy - g_thr;
  T t2 = g_iwr * (T(1) - a2) + hx + g_twr, t3 = g_ihr * (T(1) - b2) + hy + g_thr;
  if (K != IOU) {  // cw = max(pr, tr) - min(pl, tl), each end routed back to the corner it came from
    const T cr = gt(pr, tr), cl = lt(pl, tl), cb = gt(pb, tb), ct = lt(pt, tt);
    const T g_pr = g_cw * cr, g_tr = g_cw * (T(1) - cr), g_pl = -g_cw * cl, g_tl = -g_cw * (T(1) - cl);
    const T g_pb = g_ch * cb, g_tb = g_ch * (T(1) - cb), g_pt = -g_ch * ct, g_tt = -g_ch * (T(1) - ct);
    p0 += vpx ? g_pl : g_pr;
    p2 += vpx ? g_pr : g_pl;
    p1 += vpy ? g_pt : g_pb;
    p3 += vpy ? g_pb : g_pt;
    t0 += vtx ? g_tl : g_tr;
    t2 += vtx ? g_tr : g_tl;
    t1 += vty ? g_tt : g_tb;
    t3 += vty ? g_tb : g_tt;
  }
  dp[0 * OS] = p0;
  dp[1 * OS] = p1;
  dp[2 * OS] = p2;
  dp[3 * OS] = p3;
  if (GT) {
    dt[0 * OS] = t0;
    dt[1 * OS] = t1;
    dt[2 * OS] = t2;
    dt[3 * OS] = t3;
  }
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
// layout. The pair loop stores whole vectors into rows; GCC's own interleaving of four
// strided streams is element by element (a quarter of the backward's time), so float on
// AVX-512 transposes 16 pairs at a time here.
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
  for (; j < m; ++j) {
    for (int c = 0; c < 4; ++c) out[4 * j + c] = rows[c][j];
  }
}

template <typename T, int K>
void iou_forward_loop(const T* p, const T* t, T* loss, T* iou, int64_t n, const IoUOptions& o) {
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    // local copies: provably not written by the stores of the loop
    const T eps = T(o.eps), theta = T(o.theta);
    const bool gate = o.gate, paper = o.paper;
    const T* pb = p + 4 * lo;
    const T* tb = t + 4 * lo;
    T* lb = loss + lo;
    T* ib = iou + lo;
    const int64_t m = hi - lo;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      T S, I;
      iou_pair<T, K, false, false, 1>(pb + 4 * i, tb + 4 * i, eps, gate, paper, theta, S, I, T(0), T(0), nullptr, nullptr);
      lb[i] = T(1) - S;
      ib[i] = I;
    }
  });
}

// gl, gi: upstream gradients of loss and IoU with element strides sl, si (0: broadcast scalar,
// nullptr: no gradient). dt is written only if GT (the target needs a gradient).
template <typename T, int K, bool GT>
void iou_backward_loop(const T* p, const T* t, const T* gl, int64_t sl, const T* gi, int64_t si, T* dp, T* dt,
                       int64_t n, const IoUOptions& o) {
  constexpr int64_t B = 256;
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    Staged<T, B> gS(gl, sl, T(-1)), gI(gi, si, T(1));  // dL/dS = -dL/dloss
    alignas(64) T dpc[4][B], dtc[GT ? 4 : 1][B];          // gradients, coordinate-major
    const T eps = T(o.eps), theta = T(o.theta);
    const bool gate = o.gate, paper = o.paper;
    for (int64_t b = lo; b < hi; b += B) {
      const int64_t m = hi - b < B ? hi - b : B;
      gS.load(b, m);
      gI.load(b, m);
      const T* pb = p + 4 * b;
      const T* tb = t + 4 * b;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        T S, I;
        iou_pair<T, K, true, GT, B>(pb + 4 * j, tb + 4 * j, eps, gate, paper, theta, S, I, gS.v[j], gI.v[j], &dpc[0][j],
                                   &dtc[0][j]);
      }
      interleave4(dpc, dp + 4 * b, m);
      if constexpr (GT) interleave4(dtc, dt + 4 * b, m);
    }
  });
}

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

// Calls f(Int<kind>{}) so that each kind gets its own loop, with its terms known at compile time.
template <typename F>
void with_iou_kind(int64_t kind, F&& f) {
  switch (kind) {
    case IOU: f(Int<IOU>{}); break;
    case GIOU: f(Int<GIOU>{}); break;
    case DIOU: f(Int<DIOU>{}); break;
    case CIOU: f(Int<CIOU>{}); break;
    case EIOU: f(Int<EIOU>{}); break;
    case SIOU: f(Int<SIOU>{}); break;
    case SIOU4: f(Int<SIOU4>{}); break;
    default: TORCH_CHECK(false, "detloss: unknown IoU kind ", kind);
  }
}

int64_t iou_kind_id(c10::string_view kind) {
  if (kind == "iou") return IOU;
  if (kind == "giou") return GIOU;
  if (kind == "diou") return DIOU;
  if (kind == "ciou") return CIOU;
  if (kind == "eiou") return EIOU;
  if (kind == "siou") return SIOU;
  TORCH_CHECK(false, "detloss::iou_loss: kind must be one of iou, giou, diou, ciou, eiou, siou, got ", kind);
}

void check_pair(const at::Tensor& p, const at::Tensor& t) {
  TORCH_CHECK(p.device().is_cpu() && t.device().is_cpu(), "detloss::iou_loss (native kernel): CPU tensors only");
  TORCH_CHECK(p.dim() == 2 && p.size(1) == 4 && p.sizes() == t.sizes(), "detloss::iou_loss: pred and target of shape (N, 4)");
  TORCH_CHECK(p.scalar_type() == t.scalar_type(), "detloss::iou_loss: pred and target of one dtype");
  TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble, "detloss::iou_loss: float32 or float64");
}

// detloss::iou_loss, CPU: (1 - similarity, iou) of aligned (N, 4) xyxy pairs (paper_grad: backward only).
std::tuple<at::Tensor, at::Tensor> iou_loss(const at::Tensor& pred_in, const at::Tensor& target_in, c10::string_view kind_name,
                                            double eps, bool alpha_gate, bool paper_grad, double siou_theta) {
  check_pair(pred_in, target_in);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  int64_t kind = iou_kind_id(kind_name);
  if (kind == SIOU && siou_theta == 4.0) kind = SIOU4;
  const int64_t n = pred.size(0);
  at::Tensor loss = at::empty({n}, pred.options());
  at::Tensor iou = at::empty({n}, pred.options());
  const IoUOptions o{eps, alpha_gate, paper_grad, siou_theta};
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_iou_loss", [&] {
    with_iou_kind(kind, [&](auto k) {
      iou_forward_loop<scalar_t, decltype(k)::value>(pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(),
                                                     loss.data_ptr<scalar_t>(), iou.data_ptr<scalar_t>(), n, o);
    });
  });
  return {loss, iou};
}

// An upstream gradient as the loops read it: a 1-dim (n,) view in the input's dtype, any stride
// (stride 0: an expanded scalar, read without being materialised); undefined or absent: nullptr.
at::Tensor as_grad(const std::optional<at::Tensor>& g, const at::Tensor& like, int64_t n, const char* op) {
  if (!g.has_value() || !g->defined()) return at::Tensor();
  at::Tensor v = g->dim() == 1 ? *g : g->reshape({-1});
  TORCH_CHECK(v.size(0) == n, op, ": a gradient of ", n, " elements, got ", g->sizes());
  return v.scalar_type() == like.scalar_type() ? v : v.to(like.scalar_type());
}

const void* grad_ptr(const at::Tensor& g, int64_t& stride) {
  stride = g.defined() ? g.stride(0) : 0;
  return g.defined() ? g.data_ptr() : nullptr;
}

// detloss::iou_loss_backward, CPU: gradients of sum(grad_loss * loss + grad_iou * iou) w.r.t. pred
// and (if target_grad, else an empty tensor) target.
std::tuple<at::Tensor, at::Tensor> iou_loss_backward(const at::Tensor& pred_in, const at::Tensor& target_in,
                                                     const std::optional<at::Tensor>& grad_loss_in,
                                                     const std::optional<at::Tensor>& grad_iou_in, c10::string_view kind_name,
                                                     double eps, bool alpha_gate, bool paper_grad, double siou_theta,
                                                     bool target_grad) {
  check_pair(pred_in, target_in);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  int64_t kind = iou_kind_id(kind_name);
  if (kind == SIOU && siou_theta == 4.0) kind = SIOU4;
  const int64_t n = pred.size(0);
  const at::Tensor grad_loss = as_grad(grad_loss_in, pred, n, "detloss::iou_loss_backward");
  const at::Tensor grad_iou = as_grad(grad_iou_in, pred, n, "detloss::iou_loss_backward");
  at::Tensor dp = at::empty_like(pred);
  at::Tensor dt = target_grad ? at::empty_like(target) : at::empty({0}, pred.options());
  int64_t sl = 0, si = 0;
  const void* gl = grad_ptr(grad_loss, sl);
  const void* gi = grad_ptr(grad_iou, si);
  const IoUOptions o{eps, alpha_gate, paper_grad, siou_theta};
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_iou_loss_backward", [&] {
    with_iou_kind(kind, [&](auto k) {
      with_flag(target_grad, [&](auto gt) {
        iou_backward_loop<scalar_t, decltype(k)::value, decltype(gt)::value>(
            pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), static_cast<const scalar_t*>(gl), sl,
            static_cast<const scalar_t*>(gi), si, dp.data_ptr<scalar_t>(),
            target_grad ? dt.data_ptr<scalar_t>() : nullptr, n, o);
      });
    });
  });
  return {dp, dt};
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

// G2: gamma == 2 (the papers' default), powers by multiplication so that the loop vectorizes.
template <typename T, int K, bool G2, bool GRAD>
DETLOSS_INLINE void binary_elem(T x, T y, const T alpha, const T gamma, const bool has_alpha, T& L, T g, T& dx, T& dy) {
  const T u = Math<T>::exp_neg(-std::abs(x));  // exp(-|x|)
  const T r = T(1) / (T(1) + u);
  const T p = x >= T(0) ? r : u * r;
  const T q = x >= T(0) ? u * r : r;
  const T ce = (x > T(0) ? x : T(0)) - x * y + Math<T>::log1p_unit(u);
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
    const T dw_dm = G2 ? T(2) * m : (gamma == T(0) ? T(0) : gamma * powi(m, gamma - T(1)));
    w = G2 ? m * m : (gamma == T(0) ? T(1) : powi(m, gamma));
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
    const T pg = G2 ? p * p : (gamma == T(0) ? T(1) : powi(p, gamma));
    const T dpg = G2 ? T(2) * p : (gamma == T(0) ? T(0) : gamma * powi(p, gamma - T(1)));
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
void binary_forward_loop(const T* x, const T* y, T* out, int64_t n, const BinaryOptions& o) {
  at::parallel_for(0, n, kGrain * 4, [&](int64_t lo, int64_t hi) {
    const T alpha = T(o.alpha), gamma = T(o.gamma);
    const bool has_alpha = o.has_alpha;
    const T* xb = x + lo;
    const T* yb = y + lo;
    T* ob = out + lo;
    const int64_t m = hi - lo;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      T L, dx, dy;
      binary_elem<T, K, G2, false>(xb[i], yb[i], alpha, gamma, has_alpha, L, T(0), dx, dy);
      ob[i] = L;
    }
  });
}

// gy is written only if GY (the target needs a gradient).
template <typename T, int K, bool G2, bool GY>
void binary_backward_loop(const T* x, const T* y, const T* g, int64_t sg, T* gx, T* gy, int64_t n,
                          const BinaryOptions& o) {
  constexpr int64_t B = 512;
  at::parallel_for(0, n, kGrain * 4, [&](int64_t lo, int64_t hi) {
    Staged<T, B> gb(g, sg, T(1));
    const T alpha = T(o.alpha), gamma = T(o.gamma);
    const bool has_alpha = o.has_alpha;
    for (int64_t b = lo; b < hi; b += B) {
      const int64_t m = hi - b < B ? hi - b : B;
      gb.load(b, m);
      const T* xb = x + b;
      const T* yb = y + b;
      T* gxb = gx + b;
      T* gyb = GY ? gy + b : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        T L, dx, dy;
        binary_elem<T, K, G2, true>(xb[j], yb[j], alpha, gamma, has_alpha, L, gb.v[j], dx, dy);
        gxb[j] = dx;
        if (GY) gyb[j] = dy;
      }
    }
  });
}

template <int K, typename F>
void with_gamma(double gamma, F&& f) {
  with_flag(gamma == 2.0, [&](auto g2) { f(Int<K>{}, g2); });
}

// Calls f(Int<kind>{}, bool_constant<gamma == 2>{}).
template <typename F>
void with_binary_kind(int64_t kind, double gamma, F&& f) {
  switch (kind) {
    case BCE: f(Int<BCE>{}, std::false_type{}); break;
    case FOCAL: with_gamma<FOCAL>(gamma, f); break;
    case QUALITY: with_gamma<QUALITY>(gamma, f); break;
    case VARIFOCAL: with_gamma<VARIFOCAL>(gamma, f); break;
    default: TORCH_CHECK(false, "detloss: unknown binary kind ", kind);
  }
}

int64_t binary_kind_id(c10::string_view kind) {
  if (kind == "bce") return BCE;
  if (kind == "focal") return FOCAL;
  if (kind == "quality") return QUALITY;
  if (kind == "varifocal") return VARIFOCAL;
  TORCH_CHECK(false, "detloss::binary_loss: kind must be one of bce, focal, quality, varifocal, got ", kind);
}

void check_elems(const at::Tensor& x, const at::Tensor& y, double gamma) {
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "detloss::binary_loss (native kernel): CPU tensors only");
  TORCH_CHECK(x.sizes() == y.sizes(), "detloss::binary_loss: logits and target of one shape");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "detloss::binary_loss: logits and target of one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "detloss::binary_loss: float32 or float64");
  TORCH_CHECK(gamma == 0.0 || gamma >= 1.0, "detloss::binary_loss: gamma must be 0 or >= 1, got ", gamma);
}

// alpha absent: no alpha_t factor for focal; varifocal's default 0.75.
BinaryOptions binary_options(int64_t kind, const std::optional<double>& alpha, double gamma) {
  const double a = alpha.has_value() ? *alpha : (kind == VARIFOCAL ? 0.75 : 1.0);
  return BinaryOptions{a, alpha.has_value(), gamma};
}

// detloss::binary_loss, CPU: the elementwise loss of logits and targets of one shape.
at::Tensor binary_loss(const at::Tensor& x_in, const at::Tensor& y_in, c10::string_view kind_name,
                       std::optional<double> alpha, double gamma) {
  check_elems(x_in, y_in, gamma);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t kind = binary_kind_id(kind_name);
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.numel();
  const BinaryOptions o = binary_options(kind, alpha, gamma);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "detloss_binary_loss", [&] {
    with_binary_kind(kind, gamma, [&](auto k, auto g2) {
      binary_forward_loop<scalar_t, decltype(k)::value, decltype(g2)::value>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                                        out.data_ptr<scalar_t>(), n, o);
    });
  });
  return out;
}

// detloss::binary_loss_backward, CPU: gradients of sum(grad * loss) w.r.t. logits and (if
// target_grad, else an empty tensor) target.
std::tuple<at::Tensor, at::Tensor> binary_loss_backward(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& grad_in,
                                                        c10::string_view kind_name, std::optional<double> alpha, double gamma,
                                                        bool target_grad) {
  check_elems(x_in, y_in, gamma);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t kind = binary_kind_id(kind_name);
  const int64_t n = x.numel();
  const at::Tensor grad = as_grad(grad_in, x, n, "detloss::binary_loss_backward");
  at::Tensor gx = at::empty_like(x);
  at::Tensor gy = target_grad ? at::empty_like(y) : at::empty({0}, x.options());
  int64_t sg = 0;
  const void* g = grad_ptr(grad, sg);
  const BinaryOptions o = binary_options(kind, alpha, gamma);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "detloss_binary_loss_backward", [&] {
    with_binary_kind(kind, gamma, [&](auto k, auto g2) {
      with_flag(target_grad, [&](auto gy_needed) {
        binary_backward_loop<scalar_t, decltype(k)::value, decltype(g2)::value, decltype(gy_needed)::value>(
            x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), static_cast<const scalar_t*>(g), sg, gx.data_ptr<scalar_t>(),
            target_grad ? gy.data_ptr<scalar_t>() : nullptr, n, o);
      });
    });
  });
  return {gx, gy};
}

// ---------------------------------------------------------------- autograd, for every operator
// Every detloss operator `name(pred, target, options...) -> outputs` has a backward operator
// `name_backward(pred, target, one gradient per output (None if absent), options..., bool
// target_grad) -> (grad_pred, grad_target)`. This one boxed kernel is the CPU autograd of all of
// them: it saves the two inputs and the options, and calls the backward operator through the
// dispatcher. detloss._fused.ops states the same rule in Python for the other devices.
class PairFunction : public torch::autograd::Function<PairFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& pred,
                                                const at::Tensor& target, std::vector<c10::IValue> options,
                                                const c10::OperatorHandle* op) {
    ctx->set_materialize_grads(false);
    torch::jit::Stack stack;
    stack.reserve(2 + options.size());
    stack.emplace_back(pred);
    stack.emplace_back(target);
    c10::impl::GenericList saved(c10::AnyType::get());
    for (const c10::IValue& v : options) {
      stack.push_back(v);
      saved.push_back(v);
    }
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      op->callBoxed(&stack);
    }
    ctx->save_for_backward({pred, target});
    ctx->saved_data["options"] = std::move(saved);
    ctx->saved_data["backward"] = op->schema().name() + "_backward";
    torch::autograd::variable_list outputs;
    outputs.reserve(stack.size());
    for (c10::IValue& v : stack) outputs.push_back(std::move(v).toTensor());
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list result(4);  // pred, target, options, op
    const bool need_pred = ctx->needs_input_grad(0), need_target = ctx->needs_input_grad(1);
    bool any = false;
    for (const at::Tensor& g : grads) any = any || g.defined();
    if (!any || !(need_pred || need_target)) return result;
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const c10::OperatorHandle backward_op =
        c10::Dispatcher::singleton().findSchemaOrThrow(ctx->saved_data["backward"].toStringRef().c_str(), "");
    torch::jit::Stack stack;
    stack.emplace_back(saved[0]);
    stack.emplace_back(saved[1]);
    for (const at::Tensor& g : grads) stack.emplace_back(g.defined() ? c10::IValue(g) : c10::IValue());
    const c10::List<c10::IValue> options = ctx->saved_data["options"].toList();
    for (size_t i = 0; i < options.size(); ++i) stack.push_back(options.get(i));
    stack.emplace_back(need_target);
    backward_op.callBoxed(&stack);
    if (need_pred) result[0] = stack[0].toTensor();
    if (need_target) result[1] = stack[1].toTensor();
    return result;
  }
};

void pair_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t n_args = op.schema().arguments().size();
  std::vector<c10::IValue> args = torch::jit::pop(*stack, n_args);
  const at::Tensor pred = args[0].toTensor(), target = args[1].toTensor();
  std::vector<c10::IValue> options(std::make_move_iterator(args.begin() + 2), std::make_move_iterator(args.end()));
  torch::autograd::variable_list outputs = PairFunction::apply(pred, target, std::move(options), &op);
  for (at::Tensor& t : outputs) stack->emplace_back(std::move(t));
}

}  // namespace

// The schemas are defined in Python (detloss._fused.ops) before this library is loaded; adding an
// operator here is one m.impl line for each of its two operators in each block.
TORCH_LIBRARY_IMPL(detloss, CPU, m) {
  m.impl("iou_loss", &iou_loss);
  m.impl("iou_loss_backward", &iou_loss_backward);
  m.impl("binary_loss", &binary_loss);
  m.impl("binary_loss_backward", &binary_loss_backward);
}

// The backward operators are differentiable once: a double backward through them raises
// "derivative for detloss::..._backward is not implemented" (the reference backend has them).
TORCH_LIBRARY_IMPL(detloss, AutogradCPU, m) {
  m.impl("iou_loss", torch::CppFunction::makeFromBoxedFunction<&pair_autograd>());
  m.impl("iou_loss_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("binary_loss", torch::CppFunction::makeFromBoxedFunction<&pair_autograd>());
  m.impl("binary_loss_backward", torch::autograd::autogradNotImplementedFallback());
}
