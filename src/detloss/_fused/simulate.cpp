// detloss fast path, the box-regression simulation of the DIoU paper (detloss.experiments.simulation):
// every step of its update for a chunk of cases in one call, detloss::regress_boxes, whose schema
// detloss._fused.ops defines. The numbers are those of the torch loop that the simulation runs
// otherwise (simulation.regress), to the last bit in float64:
//
// - gradient "exact": the gradient of the loss module on cxcywh boxes, as autograd composes it:
//   the corners (x - 0.5 w, y - 0.5 h, x + 0.5 w, y + 0.5 h), the native loss kernel's backward
//   of kernels.h on them (iou_backward_block, the function the loss operator runs, here with the
//   upstream gradient 1 of a summed loss), and the chain rule back to (x, y, w, h);
// - gradient "paper": simulation.paper_direction, operation for operation;
// - the step size of aligned_iou, the update and the error curve as the torch loop computes them.
//
// The torch loop rounds every operation on its own. This file's own arithmetic is compiled
// without floating-point contraction (a * b + c is two roundings, as in torch, not one FMA); the
// loss kernel's backward is compiled with the flags of kernels.cpp, so that it rounds as the loss
// operator does. Two values come from ATen itself, since their rounding is ATen's: the
// arctangents of the paper's CIoU (torch.atan: SLEEF's vector arctangent, libm's on a tail) and
// the curve, E(t) = sum of |B_t - B_gt| by at::sum (its summation order).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "kernels.h"

namespace {

using namespace detloss_kernels;

constexpr int64_t kSimGrain = 16;  // blocks of kBlock cases per thread task

// The native loss kernel's gradient of `sum(loss)` for pairs [0, m) of xyxy boxes p, t (N, 4):
// gS = -1 (dL/dS of loss = 1 - S), gI = 0. Not inlined into the callers below, which are
// compiled without contraction: this body is compiled as kernels.cpp compiles it.
template <typename T, typename V>
__attribute__((noinline)) void loss_gradient_block(const T* __restrict p, const T* __restrict t, const T* gS, const T* gI,
                                                   T* __restrict dp, int64_t m) {
  iou_backward_block<T, V, false>(p, t, gS, gI, dp, nullptr, m, IoUOptions{1e-7, 4.0});
}

// (N, 4) rows <-> coordinate-major blocks, by kernels.h's transposes (no arithmetic): the loops
// below then read and write whole vectors of one coordinate.
template <typename T>
__attribute__((noinline)) void stage_in(const T* __restrict in, T (&rows)[4][kBlock], int64_t m) {
  deinterleave4(in, rows, m);
}
template <typename T>
__attribute__((noinline)) void stage_out(const T (&rows)[4][kBlock], T* __restrict out, int64_t m) {
  interleave4(rows, out, m);
}

}  // namespace

// ---------------------------------------------------------------- the torch loop's own arithmetic
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

namespace {

template <typename T> inline T vmax(T a, T b) { return a > b ? a : b; }  // torch.maximum of finite values
template <typename T> inline T vmin(T a, T b) { return a < b ? a : b; }
template <typename T> inline T clamp0(T a) { return a < T(0) ? T(0) : a; }  // clamp(min=0)

enum Mode { EXACT = 0, PAPER = 1 };

// cxcywh -> xyxy as detloss.boxes.convert.to_xyxy: (x - 0.5 w, y - 0.5 h, x + 0.5 w, y + 0.5 h).
template <typename T>
void corners(const T* __restrict b, T* __restrict out, int64_t m) {
  const T half = T(0.5);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const T x = b[4 * j], y = b[4 * j + 1], w = b[4 * j + 2], h = b[4 * j + 3];
    out[4 * j] = x - half * w;
    out[4 * j + 1] = y - half * h;
    out[4 * j + 2] = x + half * w;
    out[4 * j + 3] = y + half * h;
  }
}

// aligned_iou(..., "iou", eps=1e-7) of xyxy corners, as box_similarity computes it.
template <typename T>
inline T corner_iou(const T* p, const T* t) {
  const T pw = clamp0(p[2] - p[0]), ph = clamp0(p[3] - p[1]);
  const T tw = clamp0(t[2] - t[0]), th = clamp0(t[3] - t[1]);
  const T iw = clamp0(vmin(p[2], t[2]) - vmax(p[0], t[0]));
  const T ih = clamp0(vmin(p[3], t[3]) - vmax(p[1], t[1]));
  const T inter = iw * ih;
  const T union_area = pw * ph + tw * th - inter;
  return inter / (union_area + T(1e-7));
}

// The direction of simulation.paper_direction for one case, operation for operation (items 1-3
// of its docstring: the IoU and GIoU parts, to (x, y, w, h)). Returns the IoU (item 6).
template <typename T, int K>
inline T paper_overlap(T x, T y, T w, T h, T gx, T gy, T gw, T gh, T (&d)[4]) {
  const T half = T(0.5), zero = T(0);
  const T top = y - half * h, bot = y + half * h, lef = x - half * w, rig = x + half * w;
  const T g_t = gy - half * gh, g_b = gy + half * gh, g_l = gx - half * gw, g_r = gx + half * gw;
  const T it = vmax(top, g_t), ib = vmin(bot, g_b), il = vmax(lef, g_l), ir = vmin(rig, g_r);
  const T ih = ib - it, iw = ir - il;
  const T inter = ih * iw;
  const T uni = (bot - top) * (rig - lef) + (g_b - g_t) * (g_r - g_l) - inter;
  const bool overlap = (it < ib) && (il < ir);
  const T iou = overlap ? inter / uni : zero;
  const T di_t = top > g_t ? -iw : zero, di_b = bot < g_b ? iw : zero;
  const T di_l = lef > g_l ? -ih : zero, di_r = rig < g_r ? ih : zero;
  const T du_t = -(rig - lef) - di_t, du_b = (rig - lef) - di_b;
  const T du_l = -(bot - top) - di_l, du_r = (bot - top) - di_r;
  const bool iou_ok = overlap && (uni > zero);
  const T u2 = uni * uni;
  auto iou_side = [&](T di, T du) { return iou_ok ? (uni * di - inter * du) / u2 : zero; };
  T s_t = iou_side(di_t, du_t), s_b = iou_side(di_b, du_b), s_l = iou_side(di_l, du_l), s_r = iou_side(di_r, du_r);
  s_t = top < bot ? s_t : s_b;
  s_l = lef < rig ? s_l : s_r;
  if constexpr (K == GIOU) {
    const T ct = vmin(top, g_t), cb = vmax(bot, g_b), cl = vmin(lef, g_l), cr = vmax(rig, g_r);
    const T cw = cr - cl, ch = cb - ct;
    const T area_c = ch * cw;
    const T dc_t = top < g_t ? -cw : zero, dc_b = bot > g_b ? cw : zero;
    const T dc_l = lef < g_l ? -ch : zero, dc_r = rig > g_r ? ch : zero;
    const T c2 = area_c * area_c;
    const bool use = !overlap || (area_c > zero);
    auto penalty = [&](T du, T dc) { return use ? (area_c * du - uni * dc) / c2 : zero; };
    s_t = (overlap ? s_t : zero) + penalty(du_t, dc_t);
    s_b = (overlap ? s_b : zero) + penalty(du_b, dc_b);
    s_l = (overlap ? s_l : zero) + penalty(du_l, dc_l);
    s_r = (overlap ? s_r : zero) + penalty(du_r, dc_r);
  }
  const T dx = s_l + s_r, dy = s_t + s_b, dw = s_r - s_l, dh = s_b - s_t;
  d[0] = dx, d[1] = dy, d[2] = dw, d[3] = dh;
  return iou;
}

// DIoU's and CIoU's terms of the paper's direction (items 4 and 5), added to d (the IoU part);
// ga, a: atan(gw / gh) and atan(w / h) (CIoU only). A second loop over the block, since GCC
// vectorizes the two halves apart, not the whole.
template <typename T, int K>
inline void paper_distance(T x, T y, T w, T h, T gx, T gy, T gw, T gh, T ga, T a, T iou, T (&d)[4]) {
  const T half = T(0.5), zero = T(0), one = T(1), two = T(2);
  const T top = y - half * h, bot = y + half * h, lef = x - half * w, rig = x + half * w;
  const T g_t = gy - half * gh, g_b = gy + half * gh, g_l = gx - half * gw, g_r = gx + half * gw;
  T dx = d[0], dy = d[1], dw = d[2], dh = d[3];
  const T ct = vmin(top, g_t), cb = vmax(bot, g_b), cl = vmin(lef, g_l), cr = vmax(rig, g_r);
  const T cw = cr - cl, ch = cb - ct;
  const T diag = cw * cw + ch * ch;
  const T above = top < g_t ? one : zero, below = bot > g_b ? one : zero;
  const T left = lef < g_l ? one : zero, right = rig > g_r ? one : zero;
  const T part_x = right - left, part_y = below - above;
  const T part_w = half * (right + left), part_h = half * (below + above);
  // left > 0 && right > 0, decided on the sides (GCC vectorizes this form, not the other)
  const T cw_w = (lef < g_l && rig > g_r) ? -one : part_w;
  const T ch_h = (top < g_t && bot > g_b) ? -one : part_h;
  const T ex = x - gx, ey = y - gy;
  const T dist = ex * ex + ey * ey;
  const T diag2 = diag * diag;
  dx = dx + (two * (gx - x) * diag - two * (cw + ch) * part_x * dist) / diag2;
  dy = dy + (two * (gy - y) * diag - two * (cw + ch) * part_y * dist) / diag2;
  dw = dw + two * (cw * cw_w + ch * part_w) * dist / diag2;
  dh = dh + two * (cw * part_h + ch * ch_h) * dist / diag2;
  if constexpr (K == CIOU) {
    const double pi2 = M_PI * M_PI;
    const T four = T(4.0 / pi2), eight = T(8.0 / pi2);
    const T delta = ga - a;
    const T v = four * delta * delta;
    const T alpha = v / (one - iou + v + T(1e-7));
    dw = dw + alpha * eight * delta * h;
    dh = dh - alpha * eight * delta * w;
  }
  d[0] = dx, d[1] = dy, d[2] = dw, d[3] = dh;
}

// The step of the update B <- B + rate (2 - IoU) D: rate times (2 - IoU), times D, plus B (torch's order).
template <typename T>
inline T step_size(T rate, T iou) {
  return rate * (T(2) - iou);
}

// One step of gradient "exact" for cases [lo, lo + m), m <= kBlock.
template <typename T, typename V>
void exact_block(T* __restrict b, const T* __restrict g, const T* __restrict gc, const T* gS, const T* gI, T rate,
                 T* __restrict err, int64_t m) {
  alignas(64) T pc[4 * kBlock], dp[4 * kBlock];
  corners(b, pc, m);
  loss_gradient_block<T, V>(pc, gc, gS, gI, dp, m);
  const T half = T(0.5);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const T* q = dp + 4 * j;
    // autograd through to_xyxy: x gets dx1 + dx2, w gets 0.5 dx2 - 0.5 dx1; the move is -grad
    const T d[4] = {-(q[0] + q[2]), -(q[1] + q[3]), -(half * q[2] - half * q[0]), -(half * q[3] - half * q[1])};
    const T c = step_size(rate, corner_iou(pc + 4 * j, gc + 4 * j));
    for (int k = 0; k < 4; ++k) {
      b[4 * j + k] = b[4 * j + k] + c * d[k];
      err[4 * j + k] = std::abs(b[4 * j + k] - g[4 * j + k]);
    }
  }
}

// One step of gradient "paper" for cases [lo, lo + m), m <= kBlock, staged coordinate-major.
template <typename T, int K>
void paper_block(T* __restrict b, const T* __restrict g, const T* __restrict ga, const T* __restrict a, T rate,
                 T* __restrict err, int64_t m) {
  alignas(64) T bc[4][kBlock], gc[4][kBlock], dc[4][kBlock], iou[kBlock];
  stage_in(b, bc, m);
  stage_in(g, gc, m);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    T d[4];
    iou[j] = paper_overlap<T, K>(bc[0][j], bc[1][j], bc[2][j], bc[3][j], gc[0][j], gc[1][j], gc[2][j], gc[3][j], d);
    for (int k = 0; k < 4; ++k) dc[k][j] = d[k];
  }
  if constexpr (K == DIOU || K == CIOU) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      T d[4] = {dc[0][j], dc[1][j], dc[2][j], dc[3][j]};
      T gaj = T(0), aj = T(0);
      if constexpr (K == CIOU) gaj = ga[j], aj = a[j];
      paper_distance<T, K>(bc[0][j], bc[1][j], bc[2][j], bc[3][j], gc[0][j], gc[1][j], gc[2][j], gc[3][j], gaj, aj, iou[j], d);
      for (int k = 0; k < 4; ++k) dc[k][j] = d[k];
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const T c = step_size(rate, iou[j]);
    for (int k = 0; k < 4; ++k) {
      bc[k][j] = bc[k][j] + c * dc[k][j];
      dc[k][j] = std::abs(bc[k][j] - gc[k][j]);
    }
  }
  stage_out(bc, b, m);
  stage_out(dc, err, m);
}

template <typename T>
void aspect_ratios(const T* __restrict b, T* __restrict out, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = b[4 * j + 2] / b[4 * j + 3];
}

int64_t sim_kind(c10::string_view loss, bool paper) {
  if (loss == "iou") return IOU;
  if (loss == "giou") return GIOU;
  if (loss == "diou") return DIOU;
  if (loss == "ciou") return CIOU;
  if (!paper && loss == "eiou") return EIOU;
  if (!paper && loss == "siou") return SIOU4;
  TORCH_CHECK(false, "detloss::regress_boxes: loss must be one of iou, giou, diou, ciou", paper ? "" : ", eiou, siou",
              " with gradient ", paper ? "paper" : "exact", ", got ", loss);
}

// Calls f(Variant<kind>{}) (the loss modules' defaults: CIoU without gate, exact aspect gradient).
template <typename F>
void with_sim_variant(int64_t kind, F&& f) {
  switch (kind) {
    case IOU: f(Variant<IOU>{}); break;
    case GIOU: f(Variant<GIOU>{}); break;
    case DIOU: f(Variant<DIOU>{}); break;
    case CIOU: f(Variant<CIOU>{}); break;
    case EIOU: f(Variant<EIOU>{}); break;
    case SIOU4: f(Variant<SIOU4>{}); break;
    default: TORCH_CHECK(false, "detloss::regress_boxes: unknown kind ", kind);
  }
}

// E = sum |B - B_gt| in float64, as the torch loop sums it.
double curve_value(const at::Tensor& err) { return at::sum(err, at::kDouble).item<double>(); }

// detloss::regress_boxes, CPU: the final boxes (N, 4) and the curve E(0..steps), float64.
std::tuple<at::Tensor, at::Tensor> regress_boxes(const at::Tensor& anchors_in, const at::Tensor& targets_in,
                                                 const at::Tensor& rates_in, c10::string_view loss,
                                                 c10::string_view gradient) {
  TORCH_CHECK(anchors_in.device().is_cpu() && targets_in.device().is_cpu(), "detloss::regress_boxes: CPU tensors only");
  TORCH_CHECK(anchors_in.dim() == 2 && anchors_in.size(1) == 4 && anchors_in.sizes() == targets_in.sizes(),
              "detloss::regress_boxes: anchors and targets of shape (N, 4)");
  TORCH_CHECK(anchors_in.scalar_type() == targets_in.scalar_type(), "detloss::regress_boxes: anchors and targets of one dtype");
  TORCH_CHECK(anchors_in.scalar_type() == at::kFloat || anchors_in.scalar_type() == at::kDouble,
              "detloss::regress_boxes: float32 or float64");
  TORCH_CHECK(rates_in.dim() == 1, "detloss::regress_boxes: rates of shape (steps,)");
  TORCH_CHECK(gradient == "exact" || gradient == "paper", "detloss::regress_boxes: gradient must be exact or paper, got ",
              gradient);
  const bool paper = gradient == "paper";
  const int64_t kind = sim_kind(loss, paper);
  const at::Tensor rates = rates_in.to(at::kDouble).contiguous();
  const int64_t steps = rates.size(0);
  at::Tensor boxes = anchors_in.contiguous().clone();
  const at::Tensor targets = targets_in.contiguous();
  const int64_t n = boxes.size(0);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::Tensor curve = at::empty({steps + 1}, boxes.options().dtype(at::kDouble));
  at::Tensor err = (boxes - targets).abs();  // (N, 4), the torch loop's layout
  double* cv = curve.data_ptr<double>();
  cv[0] = curve_value(err);
  const double* rate = rates.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "detloss_regress_boxes", [&] {
    using T = scalar_t;
    T* b = boxes.data_ptr<T>();
    const T* g = targets.data_ptr<T>();
    T* e = err.data_ptr<T>();
    if (!paper) {
      at::Tensor target_corners = at::empty_like(targets);
      T* gc = target_corners.data_ptr<T>();
      corners(g, gc, n);
      std::vector<T> ones(kBlock, T(-1)), zeros(kBlock, T(0));  // gS = -1, gI = 0
      with_sim_variant(kind, [&](auto v) {
        for (int64_t s = 0; s < steps; ++s) {
          const T r = T(rate[s]);
          at::parallel_for(0, blocks, kSimGrain, [&](int64_t lo, int64_t hi) {
            for (int64_t k = lo; k < hi; ++k) {
              const int64_t i = k * kBlock, m = n - i < kBlock ? n - i : kBlock;
              exact_block<T, decltype(v)>(b + 4 * i, g + 4 * i, gc + 4 * i, ones.data(), zeros.data(), r, e + 4 * i, m);
            }
          });
          cv[s + 1] = curve_value(err);
        }
      });
      return;
    }
    at::Tensor ratio, angle, target_angle;
    if (kind == CIOU) {  // torch.atan of w / h, each a contiguous (N,) tensor as in the torch loop
      ratio = at::empty({n}, boxes.options());
      aspect_ratios(g, ratio.data_ptr<T>(), n);
      target_angle = at::atan(ratio);
      angle = at::empty({n}, boxes.options());
    }
    auto run = [&](auto k) {
      constexpr int K = decltype(k)::value;
      for (int64_t s = 0; s < steps; ++s) {
        const T r = T(rate[s]);
        const T* ga = nullptr;
        const T* a = nullptr;
        if constexpr (K == CIOU) {
          aspect_ratios(static_cast<const T*>(b), ratio.data_ptr<T>(), n);
          at::atan_out(angle, ratio);
          ga = target_angle.data_ptr<T>();
          a = angle.data_ptr<T>();
        }
        at::parallel_for(0, blocks, kSimGrain, [&](int64_t lo, int64_t hi) {
          for (int64_t q = lo; q < hi; ++q) {
            const int64_t i = q * kBlock, m = n - i < kBlock ? n - i : kBlock;
            paper_block<T, K>(b + 4 * i, g + 4 * i, ga ? ga + i : nullptr, a ? a + i : nullptr, r, e + 4 * i, m);
          }
        });
        cv[s + 1] = curve_value(err);
      }
    };
    switch (kind) {
      case IOU: run(Int<IOU>{}); break;
      case GIOU: run(Int<GIOU>{}); break;
      case DIOU: run(Int<DIOU>{}); break;
      default: run(Int<CIOU>{}); break;
    }
  });
  return {boxes, curve};
}

}  // namespace

#pragma GCC pop_options

TORCH_LIBRARY_IMPL(detloss, CPU, m) { m.impl("regress_boxes", &regress_boxes); }
