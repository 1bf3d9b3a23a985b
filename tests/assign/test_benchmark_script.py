"""benchmarks/assign_memory.py keeps working (a tiny case, in this process: no numbers checked)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "assign_memory.py"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", ["detloss-tal", "detloss-atss", "detloss-simota"])
def test_measure_one_runs(name: str) -> None:
    spec = importlib.util.spec_from_file_location("assign_memory", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = module.measure_one(name, batch=1, objects=3, classes=2, threads=1, mode="memory")
    assert row["assigner"] == name and row["peak_bytes"] >= 0 and row["positives"] >= 0
    assert module.measure_one(name, batch=1, objects=3, classes=2, threads=1, mode="time")["seconds"] > 0
