// detloss fast path, the operators of aligned pairs and of the binary family: the loops of
// kernels.h split across OpenMP threads (at::parallel_for, which runs on one thread unless the
// library is built with -fopenmp, and runs a range shorter than its grain in the calling thread,
// with no thread woken), registered as the CPU kernels of the detloss operators
// (torch.ops.detloss.*, whose schemas detloss._fused.ops defines), with their autograd in C++:
// a call on CPU tensors runs no Python between the dispatcher and the loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <vector>

#include "kernels.h"

namespace {

using namespace detloss_kernels;

// Pairs (or 4x as many logits) per thread task: below 2 kGrain a call runs in the calling thread
// alone. A YOLO batch's 10^3-10^4 positives take 0.1-0.3 ms there; waking a second OpenMP thread
// for them saved at most half of that on an idle machine, and cost whole milliseconds on a
// loaded one (10,000 CIoU pairs, fwd+bwd round-robin with other work, load 5 on 2 cores: 20 ms
// with grain 2048 against 7 ms in a tight loop).
constexpr int64_t kGrain = 16384;

int64_t iou_kind_id(c10::string_view kind, double theta) {
  if (kind == "iou") return IOU;
  if (kind == "giou") return GIOU;
  if (kind == "diou") return DIOU;
  if (kind == "ciou") return CIOU;
  if (kind == "eiou") return EIOU;
  if (kind == "siou") {
    // theta - 1 >= 0 is the exponent of the shape term's slope (pow_unit: exponents >= 0)
    TORCH_CHECK(theta >= 1.0, "detloss::iou_loss: siou_theta must be >= 1, got ", theta);
    return theta == 4.0 ? SIOU4 : SIOU;
  }
  TORCH_CHECK(false, "detloss::iou_loss: kind must be one of iou, giou, diou, ciou, eiou, siou, got ", kind);
}

// Calls f(Variant<kind, gate, paper>{}) so that each kind and CIoU option gets its own loop,
// with its terms known at compile time.
template <typename F>
void with_iou_variant(int64_t kind, bool gate, bool paper, F&& f) {
  switch (kind) {
    case IOU: f(Variant<IOU>{}); break;
    case GIOU: f(Variant<GIOU>{}); break;
    case DIOU: f(Variant<DIOU>{}); break;
    case CIOU:
      with_flag(gate, [&](auto g) {
        with_flag(paper, [&](auto p) { f(Variant<CIOU, decltype(g)::value, decltype(p)::value>{}); });
      });
      break;
    case EIOU: f(Variant<EIOU>{}); break;
    case SIOU: f(Variant<SIOU>{}); break;
    case SIOU4: f(Variant<SIOU4>{}); break;
    default: TORCH_CHECK(false, "detloss: unknown IoU kind ", kind);
  }
}

// [0, n) in blocks of kBlock pairs, the blocks split across threads in tasks of kGrain pairs.
template <typename F>
void for_blocks(int64_t n, F&& block) {
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; b += kBlock) block(b, hi - b < kBlock ? hi - b : kBlock);
  });
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
  const int64_t kind = iou_kind_id(kind_name, siou_theta);
  const int64_t n = pred.size(0);
  at::Tensor loss = at::empty({n}, pred.options());
  at::Tensor iou = at::empty({n}, pred.options());
  const IoUOptions o{eps, siou_theta};
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_iou_loss", [&] {
    const scalar_t* p = pred.data_ptr<scalar_t>();
    const scalar_t* t = target.data_ptr<scalar_t>();
    scalar_t* l = loss.data_ptr<scalar_t>();
    scalar_t* i = iou.data_ptr<scalar_t>();
    with_iou_variant(kind, alpha_gate, false, [&](auto v) {
      for_blocks(n, [&](int64_t b, int64_t m) {
        iou_forward_block<scalar_t, decltype(v)>(p + 4 * b, t + 4 * b, l + b, i + b, m, o);
      });
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
  const int64_t kind = iou_kind_id(kind_name, siou_theta);
  const int64_t n = pred.size(0);
  const at::Tensor grad_loss = as_grad(grad_loss_in, pred, n, "detloss::iou_loss_backward");
  const at::Tensor grad_iou = as_grad(grad_iou_in, pred, n, "detloss::iou_loss_backward");
  at::Tensor dp = at::empty_like(pred);
  at::Tensor dt = target_grad ? at::empty_like(target) : at::empty({0}, pred.options());
  int64_t sl = 0, si = 0;
  const void* gl = grad_ptr(grad_loss, sl);
  const void* gi = grad_ptr(grad_iou, si);
  const IoUOptions o{eps, siou_theta};
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "detloss_iou_loss_backward", [&] {
    const scalar_t* p = pred.data_ptr<scalar_t>();
    const scalar_t* t = target.data_ptr<scalar_t>();
    scalar_t* dpp = dp.data_ptr<scalar_t>();
    scalar_t* dtp = target_grad ? dt.data_ptr<scalar_t>() : nullptr;
    with_iou_variant(kind, alpha_gate, paper_grad, [&](auto v) {
      with_flag(target_grad, [&](auto gt) {
        at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
          Staged<scalar_t, kBlock> gS(static_cast<const scalar_t*>(gl), sl, scalar_t(-1));  // dL/dS = -dL/dloss
          Staged<scalar_t, kBlock> gI(static_cast<const scalar_t*>(gi), si, scalar_t(1));
          for (int64_t b = lo; b < hi; b += kBlock) {
            const int64_t m = hi - b < kBlock ? hi - b : kBlock;
            gS.load(b, m);
            gI.load(b, m);
            iou_backward_block<scalar_t, decltype(v), decltype(gt)::value>(p + 4 * b, t + 4 * b, gS.v, gI.v, dpp + 4 * b,
                                                                           dtp ? dtp + 4 * b : nullptr, m, o);
          }
        });
      });
    });
  });
  return {dp, dt};
}

// ---------------------------------------------------------------- binary classification family

// Calls f(Int<kind>{}, bool_constant<gamma == 2>{}).
template <typename F>
void with_binary_kind(int64_t kind, double gamma, F&& f) {
  auto g2 = [&](auto k) { with_flag(gamma == 2.0, [&](auto two) { f(k, two); }); };
  switch (kind) {
    case BCE: f(Int<BCE>{}, std::false_type{}); break;
    case FOCAL: g2(Int<FOCAL>{}); break;
    case QUALITY: g2(Int<QUALITY>{}); break;
    case VARIFOCAL: g2(Int<VARIFOCAL>{}); break;
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

constexpr int64_t kBinaryGrain = 4 * kGrain;
constexpr int64_t kBinaryBlock = 512;

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
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    with_binary_kind(kind, gamma, [&](auto k, auto g2) {
      at::parallel_for(0, n, kBinaryGrain, [&](int64_t lo, int64_t hi) {
        binary_forward_block<scalar_t, decltype(k)::value, decltype(g2)::value>(xp + lo, yp + lo, op + lo, hi - lo, o);
      });
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
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* gyp = target_grad ? gy.data_ptr<scalar_t>() : nullptr;
    with_binary_kind(kind, gamma, [&](auto k, auto g2) {
      with_flag(target_grad, [&](auto gy_needed) {
        at::parallel_for(0, n, kBinaryGrain, [&](int64_t lo, int64_t hi) {
          Staged<scalar_t, kBinaryBlock> gb(static_cast<const scalar_t*>(g), sg, scalar_t(1));
          for (int64_t b = lo; b < hi; b += kBinaryBlock) {
            const int64_t m = hi - b < kBinaryBlock ? hi - b : kBinaryBlock;
            gb.load(b, m);
            binary_backward_block<scalar_t, decltype(k)::value, decltype(g2)::value, decltype(gy_needed)::value>(
                xp + b, yp + b, gb.v, gxp + b, gyp ? gyp + b : nullptr, m, o);
          }
        });
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
