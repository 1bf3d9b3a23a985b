"""Roofline of the native IoU kernels: is forward + backward bound by memory or by arithmetic?

For each IoU kind, in one run on this machine:

- compute: ns per pair of the native forward and backward kernels on 32,768 pairs (1 MiB of
  boxes, resident in cache), called back to back: the arithmetic ceiling, memory aside;
- memory: ns per pair of the floor (copying the 32 bytes of a pair's boxes into buffers made
  beforehand: 64 bytes moved, as ``detloss bench``) at 10^6 pairs, scaled to the bytes a
  forward + backward must move per pair: read the boxes twice (64), write loss and IoU (8),
  read the loss for the mean (4), write the gradient (16): 92 bytes, 1.44 floors;
- bound: the larger of the two, as a multiple of the floor, against the measured kernels at
  10^6 pairs (kernels only: no Python, no reduction).

    python benchmarks/roofline.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import detloss
from detloss.experiments.bench import IOU_LOSSES, bench_inputs, floor_copy

BYTES_FLOOR = 64  # read 32 bytes of boxes, write 32
BYTES_FWD_BWD = 32 + 8 + 4 + 32 + 16


def ns_per_pair(step: Callable[[], Any], n: int, calls: int, repeat: int = 7) -> float:
    step()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        runs.append((time.perf_counter() - start) / calls)
    return statistics.median(runs) / n * 1e9


def kernel_steps(kind: str, n: int) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]:
    """The operators' CPU kernels (``torch.ops.detloss.iou_loss`` and its backward), called
    directly: no autograd, no reduction."""
    pred, target = bench_inputs(kind, n, torch.device("cpu"))
    grad = torch.full((1,), 1.0 / n).expand(n)  # the mean's upstream gradient
    forward_op, backward_op = torch.ops.detloss.iou_loss.default, torch.ops.detloss.iou_loss_backward.default

    def forward() -> None:
        forward_op(pred, target, kind, 1e-7, False, False, 4.0)

    def backward() -> None:
        backward_op(pred, target, grad, None, kind, 1e-7, False, False, 4.0, False)

    return forward, backward, floor_copy(pred, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = detloss.backend_info()
    if info.native_library is None:
        raise SystemExit(f"native kernel unavailable: {info.native_failure}")
    print(f"{args.threads} threads; ns per pair; floor = copying a pair's boxes ({BYTES_FLOOR} bytes moved)")
    print("| kind | compute fwd+bwd (in cache) | memory (92 B) | floor | bound x floor | measured x floor |")
    print("|---|---|---|---|---|---|")
    for kind in IOU_LOSSES:
        fwd_c, bwd_c, _ = kernel_steps(kind, 32_768)
        compute = ns_per_pair(fwd_c, 32_768, 200) + ns_per_pair(bwd_c, 32_768, 200)
        fwd, bwd, floor_step = kernel_steps(kind, 1_000_000)
        floor = ns_per_pair(floor_step, 1_000_000, 10)
        measured = ns_per_pair(fwd, 1_000_000, 10) + ns_per_pair(bwd, 1_000_000, 10)
        memory = floor * BYTES_FWD_BWD / BYTES_FLOOR
        bound = max(compute, memory)
        print(
            f"| {kind} | {compute:.2f} | {memory:.2f} | {floor:.2f} | {bound / floor:.2f} "
            f"({'compute' if compute > memory else 'memory'}) | {measured / floor:.2f} |"
        )


if __name__ == "__main__":
    main()
