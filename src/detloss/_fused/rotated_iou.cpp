// detloss fast path, rotated boxes: the exact IoU and GIoU of two rectangles (cxcywha, angles in
// radians), aligned pairs forward and backward, and every pair of two sets (no gradient).
//
// The method is that of detloss.boxes.rotated (rotated_box_similarity), step for step and with
// its tie rules, computed in double for float32 and float64 alike (float32 inputs are exact in
// double, so a float32 needle keeps its width next to its length, two tiny boxes far apart their
// widths, without the reference's exact cross-product tables):
//
// - both boxes about the midpoint of their centres (box A at d, box B at -d);
// - each of the 8 edges clipped against the 4 lines of the other box: the 16 points where an
//   edge of A meets a line of B are computed once and shared by both segments that end there;
//   an edge parallel to a line (|sin| <= 2^-40) is wholly inside or outside it, decided from
//   one signed gap for both boxes: coincident edges with the same normal count for A (the
//   prediction) and not for B, with opposite normals for both (they cancel);
// - the area by Green's theorem over the segments, cross products about a point of the
//   polygon; the value min(max(area, 0), min(|A|, |B|));
// - its gradient: the shape derivative, sum over segments on the line n . x = o of
//   L (do - dn . M) (L the segment's length, M its midpoint), bounded and finite everywhere;
// - GIoU's enclosing shape: the convex hull of the 8 corners (monotone chain, corners within
//   rounding of a hull edge's line are not vertices), its area by the shoelace formula and its
//   gradient through the hull's corners, corners -> (cx, cy, w, h, a).
//
// Registered as the CPU kernels of detloss::rotated_box_iou, its backward and
// detloss::pairwise_rotated_iou, whose schemas, fake kernels and autograd detloss._fused.ops
// defines.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

// No fused multiply-adds: the tie rules compare values that must be computed the same way for
// both boxes (a contraction in one place and not the other would break an exact tie).
#pragma GCC optimize("fp-contract=off")

namespace {

constexpr int64_t kPairGrain = 256;     // aligned pairs per thread task
constexpr int64_t kColumns = 1024;      // pairwise: columns per block (their box terms stay in L1)
constexpr int64_t kPairwiseGrain = 4096;  // pairwise: pairs per thread task
constexpr double kParallel = 9.094947017729282e-13;  // 2^-40
constexpr double kUnit = std::numeric_limits<double>::epsilon();

struct Box {
  double cx, cy, w, h, c, s;  // centre, sides (negative ones count as 0), cos and sin of the angle
  bool w_pos, h_pos;          // the side passes its gradient (w >= 0), as clamp(min=0)
};

template <typename scalar_t>
inline Box load_box(const scalar_t* b) {
  Box r;
  r.cx = static_cast<double>(b[0]);
  r.cy = static_cast<double>(b[1]);
  const double w = static_cast<double>(b[2]), h = static_cast<double>(b[3]), a = static_cast<double>(b[4]);
  r.w_pos = w >= 0;
  r.h_pos = h >= 0;
  r.w = r.w_pos ? w : 0.0;
  r.h = r.h_pos ? h : 0.0;
  r.c = std::cos(a);
  r.s = std::sin(a);
  return r;
}

// The four edges of a box counter-clockwise: edge k runs from corner k to corner k + 1 on the
// line n_k . x = o_k (outward unit normal n), midpoint m, direction of travel t = rot90(n).
struct Lines {
  double nx[4], ny[4], o[4], mx[4], my[4], tx[4], ty[4], half[4], px[4], py[4];
  double cx, cy;  // the centre (relative to the midpoint of the two centres)
};

inline void make_lines(double cx, double cy, const Box& b, Lines& l) {
  const double ux = b.c, uy = b.s, vx = -b.s, vy = b.c;
  const double hw = 0.5 * b.w, hh = 0.5 * b.h;
  const double nx[4] = {vx, -ux, -vx, ux}, ny[4] = {vy, -uy, -vy, uy};
  const double reach[4] = {hh, hw, hh, hw}, half[4] = {hw, hh, hw, hh};
  l.cx = cx;
  l.cy = cy;
  for (int k = 0; k < 4; ++k) {
    l.nx[k] = nx[k];
    l.ny[k] = ny[k];
    l.o[k] = (nx[k] * cx + ny[k] * cy) + reach[k];
    l.mx[k] = cx + reach[k] * nx[k];
    l.my[k] = cy + reach[k] * ny[k];
    l.tx[k] = -ny[k];
    l.ty[k] = nx[k];
    l.half[k] = half[k];
    l.px[k] = l.mx[k] - half[k] * l.tx[k];
    l.py[k] = l.my[k] - half[k] * l.ty[k];
  }
}

// The intersection polygon's area and its boundary segments on each box's lines.
struct Boundary {
  double area;
  double len_a[4], mx_a[4], my_a[4];  // segment on each line of A: length (0: none), midpoint
  double len_b[4], mx_b[4], my_b[4];
};

inline void intersection(const Lines& a, const Lines& b, Boundary& out) {
  double det[4][4], gap[4][4], ta[4][4], qx[4][4], qy[4][4], tb[4][4];
  bool par[4][4], same[4][4];
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      det[i][j] = a.nx[i] * b.ny[j] - a.ny[i] * b.nx[j];
      gap[i][j] = (b.nx[j] * a.mx[i] + b.ny[j] * a.my[i]) - b.o[j];
      same[i][j] = (a.nx[i] * b.nx[j] + a.ny[i] * b.ny[j]) > 0;
      par[i][j] = std::abs(det[i][j]) <= kParallel;
      const double safe = par[i][j] ? 1.0 : det[i][j];
      ta[i][j] = par[i][j] ? 0.0 : -gap[i][j] / safe;
      qx[i][j] = a.mx[i] + ta[i][j] * a.tx[i];
      qy[i][j] = a.my[i] + ta[i][j] * a.ty[i];
      tb[i][j] = b.tx[j] * (qx[i][j] - b.mx[j]) + b.ty[j] * (qy[i][j] - b.my[j]);
    }
  }
  // A's edges (i, the lanes) against B's lines j: entered where det < 0, left where det > 0;
  // B's edges (j, the lanes) against A's lines i: entered where det > 0, left where det < 0,
  // parallel ties to A. Fixed-size loops over the lanes with selects only (they vectorize).
  double s_a[4], e_a[4], sxa[4], sya[4], exa[4], eya[4];
  bool in_a[4];
  for (int i = 0; i < 4; ++i) {
    s_a[i] = -a.half[i];
    e_a[i] = a.half[i];
    sxa[i] = a.px[i], sya[i] = a.py[i], exa[i] = a.px[(i + 1) & 3], eya[i] = a.py[(i + 1) & 3];
    in_a[i] = true;
  }
  for (int j = 0; j < 4; ++j) {
    for (int i = 0; i < 4; ++i) {
      const bool cross = !par[i][j];
      in_a[i] = in_a[i] & (cross | (gap[i][j] <= 0));
      const double t = ta[i][j];
      const bool enter = cross & (det[i][j] < 0) & (t > s_a[i]);
      s_a[i] = enter ? t : s_a[i];
      sxa[i] = enter ? qx[i][j] : sxa[i];
      sya[i] = enter ? qy[i][j] : sya[i];
      const bool leave = cross & (det[i][j] > 0) & (t < e_a[i]);
      e_a[i] = leave ? t : e_a[i];
      exa[i] = leave ? qx[i][j] : exa[i];
      eya[i] = leave ? qy[i][j] : eya[i];
    }
  }
  double s_b[4], e_b[4], sxb[4], syb[4], exb[4], eyb[4];
  bool in_b[4];
  for (int j = 0; j < 4; ++j) {
    s_b[j] = -b.half[j];
    e_b[j] = b.half[j];
    sxb[j] = b.px[j], syb[j] = b.py[j], exb[j] = b.px[(j + 1) & 3], eyb[j] = b.py[(j + 1) & 3];
    in_b[j] = true;
  }
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      const bool cross = !par[i][j];
      in_b[j] = in_b[j] & (cross | (same[i][j] & (gap[i][j] > 0)) | (!same[i][j] & (gap[i][j] <= 0)));
      const double t = tb[i][j];
      const bool enter = cross & (det[i][j] > 0) & (t > s_b[j]);
      s_b[j] = enter ? t : s_b[j];
      sxb[j] = enter ? qx[i][j] : sxb[j];
      syb[j] = enter ? qy[i][j] : syb[j];
      const bool leave = cross & (det[i][j] < 0) & (t < e_b[j]);
      e_b[j] = leave ? t : e_b[j];
      exb[j] = leave ? qx[i][j] : exb[j];
      eyb[j] = leave ? qy[i][j] : eyb[j];
    }
  }
  double sx[8], sy[8], ex[8], ey[8];
  bool valid[8];
  for (int k = 0; k < 4; ++k) {
    const bool ok_a = in_a[k] & (s_a[k] < e_a[k]), ok_b = in_b[k] & (s_b[k] < e_b[k]);
    valid[k] = ok_a, valid[4 + k] = ok_b;
    sx[k] = sxa[k], sy[k] = sya[k], ex[k] = exa[k], ey[k] = eya[k];
    sx[4 + k] = sxb[k], sy[4 + k] = syb[k], ex[4 + k] = exb[k], ey[4 + k] = eyb[k];
    out.len_a[k] = ok_a ? e_a[k] - s_a[k] : 0.0;
    out.len_b[k] = ok_b ? e_b[k] - s_b[k] : 0.0;
    const double mid_a = 0.5 * (s_a[k] + e_a[k]), mid_b = 0.5 * (s_b[k] + e_b[k]);
    out.mx_a[k] = a.mx[k] + mid_a * a.tx[k];
    out.my_a[k] = a.my[k] + mid_a * a.ty[k];
    out.mx_b[k] = b.mx[k] + mid_b * b.tx[k];
    out.my_b[k] = b.my[k] + mid_b * b.ty[k];
  }
  // the shoelace sum about the mean of the segments' ends (a point of the polygon)
  double ax = 0, ay = 0, count = 0;
  for (int k = 0; k < 8; ++k) {
    ax += valid[k] ? sx[k] + ex[k] : 0.0;
    ay += valid[k] ? sy[k] + ey[k] : 0.0;
    count += valid[k] ? 1.0 : 0.0;
  }
  const double scale = 1.0 / (2 * std::max(count, 1.0));
  ax *= scale;
  ay *= scale;
  double area = 0;
  for (int k = 0; k < 8; ++k) {
    const double part = (sx[k] - ax) * (ey[k] - ay) - (sy[k] - ay) * (ex[k] - ax);
    area += valid[k] ? part : 0.0;
  }
  out.area = 0.5 * area;
}

// The convex hull of the 8 corners (A's 0-3, B's 4-7), counter-clockwise: vertex indices.
struct Hull {
  int index[16];
  int count;
  double area;
};

inline void hull(const Lines& a, const Lines& b, Hull& out) {
  double x[8], y[8];
  for (int k = 0; k < 4; ++k) {
    x[k] = a.px[k], y[k] = a.py[k];
    x[4 + k] = b.px[k], y[4 + k] = b.py[k];
  }
  // what rounding does to a corner: a few units of the largest coordinate
  double extent = 0;
  for (int k = 0; k < 8; ++k) extent = std::max(extent, std::abs(x[k]) + std::abs(y[k]));
  const double slack = 8 * kUnit * extent;
  // sorted by (x, y, index) with the 19 compare-exchanges of an optimal 8-input network
  int order[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  static constexpr int kNetwork[19][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}, {0, 4}, {1, 5}, {2, 6},
                                          {3, 7}, {0, 1}, {2, 3}, {4, 5}, {6, 7}, {2, 4}, {3, 5},
                                          {1, 4}, {3, 6}, {1, 2}, {3, 4}, {5, 6}};
  for (const auto& pair : kNetwork) {
    const int i = order[pair[0]], j = order[pair[1]];
    const bool swap = (x[i] > x[j]) | ((x[i] == x[j]) & ((y[i] > y[j]) | ((y[i] == y[j]) & (i > j))));
    order[pair[0]] = swap ? j : i;
    order[pair[1]] = swap ? i : j;
  }
  // a turn o -> p -> q that is not clearly to the left (within its rounding) drops p
  auto drops = [&](int o, int p, int q) {
    const double ux = x[p] - x[o], uy = y[p] - y[o], vx = x[q] - x[o], vy = y[q] - y[o];
    const double turn = ux * vy - uy * vx;
    const double nu = std::abs(ux) + std::abs(uy), nv = std::abs(vx) + std::abs(vy);
    return turn <= 4 * kUnit * nu * nv + slack * (nu + nv);
  };
  int h[16];
  int k = 0;
  for (int i = 0; i < 8; ++i) {  // lower chain
    while (k >= 2 && drops(h[k - 2], h[k - 1], order[i])) --k;
    h[k++] = order[i];
  }
  const int lower = k + 1;
  for (int i = 6; i >= 0; --i) {  // upper chain
    while (k >= lower && drops(h[k - 2], h[k - 1], order[i])) --k;
    h[k++] = order[i];
  }
  int m = k - 1;  // the last vertex repeats the first
  if (m < 1) m = 1;
  out.count = m;
  double area = 0;
  const double ox = x[h[0]], oy = y[h[0]];
  for (int i = 0; i < m; ++i) {
    out.index[i] = h[i];
    const int j = h[(i + 1) % m];
    area += (x[h[i]] - ox) * (y[j] - oy) - (y[h[i]] - oy) * (x[j] - ox);
  }
  out.area = m >= 3 ? 0.5 * area : 0.0;
}

struct Pair {
  Box p, t;
  Lines a, b;
  Boundary bound;
  double inter, area_a, area_b, uni;
};

inline void evaluate(const Box& p, const Box& t, double eps, Pair& r) {
  r.p = p;
  r.t = t;
  const double dx = 0.5 * (p.cx - t.cx), dy = 0.5 * (p.cy - t.cy);
  make_lines(dx, dy, p, r.a);
  make_lines(-dx, -dy, t, r.b);
  intersection(r.a, r.b, r.bound);
  r.area_a = p.w * p.h;
  r.area_b = t.w * t.h;
  r.inter = std::min(std::max(r.bound.area, 0.0), std::min(r.area_a, r.area_b));
  r.uni = r.area_a + r.area_b - r.inter + eps;
}

// (similarity, iou) of one pair; kind 0: IoU, 1: GIoU
inline void similarity(const Box& p, const Box& t, int kind, double eps, double& sim, double& iou) {
  Pair r;
  evaluate(p, t, eps, r);
  iou = r.inter / r.uni;
  sim = iou;
  if (kind == 1) {
    Hull hl;
    hull(r.a, r.b, hl);
    const double c = hl.area + eps;
    sim = iou - (c - r.uni) / c;
  }
}

// d/d(params) of sum_k L_k (o_k - n_k . M_k) over one box's lines, into g[5] = (cx, cy, w, h, a) of
// the box's own centre (the caller maps it to pred and target), scaled by `scale`.
inline void shape_gradient(const Lines& l, const double* len, const double* mx, const double* my, double scale,
                           double* g) {
  for (int k = 0; k < 4; ++k) {
    const double s = scale * len[k];
    g[0] += s * l.nx[k];
    g[1] += s * l.ny[k];
    g[(k & 1) ? 2 : 3] += 0.5 * s;  // reach: h / 2 on lines 0, 2; w / 2 on lines 1, 3
    g[4] += s * (l.tx[k] * (l.cx - mx[k]) + l.ty[k] * (l.cy - my[k]));  // dn / da = t
  }
}

// Gradient of (similarity, iou) of one pair with upstream (gs, gi), into dp[5], dt[5].
inline void pair_gradient(const Box& p, const Box& t, int kind, double eps, double gs, double gi, double* dp,
                          double* dt) {
  Pair r;
  evaluate(p, t, eps, r);
  // quotients formed one division at a time (as autograd does): no u * u to underflow
  const double u = r.uni, iou = r.inter / u;
  const double diou_di = 1.0 / u + iou / u, diou_da = -iou / u;
  double g_i = (gs + gi) * diou_di, g_area = (gs + gi) * diou_da, g_c = 0;
  Hull hl;
  if (kind == 1) {
    hull(r.a, r.b, hl);
    const double c = hl.area + eps;
    g_i -= gs / c;
    g_area += gs / c;
    g_c = -gs * ((u / c) / c);
  }
  // own-centre gradients of each box: ga for A (centre d), gb for B (centre -d)
  double ga[5] = {0, 0, 0, 0, 0}, gb[5] = {0, 0, 0, 0, 0};
  if (g_i != 0) {
    shape_gradient(r.a, r.bound.len_a, r.bound.mx_a, r.bound.my_a, g_i, ga);
    shape_gradient(r.b, r.bound.len_b, r.bound.mx_b, r.bound.my_b, g_i, gb);
  }
  ga[2] += g_area * p.h;
  ga[3] += g_area * p.w;
  gb[2] += g_area * t.h;
  gb[3] += g_area * t.w;
  if (g_c != 0 && hl.count >= 3) {
    const int m = hl.count;
    for (int i = 0; i < m; ++i) {
      const int k = hl.index[i], prev = hl.index[(i + m - 1) % m], next = hl.index[(i + 1) % m];
      const Lines& lp = prev < 4 ? r.a : r.b;
      const Lines& ln = next < 4 ? r.a : r.b;
      // dA / dP_k = ((y_next - y_prev) / 2, (x_prev - x_next) / 2)
      const double gx = 0.5 * g_c * (ln.py[next & 3] - lp.py[prev & 3]);
      const double gy = 0.5 * g_c * (lp.px[prev & 3] - ln.px[next & 3]);
      const Box& bx = k < 4 ? p : t;
      double* g = k < 4 ? ga : gb;
      // corner = c + alpha u + beta v, (alpha, beta) = (+-w/2, +-h/2)
      const int c = k & 3;
      const double sa = (c == 0 || c == 3) ? 0.5 : -0.5, sb = (c < 2) ? 0.5 : -0.5;
      const double ux = bx.c, uy = bx.s, vx = -bx.s, vy = bx.c;
      g[0] += gx;
      g[1] += gy;
      g[2] += sa * (gx * ux + gy * uy);
      g[3] += sb * (gx * vx + gy * vy);
      const double alpha = sa * bx.w, beta = sb * bx.h;
      g[4] += gx * (alpha * vx - beta * ux) + gy * (alpha * vy - beta * uy);
    }
  }
  // centres: A's is d = (c_p - c_t) / 2, B's is -d
  dp[0] = 0.5 * (ga[0] - gb[0]);
  dp[1] = 0.5 * (ga[1] - gb[1]);
  dt[0] = -dp[0];
  dt[1] = -dp[1];
  dp[2] = p.w_pos ? ga[2] : 0.0;
  dp[3] = p.h_pos ? ga[3] : 0.0;
  dp[4] = ga[4];
  dt[2] = t.w_pos ? gb[2] : 0.0;
  dt[3] = t.h_pos ? gb[3] : 0.0;
  dt[4] = gb[4];
}

int kind_id(c10::string_view kind) {
  if (kind == "iou") return 0;
  if (kind == "giou") return 1;
  TORCH_CHECK(false, "detloss::rotated_box_iou: kind must be iou or giou, got ", kind);
}

void check_pairs(const at::Tensor& pred, const at::Tensor& target) {
  TORCH_CHECK(pred.device().is_cpu() && target.device().is_cpu(), "detloss::rotated_box_iou (native kernel): CPU tensors only");
  TORCH_CHECK(pred.dim() == 2 && pred.size(1) == 5, "detloss::rotated_box_iou: pred of shape (N, 5)");
  TORCH_CHECK(target.sizes() == pred.sizes(), "detloss::rotated_box_iou: target of pred's shape");
  TORCH_CHECK(pred.scalar_type() == target.scalar_type(), "detloss::rotated_box_iou: pred and target of one dtype");
  TORCH_CHECK(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
              "detloss::rotated_box_iou: float32 or float64");
}

// detloss::rotated_box_iou, CPU: (similarity, iou) of aligned (N, 5) pairs.
std::tuple<at::Tensor, at::Tensor> rotated_box_iou(const at::Tensor& pred_in, const at::Tensor& target_in,
                                                   c10::string_view kind_name, double eps) {
  check_pairs(pred_in, target_in);
  const int kind = kind_id(kind_name);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  at::Tensor sim = at::empty({n}, pred.options());
  at::Tensor iou = at::empty({n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_rotated_box_iou", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    scalar_t* so = sim.data_ptr<scalar_t>();
    scalar_t* io = iou.data_ptr<scalar_t>();
    at::parallel_for(0, n, kPairGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        double s, v;
        similarity(load_box(pp + 5 * i), load_box(tp + 5 * i), kind, eps, s, v);
        so[i] = static_cast<scalar_t>(s);
        io[i] = static_cast<scalar_t>(v);
      }
    });
  });
  return {sim, iou};
}

at::Tensor upstream(const std::optional<at::Tensor>& g, const at::Tensor& like, int64_t n) {
  if (!g.has_value() || !g->defined()) return at::Tensor();
  const at::Tensor out = g->to(like.scalar_type()).expand({n}).contiguous();
  TORCH_CHECK(out.numel() == n, "detloss::rotated_box_iou_backward: a gradient of ", n, " elements");
  return out;
}

std::tuple<at::Tensor, at::Tensor> rotated_box_iou_backward(const at::Tensor& pred_in, const at::Tensor& target_in,
                                                            const std::optional<at::Tensor>& grad_sim,
                                                            const std::optional<at::Tensor>& grad_iou,
                                                            c10::string_view kind_name, double eps, bool target_grad) {
  check_pairs(pred_in, target_in);
  const int kind = kind_id(kind_name);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  at::Tensor grad_pred = at::zeros_like(pred);
  at::Tensor grad_target = target_grad ? at::zeros_like(target) : at::empty({0}, pred.options());
  const at::Tensor gs = upstream(grad_sim, pred, n), gi = upstream(grad_iou, pred, n);
  if (!gs.defined() && !gi.defined()) return {grad_pred, grad_target};
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_rotated_box_iou_backward", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    const scalar_t* gsp = gs.defined() ? gs.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gip = gi.defined() ? gi.data_ptr<scalar_t>() : nullptr;
    scalar_t* dp = grad_pred.data_ptr<scalar_t>();
    scalar_t* dt = target_grad ? grad_target.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, kPairGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const double g_s = gsp != nullptr ? static_cast<double>(gsp[i]) : 0.0;
        const double g_i = gip != nullptr ? static_cast<double>(gip[i]) : 0.0;
        double a[5], b[5];
        pair_gradient(load_box(pp + 5 * i), load_box(tp + 5 * i), kind, eps, g_s, g_i, a, b);
        for (int j = 0; j < 5; ++j) {
          dp[5 * i + j] = static_cast<scalar_t>(a[j]);
          if (dt != nullptr) dt[5 * i + j] = static_cast<scalar_t>(b[j]);
        }
      }
    });
  });
  return {grad_pred, grad_target};
}

// detloss::pairwise_rotated_iou, CPU: (N, M) similarities of boxes1 (N, 5) and boxes2 (M, 5).
at::Tensor pairwise_rotated_iou(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in, c10::string_view kind_name,
                                double eps) {
  TORCH_CHECK(boxes1_in.device().is_cpu() && boxes2_in.device().is_cpu(),
              "detloss::pairwise_rotated_iou (native kernel): CPU tensors only");
  TORCH_CHECK(boxes1_in.dim() == 2 && boxes1_in.size(1) == 5 && boxes2_in.dim() == 2 && boxes2_in.size(1) == 5,
              "detloss::pairwise_rotated_iou: boxes of shape (N, 5) and (M, 5)");
  TORCH_CHECK(boxes1_in.scalar_type() == boxes2_in.scalar_type(), "detloss::pairwise_rotated_iou: boxes of one dtype");
  TORCH_CHECK(boxes1_in.scalar_type() == at::kFloat || boxes1_in.scalar_type() == at::kDouble,
              "detloss::pairwise_rotated_iou: float32 or float64");
  const int kind = kind_id(kind_name);
  const at::Tensor b1 = boxes1_in.contiguous(), b2 = boxes2_in.contiguous();
  const int64_t n = b1.size(0), m = b2.size(0);
  at::Tensor out = at::empty({n, m}, b1.options());
  if (n == 0 || m == 0) return out;
  std::vector<Box> rows(n), cols(m);  // each box's own terms (cos, sin) once
  AT_DISPATCH_FLOATING_TYPES(b1.scalar_type(), "detloss_pairwise_rotated_iou", [&] {
    const scalar_t* p1 = b1.data_ptr<scalar_t>();
    const scalar_t* p2 = b2.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, n + m, kColumns, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        if (i < n) rows[i] = load_box(p1 + 5 * i);
        else cols[i - n] = load_box(p2 + 5 * (i - n));
      }
    });
    const int64_t grain = std::max<int64_t>(1, kPairwiseGrain / m);  // rows per task
    at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t c0 = 0; c0 < m; c0 += kColumns) {
        const int64_t c1 = std::min(m, c0 + kColumns);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = c0; c < c1; ++c) {
            double s, v;
            similarity(rows[r], cols[c], kind, eps, s, v);
            po[r * m + c] = static_cast<scalar_t>(s);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detloss, CPU, m) {
  m.impl("rotated_box_iou", &rotated_box_iou);
  m.impl("rotated_box_iou_backward", &rotated_box_iou_backward);
  m.impl("pairwise_rotated_iou", &pairwise_rotated_iou);
}
