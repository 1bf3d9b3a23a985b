"""benchmarks/gpu_check.py: it runs where there is no GPU far enough to say so, and its checks
run (on CPU here) as they will on CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--no-bench" in out and "autocast" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the script would run")
def test_without_cuda_it_says_so_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = load_script()
    assert gpu_check.main(["--no-bench"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"gpu_check: nothing checked: torch {torch.__version__} sees no CUDA device"
    )
    assert gpu_check.main(["--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == "gpu_check: nothing checked: cpu is not a CUDA device"


def test_checks_run_and_fail_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    """The value and autocast checks, on CPU: one line each, and a wrong backend is a FAIL."""
    gpu_check = load_script()
    checks = gpu_check.Checks()
    cpu = torch.device("cpu")
    gpu_check.check_values(checks, cpu, ["ciou", "sigmoid_focal"], backends=("fused", "native"))
    gpu_check.check_autocast(checks, cpu, ["giou"], backends=("fused",))
    out = capsys.readouterr().out.splitlines()
    assert not checks.failed and checks.passed == len(out) == 2 * (1 + 2 * 3) + 1
    assert all(line.startswith("PASS ") for line in out)
    wrong = (torch.ones(3), [torch.ones(3)])
    gpu_check.compare(checks, "a wrong result", wrong, (torch.ones(3), [torch.zeros(3)]), torch.float32)
    assert checks.failed == ["a wrong result"] and capsys.readouterr().out.startswith("FAIL a wrong result")
