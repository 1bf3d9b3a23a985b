"""Build and load the C++ kernel (``kernels.cpp``) once, on first use, into the user's cache.

``torch.utils.cpp_extension.load`` compiles it with ninja into ``TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``) under a name that carries a hash of the source, the
torch version and the CPU's instruction set, so a changed kernel or another machine gets its
own build and an unchanged one is loaded in well under a second. The first build prints one
line to stderr. Without a compiler (or ninja) the build is not attempted, and on any build
error ``module()`` returns ``None``: the losses then run the reference path (see
:mod:`detloss._backend`), with no error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["available", "extension_name", "failure", "module", "source_path"]

_SOURCE = Path(__file__).with_name("kernels.cpp")
# (compile flags, link flags), tried in order. OpenMP is what makes at::parallel_for use
# threads inside the kernel: without -fopenmp the ATen header runs the loop on one thread.
# A compiler without OpenMP (Apple clang) gets the single-threaded SIMD build. Never -ffast-math.
_FLAG_SETS: tuple[tuple[list[str], list[str]], ...] = (
    (["-O3", "-march=native", "-fopenmp", "-std=c++17"], ["-fopenmp"]),
    (["-O3", "-march=native", "-fopenmp-simd", "-std=c++17"], []),
)
_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "module": None, "failure": None}


def source_path() -> Path:
    return _SOURCE


def extension_name(flag_set: int = 0) -> str:
    """``detloss_fused_<hash>`` of the build with ``_FLAG_SETS[flag_set]``: the hash covers
    source, flags, torch version and CPU level."""
    cflags, ldflags = _FLAG_SETS[flag_set]
    digest = hashlib.sha256(_SOURCE.read_bytes())
    digest.update(" ".join(cflags + ldflags).encode())
    digest.update(torch.__version__.encode())
    digest.update(torch.backends.cpu.get_cpu_capability().encode())
    return "detloss_fused_" + digest.hexdigest()[:12]


def _find_ninja() -> None:
    """Put the ``ninja`` of this environment (the pip package) on PATH if PATH has none:
    a virtual environment used without activation keeps its scripts off PATH."""
    if shutil.which("ninja") is not None:
        return
    folders = [sysconfig.get_path("scripts")]
    try:
        import ninja  # type: ignore[import-not-found]

        folders.append(str(ninja.BIN_DIR))
    except Exception:
        pass
    for folder in folders:
        if folder and shutil.which("ninja", path=folder) is not None:
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return


def _why_not() -> str | None:
    """A reason the build cannot be attempted, or ``None``."""
    from torch.utils import cpp_extension

    _find_ninja()

    if not _SOURCE.is_file():
        return f"{_SOURCE.name} is missing"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) on PATH"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed"
    return None


def _build() -> ModuleType:
    """Build with the first flag set that works; a set that failed once here is not retried."""
    from torch.utils import cpp_extension

    names = [extension_name(i) for i in range(len(_FLAG_SETS))]
    root = Path(cpp_extension._get_build_directory(names[0], verbose=False)).parent
    dirs = [root / name for name in names]
    for stale in root.glob("detloss_fused_*"):  # builds of older sources or flags
        if stale not in dirs and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    error: Exception | None = None
    for (cflags, ldflags), name, build_dir in zip(_FLAG_SETS, names, dirs):
        failed = build_dir / "FAILED"
        if failed.exists():
            continue
        build_dir.mkdir(parents=True, exist_ok=True)
        if not any(build_dir.glob(f"{name}*.so")):
            notice = f"detloss: compiling the native kernel once (about a minute) into {build_dir}"
            print(notice, file=sys.stderr, flush=True)
        try:
            return cpp_extension.load(
                name=name,
                sources=[str(_SOURCE)],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                build_directory=str(build_dir),
                verbose=False,
            )
        except Exception as exc:  # e.g. no OpenMP: try the next flag set
            error = exc
            failed.write_text(str(exc))
    raise error if error is not None else RuntimeError(f"every build failed before (see {root}/*/FAILED)")


def module() -> ModuleType | None:
    """The compiled kernel module, building it on the first call; ``None`` if it cannot be had."""
    if _state["tried"]:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if not _state["tried"]:
            reason = _why_not()
            if reason is None:
                try:
                    _state["module"] = _build()
                except Exception as exc:  # a failed build means "run the reference path"
                    reason = f"build failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
                    print(f"detloss: native kernel unavailable ({reason}); using the reference path", file=sys.stderr)
            _state["failure"] = reason
            _state["tried"] = True
    return _state["module"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the native kernel is (or can be) loaded; builds it if needed."""
    return module() is not None


def failure() -> str | None:
    """Why the native kernel is unavailable (after a try), else ``None``."""
    return _state["failure"]  # type: ignore[return-value]
