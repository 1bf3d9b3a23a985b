"""Build the C++ kernels (:data:`SOURCES`) once per machine and load them into the dispatcher.

Loading the library registers the CPU kernels and the CPU autograd of the operators that
:mod:`detloss._fused.ops` defines (``torch.ops.detloss.*``); until then, or where it cannot be
built, those operators run their pure-torch kernels.

The library lives in ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) in a
folder named by a hash of exactly what the binary depends on: the sources and their header, the
compiler flags, the torch and Python versions and the CPU it was built for (``-march=native``). Nothing else
enters the name, so a different ``ninja`` or ``PATH`` finds the same build. A library that is
there is loaded directly (``torch.ops.load_library``: no compiler, no ninja, no rebuild); one
that is not is built under a lock file in that folder, so that of several processes that start
together (test workers, data-loader workers, ranks) one builds, says so once on stderr with how
long it took, and the others wait and load it. ``DETLOSS_BACKEND=reference`` never builds.
Without a compiler or ninja the build is not attempted, and a build error is reported once:
the losses then run the reference path, with no error.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "FLAG_SETS",
    "HEADERS",
    "SOURCES",
    "available",
    "build_root",
    "extension_name",
    "failure",
    "library_path",
    "load",
    "source_path",
    "source_paths",
    "tried",
]

_HERE = Path(__file__).parent
# The C++ sources compiled into the one library, each with its own TORCH_LIBRARY_IMPL blocks: a
# new source file joins the build with one line here.
SOURCES: tuple[str, ...] = (
    "kernels.cpp",
    "pairwise.cpp",
    "rotated.cpp",
    "rotated_iou.cpp",
    "simulate.cpp",
)
# What the sources include from this folder: part of the build's hash, not compiled alone.
HEADERS: tuple[str, ...] = ("kernels.h",)
_SOURCE = _HERE / SOURCES[0]
# (compile flags, link flags), tried in order. OpenMP is what makes at::parallel_for use
# threads inside the kernel: without -fopenmp the ATen header runs the loop on one thread.
# A compiler without OpenMP (Apple clang) gets the single-threaded SIMD build. Never -ffast-math.
# -fno-trapping-math lets GCC compute both sides of a branch in a vector select (without it the
# pair loops of kernels.h do not vectorize: "control flow in loop"); it changes no value.
# Tuples: torch's build appends its own link flags to the lists it is given. No -std flag:
# torch's build passes the language level its headers need (C++20 from torch 2.14 on; a
# -std=c++17 after it made every build with those headers fail).
FLAG_SETS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("-O3", "-march=native", "-fno-trapping-math", "-fopenmp"), ("-fopenmp",)),
    (("-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd"), ()),
)
SKIP_HINT = "set DETLOSS_BACKEND=reference to skip it"
_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "path": None, "failure": None}


def source_path() -> Path:
    """The first source (the operators' registrations and the aligned-pair kernels)."""
    return _SOURCE


def source_paths() -> list[Path]:
    """Every source compiled into the library, in :data:`SOURCES` order."""
    return [_HERE / name for name in SOURCES]


def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: torch's SIMD level, the architecture and, on Linux,
    the CPU model and feature flags."""
    parts = [torch.backends.cpu.get_cpu_capability(), platform.machine()]
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part") and line.strip() not in parts:
                    parts.append(line.strip())
                if not line.strip():  # the first processor is enough
                    break
    except OSError:
        pass
    return "\n".join(parts)


def extension_name(flag_set: int = 0) -> str:
    """``detloss_fused_<hash>`` of the build with ``FLAG_SETS[flag_set]``: the hash covers the
    sources and headers, the flags, the torch and Python versions and the CPU, and nothing else."""
    cflags, ldflags = FLAG_SETS[flag_set]
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (_HERE / name).read_bytes() + b"\0")
    for part in (" ".join(cflags + ldflags), torch.__version__, sys.version.split()[0], _cpu_identity()):
        digest.update(b"\0" + part.encode())
    return "detloss_fused_" + digest.hexdigest()[:12]


def build_root() -> Path:
    """``TORCH_EXTENSIONS_DIR``, else torch's default folder for built extensions."""
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def _library_file(build_dir: Path, name: str) -> Path:
    from torch.utils import cpp_extension

    return build_dir / f"{name}{getattr(cpp_extension, 'LIB_EXT', '.so')}"


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
    for path in source_paths() + [_HERE / name for name in HEADERS]:
        if not path.is_file():
            return f"{path.name} is missing"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) on PATH"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed"
    return None


@contextmanager
def _machine_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (released when the process ends, even if
    killed); where the platform has no ``fcntl``, no lock."""
    try:
        import fcntl
    except ImportError:  # Windows: torch's own build baton still serialises the compile
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(name: str, build_dir: Path, cflags: tuple[str, ...], ldflags: tuple[str, ...]) -> Path:
    """Build and load the library, saying so on one line with how long it took."""
    from torch.utils import cpp_extension

    print(
        f"detloss: building the native CPU kernel, once for this machine ({SKIP_HINT}) into {build_dir} ...",
        end="",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    try:
        path = cpp_extension.load(
            name=name,
            sources=[str(path) for path in source_paths()],
            extra_cflags=list(cflags),
            extra_ldflags=list(ldflags),
            build_directory=str(build_dir),
            verbose=False,
            is_python_module=False,
        )
    except BaseException:
        print(f" failed after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        raise
    print(f" built in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return Path(str(path))


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Delete builds of older sources, flags or torch versions (``detloss_fused_*`` not in ``keep``)."""
    for stale in root.glob("detloss_fused_*"):
        if stale.name.split(".")[0] in keep:
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def load() -> Path:
    """Load the library, building it first if this machine has none: the first flag set that
    builds; a set that failed once (``FAILED`` in its folder) is not retried. Returns its path."""
    root = build_root()
    names = [extension_name(i) for i in range(len(FLAG_SETS))]
    error: BaseException | None = None
    for (cflags, ldflags), name in zip(FLAG_SETS, names):
        build_dir = root / name
        failed = build_dir / "FAILED"
        if failed.exists():
            continue
        with _machine_lock(root / f"{name}.lock"):
            library = _library_file(build_dir, name)
            if library.is_file():
                try:
                    torch.ops.load_library(str(library))
                    return library
                except OSError:  # truncated by an interrupted build: build it again
                    library.unlink(missing_ok=True)
            _remove_stale(root, set(names))
            build_dir.mkdir(parents=True, exist_ok=True)
            try:
                return _compile(name, build_dir, cflags, ldflags)
            except Exception as exc:  # e.g. no OpenMP: try the next flag set
                error = exc
                failed.write_text(str(exc))
    raise error if error is not None else RuntimeError(f"every build failed before (see {root}/*/FAILED)")


def library_path() -> Path | None:
    """The loaded library, loading (or building) it on the first call; ``None`` if it cannot be had."""
    if _state["tried"]:
        return _state["path"]  # type: ignore[return-value]
    with _lock:
        if not _state["tried"]:
            reason = _why_not()
            if reason is None:
                try:
                    _state["path"] = load()
                except Exception as exc:  # a failed build means "run the reference path"
                    text = str(exc).strip()
                    reason = f"build failed: {text.splitlines()[-1] if text else repr(exc)}"
                    print(f"detloss: native kernel unavailable ({reason}); using the reference path", file=sys.stderr)
            _state["failure"] = reason
            _state["tried"] = True
    return _state["path"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the native kernel is (or can be) loaded; builds it if needed."""
    return library_path() is not None


def tried() -> bool:
    """Whether loading was attempted in this process (``available`` has answered)."""
    return bool(_state["tried"])


def failure() -> str | None:
    """Why the native kernel is unavailable (after a try), else ``None``."""
    return _state["failure"]  # type: ignore[return-value]
