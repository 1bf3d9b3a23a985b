"""Run folders: ``runs/<command>-<YYYYmmdd-HHMMSS>/`` with atomic writes of every file."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "new_run_dir", "run_header", "write_csv", "write_json"]


def new_run_dir(command: str, out: Path | None = None, root: Path = Path("runs")) -> Path:
    """``out`` if given, else a fresh ``root/<command>-<stamp>``; created, returned."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = root / f"{command}-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = root / f"{command}-{stamp}-{n}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    buffer = io.StringIO()
    if rows:
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def run_header(command: str, args: Mapping[str, Any], started: float) -> dict[str, Any]:
    """The keys every ``results.json`` starts with."""
    import torch

    from detloss import __version__

    return {
        "command": command,
        "args": dict(args),
        "detloss_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 3),
    }
