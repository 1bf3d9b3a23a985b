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

from detloss.errors import DetLossError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "check_figure_path",
    "check_out_folder",
    "new_run_dir",
    "run_header",
    "save_figure",
    "write_csv",
    "write_json",
]


def check_out_folder(where: str, out: Path) -> None:
    """Raise unless ``out`` can be a run folder: absent, or a folder (not a file, nor under one)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "the file" if path == out else "a path under the file"
                raise DetLossError.bad_argument(where, "out", "a folder", f"{what} {str(path)!r}")
            return


def new_run_dir(command: str, out: Path | None = None, root: Path = Path("runs"), *, create: bool = True) -> Path:
    """``out`` if given, else a fresh ``root/<command>-<stamp>``; created (unless ``create``
    is False: then only chosen and checked, for a command that creates it once its
    settings have passed their checks), returned."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = root / f"{command}-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = root / f"{command}-{stamp}-{n}"
    out = Path(out)
    check_out_folder(command, out)
    if create:
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


#: The picture formats a figure is saved in, by the suffix of its path.
FIGURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def check_figure_path(where: str, name: str, path: Path) -> None:
    """Raise unless a figure can be saved at ``path``: a known suffix, in an existing folder."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        expected = "a picture file (" + ", ".join(FIGURE_FORMATS) + ")"
        raise DetLossError.bad_argument(where, name, expected, repr(str(path)))
    if path.is_dir():
        raise DetLossError.bad_argument(where, name, "a file, not a folder", repr(str(path)))
    if not path.parent.is_dir():
        what = "a file" if path.parent.exists() else "missing"
        raise DetLossError.bad_argument(
            where, name, "a file in an existing folder", f"{str(path)!r} (its folder is {what})"
        )


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically, as the suffix of ``path`` says (PNG, JPEG, PDF, SVG)."""
    path = Path(path)
    check_figure_path("save_figure", "path", path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=FIGURE_FORMATS[path.suffix.lower()], dpi=dpi, bbox_inches="tight")
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
