"""Per-call cost of a loss's forward + backward at small sizes, against a trivial Function.

A training step calls its losses on a few thousand boxes, where the fixed cost of a call
(argument checks, dispatch, autograd bookkeeping) can outweigh the arithmetic. This times,
in one process and interleaved (so that a slow spell of a shared machine falls on all rows
alike), the median forward + backward of:

- ``trivial Function``: a ``torch.autograd.Function`` whose forward is ``(p - t).sum()`` and
  whose backward is ``ones_like(p) * g``: about the least any differentiable call costs;
- ``operator``: ``torch.ops.detloss.iou_loss`` called directly, then ``.sum()``: the operator
  and its autograd alone (the native kernel on CPU);
- ``ciou_loss <backend>``: the public loss on ``n`` pairs, mean reduction, under each backend;
- ``sigmoid_focal_loss <backend>``: the public loss on ``(n, 80)`` logits, likewise.

    python benchmarks/call_overhead.py                  # 1,000 and 10,000 pairs, 1 thread
    python benchmarks/call_overhead.py --sizes 1000 --threads 2 --calls 3000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import detloss
from detloss import functional as F
from detloss.experiments.bench import TrivialFunction as Trivial
from detloss.testing import random_boxes


def rows_for(n: int) -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(0)
    target = random_boxes(n, generator=g, dtype=torch.float32)
    pred = (target + (torch.rand(target.shape, generator=g) - 0.5)).requires_grad_(True)
    logits = torch.randn(n, 80, generator=g).requires_grad_(True)
    labels = (torch.rand(n, 80, generator=g) < 0.01).float()

    def clear() -> None:
        pred.grad = logits.grad = None

    steps: dict[str, Callable[[], None]] = {
        "trivial Function": lambda: (clear(), Trivial.apply(pred, target).backward()),
        "operator iou_loss (ciou)": lambda: (
            clear(),
            torch.ops.detloss.iou_loss(pred, target, "ciou", 1e-7, False, False, 4.0)[0].sum().backward(),
        ),
    }
    for backend in ("reference", "native"):

        def ciou(backend: str = backend) -> None:
            clear()
            with detloss.use_backend(backend):
                F.ciou_loss(pred, target).backward()

        def focal(backend: str = backend) -> None:
            clear()
            with detloss.use_backend(backend):
                F.sigmoid_focal_loss(logits, labels).backward()

        steps[f"ciou_loss {backend}"] = ciou
        steps[f"sigmoid_focal_loss {backend} ({n} x 80)"] = focal
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per row and size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = detloss.backend_info()
    print(f"torch {torch.__version__}, {args.threads} threads, native kernel: {info.native_library is not None}")
    print("| n | call | median us | x trivial |")
    print("|---|---|---|---|")
    for n in [int(float(x)) for x in args.sizes.split(",") if x]:
        steps = rows_for(n)
        for step in steps.values():  # warm-up (and the native build, if it was not there)
            step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.calls):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        trivial = statistics.median(times["trivial Function"])
        for name, log in times.items():
            median = statistics.median(log)
            print(f"| {n:,} | {name} | {median * 1e6:.1f} | {median / trivial:.2f} |")


if __name__ == "__main__":
    main()
