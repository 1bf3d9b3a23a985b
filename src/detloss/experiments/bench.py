"""``detloss bench``: time every fused loss on each backend, against the reference path, the
public peers that are installed, and the memory floor, all in the same run.

For each loss and size ``n`` (box pairs for the IoU family; logits, as ``(n / 80, 80)``, for
the binary family) and each implementation:

- ``fwd_ms``, ``fwd_bwd_ms``: median wall time of the forward (inputs requiring grad, as in
  training) and of forward + backward, mean reduction, after one warm-up call;
- ``saved_bytes``: bytes the autograd graph keeps for the backward (unique storages seen by
  ``torch.autograd.graph.saved_tensors_hooks``);
- ``peak_bytes``: growth of the process's resident memory during one forward + backward,
  sampled every ~0.1 ms by a thread (CPU; on GPU ``torch.cuda.max_memory_allocated``);
- ``ratio_vs_floor``: ``fwd_bwd_ms`` over the floor, the time of copying the inputs' bytes
  once (``impl="floor"`` rows: a clone of prediction and target), measured in the same run;
- ``ratio_vs_fastest_peer``: ``fwd_bwd_ms`` over the fastest installed peer's (``None`` if
  no peer implements that loss or none is installed: ``pip install -e .[bench]``);
- ``compile_s`` (compiled backend): the first call's time, compilation included.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

import detloss
from detloss import functional as F
from detloss.testing import random_boxes

__all__ = ["IOU_LOSSES", "BINARY_LOSSES", "NUM_CLASSES", "available_backends", "peers", "run_bench"]

IOU_LOSSES = ("iou", "giou", "diou", "ciou", "eiou", "siou")
BINARY_LOSSES = ("sigmoid_focal", "quality_focal", "varifocal", "binary_cross_entropy")
NUM_CLASSES = 80
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def available_backends(device: torch.device) -> list[str]:
    """The backends worth timing here: native when it builds (CPU), compiled on GPU."""
    from detloss._fused import native

    names = ["reference", "fused"]
    if device.type == "cpu" and native.available():
        names.append("native")
    if device.type != "cpu":
        names.append("compiled")
    return names


def _ours(loss: str) -> Fn:
    fn = getattr(F, f"{loss}_loss")
    return lambda a, b: fn(a, b)


def peers(loss: str) -> dict[str, Fn]:
    """Public implementations of ``loss`` that are installed (fvcore, kornia)."""
    found: dict[str, Fn] = {}
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


def _inputs(loss: str, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
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


def _median_ms(step: Callable[[], Any], repeat: int, device: torch.device) -> float:
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _copy(pred: torch.Tensor, target: torch.Tensor) -> None:
    """The memory floor: read and write the inputs' bytes once."""
    pred.clone()
    target.clone()


def _saved_bytes(fn: Fn, pred: torch.Tensor, target: torch.Tensor) -> int:
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    x = pred.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, target)
    return sum(seen.values())


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes(step: Callable[[], Any], device: torch.device) -> int | None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if not os.path.exists("/proc/self/statm"):
        return None
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(1e-4)

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        step()
        peak[0] = max(peak[0], _rss())
    finally:
        done.set()
        watcher.join()
        sys.setswitchinterval(interval)
    return max(peak[0] - base, 0)


def _time_impl(fn: Fn, pred: torch.Tensor, target: torch.Tensor, repeat: int, device: torch.device) -> dict[str, Any]:
    x = pred.detach().clone().requires_grad_(True)

    def forward() -> None:
        fn(x, target)

    def forward_backward() -> None:
        x.grad = None
        fn(x, target).backward()

    start = time.perf_counter()
    forward_backward()  # warm-up (and compilation, for the compiled backend)
    _sync(device)
    first = time.perf_counter() - start
    fwd = _median_ms(forward, repeat, device)
    fwd_bwd = _median_ms(forward_backward, repeat, device)
    x.grad = None
    return {
        "fwd_ms": round(fwd, 4),
        "fwd_bwd_ms": round(fwd_bwd, 4),
        "saved_bytes": _saved_bytes(fn, pred, target),
        "peak_bytes": _peak_bytes(forward_backward, device),
        "first_call_s": round(first, 3),
    }


def run_bench(
    losses: Iterable[str],
    sizes: Iterable[int],
    *,
    backends: Iterable[str] | None = None,
    repeat: int = 7,
    device: str = "cpu",
    with_peers: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (loss, impl, n), keys as in DESIGN.md's ``bench`` rows (plus a few)."""
    dev = torch.device(device)
    names = list(backends) if backends is not None else available_backends(dev)
    rows: list[dict[str, Any]] = []
    previous = detloss._backend._chosen
    try:
        for loss in losses:
            for n in sizes:
                pred, target = _inputs(loss, int(n), dev)
                elements = pred.numel() if loss not in IOU_LOSSES else pred.shape[0]
                group: list[dict[str, Any]] = []
                floor = _median_ms(functools.partial(_copy, pred, target), max(repeat, 5), dev)
                group.append(
                    {
                        "loss": loss,
                        "impl": "floor",
                        "n": elements,
                        "fwd_ms": round(floor, 4),
                        "fwd_bwd_ms": round(floor, 4),
                        "saved_bytes": 0,
                        "peak_bytes": None,
                    }
                )
                for name in names:
                    detloss.set_backend(name)
                    if progress:
                        progress(f"{loss} n={elements} {name}")
                    row = {
                        "loss": loss,
                        "impl": name,
                        "n": elements,
                        **_time_impl(_ours(loss), pred, target, repeat, dev),
                    }
                    if name == "compiled":
                        row["compile_s"] = row["first_call_s"]
                    group.append(row)
                detloss.set_backend(previous)
                for peer, fn in (peers(loss) if with_peers else {}).items():
                    if progress:
                        progress(f"{loss} n={elements} {peer}")
                    group.append(
                        {"loss": loss, "impl": peer, "n": elements, **_time_impl(fn, pred, target, repeat, dev)}
                    )
                peer_times = [r["fwd_bwd_ms"] for r in group if r["impl"] not in names and r["impl"] != "floor"]
                fastest = min(peer_times) if peer_times else None
                for r in group:
                    r["ratio_vs_fastest_peer"] = round(r["fwd_bwd_ms"] / fastest, 4) if fastest else None
                    r["ratio_vs_floor"] = round(r["fwd_bwd_ms"] / floor, 3) if floor > 0 else None
                    r["saved_bytes_per_element"] = round(r["saved_bytes"] / max(elements, 1), 2)
                rows += group
    finally:
        detloss.set_backend(previous)
    return rows


def report_markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """A short report: the table and how to read it."""
    lines = [
        "# detloss bench",
        "",
        f"torch {header.get('torch_version')}, {header.get('threads')} threads, device {header.get('device')}; "
        f"median of {header.get('repeat')} runs. `floor` = copying the inputs once (same run). "
        "Ratios are forward+backward times.",
        "",
        "| loss | impl | n | fwd ms | fwd+bwd ms | x floor | x fastest peer | saved B/elem | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peer = "" if r["ratio_vs_fastest_peer"] is None else f"{r['ratio_vs_fastest_peer']:.3f}"
        peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        lines.append(
            f"| {r['loss']} | {r['impl']} | {r['n']:,} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
            f"{r['ratio_vs_floor']:.2f} | {peer} | {r['saved_bytes_per_element']:g} | {peak} |"
        )
    return "\n".join(lines) + "\n"
