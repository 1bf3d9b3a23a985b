"""The framework examples of docs/guides/frameworks.md, run as they are written, each in a fresh interpreter.

A block follows a line ``<!-- example: NAME -->`` and is saved as ``NAME`` in an empty folder;
the examples (not the config) run there. A ``# prints TEXT``
comment on a line is the line that the example must print, in that order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import INSTALL_HINT

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guides" / "frameworks.md"
EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w.]+) -->\n```python\n(?P<code>.*?)\n```", re.DOTALL)
EXPECTED = {"yolo_example.py", "mmdet_config.py", "mmdet_example.py", "torchvision_example.py"}
NEEDS = {"yolo_example.py": "ultralytics", "mmdet_example.py": "mmengine", "torchvision_example.py": "torchvision"}


def examples() -> dict[str, str]:
    return {m["name"]: m["code"] + "\n" for m in EXAMPLE.finditer(PAGE.read_text())}


def test_the_page_has_the_framework_examples() -> None:
    assert set(examples()) == EXPECTED


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_framework_example_runs(name: str, tmp_path: Path) -> None:
    pytest.importorskip(NEEDS[name], reason=f"{NEEDS[name]} {INSTALL_HINT}")
    for file, code in examples().items():
        (tmp_path / file).write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line.strip() for line in done.stdout.splitlines()]
    wanted = [m.group(1).strip() for m in re.finditer(r"# prints (.*)$", examples()[name], re.MULTILINE)]
    at = 0
    for line in wanted:
        assert line in printed[at:], f"{name} should print {line!r}; it printed {printed}"
        at = printed.index(line, at) + 1
