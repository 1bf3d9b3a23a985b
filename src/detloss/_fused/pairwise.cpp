// detloss fast path, all-pairs matrices: detloss::pairwise_similarity, the similarity of every
// pair of two box sets (what detloss.boxes.pairwise_iou returns), as the CPU kernel of the
// operator that detloss._fused.ops defines. No autograd: pairwise_iou runs it where no gradient
// is needed (assigners, matching costs, NMS, evaluation), the reference composition elsewhere.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "kernels.h"

namespace {

using namespace detloss_kernels;

constexpr int64_t kColumns = 1024;     // columns per block: their box terms (11 x 4 KiB in float) stay in L1/L2
constexpr int64_t kPairGrain = 32768;  // pairs per thread task

template <typename F>
void with_pairwise_variant(c10::string_view kind, F&& f) {
  if (kind == "iou") return f(Variant<IOU>{});
  if (kind == "giou") return f(Variant<GIOU>{});
  if (kind == "diou") return f(Variant<DIOU>{});
  if (kind == "ciou") return f(Variant<CIOU, false, false, FastMath, true>{});
  if (kind == "eiou") return f(Variant<EIOU>{});
  if (kind == "siou") return f(Variant<SIOU4>{});
  TORCH_CHECK(false, "detloss::pairwise_similarity: kind must be one of iou, giou, diou, ciou, eiou, siou, got ", kind);
}

// detloss::pairwise_similarity, CPU: (N, M) similarities of boxes1 (N, 4) and boxes2 (M, 4), xyxy.
at::Tensor pairwise_similarity(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in, c10::string_view kind, double eps) {
  TORCH_CHECK(boxes1_in.device().is_cpu() && boxes2_in.device().is_cpu(),
              "detloss::pairwise_similarity (native kernel): CPU tensors only");
  TORCH_CHECK(boxes1_in.dim() == 2 && boxes1_in.size(1) == 4 && boxes2_in.dim() == 2 && boxes2_in.size(1) == 4,
              "detloss::pairwise_similarity: boxes of shape (N, 4) and (M, 4)");
  TORCH_CHECK(boxes1_in.scalar_type() == boxes2_in.scalar_type(), "detloss::pairwise_similarity: boxes of one dtype");
  TORCH_CHECK(boxes1_in.scalar_type() == at::kFloat || boxes1_in.scalar_type() == at::kDouble,
              "detloss::pairwise_similarity: float32 or float64");
  const at::Tensor b1 = boxes1_in.contiguous(), b2 = boxes2_in.contiguous();
  const int64_t n = b1.size(0), m = b2.size(0);
  at::Tensor out = at::empty({n, m}, b1.options());
  if (n == 0 || m == 0) return out;
  at::Tensor tables = at::empty({kTableFields, n + m}, b1.options());
  const IoUOptions o{eps, 4.0};
  AT_DISPATCH_FLOATING_TYPES(b1.scalar_type(), "detloss_pairwise_similarity", [&] {
    scalar_t* base = tables.data_ptr<scalar_t>();
    BoxTable<scalar_t> rows, cols;
    for (int c = 0; c < kTableFields; ++c) {
      rows.f[c] = base + c * (n + m);
      cols.f[c] = base + c * (n + m) + n;
    }
    const scalar_t* p1 = b1.data_ptr<scalar_t>();
    const scalar_t* p2 = b2.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    with_pairwise_variant(kind, [&](auto v) {
      using V = decltype(v);
      at::parallel_for(0, n + m, kColumns, [&](int64_t lo, int64_t hi) {
        if (lo < n) fill_box_table<scalar_t, V>(p1, rows, lo, std::min(hi, n), scalar_t(eps));
        if (hi > n) fill_box_table<scalar_t, V>(p2, cols, std::max(lo, n) - n, hi - n, scalar_t(eps));
      });
      const int64_t grain = std::max<int64_t>(1, kPairGrain / m);  // rows per task
      at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t c0 = 0; c0 < m; c0 += kColumns) {
          pairwise_block<scalar_t, V>(rows, cols, po, m, r0, r1, c0, std::min(m, c0 + kColumns), o);
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detloss, CPU, m) {
  m.impl("pairwise_similarity", &pairwise_similarity);
}
