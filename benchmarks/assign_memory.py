"""Peak memory (and time) of each assigner of ``detloss.assign`` against ultralytics' TaskAlignedAssigner.

The case of a YOLOv8 training step at 640 x 640: B = 16 images, 8,400 anchors (strides 8, 16,
32), 100 objects per image, 80 classes, float32 inputs:

    python benchmarks/assign_memory.py                 # every assigner, a table in markdown
    python benchmarks/assign_memory.py --batch 4 --objects 20 --json out.json

How it measures: each assigner runs in a fresh process (so no allocator cache is shared),
with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB so that every tensor buffer is its
own mapping, returned to the system when freed. The process builds the inputs, runs the
assigner once on them (warm-up: thread pools, lazy imports), resets the kernel's peak
resident-set counter (``/proc/self/clear_refs``, Linux), runs it again, and reports the
peak resident set minus the resident set just before the call: the memory the call took,
its outputs included. CPU only; on a GPU ``torch.cuda.max_memory_allocated`` would give the
same quantity per device. Seconds come from another fresh process with the default
allocator (mapping every buffer slows small ones down): the median of 3 calls after a
warm-up. ultralytics' assigner is measured when ultralytics is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ASSIGNERS = ("detloss-tal", "detloss-tal-yolov8", "detloss-atss", "detloss-simota", "ultralytics-tal")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _inputs(batch: int, objects: int, classes: int, seed: int = 0) -> dict[str, Any]:
    from detloss.assign import make_anchors

    g = torch.Generator().manual_seed(seed)
    anchors = make_anchors([(80, 80), (40, 40), (20, 20)], [8, 16, 32])
    count = anchors.points.shape[0]
    ltrb = (torch.rand(batch, count, 4, generator=g) * 6 + 0.5) * anchors.strides[:, None]
    boxes = torch.cat([anchors.points - ltrb[..., :2], anchors.points + ltrb[..., 2:]], dim=-1)
    centre = torch.rand(batch, objects, 2, generator=g) * 560 + 40
    size = torch.rand(batch, objects, 2, generator=g) * 190 + 10
    gt = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    counts = torch.randint(objects // 2, objects + 1, (batch,), generator=g)
    counts[0] = objects
    mask = torch.arange(objects)[None] < counts[:, None]
    return {
        "scores": torch.rand(batch, count, classes, generator=g) * 0.5,
        "boxes": boxes,
        "anchors": anchors,
        "gt_labels": torch.randint(0, classes, (batch, objects), generator=g) * mask,
        "gt_boxes": gt * mask[..., None],
        "gt_mask": mask,
    }


def _runner(name: str, classes: int) -> Any:
    if name == "ultralytics-tal":
        from ultralytics.utils.tal import TaskAlignedAssigner as UltralyticsTAL

        tal = UltralyticsTAL(topk=10, num_classes=classes, alpha=0.5, beta=6.0, stride=[8, 16, 32])

        def run(p: dict[str, Any]) -> Any:
            mask = p["gt_mask"][..., None].float()
            return tal(p["scores"], p["boxes"], p["anchors"].points, p["gt_labels"][..., None], p["gt_boxes"], mask)

        return run
    from detloss.assign import ATSSAssigner, SimOTAAssigner, TaskAlignedAssigner

    assigner = {
        "detloss-tal": TaskAlignedAssigner(),
        "detloss-tal-yolov8": TaskAlignedAssigner.yolov8(),
        "detloss-atss": ATSSAssigner(),
        "detloss-simota": SimOTAAssigner(),
    }[name]
    return lambda p: assigner(p["scores"], p["boxes"], p["anchors"], p["gt_labels"], p["gt_boxes"], p["gt_mask"])


def measure_one(name: str, batch: int, objects: int, classes: int, threads: int, mode: str) -> dict[str, Any]:
    """Peak bytes (``mode="memory"``) or seconds (``"time"``) of one call, in this process
    (call it in a fresh one)."""
    torch.set_num_threads(threads)
    p = _inputs(batch, objects, classes)
    run = _runner(name, classes)
    out = run(p)  # warm-up
    del out
    if mode == "time":
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run(p)
            times.append(time.perf_counter() - start)
        return {"assigner": name, "seconds": sorted(times)[1]}
    before = _rss()
    _reset_peak()
    out = run(p)
    peak = _peak() - before
    return {"assigner": name, "peak_bytes": peak, "positives": int(out[3].sum())}


def _child(name: str, args: argparse.Namespace, mode: str) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--one", name, "--mode", mode, "--batch", str(args.batch)]
    command += ["--objects", str(args.objects), "--classes", str(args.classes), "--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if mode == "memory" else None
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        print(f"{name} ({mode}): failed: {last}")
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--assigners", default=",".join(ASSIGNERS))
    parser.add_argument("--no-time", action="store_true", help="memory only")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--mode", default="memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.batch, args.objects, args.classes, args.threads, args.mode)))
        return
    rows = []
    for name in [a for a in args.assigners.split(",") if a]:
        row = _child(name, args, "memory")
        if row is None:
            continue
        timing = None if args.no_time else _child(name, args, "time")
        row["seconds"] = None if timing is None else timing["seconds"]
        rows.append(row)
    peer = next((r["peak_bytes"] for r in rows if r["assigner"] == "ultralytics-tal"), None)
    print(f"B = {args.batch}, A = 8400, T = {args.objects}, C = {args.classes}, float32, CPU, {args.threads} threads")
    print("| assigner | peak MB | vs ultralytics | seconds | positives |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["ratio_peak_vs_peer"] = None if peer is None else r["peak_bytes"] / peer
        ratio = "-" if peer is None else f"{r['ratio_peak_vs_peer']:.2f}"
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        print(f"| {r['assigner']} | {r['peak_bytes'] / 1e6:.0f} | {ratio} | {seconds} | {r['positives']} |")
    if args.json:
        header = {"batch": args.batch, "anchors": 8400, "objects": args.objects, "classes": args.classes}
        header |= {"threads": args.threads, "torch_version": torch.__version__, "device": "cpu"}
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
