r"""Adversarial inputs for every registered loss, and the runner that checks them.

Shared by ``tests/robustness`` and ``detloss fuzz``. A *case* is one call of a loss: a
batch of inputs built by a seeded generator from one *family* (identical boxes, disjoint
far apart, touching, nested, zero-width, zero-height, points, inverted, coordinates from
1e-6 to 1e6, a mixed batch, logits up to 1e4, targets at exactly 0 and 1, ...), one
*dtype mode* (``float64``, ``float32``, ``float16``, ``bfloat16``, or ``autocast_bf16``:
bfloat16 predictions and float32 targets under ``torch.autocast("cpu", dtype=torch.bfloat16)``),
one *layout* (contiguous, non-contiguous, or one input broadcast with stride 0), one
reduction, and optionally a ``weight`` (random, partly zero or all zero) and an
``avg_factor``. Batches of 0 rows are part of the mix. Case ``i`` of seed ``s`` is always
the same case, so a failure can be replayed with :func:`make_case`.

Each case is checked three ways (:func:`check_case`):

1. **value**: the loss is finite;
2. **gradient**: the gradient of every tensor handed to the loss is finite. For half inputs
   the loss computes in float32 and autograd casts the gradient back to float16: a float32
   gradient beyond 65504 becomes ``inf`` there, as it would for any float16 tensor (what a
   gradient scaler watches for). Such a case is counted (``gradient_overflow``), not failed;
   a gradient that is not finite in float32 already is a failure;
3. **agreement** with a float64 evaluation *on the same rounded inputs* (so that a half
   precision case measures the computation, not the rounding of its inputs), per element
   of the output:

   .. math::
       |\ell - \ell_{64}| \le \text{atol} + \text{rtol}\,|\ell_{64}| + E

   ``E`` is the error that the conditioning of the input explains, computed in float64
   only when the first two terms do not suffice (then the case is counted ``conditioned``):
   the larger of ``k u kappa``, :math:`\kappa = \sum_i |\partial \ell / \partial x_i|\, s_i`,
   and ``SAMPLING_MARGIN`` times the largest change of the loss when every input moves by
   up to ``k u s_i`` (random moves, rigid moves of the predicted boxes, and the boxes'
   corners rounded to float32, which is what ``x + w`` or ``cx - w / 2`` does). ``u`` is
   the unit roundoff of the arithmetic (``2^-24``: float32, also for half inputs;
   ``2^-53``: float64) and ``s_i`` the scale at which input ``i`` is rounded: the largest
   magnitude among the numbers it is added to (a box's four numbers and its target's; a
   row of softmax logits; a prediction and its regression target), else its own.
   No algorithm in precision ``u`` does better in general: unit boxes at ``x = 1e6`` have
   ``s = 1e6``, and float32 (spacing 0.0625 there) agrees with float64 to about 1e-2,
   while the same boxes at the origin agree to 1e-5. Losses that are discontinuous by
   design (:data:`DISCONTINUOUS`) are compared in float64 only.

The tolerances are :data:`TOLERANCES`; ``results.json`` of ``detloss fuzz`` records them.

Four modules: :mod:`~detloss.experiments.fuzz.generators` (the families and
:func:`make_case`), :mod:`~detloss.experiments.fuzz.checker` (:func:`check_case`),
:mod:`~detloss.experiments.fuzz.runner` (:func:`run_fuzz` over many cases) and
:mod:`~detloss.experiments.fuzz.report` (``detloss fuzz``: the table and the run folder).
"""

from __future__ import annotations

from detloss.experiments.fuzz.checker import (
    DISCONTINUOUS,
    SAMPLING_MARGIN,
    TOLERANCES,
    Outcome,
    Tolerance,
    check_case,
    evaluate,
)
from detloss.experiments.fuzz.generators import (
    BATCH_SIZES,
    BINARY_TARGETS,
    BOX_FAMILIES,
    COORD_LIMIT,
    DISTRIBUTION_TARGETS,
    DTYPE_MODES,
    LABEL_FAMILIES,
    LAYOUTS,
    LOGIT_FAMILIES,
    LOGIT_LIMIT,
    REDUCTIONS,
    VALUE_FAMILIES,
    Case,
    families_for,
    make_case,
)
from detloss.experiments.fuzz.report import fuzz_report, parse_losses
from detloss.experiments.fuzz.runner import COUNTS, Summary, case_plan, run_fuzz

__all__ = [
    "BATCH_SIZES",
    "BINARY_TARGETS",
    "BOX_FAMILIES",
    "COORD_LIMIT",
    "COUNTS",
    "DISCONTINUOUS",
    "DISTRIBUTION_TARGETS",
    "DTYPE_MODES",
    "LABEL_FAMILIES",
    "LAYOUTS",
    "LOGIT_FAMILIES",
    "LOGIT_LIMIT",
    "REDUCTIONS",
    "SAMPLING_MARGIN",
    "TOLERANCES",
    "VALUE_FAMILIES",
    "Case",
    "Outcome",
    "Summary",
    "Tolerance",
    "case_plan",
    "check_case",
    "evaluate",
    "families_for",
    "fuzz_report",
    "make_case",
    "parse_losses",
    "run_fuzz",
]
