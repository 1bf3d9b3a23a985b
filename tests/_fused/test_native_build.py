"""Building and loading the native kernel (detloss._fused.native): when it builds, and what it says.

The compiler is replaced by a fake that writes a file where the library would be (and counts
its calls), and torch.ops.load_library by one that records what it was asked to load, so
these tests build nothing and load nothing; the real build is exercised by every test that
runs the native backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import detloss
from detloss._fused import native

SRC = Path(detloss.__file__).resolve().parents[1]


class FakeToolchain:
    """Stands in for torch's extension build (``cpp_extension.load``) and for the loader."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_flag: str | None = None) -> None:
        self.builds: list[tuple[str, list[str]]] = []
        self.loads: list[str] = []
        self.fail_flag = fail_flag
        self.fail_loads = 0
        monkeypatch.setattr(cpp_extension, "load", self.build)
        monkeypatch.setattr(torch.ops, "load_library", self.load)

    def build(
        self, name: str, extra_cflags: list[str], build_directory: str, is_python_module: bool, **kw: object
    ) -> str:
        assert is_python_module is False  # a library of operator kernels, not a Python module
        self.builds.append((name, list(extra_cflags)))
        if self.fail_flag is not None and self.fail_flag in extra_cflags:
            raise RuntimeError(f"unsupported option '{self.fail_flag}'")
        path = Path(build_directory) / f"{name}{cpp_extension.LIB_EXT}"
        path.write_bytes(b"a library")
        return str(path)

    def load(self, path: str) -> None:
        if self.fail_loads:
            self.fail_loads -= 1
            raise OSError(f"{path}: file too short")
        self.loads.append(path)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path


def test_build_name_ignores_path_and_ninja(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The folder's name is a hash of source, flags, torch, Python and CPU: another ninja on PATH,
    another working directory or environment find the same build."""
    before = native.extension_name()
    fake_ninja = tmp_path / "bin" / "ninja"
    fake_ninja.parent.mkdir()
    fake_ninja.write_text("#!/bin/sh\necho 1.10.0\n")
    fake_ninja.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_ninja.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAX_JOBS", "1")
    assert native.extension_name() == before
    assert native.extension_name(1) != before  # another flag set: another build


def test_build_name_changes_with_torch_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    before = native.extension_name()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert native.extension_name() != before
    monkeypatch.undo()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "SOMETHING_ELSE")
    assert native.extension_name() != before


def test_an_existing_library_is_loaded_without_building(
    root: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    fake = FakeToolchain(monkeypatch)
    name = native.extension_name()
    library = root / name / f"{name}{cpp_extension.LIB_EXT}"
    library.parent.mkdir()
    library.write_bytes(b"built before")
    assert native.load() == library
    assert fake.loads == [str(library)] and fake.builds == []  # no compiler, no ninja
    assert capfd.readouterr().err == ""


def test_a_missing_library_is_built_once_and_says_so_once(
    root: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    fake = FakeToolchain(monkeypatch)
    stale = root / "detloss_fused_0123456789ab"  # a build of an older source
    stale.mkdir()
    path = native.load()
    err = capfd.readouterr().err
    assert path.is_file() and path.parent.name == native.extension_name()
    assert len(fake.builds) == 1 and not stale.exists()
    assert err.count("building the native CPU kernel") == 1 and err.endswith("\n")
    assert "DETLOSS_BACKEND=reference" in err and " built in " in err and str(path.parent) in err
    assert native.load() == path  # the second time: loaded, not built, silent
    assert len(fake.builds) == 1 and fake.loads == [str(path)]
    assert capfd.readouterr().err == ""


def test_a_truncated_library_is_built_again(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeToolchain(monkeypatch)
    name = native.extension_name()
    library = root / name / f"{name}{cpp_extension.LIB_EXT}"
    library.parent.mkdir()
    library.write_bytes(b"half")
    fake.fail_loads = 1
    assert native.load() == library
    assert len(fake.builds) == 1 and library.read_bytes() == b"a library"


def test_a_failed_flag_set_falls_back_to_the_next(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag set that fails (no OpenMP) is marked and skipped; the next one is built."""
    fake = FakeToolchain(monkeypatch, fail_flag="-fopenmp")
    assert native.load().parent.name == native.extension_name(1)
    assert [flags for _, flags in fake.builds] == [list(native.FLAG_SETS[0][0]), list(native.FLAG_SETS[1][0])]
    assert "-fopenmp" in (root / native.extension_name(0) / "FAILED").read_text()
    fake.builds.clear()
    assert native.load().parent.name == native.extension_name(1)  # the failed set is not tried again
    assert fake.builds == []


def test_the_flags_are_not_changed_by_a_build(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's build appends its link flags to the lists it is given: ours are copied first."""
    names = [native.extension_name(i) for i in range(len(native.FLAG_SETS))]

    def appending_load(extra_ldflags: list[str], name: str, build_directory: str, **kw: object) -> str:
        extra_ldflags.append("-ltorch")
        path = Path(build_directory) / f"{name}{cpp_extension.LIB_EXT}"
        path.write_bytes(b"a library")
        return str(path)

    monkeypatch.setattr(cpp_extension, "load", appending_load)
    native.load()
    assert [native.extension_name(i) for i in range(len(native.FLAG_SETS))] == names


CONCURRENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from torch.utils import cpp_extension
    from detloss._fused import native

    def build(name, build_directory, **kw):
        with open(sys.argv[1], "a") as log:
            log.write("build\\n")
        time.sleep(1.5)  # long enough for the other process to arrive meanwhile
        path = Path(build_directory) / (name + cpp_extension.LIB_EXT)
        path.write_bytes(b"a library")
        return str(path)

    cpp_extension.load = build
    torch.ops.load_library = lambda path: None
    print(native.load())
    """
)


def test_processes_that_start_together_build_once_and_say_so_once(tmp_path: Path) -> None:
    """Test workers, data-loader workers and ranks share one build and one notice (a lock file)."""
    log = tmp_path / "builds.log"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_SCRIPT, str(log)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert log.read_text().count("build") == 1
    assert sum(err.count("building the native CPU kernel") for _, err in outputs) == 1
    assert outputs[0][0].strip() == outputs[1][0].strip()  # the same library for both


BENCH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from torch.utils import cpp_extension
    from detloss.experiments.bench import run_bench

    real = sys.argv[1]

    def build(name, build_directory, **kw):
        print("event: build", file=sys.stderr, flush=True)
        time.sleep(0.5)
        torch.ops.load_library(real)
        return real

    cpp_extension.load = build
    rows = run_bench(["ciou"], [64], backends=["native"], repeat=1, with_peers=False,
                     progress=lambda text: print("event: time " + text, file=sys.stderr, flush=True))
    print([row["impl"] for row in rows])
    """
)


def test_bench_builds_before_it_times(tmp_path: Path) -> None:
    """The first native row's warm-up must not contain the build: it happens before any timing."""
    with detloss.use_backend("native"):
        library = detloss.backend_info().native_library
    if library is None:
        pytest.skip("no native kernel here to load")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(SRC), "DETLOSS_BACKEND": ""}
    result = subprocess.run(
        [sys.executable, "-c", BENCH_SCRIPT, library], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = [line.split("event: ", 1)[1] for line in result.stderr.splitlines() if "event: " in line]
    assert events[0] == "build" and events.count("build") == 1 and len(events) > 1
    assert "'native'" in result.stdout


MODULES_SCRIPT = textwrap.dedent(
    """
    import detloss
    from detloss._fused import native
    modules = [detloss.nn.CIoULoss(alpha_gate=True), detloss.nn.SIoULoss(), detloss.nn.SigmoidFocalLoss()]
    print("tried", native.tried())
    """
)


def test_building_modules_never_loads_the_native_kernel(tmp_path: Path) -> None:
    """A module checks its options by running its loss once on a tiny input, on the reference
    backend: constructing it neither builds nor loads the native kernel (a fresh process, an
    empty build folder, the default backend)."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(SRC), "DETLOSS_BACKEND": ""}
    result = subprocess.run(
        [sys.executable, "-c", MODULES_SCRIPT], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tried False" in result.stdout
    assert list(tmp_path.iterdir()) == []
