// detloss fast path, rotated boxes: the Gaussian losses (ProbIoU, KLD, GWD) of aligned pairs
// of cxcywha boxes (angles in radians), forward and backward, one pass over the data each.
// The math is that of detloss.boxes.rotated (gaussian_core: _bhattacharyya, _kl_target_pred,
// _wasserstein2 on _gaussian_pair) and of the losses' transforms in detloss.functional.rotated,
// step for step, computed in double for float32 and float64 alike, with the subgradients
// autograd takes there: clamp(min=0) passes the gradient at 0, and finite_pow's square root has
// none below its floor. The backward is forward-mode differentiation of the same function: each
// value carries its partial derivatives with respect to the ten inputs (the prediction's five,
// then the target's), so the gradient is exact and the two can never disagree.
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
// the reference (a thin box's angle term multiplies it by up to (h / w)^2).
#pragma GCC optimize("fp-contract=off")

namespace {

constexpr int64_t kRotatedGrain = 512;
constexpr int kInputs = 10;  // pred (cx, cy, w, h, a), then target's

// ---------------------------------------------------------------- values with their partials

struct Dual {
  double v;
  double d[kInputs];
};

inline Dual constant(double v) {
  Dual r;
  r.v = v;
  for (int i = 0; i < kInputs; ++i) r.d[i] = 0.0;
  return r;
}

inline Dual chain(const Dual& a, double v, double slope) {  // f(a) with f(a.v) = v, f'(a.v) = slope
  Dual r;
  r.v = v;
  for (int i = 0; i < kInputs; ++i) r.d[i] = slope * a.d[i];
  return r;
}

inline Dual operator+(const Dual& a, const Dual& b) {
  Dual r;
  r.v = a.v + b.v;
  for (int i = 0; i < kInputs; ++i) r.d[i] = a.d[i] + b.d[i];
  return r;
}
inline Dual operator-(const Dual& a, const Dual& b) {
  Dual r;
  r.v = a.v - b.v;
  for (int i = 0; i < kInputs; ++i) r.d[i] = a.d[i] - b.d[i];
  return r;
}
inline Dual operator*(const Dual& a, const Dual& b) {
  Dual r;
  r.v = a.v * b.v;
  for (int i = 0; i < kInputs; ++i) r.d[i] = a.d[i] * b.v + a.v * b.d[i];
  return r;
}
inline Dual operator/(const Dual& a, const Dual& b) {
  Dual r;
  r.v = a.v / b.v;
  for (int i = 0; i < kInputs; ++i) r.d[i] = (a.d[i] - r.v * b.d[i]) / b.v;
  return r;
}
inline Dual operator-(const Dual& a) { return chain(a, -a.v, -1.0); }
inline Dual operator+(const Dual& a, double b) { return chain(a, a.v + b, 1.0); }
inline Dual operator+(double b, const Dual& a) { return chain(a, a.v + b, 1.0); }
inline Dual operator-(const Dual& a, double b) { return chain(a, a.v - b, 1.0); }
inline Dual operator-(double b, const Dual& a) { return chain(a, b - a.v, -1.0); }
inline Dual operator*(const Dual& a, double b) { return chain(a, a.v * b, b); }
inline Dual operator*(double b, const Dual& a) { return chain(a, a.v * b, b); }
inline Dual operator/(double b, const Dual& a) { return chain(a, b / a.v, -b / (a.v * a.v)); }
inline Dual operator/(const Dual& a, double b) { return chain(a, a.v / b, 1.0 / b); }

inline double value(double x) { return x; }
inline double value(const Dual& x) { return x.v; }

inline double f_log(double x) { return std::log(x); }
inline Dual f_log(const Dual& a) { return chain(a, std::log(a.v), 1.0 / a.v); }
inline double f_log1p(double x) { return std::log1p(x); }
inline Dual f_log1p(const Dual& a) { return chain(a, std::log1p(a.v), 1.0 / (1.0 + a.v)); }
inline double f_expm1(double x) { return std::expm1(x); }
inline Dual f_expm1(const Dual& a) { return chain(a, std::expm1(a.v), std::exp(a.v)); }
inline double f_sinh(double x) { return std::sinh(x); }
inline Dual f_sinh(const Dual& a) { return chain(a, std::sinh(a.v), std::cosh(a.v)); }
inline double f_sqrt(double x) { return std::sqrt(x); }
inline Dual f_sqrt(const Dual& a) {
  const double r = std::sqrt(a.v);
  return chain(a, r, 0.5 / r);
}
inline double f_cos(double x) { return std::cos(x); }
inline Dual f_cos(const Dual& a) { return chain(a, std::cos(a.v), -std::sin(a.v)); }
inline double f_sin(double x) { return std::sin(x); }
inline Dual f_sin(const Dual& a) { return chain(a, std::sin(a.v), std::cos(a.v)); }

// clamp(min=0): the gradient passes where the input is >= 0
inline Dual clamp0(const Dual& x) { return x.v >= 0.0 ? x : constant(0.0); }
inline double clamp0(double x) { return x >= 0.0 ? x : 0.0; }

// finite_pow(x, 0.5, floor): the value sqrt(max(x, 0)); no gradient below the floor
template <class T>
T finite_sqrt(const T& x, double floor) {
  if (value(x) < floor) return 0.0 * x + std::sqrt(std::max(value(x), 0.0));
  return f_sqrt(x);
}

template <class T>
T square(const T& x) {
  return x * x;
}

// ---------------------------------------------------------------- the Gaussian distances

template <class T>
struct Pair {  // _gaussian_pair: sides + eps, the centres' offset, the angle between the boxes
  T dx, dy, wp, hp, wt, ht, cos, sin, cos2, sin2, upx, upy, utx, uty;
};

template <class T>
Pair<T> gaussian_pair(const T* p, const T* t, double eps) {
  Pair<T> g;
  g.wp = clamp0(p[2]) + eps;
  g.hp = clamp0(p[3]) + eps;
  g.wt = clamp0(t[2]) + eps;
  g.ht = clamp0(t[3]) + eps;
  g.upx = f_cos(p[4]);
  g.upy = f_sin(p[4]);
  g.utx = f_cos(t[4]);
  g.uty = f_sin(t[4]);
  g.cos = g.upx * g.utx + g.upy * g.uty;
  g.sin = g.upx * g.uty - g.upy * g.utx;
  g.cos2 = g.cos * g.cos;
  g.sin2 = g.sin * g.sin;
  g.dx = p[0] - t[0];
  g.dy = p[1] - t[1];
  return g;
}

template <class T>
T log_volume_ratio(const Pair<T>& g) {
  const T lwp = f_log(g.wp), lhp = f_log(g.hp), lwt = f_log(g.wt), lht = f_log(g.ht);
  // differences of logs of sides first: exactly 0 where the sides are equal
  const T excess = square(f_sinh(0.5 * ((lwp - lwt) + (lhp - lht)))) + g.cos2 * square(f_sinh(0.5 * ((lhp - lht) + (lwt - lwp)))) +
                   g.sin2 * square(f_sinh(0.5 * ((lhp - lwp) + (lht - lwt))));
  return f_log1p(excess);
}

template <class T>
T bhattacharyya(const Pair<T>& g) {
  const double k = 12.0;
  const T parts[6] = {g.wp * g.hp, g.wt * g.ht, g.cos * g.hp * g.wt, g.cos * g.wp * g.ht, g.sin * g.hp * g.ht, g.sin * g.wp * g.wt};
  double scale = std::numeric_limits<double>::min();
  for (const T& part : parts) scale = std::max(scale, std::abs(value(part)));
  T sum = square(parts[0] / scale);
  for (int i = 1; i < 6; ++i) sum = sum + square(parts[i] / scale);
  const T root_det = scale * f_sqrt(sum);
  // the boxes' w directions u and h directions v = rot90(u)
  const T along_p = g.upx * g.dx + g.upy * g.dy, across_p = g.upx * g.dy - g.upy * g.dx;
  const T along_t = g.utx * g.dx + g.uty * g.dy, across_t = g.utx * g.dy - g.uty * g.dx;
  const T mahalanobis = square(g.hp * along_p / root_det) + square(g.wp * across_p / root_det) +
                        square(g.ht * along_t / root_det) + square(g.wt * across_t / root_det);
  return 0.25 * k * mahalanobis + 0.5 * log_volume_ratio(g);
}

template <class T>
T excess(const T& log_z) {  // z - 1 - ln z for z = exp(log_z), clamped at 0
  return clamp0(f_expm1(log_z) - log_z);
}

template <class T>
T kl_target_pred(const Pair<T>& g) {
  const double k = 4.0;
  const T lwp = f_log(g.wp), lhp = f_log(g.hp), lwt = f_log(g.wt), lht = f_log(g.ht);
  const T shape = g.cos2 * (excess(2.0 * (lwt - lwp)) + excess(2.0 * (lht - lhp))) +
                  g.sin2 * (excess(2.0 * (lht - lwp)) + excess(2.0 * (lwt - lhp)));
  const T along = g.upx * g.dx + g.upy * g.dy, across = g.upx * g.dy - g.upy * g.dx;
  const T centre = k * (square(along / g.wp) + square(across / g.hp));
  return 0.5 * (shape + centre);
}

template <class T>
T wasserstein2(const Pair<T>& g) {
  const T x = square(g.wp) + square(g.hp) + square(g.wt) + square(g.ht);
  const T p = g.wp * g.wt + g.hp * g.ht;
  const T q = g.wp * g.ht + g.hp * g.wt;
  const T aligned = square(g.wp - g.wt) + square(g.hp - g.ht);
  const T crossed = square(g.wp - g.ht) + square(g.hp - g.wt);
  const T root = f_sqrt(g.cos2 * p * p + g.sin2 * q * q);
  const T shape = (g.cos2 * aligned * (x + 2.0 * p) + g.sin2 * crossed * (x + 2.0 * q)) / (x + 2.0 * root);
  return square(g.dx) + square(g.dy) + 0.25 * shape;
}

enum Kind : int64_t { kBhattacharyya = 0, kKLD = 1, kGWD = 2 };
enum Fun : int64_t { kHellinger = 0, kIdentity = 1, kLog1p = 2, kSqrt = 3 };

template <class T>
T gaussian_loss_of(const T* p, const T* t, int64_t kind, int64_t fun, double tau, double eps) {
  const Pair<T> g = gaussian_pair(p, t, eps);
  const T d = kind == kBhattacharyya ? bhattacharyya(g) : kind == kKLD ? kl_target_pred(g) : wasserstein2(g);
  switch (fun) {
    case kHellinger: return finite_sqrt(-f_expm1(-d), eps);
    case kIdentity: return d;
    case kLog1p: return 1.0 - 1.0 / (tau + f_log1p(d));
    default: return 1.0 - 1.0 / (tau + finite_sqrt(d, eps));
  }
}

// ---------------------------------------------------------------- the operators' CPU kernels

int64_t kind_id(c10::string_view kind) {
  if (kind == "bhattacharyya") return kBhattacharyya;
  if (kind == "kld") return kKLD;
  if (kind == "gwd") return kGWD;
  TORCH_CHECK(false, "detloss::rotated_gaussian_loss: kind must be one of bhattacharyya, kld, gwd, got ", kind);
}

int64_t fun_id(c10::string_view fun) {
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

at::Tensor rotated_gaussian_loss(const at::Tensor& pred_in, const at::Tensor& target_in, c10::string_view kind_name,
                                 c10::string_view fun_name, double tau, double eps) {
  check_pairs(pred_in, target_in);
  const int64_t kind = kind_id(kind_name), fun = fun_id(fun_name);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  at::Tensor loss = at::empty({n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_rotated_gaussian_loss", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    scalar_t* out = loss.data_ptr<scalar_t>();
    at::parallel_for(0, n, kRotatedGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        double p[5], t[5];
        for (int j = 0; j < 5; ++j) {
          p[j] = static_cast<double>(pp[5 * i + j]);
          t[j] = static_cast<double>(tp[5 * i + j]);
        }
        out[i] = static_cast<scalar_t>(gaussian_loss_of<double>(p, t, kind, fun, tau, eps));
      }
    });
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> rotated_gaussian_loss_backward(const at::Tensor& pred_in, const at::Tensor& target_in,
                                                                  const std::optional<at::Tensor>& grad_in,
                                                                  c10::string_view kind_name, c10::string_view fun_name,
                                                                  double tau, double eps, bool target_grad) {
  check_pairs(pred_in, target_in);
  const int64_t kind = kind_id(kind_name), fun = fun_id(fun_name);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  at::Tensor grad_pred = at::zeros_like(pred);
  at::Tensor grad_target = target_grad ? at::zeros_like(target) : at::empty({0}, pred.options());
  if (!grad_in.has_value() || !grad_in->defined()) return {grad_pred, grad_target};
  const at::Tensor grad = grad_in->to(pred.scalar_type()).expand({n}).contiguous();
  TORCH_CHECK(grad.numel() == n, "detloss::rotated_gaussian_loss_backward: a gradient of ", n, " elements");
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_rotated_gaussian_loss_backward", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* dp = grad_pred.data_ptr<scalar_t>();
    scalar_t* dt = target_grad ? grad_target.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, kRotatedGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        Dual p[5], t[5];
        for (int j = 0; j < 5; ++j) {
          p[j] = constant(static_cast<double>(pp[5 * i + j]));
          p[j].d[j] = 1.0;
          t[j] = constant(static_cast<double>(tp[5 * i + j]));
          t[j].d[5 + j] = 1.0;
        }
        const Dual r = gaussian_loss_of<Dual>(p, t, kind, fun, tau, eps);
        const double g = static_cast<double>(gp[i]);
        for (int j = 0; j < 5; ++j) {
          dp[5 * i + j] = static_cast<scalar_t>(g * r.d[j]);
          if (dt != nullptr) dt[5 * i + j] = static_cast<scalar_t>(g * r.d[5 + j]);
        }
      }
    });
  });
  return {grad_pred, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(detloss, CPU, m) {
  m.impl("rotated_gaussian_loss", &rotated_gaussian_loss);
  m.impl("rotated_gaussian_loss_backward", &rotated_gaussian_loss_backward);
}
