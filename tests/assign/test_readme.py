"""The examples of the guide "Assigners and matching costs" (docs/guides/assigners.md) run, and give what
their comments say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "assigners.md"


def _blocks() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run(code: str) -> dict[str, Any]:
    torch.manual_seed(0)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(PAGE), "exec"), namespace)
    return namespace


def test_the_section_has_both_examples() -> None:
    blocks = _blocks()
    assert len(blocks) == 2
    assert "hungarian_match" in blocks[0] and "TaskAlignedAssigner" in blocks[1]


def test_detr_style_example() -> None:
    ns = _run(_blocks()[0])
    assert ns["batch_idx"].tolist() == [0, 0, 0, 1]  # 4 pairs, one per real object
    assert sorted(ns["target_idx"][:3].tolist()) == [0, 1, 2] and ns["target_idx"][3].item() == 0
    assert ns["cost"].shape == (2, 100, 3) and int(ns["num_bad"]) == 0
    assert torch.isfinite(ns["l1"])


def test_yolov8_style_example() -> None:
    ns = _run(_blocks()[1])
    t = ns["t"]
    assert t.fg_mask[0].any() and t.fg_mask[1].any()
    assert set(t.labels[0][t.fg_mask[0]].tolist()) <= {3, 17} and set(t.labels[1][t.fg_mask[1]].tolist()) == {0}
    assert (t.gt_index[1][t.fg_mask[1]] == 0).all()  # the padded object is never assigned
    assert torch.isfinite(ns["cls_loss"]) and torch.isfinite(ns["box_loss"])
