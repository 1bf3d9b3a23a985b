"""The fast path's summary tables, from the ``results.json`` of one ``detloss bench`` run.

Every number is a ratio within that one run (the rows' own floors and peers), so the tables
can be regenerated on any machine from its own run:

    detloss bench --threads 2 --out runs/bench-default
    python benchmarks/fast_path_tables.py runs/bench-default/results.json > tables.md

Per loss and size, for the native backend: forward + backward, its ratio to the memory floor,
to the per-call floor (a trivial autograd Function: round-robin / tight loop, small sizes),
the reference composition, the fastest installed peer and how many times faster the native
kernel and the reference are than that peer (above 1: faster).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from detloss.experiments.bench import BINARY_LOSSES, CALL_FLOOR, IOU_LOSSES, PAIRWISE_LOSSES, ROTATED_LOSSES

FAMILIES = (
    ("Box pairs, IoU family", IOU_LOSSES),
    ("Logits (n / 80 anchors x 80 classes)", BINARY_LOSSES),
    ("Rotated box pairs", ROTATED_LOSSES),
    ("All pairs without gradient (`pairwise_iou`, n / 10 x n boxes)", PAIRWISE_LOSSES),
)
OURS = ("reference", "fused", "native", "compiled", "floor", CALL_FLOOR)


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3g} ms" if value < 1000 else f"{value / 1000:.3g} s"


def _times(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None or a <= 0 else f"{b / a:.2f}x"


def _groups(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["loss"], row["n"]), {})[row["impl"]] = row
    return groups


def tables(result: dict[str, Any]) -> str:
    """Markdown: one table per family of the run's rows."""
    groups = _groups(result["rows"])
    lines = [
        f"torch {result.get('torch_version')}, {result.get('threads')} threads; "
        f"`detloss bench` median of {result.get('args', {}).get('repeat')} runs per row.",
    ]
    for title, losses in FAMILIES:
        keys = sorted((k for k in groups if k[0] in losses), key=lambda k: (losses.index(k[0]), k[1]))
        keys = [k for k in keys if "native" in groups[k]]
        if not keys:
            continue
        lines += [
            "",
            f"**{title}** (forward + backward{'; forward only' if title.startswith('All pairs') else ''})",
            "",
            "| loss | n | native | x floor | x call (round-robin / tight) | reference | fastest peer "
            "| native vs peer | reference vs peer |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key in keys:
            group = groups[key]
            native, reference = group["native"], group.get("reference")
            call = group.get(CALL_FLOOR)
            peers = [r for impl, r in group.items() if impl not in OURS]
            peer = min(peers, key=lambda r: r["fwd_bwd_ms"]) if peers else None
            ratio_call = ""
            if call is not None:
                ratio_call = _times(call["fwd_bwd_ms"], native["fwd_bwd_ms"])
                if native.get("fwd_bwd_tight_ms") and call.get("fwd_bwd_tight_ms"):
                    ratio_call += " / " + _times(call["fwd_bwd_tight_ms"], native["fwd_bwd_tight_ms"])
            lines.append(
                "| "
                + " | ".join(
                    [
                        key[0],
                        f"{key[1]:,}",
                        _ms(native["fwd_bwd_ms"]),
                        _times(native["floor_ms"], native["fwd_bwd_ms"]),
                        ratio_call,
                        _ms(reference["fwd_bwd_ms"]) if reference else "",
                        f"{peer['impl']} {_ms(peer['fwd_bwd_ms'])}" if peer else "",
                        _times(native["fwd_bwd_ms"], peer["fwd_bwd_ms"]) if peer else "",
                        _times(reference["fwd_bwd_ms"], peer["fwd_bwd_ms"]) if peer and reference else "",
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results.json of a detloss bench run")
    args = parser.parse_args()
    print(tables(json.loads(args.results.read_text())), end="")


if __name__ == "__main__":
    main()
