"""``detloss bench``: time every fused loss on each backend, against the reference path, the
public peers that are installed, and the memory floor, all in the same run.

For each loss and size ``n`` (box pairs for the IoU family and the rotated losses; logits, as
``(n / 80, 80)``, for the binary family) and each implementation:

- ``fwd_ms``, ``fwd_bwd_ms``: median wall time of the forward (inputs requiring grad, as in
  training) and of forward + backward, mean reduction, after one warm-up call;
- ``saved_bytes``: bytes the autograd graph keeps for the backward (unique storages seen by
  ``torch.autograd.graph.saved_tensors_hooks``);
- ``peak_bytes``: peak growth of memory during one forward + backward: on CPU the resident
  set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after the C heap's
  free pages are returned), on GPU ``torch.cuda.max_memory_allocated``; ``ratio_peak_vs_peer``
  is it over the fastest peer's;
- ``ratio_vs_floor``: ``fwd_bwd_ms`` over ``floor_ms``, the time of copying the inputs' bytes
  once (prediction and target into buffers made beforehand), timed in turn with that row's
  forward + backward (``impl="floor"`` rows: the floor timed alone);
- ``ratio_vs_fastest_peer``: ``fwd_bwd_ms`` over the fastest installed peer's (``None`` if
  no peer implements that loss or none is installed: ``pip install -e .[bench]``);
- ``compile_s`` (compiled backend): the first call's time, compilation included;
- the per-call floor (``impl="call-floor"`` rows): :class:`TrivialFunction` on the same inputs,
  the least any differentiable call costs; ``ratio_vs_call_floor`` is ``fwd_bwd_ms`` over its
  own. Sizes up to :data:`SMALL_PAIRS` box pairs / :data:`SMALL_LOGITS` logits (where a fixed
  cost per call dominates) are also timed in a tight loop (``fwd_bwd_tight_ms``: threads kept
  awake, as in a training loop that does nothing else) with ``ratio_tight_vs_call_floor``,
  and with at least :data:`SMALL_REPEAT` repetitions.

The rotated losses (:data:`ROTATED_LOSSES`, ``cxcywha`` pairs in radians) have no fused
composition: their rows are the reference path (``impl="reference"``), for ProbIoU, KLD and
GWD the native operator called directly (``native``: ``torch.ops.detloss.rotated_gaussian_loss``
with the loss's defaults, then the mean; the losses themselves do not use it), and
ultralytics' ``probiou`` as the peer of
``probiou`` when ultralytics is installed (its ``1 - probiou``, mean; ultralytics' default
``eps``, no ``floor``: the function as ``RotatedBboxLoss`` calls it).

The ``compiled-step`` rows time a training step instead of a loss: a small detection head
(two linear layers) whose ``n`` anchors each predict a box and :data:`NUM_CLASSES` logits,
a CIoU box loss plus a sigmoid focal class loss, forward and backward, the whole step under
``torch.compile(dynamic=True, fullgraph=True)``, with the losses of each backend inside;
``ratio_vs_reference`` is its ``fwd_bwd_ms`` over the same compiled step with the reference
losses, and ``compile_s`` the first step's time (compilation included; on the first size only:
the other sizes reuse the compiled step).

Nothing is built or loaded while a time is taken: the native kernel (built once per machine on
first use) is loaded before the first measurement.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

import detloss
from detloss import functional as F
from detloss.boxes import IOU_KINDS
from detloss.testing import random_boxes, random_rotated_boxes

__all__ = [
    "BENCH_LOSSES",
    "BINARY_LOSSES",
    "BINARY_SIZES",
    "CALL_FLOOR",
    "COMPILED_STEP",
    "IOU_LOSSES",
    "IOU_SIZES",
    "NUM_CLASSES",
    "PAIRWISE_LOSSES",
    "PAIRWISE_SIZES",
    "ROTATED_LOSSES",
    "ROTATED_SIZES",
    "SMALL_LOGITS",
    "SMALL_PAIRS",
    "SMALL_REPEAT",
    "STEP_SIZES",
    "TIGHT_CALLS",
    "TrivialFunction",
    "available_backends",
    "bench_inputs",
    "floor_copy",
    "pairwise_peers",
    "peers",
    "prepare_backends",
    "report_markdown",
    "rotated_backends",
    "run_bench",
]

IOU_LOSSES = IOU_KINDS
BINARY_LOSSES = ("sigmoid_focal", "quality_focal", "varifocal", "binary_cross_entropy")
ROTATED_LOSSES = ("probiou", "kld", "gwd", "kfiou", "rotated_iou")
NUM_CLASSES = 80
COMPILED_STEP = "compiled-step"
PAIRWISE_LOSSES = ("pairwise-iou", "pairwise-giou", "pairwise-ciou")  # pairwise_iou of one kind
BENCH_LOSSES = (*IOU_LOSSES, *BINARY_LOSSES, *ROTATED_LOSSES, *PAIRWISE_LOSSES, COMPILED_STEP)
IOU_SIZES = (1_000, 10_000, 100_000, 1_000_000)  # box pairs
ROTATED_SIZES = (100_000, 1_000_000)  # rotated box pairs
BINARY_SIZES = (80_000, 800_000, 8_000_000)  # logits: 1,000 / 10,000 / 100,000 anchors x 80 classes
STEP_SIZES = (1_000, 10_000, 100_000)  # anchors of the compiled step, each a box and 80 logits
PAIRWISE_SIZES = (20_000,)  # boxes2 (M); boxes1 has M / 10 (N): an assigner's anchors x targets
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CALL_FLOOR = "call-floor"
#: Sizes up to these (box pairs, logits) are also timed in a tight loop, ``TIGHT_CALLS`` calls
#: back to back, and with at least ``SMALL_REPEAT`` repetitions: a YOLO batch's positives.
SMALL_PAIRS, SMALL_LOGITS = 10_000, 800_000
TIGHT_CALLS = 20
SMALL_REPEAT = 25
#: A call whose warm-up takes longer than this is timed :data:`SLOW_REPEAT` times at most (the
#: reference's all-pairs and rotated rows), so that a default run stays within minutes.
SLOW_CALL_S, SLOW_REPEAT = 1.0, 3


def _runs_for(first_s: float, repeat: int) -> int:
    """Timed runs of a row whose warm-up call took ``first_s`` seconds: ``repeat``, or at most
    :data:`SLOW_REPEAT` for a call slower than :data:`SLOW_CALL_S`."""
    return min(repeat, SLOW_REPEAT) if first_s > SLOW_CALL_S else repeat


class TrivialFunction(torch.autograd.Function):
    """About the least any differentiable call costs: forward ``(p - t).sum()``, backward
    ``ones_like(p) * g``; the per-call floor of the small sizes."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p)
        return (p - t).sum()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (p,) = ctx.saved_tensors
        return torch.ones_like(p) * g, None


def _trivial(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return TrivialFunction.apply(p, t)  # type: ignore[no-any-return]


def available_backends(device: torch.device) -> list[str]:
    """The backends worth timing here: native when it builds (CPU), compiled on GPU."""
    names = ["reference", "fused"]
    if device.type == "cpu" and detloss.backend_info().native_library is not None:
        names.append("native")
    if device.type != "cpu":
        names.append("compiled")
    return names


def prepare_backends(names: Iterable[str], device: torch.device) -> None:
    """Load (or build, once per machine) what each backend needs before anything is timed."""
    for name in names:
        with detloss.use_backend(name):
            detloss.get_backend(device)


def _ours(loss: str) -> Fn:
    """The public loss function of ``loss``, mean-reduced (the backend is the caller's)."""
    fn = getattr(F, f"{loss}_loss")
    return lambda a, b: fn(a, b)


def rotated_backends(loss: str, names: Iterable[str]) -> list[str]:
    """The backends of ``names`` that have their own path for rotated ``loss``: the reference
    and native (the operators' C++ kernels on CPU; no pure-torch ``fused`` kernels)."""
    return [n for n in names if n in ("reference", "native")]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def peers(loss: str) -> dict[str, Fn]:
    """Public implementations of ``loss`` that are installed (fvcore, kornia, torchvision,
    ultralytics), each called as its package documents it, mean reduction where it has one
    (ultralytics' focal and varifocal losses: its own sum over anchors of the class mean)."""
    found: dict[str, Fn] = {}
    if _installed("torchvision"):
        from torchvision import ops as tv

        tv_box = {
            "giou": tv.generalized_box_iou_loss,
            "diou": tv.distance_box_iou_loss,
            "ciou": tv.complete_box_iou_loss,
        }
        if loss in tv_box:
            box_fn = tv_box[loss]
            found["torchvision"] = lambda a, b: box_fn(a, b, reduction="mean")
        if loss == "sigmoid_focal":
            found["torchvision"] = lambda a, b: tv.sigmoid_focal_loss(a, b, alpha=0.25, gamma=2.0, reduction="mean")
    if loss == "probiou" and _installed("ultralytics"):
        from ultralytics.utils.metrics import probiou

        found["ultralytics"] = lambda a, b: (1.0 - probiou(b, a)).mean()
    if _installed("ultralytics"):
        if loss in ("iou", "giou", "diou", "ciou"):
            from ultralytics.utils.metrics import bbox_iou

            flags = {"GIoU": loss == "giou", "DIoU": loss == "diou", "CIoU": loss == "ciou"}
            found["ultralytics"] = lambda a, b: (1.0 - bbox_iou(a, b, xywh=False, **flags)).mean()
        if loss == "sigmoid_focal":
            from ultralytics.utils.loss import FocalLoss

            focal = FocalLoss(gamma=2.0, alpha=0.25)
            found["ultralytics"] = lambda a, b: focal(a, b)
        if loss == "varifocal":
            from ultralytics.utils.loss import VarifocalLoss

            varifocal = VarifocalLoss(gamma=2.0, alpha=0.75)
            found["ultralytics"] = lambda a, b: varifocal(a, b, (b > 0).to(b.dtype))
    if _installed("fvcore"):
        from fvcore.nn import giou_loss, sigmoid_focal_loss

        if loss == "giou":
            found["fvcore"] = lambda a, b: giou_loss(a, b, reduction="mean")
        if loss == "sigmoid_focal":
            found["fvcore"] = lambda a, b: sigmoid_focal_loss(a, b, alpha=0.25, gamma=2.0, reduction="mean")
    if _installed("kornia") and loss == "sigmoid_focal":
        from kornia.losses import binary_focal_loss_with_logits

        found["kornia"] = lambda a, b: binary_focal_loss_with_logits(a, b, alpha=0.25, gamma=2.0, reduction="mean")
    return found


def bench_inputs(loss: str, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` of ``n`` box pairs (IoU family) or ``n`` logits as ``(n / 80, 80)``."""
    g = torch.Generator().manual_seed(0)
    if loss in ROTATED_LOSSES:  # near their targets: centres within 20% of the sides, angles 0.2 rad
        target = random_rotated_boxes(n, generator=g, dtype=torch.float32)
        noise = (torch.rand(target.shape, generator=g) - 0.5) * 0.4
        pred = target + noise * torch.cat((target[:, 2:4], target[:, 2:4], torch.ones(n, 1)), dim=1)
        return pred.to(device), target.to(device)
    if loss in IOU_LOSSES:
        target = random_boxes(n, generator=g, dtype=torch.float32)
        noise = (torch.rand(target.shape, generator=g) - 0.5) * 0.4
        sides = (target[:, 2:] - target[:, :2]).repeat(1, 2)
        pred = target + noise * sides
        pred = torch.cat((torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])), dim=1)
        return pred.to(device), target.to(device)
    rows = max(n // NUM_CLASSES, 1)
    logits = torch.randn(rows, NUM_CLASSES, generator=g) * 2 - 2
    target = torch.zeros(rows, NUM_CLASSES)
    positive = torch.rand(rows, generator=g) < 0.1
    classes = torch.randint(0, NUM_CLASSES, (rows,), generator=g)
    score = torch.rand(rows, generator=g) * 0.7 + 0.3  # soft IoU scores for QFL / varifocal
    target[positive, classes[positive]] = score[positive] if loss != "sigmoid_focal" else 1.0
    return logits.to(device), target.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once_s(step: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def _median_ms(*steps: Callable[[], Any], repeat: int, device: torch.device) -> list[float]:
    """Median ms of each step, the steps taken in turn ``repeat`` times (so that a slow spell
    of a shared machine falls on all of them alike)."""
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeat):
        for step, log in zip(steps, times):
            log.append(_once_s(step, device))
    return [statistics.median(log) * 1e3 for log in times]


def floor_copy(*inputs: torch.Tensor) -> Callable[[], None]:
    """The memory floor: read the inputs' bytes and write as many, into buffers made once (no
    allocation, so neither page faults nor the allocator's state after another step count)."""
    outputs = [torch.empty_like(t) for t in inputs]

    def copy() -> None:
        for out, t in zip(outputs, inputs):
            out.copy_(t)

    return copy


def _saved_bytes(forward: Callable[[], Any]) -> int:
    """Bytes of the unique storages that ``forward``'s autograd graph keeps for the backward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def _status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Set the kernel's resident-set high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    """Give the C heap's free pages back (glibc ``malloc_trim``), so that memory the step
    reuses from earlier frees counts as growth rather than hiding in the baseline."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _peak_bytes(step: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory growth of one ``step``: on CPU the resident-set high-water mark the kernel
    keeps (exact, whatever thread or native code allocates); on GPU the allocator's peak.
    ``None`` where neither can be read."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    _release_free_heap()
    if not os.path.exists("/proc/self/status") or not _reset_peak_rss():
        return None
    base = _status_bytes("VmRSS")
    step()
    return max(_status_bytes("VmHWM") - base, 0)


def _measure(
    loss: Callable[[], torch.Tensor],
    clear: Callable[[], None],
    inputs: tuple[torch.Tensor, ...],
    repeat: int,
    device: torch.device,
    tight: bool = False,
) -> dict[str, Any]:
    """Times of ``loss()`` and of its backward (``clear()`` drops the gradients between runs);
    ``floor_ms`` is the floor of ``inputs`` timed in turn with the forward + backward; with
    ``tight``, ``fwd_bwd_tight_ms`` is the forward + backward of :data:`TIGHT_CALLS` calls back
    to back, per call (threads kept awake; the median of ``repeat / 4`` such bursts, at least
    3), else ``None``."""

    def forward() -> None:
        loss()

    def forward_backward() -> None:
        clear()
        loss().backward()

    first = _once_s(forward_backward, device)  # warm-up (and compilation, for the compiled backend)
    if first > SLOW_CALL_S:  # a second warm-up: the first may have compiled
        repeat = _runs_for(_once_s(forward_backward, device), repeat)
    (fwd,) = _median_ms(forward, repeat=repeat, device=device)
    fwd_bwd, floor = _median_ms(forward_backward, floor_copy(*inputs), repeat=repeat, device=device)
    tight_ms = None
    if tight:

        def burst() -> None:
            for _ in range(TIGHT_CALLS):
                forward_backward()

        (burst_ms,) = _median_ms(burst, repeat=max(3, repeat // 4), device=device)  # each of TIGHT_CALLS calls
        tight_ms = round(burst_ms / TIGHT_CALLS, 4)
    clear()
    return {
        "fwd_ms": round(fwd, 4),
        "fwd_bwd_ms": round(fwd_bwd, 4),
        "fwd_bwd_tight_ms": tight_ms,
        "floor_ms": round(floor, 4),
        "saved_bytes": _saved_bytes(forward),
        "peak_bytes": _peak_bytes(forward_backward, device),
        "first_call_s": round(first, 3),
        "runs": repeat,
    }


def _time_impl(
    fn: Fn, pred: torch.Tensor, target: torch.Tensor, repeat: int, device: torch.device, tight: bool = False
) -> dict[str, Any]:
    """Times of ``fn(pred, target)``, ``pred`` requiring grad as in training."""
    x = pred.detach().clone().requires_grad_(True)

    def clear() -> None:
        x.grad = None

    return _measure(lambda: fn(x, target), clear, (pred, target), repeat, device, tight)


# ---------------------------------------------------------------- the compiled training step


class _StepHead(torch.nn.Module):
    """Per anchor: a box (cx, cy, w, h) and :data:`NUM_CLASSES` logits from 32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4 + NUM_CLASSES))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(features)
        return torch.cat((out[:, :2], out[:, 2:4].exp()), dim=-1), out[:, 4:]


def _step_inputs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(n, 32, generator=g)
    boxes = torch.cat((torch.randn(n, 2, generator=g), torch.rand(n, 2, generator=g) + 0.5), dim=-1)
    labels = torch.zeros(n, NUM_CLASSES)
    labels[torch.arange(n), torch.randint(0, NUM_CLASSES, (n,), generator=g)] = 1.0
    labels[torch.rand(n, generator=g) > 0.1] = 0.0  # 10% of anchors positive
    return features.to(device), boxes.to(device), labels.to(device)


class _CompiledStep:
    """A fresh head and its training step under ``torch.compile(dynamic=True, fullgraph=True)``,
    compiled on the first call and reused for every size (no recompilation: dynamic shapes)."""

    def __init__(self, device: torch.device, compile_backend: str) -> None:
        torch.manual_seed(0)
        self.model = _StepHead().to(device)
        self.compiled = torch.compile(self.step, dynamic=True, fullgraph=True, backend=compile_backend)
        self.calls = 0

    def step(self, features: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred, logits = self.model(features)
        return F.ciou_loss(pred, boxes, box_format="cxcywh") + F.sigmoid_focal_loss(logits, labels)

    def times(self, name: str, inputs: tuple[torch.Tensor, ...], repeat: int, device: torch.device) -> dict[str, Any]:
        """Times with backend ``name`` inside; ``compile_s`` on the first size only."""
        with detloss.use_backend(name):
            row = _measure(
                lambda: self.compiled(*inputs), lambda: self.model.zero_grad(set_to_none=True), inputs, repeat, device
            )
        row["compile_s"] = row["first_call_s"] if self.calls == 0 else None
        self.calls += 1
        return row


def _step_rows(
    sizes: Iterable[int],
    names: list[str],
    repeat: int,
    device: torch.device,
    compile_backend: str,
    progress: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    """Per size, one ``compiled-step`` row per backend (the reference first), each backend's step
    compiled once."""
    backends = list(dict.fromkeys(["reference", *names]))
    steps = {name: _CompiledStep(device, compile_backend) for name in backends}
    rows: list[dict[str, Any]] = []
    for n in sizes:
        inputs = _step_inputs(n, device)
        group = []
        for name in backends:
            if progress:
                progress(f"{COMPILED_STEP} n={n} {name}")
            group.append(
                {"loss": COMPILED_STEP, "impl": name, "n": n, **steps[name].times(name, inputs, repeat, device)}
            )
        reference = group[0]["fwd_bwd_ms"]
        for row in group:
            row["ratio_vs_reference"] = round(row["fwd_bwd_ms"] / reference, 4) if reference > 0 else None
            row["ratio_vs_fastest_peer"] = row["ratio_peak_vs_peer"] = None
            row["ratio_vs_floor"] = round(row["fwd_bwd_ms"] / row["floor_ms"], 3) if row["floor_ms"] > 0 else None
            row["saved_bytes_per_element"] = round(row["saved_bytes"] / max(n, 1), 2)
        rows += group
    return rows


def run_bench(
    losses: Iterable[str],
    sizes: Iterable[int] | None = None,
    *,
    backends: Iterable[str] | None = None,
    repeat: int = 7,
    device: str = "cpu",
    with_peers: bool = True,
    progress: Callable[[str], None] | None = None,
    compile_backend: str = "inductor",
) -> list[dict[str, Any]]:
    """One row per (loss, impl, n): ``loss``, ``impl``, ``n``, ``fwd_ms``, ``fwd_bwd_ms``,
    ``saved_bytes``, ``peak_bytes``, ``ratio_vs_fastest_peer``, ``ratio_vs_floor`` and a few more.

    ``sizes`` applies to every loss; ``None``: :data:`IOU_SIZES` box pairs for the IoU family,
    :data:`ROTATED_SIZES` pairs for the rotated losses (on the reference and native backends),
    :data:`BINARY_SIZES` logits for the binary family, :data:`STEP_SIZES` anchors for
    ``compiled-step`` (whose ``torch.compile`` backend is ``compile_backend``).
    """
    dev = torch.device(device)
    names = list(backends) if backends is not None else available_backends(dev)
    prepare_backends(names, dev)
    rows: list[dict[str, Any]] = []
    for loss in losses:
        if loss == COMPILED_STEP:
            step_sizes = [int(n) for n in (sizes if sizes is not None else STEP_SIZES)]
            rows += _step_rows(step_sizes, names, repeat, dev, compile_backend, progress)
            continue
        if loss in PAIRWISE_LOSSES:
            for n in sizes if sizes is not None else PAIRWISE_SIZES:
                rows += _pairwise_rows(loss, int(n), names, repeat, dev, with_peers, progress)
            continue
        default = IOU_SIZES if loss in IOU_LOSSES else ROTATED_SIZES if loss in ROTATED_LOSSES else BINARY_SIZES
        chosen = rotated_backends(loss, names) if loss in ROTATED_LOSSES else names
        for n in sizes if sizes is not None else default:
            rows += _loss_rows(loss, int(n), chosen, repeat, dev, with_peers, progress)
    return rows


def _loss_rows(
    loss: str,
    n: int,
    names: list[str],
    repeat: int,
    dev: torch.device,
    with_peers: bool,
    progress: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    """The floor, each backend and each installed peer on one loss and size."""
    pred, target = bench_inputs(loss, n, dev)
    pairs = loss in IOU_LOSSES or loss in ROTATED_LOSSES
    elements = pred.shape[0] if pairs else pred.numel()
    tight = elements <= (SMALL_PAIRS if pairs else SMALL_LOGITS)
    repeat = max(repeat, SMALL_REPEAT) if tight else repeat
    (floor,) = _median_ms(floor_copy(pred, target), repeat=max(3 * repeat, 15), device=dev)
    group: list[dict[str, Any]] = [
        {
            "loss": loss,
            "impl": "floor",
            "n": elements,
            "fwd_ms": round(floor, 4),
            "fwd_bwd_ms": round(floor, 4),
            "floor_ms": round(floor, 4),
            "fwd_bwd_tight_ms": None,
            "saved_bytes": 0,
            "peak_bytes": None,
        }
    ]
    call_floor = {"loss": loss, "impl": CALL_FLOOR, "n": elements}
    call_floor.update(_time_impl(_trivial, pred, target, repeat, dev, tight))
    group.append(call_floor)
    for name in names:
        if progress:
            progress(f"{loss} n={elements} {name}")
        with detloss.use_backend(name):
            times = _time_impl(_ours(loss), pred, target, repeat, dev, tight)
            row = {"loss": loss, "impl": name, "n": elements, **times}
        if name == "compiled":
            row["compile_s"] = row["first_call_s"]
        group.append(row)
    for peer, fn in (peers(loss) if with_peers else {}).items():
        if progress:
            progress(f"{loss} n={elements} {peer}")
        group.append({"loss": loss, "impl": peer, "n": elements, **_time_impl(fn, pred, target, repeat, dev, tight)})
    return _with_ratios(group, names, elements, call_floor)


def _with_ratios(
    group: list[dict[str, Any]], names: list[str], elements: int, call_floor: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Each row's ratios to the fastest peer's (time, peak), its floor and the call floor."""
    peer_rows = [r for r in group if r["impl"] not in (*names, "floor", CALL_FLOOR)]
    fastest = min(peer_rows, key=lambda r: r["fwd_bwd_ms"]) if peer_rows else None
    for r in group:
        r["ratio_vs_fastest_peer"] = round(r["fwd_bwd_ms"] / fastest["fwd_bwd_ms"], 4) if fastest else None
        peer_peak = fastest["peak_bytes"] if fastest else None
        r["ratio_peak_vs_peer"] = (
            round(r["peak_bytes"] / peer_peak, 4) if peer_peak and r["peak_bytes"] is not None else None
        )
        r["ratio_vs_floor"] = round(r["fwd_bwd_ms"] / r["floor_ms"], 3) if r["floor_ms"] > 0 else None
        r["ratio_vs_call_floor"] = r["ratio_tight_vs_call_floor"] = None
        if call_floor is not None:
            r["ratio_vs_call_floor"] = round(r["fwd_bwd_ms"] / call_floor["fwd_bwd_ms"], 3)
            tight_ms, tight_floor = r["fwd_bwd_tight_ms"], call_floor["fwd_bwd_tight_ms"]
            r["ratio_tight_vs_call_floor"] = round(tight_ms / tight_floor, 3) if tight_ms and tight_floor else None
        r["saved_bytes_per_element"] = round(r["saved_bytes"] / max(elements, 1), 2)
    return group


def pairwise_peers(kind: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Installed all-pairs similarities of ``kind`` (torchvision's box_iou family)."""
    if not _installed("torchvision"):
        return {}
    from torchvision import ops as tv

    fns = {"iou": tv.box_iou, "giou": tv.generalized_box_iou, "diou": tv.distance_box_iou, "ciou": tv.complete_box_iou}
    return {"torchvision": fns[kind]} if kind in fns else {}


def _pairwise_rows(
    loss: str,
    n: int,
    names: list[str],
    repeat: int,
    dev: torch.device,
    with_peers: bool,
    progress: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    """``pairwise_iou`` of ``n / 10`` x ``n`` boxes (no gradient) on each backend and peer; the
    floor writes the ``(n / 10, n)`` result once (``torch.ones``). ``n`` of a row: the pairs."""
    kind = loss.split("-", 1)[1]
    g = torch.Generator().manual_seed(0)
    rows_n = max(n // 10, 1)
    b1 = random_boxes(rows_n, generator=g, dtype=torch.float32).to(dev)
    b2 = random_boxes(n, generator=g, dtype=torch.float32).to(dev)
    pairs = rows_n * n

    def floor() -> None:
        torch.ones(rows_n, n, device=dev)

    impls: dict[str, Callable[[], Any]] = {}
    for name in names:

        def ours(name: str = name) -> Any:
            with torch.no_grad(), detloss.use_backend(name):
                return detloss.boxes.pairwise_iou(b1, b2, kind)  # type: ignore[arg-type]

        impls[name] = ours
    for peer, fn in (pairwise_peers(kind) if with_peers else {}).items():

        def theirs(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = fn) -> Any:
            return fn(b1, b2)

        impls[peer] = theirs
    group: list[dict[str, Any]] = []
    for impl, step in [("floor", floor), *impls.items()]:
        if progress:
            progress(f"{loss} n={pairs} {impl}")
        runs = _runs_for(_once_s(step, dev), repeat)  # the first call warms up
        ms, floor_ms = _median_ms(step, floor, repeat=runs, device=dev)
        group.append(
            {
                "loss": loss,
                "impl": impl,
                "n": pairs,
                "fwd_ms": round(ms, 4),
                "fwd_bwd_ms": round(ms, 4),
                "fwd_bwd_tight_ms": None,
                "floor_ms": round(floor_ms, 4),
                "saved_bytes": 0,
                "peak_bytes": _peak_bytes(step, dev),
                "runs": runs,
            }
        )
    return _with_ratios(group, names, pairs, None)


def report_markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """A short report: the tables and how to read them."""
    lines = [
        "# detloss bench",
        "",
        f"torch {header.get('torch_version')}, {header.get('threads')} threads, device {header.get('device')}; "
        f"median of {header.get('repeat')} runs ({SLOW_REPEAT} where a call takes over {SLOW_CALL_S:g} s: "
        "`*` after its time). `floor` = copying the inputs once; `x floor` divides by the "
        "floor timed in turn with that row's forward+backward. Time ratios are forward+backward times; "
        "`peak x peer` is peak memory growth over the fastest peer's. "
        f"`{CALL_FLOOR}`: a trivial autograd Function on the same inputs (forward `(p - t).sum()`, backward "
        "`ones_like(p) * g`), the least a differentiable call costs; `x call` divides by its forward+backward, "
        f"round-robin / in a tight loop ({TIGHT_CALLS} calls back to back, small sizes only: `tight ms`). "
        "`pairwise-*`: `pairwise_iou` of n / 10 x n boxes without gradient (n in the table: the pairs), "
        "its floor writing the result once; no backward (both time columns are the forward).",
    ]
    losses = [r for r in rows if r["loss"] != COMPILED_STEP]
    if losses:
        lines += [
            "",
            "| loss | impl | n | fwd ms | fwd+bwd ms | tight ms | x floor | x call | x fastest peer | saved B/elem "
            "| peak MB | peak x peer |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in losses:
        peer = "" if r["ratio_vs_fastest_peer"] is None else f"{r['ratio_vs_fastest_peer']:.3f}"
        tight = "" if r["fwd_bwd_tight_ms"] is None else f"{r['fwd_bwd_tight_ms']:.3f}"
        call = "" if r["ratio_vs_call_floor"] is None else f"{r['ratio_vs_call_floor']:.2f}"
        if r["ratio_tight_vs_call_floor"] is not None:
            call += f" / {r['ratio_tight_vs_call_floor']:.2f}"
        peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        peak_peer = "" if r["ratio_peak_vs_peer"] is None else f"{r['ratio_peak_vs_peer']:.3f}"
        few = "*" if r.get("runs", 0) and r["runs"] < (header.get("repeat") or 0) else ""
        lines.append(
            f"| {r['loss']} | {r['impl']} | {r['n']:,} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f}{few} | {tight} | "
            f"{r['ratio_vs_floor']:.2f} | {call} | {peer} | {r['saved_bytes_per_element']:g} | {peak} | {peak_peer} |"
        )
    steps = [r for r in rows if r["loss"] == COMPILED_STEP]
    if steps:
        lines += [
            "",
            f"`{COMPILED_STEP}`: a detection head's training step (n anchors, a box and {NUM_CLASSES} logits each; "
            "CIoU + sigmoid focal loss; forward and backward) under `torch.compile(dynamic=True, fullgraph=True)` "
            "with each backend's losses inside; `x reference` over the same compiled step with the reference losses.",
            "",
            "| impl | n | compile s | fwd ms | fwd+bwd ms | x reference | peak MB |",
            "|---|---|---|---|---|---|---|",
        ]
    for r in steps:
        ratio = "" if r["ratio_vs_reference"] is None else f"{r['ratio_vs_reference']:.3f}"
        peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        lines.append(
            f"| {r['impl']} | {r['n']:,} | {compile_s} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {ratio} | {peak} |"
        )
    return "\n".join(lines) + "\n"
