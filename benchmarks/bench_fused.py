"""Time the fused losses against the reference path, installed peers and the memory floor.

The same measurement as ``detloss bench`` (see :mod:`detloss.experiments.bench`), as a
script for quick runs outside the CLI:

    python benchmarks/bench_fused.py                      # CIoU and sigmoid focal, 2 threads
    python benchmarks/bench_fused.py --losses giou --sizes 1e6 --threads 2
    python benchmarks/roofline.py                         # is each IoU kernel memory- or compute-bound?

Peers (fvcore, kornia) are timed when installed: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse

import torch

from detloss.experiments.bench import report_markdown, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default="ciou,sigmoid_focal")
    parser.add_argument("--sizes", default="", help="default: 1e4,1e5,1e6 pairs; 8e4,8e5,8e6 logits")
    parser.add_argument("--backends", default="")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run_bench(
        [x for x in args.losses.split(",") if x],
        [int(float(x)) for x in args.sizes.split(",") if x] or None,
        backends=[x for x in args.backends.split(",") if x] or None,
        repeat=args.repeat,
    )
    header = {"torch_version": torch.__version__, "threads": args.threads, "device": "cpu", "repeat": args.repeat}
    print(report_markdown(rows, header))


if __name__ == "__main__":
    main()
