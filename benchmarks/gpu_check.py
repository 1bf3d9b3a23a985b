"""Check detloss on a CUDA GPU: every loss under every backend against the reference, then time it.

One line per check (``PASS`` / ``FAIL``, what was compared, the largest error), a summary, and
an exit status: 0 when every check passed, 1 when one failed, 2 when there is no CUDA device
to check (nothing is run then).

Checks, each on the device given by ``--device``:

1. ``values``: every registered loss under ``fused``, ``native`` (which runs the operators'
   pure-torch kernels off the CPU) and ``compiled``, in float32, float16 and bfloat16: values
   and gradients against the reference backend on the same device and dtype, and the reference
   on the device against the reference in float64 on the CPU;
2. ``autocast``: the same losses fed by a linear layer under ``torch.autocast`` (float16), every
   backend against the reference under the same autocast;
3. ``compile``: a detection head's step (CIoU box loss + sigmoid focal class loss) under
   ``torch.compile(fullgraph=True, dynamic=True)`` with each backend's losses inside: no graph
   break, the eager values and gradients, one compilation for three box counts;
4. ``bench``: ``detloss bench``'s table on the device (every loss, every backend, the reference,
   the memory floor, the compiled step), printed as Markdown and written to ``--out``.

The backends' results decide the CUDA default (``detloss._backend`` documents it): a backend
becomes the default on CUDA only once this script has shown it correct and faster there.

    python benchmarks/gpu_check.py                     # all checks and the bench, on cuda
    python benchmarks/gpu_check.py --no-bench          # correctness only (a minute or two)
    python benchmarks/gpu_check.py --bench-sizes 1e5,1e6 --out runs/gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

BACKENDS = ("fused", "native", "compiled")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# (rtol, atol) per dtype: half inputs compute in float32 inside, their gradients round to half
TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-3), torch.bfloat16: (5e-2, 2e-2)}


class Checks:
    """Prints one line per check and counts the failures."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def record(self, name: str, ok: bool, detail: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)

    @contextmanager
    def guard(self, name: str) -> Iterator[None]:
        """A check that raises fails with the exception's last line."""
        try:
            yield
        except Exception as exc:
            lines = traceback.format_exception_only(type(exc), exc)
            self.record(name, False, f"raised {lines[-1].strip()}")


def largest_error(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> tuple[bool, float]:
    """Whether ``actual`` is within ``atol + rtol |expected|`` everywhere (NaN where NaN), and
    the largest absolute error."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != e.shape or not torch.equal(torch.isnan(a), torch.isnan(e)):
        return False, float("nan")
    finite = torch.isfinite(e)
    error = (a - e).abs().where(finite, torch.zeros_like(a))
    ok = bool((error <= atol + rtol * e.abs().where(finite, torch.zeros_like(e))).all())
    return ok, float(error.max()) if error.numel() else 0.0


def run_loss(key: str, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """``(values, gradients)`` of loss ``key`` (reduction "none", a fixed weighting of the values
    as upstream gradient) under the active backend."""
    from detloss.registry import get_spec

    spec = get_spec(key)
    leaves = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    values = spec.function(*leaves, **{**dict(spec.call_options), "reduction": "none"})
    weight = torch.linspace(0.5, 1.5, values.numel(), device=values.device).reshape(values.shape)
    (values * weight.to(values.dtype)).sum().backward()
    return values.detach(), [x.grad for x in leaves if x.requires_grad]


def compare(
    checks: Checks,
    name: str,
    result: tuple[torch.Tensor, list[Any]],
    expected: tuple[torch.Tensor, list[Any]],
    dtype: torch.dtype,
) -> None:
    rtol, atol = TOLERANCE[dtype]
    ok, error = largest_error(result[0], expected[0], rtol, atol)
    detail = f"values max error {error:.3g}"
    for i, (grad, ref) in enumerate(zip(result[1], expected[1])):
        if grad is None or ref is None:
            ok = ok and grad is None and ref is None
            continue
        scale = float(ref.detach().abs().max()) if ref.numel() else 1.0
        good, err = largest_error(grad, ref, rtol, atol * max(scale, 1.0))
        ok = ok and good
        detail += f", grad {i} {err:.3g}"
    checks.record(name, ok and len(result[1]) == len(expected[1]), detail)


def check_values(checks: Checks, device: torch.device, losses: list[str], backends: tuple[str, ...] = BACKENDS) -> None:
    import detloss
    from detloss.testing import sample_inputs

    for key in losses:
        for dtype_name, dtype in DTYPES.items():
            cpu = sample_inputs(key, 48, dtype=torch.float64, seed=5)
            inputs = tuple(
                x.detach().to(device, dtype if x.is_floating_point() else x.dtype).requires_grad_(x.requires_grad)
                for x in cpu
            )
            with detloss.use_backend("reference"):
                expected = run_loss(key, inputs)
                if dtype == torch.float32:
                    with checks.guard(f"values {key} reference {dtype_name} vs cpu float64"):
                        compare(
                            checks,
                            f"values {key} reference {dtype_name} vs cpu float64",
                            expected,
                            run_loss(key, cpu),
                            dtype,
                        )
            for backend in backends:
                with detloss.use_backend(backend):
                    name = f"values {key} {backend}->{detloss.get_backend(device)} {dtype_name}"
                    with checks.guard(name):
                        compare(checks, name, run_loss(key, inputs), expected, dtype)


def run_autocast(
    key: str, inputs: tuple[torch.Tensor, ...], device: torch.device, half: torch.dtype
) -> tuple[torch.Tensor, list[Any]]:
    """Loss ``key`` with each floating input fed through an identity linear layer under
    ``torch.autocast(dtype=half)`` (so that it arrives in ``half``), its values and gradients."""
    from detloss.registry import get_spec

    spec = get_spec(key)
    leaves = [x.detach().to(device).requires_grad_(x.requires_grad) for x in inputs]
    with torch.autocast(device.type, dtype=half):
        fed = [
            torch.nn.functional.linear(x, torch.eye(x.shape[-1], device=device))
            if x.is_floating_point() and x.dim() >= 1 and x.shape[-1] > 0
            else x
            for x in leaves
        ]
        values = spec.function(*fed, **{**dict(spec.call_options), "reduction": "none"})
    weight = torch.linspace(0.5, 1.5, values.numel(), device=device).reshape(values.shape)
    (values.float() * weight).sum().backward()
    return values.detach(), [x.grad for x in leaves if x.requires_grad]


def check_autocast(
    checks: Checks, device: torch.device, losses: list[str], backends: tuple[str, ...] = BACKENDS
) -> None:
    """Every loss under autocast (float16 on CUDA, bfloat16 elsewhere), each backend against
    the reference under the same autocast."""
    import detloss
    from detloss.testing import sample_inputs

    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    for key in losses:
        inputs = sample_inputs(key, 48, dtype=torch.float32, seed=6)
        with detloss.use_backend("reference"):
            expected = run_autocast(key, inputs, device, half)
        for backend in backends:
            with detloss.use_backend(backend):
                name = f"autocast {key} {backend}->{detloss.get_backend(device)} {str(half)[6:]}"
                with checks.guard(name):
                    compare(checks, name, run_autocast(key, inputs, device, half), expected, half)


def step_batch(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    features = torch.randn(n, 8, generator=g)
    boxes = torch.cat((torch.randn(n, 2, generator=g), torch.rand(n, 2, generator=g) + 0.5), dim=-1)
    labels = (torch.rand(n, 6, generator=g) < 0.2).float()
    return features.to(device), boxes.to(device), labels.to(device)


def check_compiled_step(checks: Checks, device: torch.device, backend: str, compile_backend: str) -> None:
    """A head's step with ``backend``'s losses inside, compiled, against the same step eager."""
    import detloss
    from detloss import functional as F

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)).to(device)

    def step(features: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = model(features)
        pred = torch.cat((out[:, :2], out[:, 2:4].exp()), dim=-1)
        return F.ciou_loss(pred, boxes, box_format="cxcywh") + F.sigmoid_focal_loss(out[:, 4:], labels)

    with detloss.use_backend(backend):
        explained = torch._dynamo.explain(step)(*step_batch(10, device))
        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=compile_backend)
        worst, ok = 0.0, explained.graph_break_count == 0
        for n in (5, 9, 14):
            results = []
            for fn in (step, compiled):
                model.zero_grad()
                loss = fn(*step_batch(n, device))
                loss.backward()
                results.append([loss.detach(), *(p.grad.clone() for p in model.parameters())])
            for a, e in zip(*results):
                good, error = largest_error(a, e, 1e-4, 1e-5)
                ok, worst = ok and good, max(worst, error)
    entries = len(torch._dynamo.eval_frame._debug_get_cache_entry_list(step.__code__))
    checks.record(
        f"compile model step {backend}",
        ok and entries == 1,
        f"graph breaks {explained.graph_break_count}, compiled entries {entries} for 3 box counts, "
        f"max error vs eager {worst:.3g}",
    )


def check_compile(checks: Checks, device: torch.device, compile_backend: str = "inductor") -> None:
    for backend in ("reference", *BACKENDS):
        with checks.guard(f"compile model step {backend}"):
            check_compiled_step(checks, device, backend, compile_backend)


def run_bench_table(
    checks: Checks, device: torch.device, sizes: list[int] | None, repeat: int, out: Path | None
) -> None:
    import detloss
    from detloss.experiments.bench import BENCH_LOSSES, report_markdown, run_bench

    with checks.guard("bench"):
        start = time.perf_counter()
        rows = run_bench(
            list(BENCH_LOSSES),
            sizes,
            backends=["reference", *BACKENDS],
            repeat=repeat,
            device=str(device),
            progress=lambda text: print(f"  bench {text}", file=sys.stderr, flush=True),
        )
        header = {
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": f"{device} ({torch.cuda.get_device_name(device)})",
            "repeat": repeat,
        }
        report = report_markdown(rows, header)
        print(report)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.md").write_text(report)
            result = {**header, "detloss_version": detloss.__version__, "rows": rows}
            (out / "results.json").write_text(json.dumps(result, indent=1))
        finite = all(r["fwd_bwd_ms"] == r["fwd_bwd_ms"] for r in rows)
        checks.record("bench", finite and bool(rows), f"{len(rows)} rows in {time.perf_counter() - start:.0f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--device", default="cuda", help="a CUDA device (default: cuda)")
    parser.add_argument("--losses", default="", help="comma-separated registry keys (default: every loss)")
    parser.add_argument("--no-bench", action="store_true", help="run the correctness checks only")
    parser.add_argument("--bench-sizes", default="", help="comma-separated sizes (default: the bench's own)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per bench measurement")
    parser.add_argument("--out", type=Path, default=None, help="folder for the bench's report.md and results.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        why = (
            f"{args.device} is not a CUDA device"
            if device.type != "cuda"
            else f"torch {torch.__version__} sees no CUDA device"
        )
        print(f"gpu_check: nothing checked: {why}", file=sys.stderr)
        return 2
    import detloss

    losses = [x for x in args.losses.split(",") if x] or detloss.available_losses()
    sizes = [int(float(x)) for x in args.bench_sizes.split(",") if x] or None
    print(f"detloss {detloss.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name(device)}", flush=True)
    checks = Checks()
    sections: list[tuple[str, Callable[[], None]]] = [
        ("values", lambda: check_values(checks, device, losses)),
        ("autocast", lambda: check_autocast(checks, device, losses)),
        ("compile", lambda: check_compile(checks, device)),
    ]
    if not args.no_bench:
        sections.append(("bench", lambda: run_bench_table(checks, device, sizes, args.repeat, args.out)))
    for _, section in sections:
        section()
    print(
        f"summary: {checks.passed} passed, {len(checks.failed)} failed"
        + (f": {', '.join(checks.failed)}" if checks.failed else "")
    )
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
