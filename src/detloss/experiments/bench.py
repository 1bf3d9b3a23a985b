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
- ``compile_s`` (compiled backend): the first call's time, compilation included.

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
from detloss.testing import random_boxes, random_rotated_boxes

__all__ = [
    "BENCH_LOSSES",
    "BINARY_LOSSES",
    "BINARY_SIZES",
    "COMPILED_STEP",
    "IOU_LOSSES",
    "IOU_SIZES",
    "NUM_CLASSES",
    "ROTATED_LOSSES",
    "ROTATED_NATIVE",
    "ROTATED_SIZES",
    "STEP_SIZES",
    "available_backends",
    "bench_inputs",
    "floor_copy",
    "peers",
    "prepare_backends",
    "report_markdown",
    "rotated_backends",
    "run_bench",
]

IOU_LOSSES = ("iou", "giou", "diou", "ciou", "eiou", "siou")
BINARY_LOSSES = ("sigmoid_focal", "quality_focal", "varifocal", "binary_cross_entropy")
ROTATED_LOSSES = ("probiou", "kld", "gwd", "kfiou", "rotated_iou")
NUM_CLASSES = 80
COMPILED_STEP = "compiled-step"
BENCH_LOSSES = (*IOU_LOSSES, *BINARY_LOSSES, *ROTATED_LOSSES, COMPILED_STEP)
IOU_SIZES = (10_000, 100_000, 1_000_000)  # box pairs
ROTATED_SIZES = (100_000, 1_000_000)  # rotated box pairs
BINARY_SIZES = (80_000, 800_000, 8_000_000)  # logits: 1,000 / 10,000 / 100,000 anchors x 80 classes
STEP_SIZES = (1_000, 10_000, 100_000)  # anchors of the compiled step, each a box and 80 logits
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _ours(loss: str, backend: str = "reference") -> Fn:
    if backend == "native" and loss in ROTATED_NATIVE:
        kind, fun, tau = ROTATED_NATIVE[loss]
        op = torch.ops.detloss.rotated_gaussian_loss
        return lambda a, b: op(a, b, kind, fun, tau, 1e-7).mean()
    fn = getattr(F, f"{loss}_loss")
    return lambda a, b: fn(a, b)


#: The rotated losses with a native operator, ``torch.ops.detloss.rotated_gaussian_loss``:
#: its ``kind``, ``fun`` and ``tau`` for the loss's defaults.
ROTATED_NATIVE: dict[str, tuple[str, str, float]] = {
    "probiou": ("bhattacharyya", "hellinger", 0.0),
    "kld": ("kld", "log1p", 1.0),
    "gwd": ("gwd", "sqrt", 2.0),
}


def rotated_backends(loss: str, names: Iterable[str]) -> list[str]:
    """The backends of ``names`` that have their own path for rotated ``loss``: the reference,
    and native for :data:`ROTATED_NATIVE`."""
    return [n for n in names if n == "reference" or (n == "native" and loss in ROTATED_NATIVE)]


def peers(loss: str) -> dict[str, Fn]:
    """Public implementations of ``loss`` that are installed (fvcore, kornia, ultralytics)."""
    found: dict[str, Fn] = {}
    if loss == "probiou" and importlib.util.find_spec("ultralytics") is not None:
        from ultralytics.utils.metrics import probiou

        found["ultralytics"] = lambda a, b: (1.0 - probiou(b, a)).mean()
    if importlib.util.find_spec("fvcore") is not None:
        from fvcore.nn import giou_loss, sigmoid_focal_loss

        if loss == "giou":
            found["fvcore"] = lambda a, b: giou_loss(a, b, reduction="mean")
        if loss == "sigmoid_focal":
            found["fvcore"] = lambda a, b: sigmoid_focal_loss(a, b, alpha=0.25, gamma=2.0, reduction="mean")
    if importlib.util.find_spec("kornia") is not None and loss == "sigmoid_focal":
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
) -> dict[str, Any]:
    """Times of ``loss()`` and of its backward (``clear()`` drops the gradients between runs);
    ``floor_ms`` is the floor of ``inputs`` timed in turn with the forward + backward."""

    def forward() -> None:
        loss()

    def forward_backward() -> None:
        clear()
        loss().backward()

    first = _once_s(forward_backward, device)  # warm-up (and compilation, for the compiled backend)
    (fwd,) = _median_ms(forward, repeat=repeat, device=device)
    fwd_bwd, floor = _median_ms(forward_backward, floor_copy(*inputs), repeat=repeat, device=device)
    clear()
    return {
        "fwd_ms": round(fwd, 4),
        "fwd_bwd_ms": round(fwd_bwd, 4),
        "floor_ms": round(floor, 4),
        "saved_bytes": _saved_bytes(forward),
        "peak_bytes": _peak_bytes(forward_backward, device),
        "first_call_s": round(first, 3),
    }


def _time_impl(fn: Fn, pred: torch.Tensor, target: torch.Tensor, repeat: int, device: torch.device) -> dict[str, Any]:
    """Times of ``fn(pred, target)``, ``pred`` requiring grad as in training."""
    x = pred.detach().clone().requires_grad_(True)

    def clear() -> None:
        x.grad = None

    return _measure(lambda: fn(x, target), clear, (pred, target), repeat, device)


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
    :data:`ROTATED_SIZES` pairs for the rotated losses (on the reference backend, and native
    for :data:`ROTATED_NATIVE`), :data:`BINARY_SIZES` logits for the binary family, :data:`STEP_SIZES` anchors for
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
    elements = pred.shape[0] if loss in IOU_LOSSES or loss in ROTATED_LOSSES else pred.numel()
    (floor,) = _median_ms(floor_copy(pred, target), repeat=max(3 * repeat, 15), device=dev)
    group: list[dict[str, Any]] = [
        {
            "loss": loss,
            "impl": "floor",
            "n": elements,
            "fwd_ms": round(floor, 4),
            "fwd_bwd_ms": round(floor, 4),
            "floor_ms": round(floor, 4),
            "saved_bytes": 0,
            "peak_bytes": None,
        }
    ]
    for name in names:
        if progress:
            progress(f"{loss} n={elements} {name}")
        with detloss.use_backend(name):
            row = {
                "loss": loss,
                "impl": name,
                "n": elements,
                **_time_impl(_ours(loss, name), pred, target, repeat, dev),
            }
        if name == "compiled":
            row["compile_s"] = row["first_call_s"]
        group.append(row)
    for peer, fn in (peers(loss) if with_peers else {}).items():
        if progress:
            progress(f"{loss} n={elements} {peer}")
        group.append({"loss": loss, "impl": peer, "n": elements, **_time_impl(fn, pred, target, repeat, dev)})
    peer_rows = [r for r in group if r["impl"] not in names and r["impl"] != "floor"]
    fastest = min(peer_rows, key=lambda r: r["fwd_bwd_ms"]) if peer_rows else None
    for r in group:
        r["ratio_vs_fastest_peer"] = round(r["fwd_bwd_ms"] / fastest["fwd_bwd_ms"], 4) if fastest else None
        peer_peak = fastest["peak_bytes"] if fastest else None
        r["ratio_peak_vs_peer"] = (
            round(r["peak_bytes"] / peer_peak, 4) if peer_peak and r["peak_bytes"] is not None else None
        )
        r["ratio_vs_floor"] = round(r["fwd_bwd_ms"] / r["floor_ms"], 3) if r["floor_ms"] > 0 else None
        r["saved_bytes_per_element"] = round(r["saved_bytes"] / max(elements, 1), 2)
    return group


def report_markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """A short report: the tables and how to read them."""
    lines = [
        "# detloss bench",
        "",
        f"torch {header.get('torch_version')}, {header.get('threads')} threads, device {header.get('device')}; "
        f"median of {header.get('repeat')} runs. `floor` = copying the inputs once; `x floor` divides by the "
        "floor timed in turn with that row's forward+backward. Time ratios are forward+backward times; "
        "`peak x peer` is peak memory growth over the fastest peer's.",
    ]
    losses = [r for r in rows if r["loss"] != COMPILED_STEP]
    if losses:
        lines += [
            "",
            "| loss | impl | n | fwd ms | fwd+bwd ms | x floor | x fastest peer | saved B/elem | peak MB "
            "| peak x peer |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in losses:
        peer = "" if r["ratio_vs_fastest_peer"] is None else f"{r['ratio_vs_fastest_peer']:.3f}"
        peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        peak_peer = "" if r["ratio_peak_vs_peer"] is None else f"{r['ratio_peak_vs_peer']:.3f}"
        lines.append(
            f"| {r['loss']} | {r['impl']} | {r['n']:,} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
            f"{r['ratio_vs_floor']:.2f} | {peer} | {r['saved_bytes_per_element']:g} | {peak} | {peak_peer} |"
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
