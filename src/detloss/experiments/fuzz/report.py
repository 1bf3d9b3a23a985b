"""``detloss fuzz``: the ``--losses`` option, the table, and the run folder."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from detloss.experiments.fuzz.checker import DISCONTINUOUS, SAMPLING_MARGIN, TOLERANCES, Outcome
from detloss.experiments.fuzz.generators import DTYPE_MODES
from detloss.experiments.fuzz.runner import Summary, run_fuzz


def parse_losses(values: Sequence[str] | None) -> list[str]:
    """``--losses`` (repeatable, comma-separated; empty or ``all`` = every registered loss)."""
    from detloss.errors import DetLossError
    from detloss.registry import available_losses

    known = available_losses()
    names = [n.strip() for v in (values or ()) for n in v.split(",") if n.strip()]
    if not names or names == ["all"]:
        return known
    for name in names:
        if name not in known:
            raise DetLossError.bad_argument(
                "detloss fuzz", "--losses", "registry keys: " + ", ".join(known), repr(name)
            )
    return list(dict.fromkeys(names))


def _failure_record(outcome: Outcome) -> dict[str, Any]:
    c = outcome.case
    n = int(c.inputs[0].shape[0]) if c.inputs and c.inputs[0].dim() else 0
    return {
        "loss": c.loss,
        "dtype": c.dtype,
        "failure": outcome.failure,
        "detail": outcome.detail,
        "family": c.family,
        "layout": c.layout,
        "n": n,
        "reduction": c.reduction,
        "weight": c.weight,
        "avg_factor": c.avg_factor,
        "options": {k: v if isinstance(v, (bool, int, float, str)) else repr(v) for k, v in c.options.items()},
        "seed": c.seed,
        "index": c.index,
        "replay": f"detloss.experiments.fuzz.check_case(make_case({c.loss!r}, {c.dtype!r}, {c.seed}, {c.index}))",
        "inputs": [t.tolist() for t in c.inputs] if sum(t.numel() for t in c.inputs) <= 400 else "(large)",
    }


def _default_backend() -> str:
    import detloss

    return f"default (here: {detloss.get_backend()})"


def fuzz_report(
    keys: Sequence[str],
    cases: int,
    seed: int,
    out: Any = None,
    *,
    jobs: int = 1,
    backend: str | None = None,
    show_progress: bool = True,
) -> tuple[Summary, Any]:
    """Run :func:`run_fuzz`, print the table, write ``runs/fuzz-<stamp>/``; ``(summary, folder)``."""
    from pathlib import Path

    from rich.box import SIMPLE_HEAD
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
    from rich.table import Table

    from detloss._checks import check_choice
    from detloss.errors import DetLossError
    from detloss.experiments.progress import progress_bar
    from detloss.experiments.runs import atomic_write_text, new_run_dir, run_header, write_csv, write_json

    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise DetLossError.bad_argument("detloss fuzz", "--cases", "an integer >= 1", repr(cases))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise DetLossError.bad_argument("detloss fuzz", "--jobs", "an integer >= 1", repr(jobs))
    from detloss._backend import BACKENDS

    if backend is not None:
        check_choice("detloss fuzz", "--backend", backend, BACKENDS)
    started = time.perf_counter()
    folder = new_run_dir("fuzz", Path(out) if out is not None else None)
    console = Console()  # as wide as the terminal (80 columns in a file or a pipe)
    if show_progress and cases >= 2000:
        columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with progress_bar(*columns, stderr=True, transient=True) as bar:
            task = bar.add_task("fuzz", total=cases)
            summary = run_fuzz(keys, cases, seed, jobs=jobs, backend=backend, progress=lambda k: bar.advance(task, k))
    else:
        summary = run_fuzz(keys, cases, seed, jobs=jobs, backend=backend)
    headers = {
        "cases": "cases",
        "value": "non-finite value",
        "gradient": "non-finite grad",
        "mismatch": "mismatch vs float64",
        "error": "error",
        "conditioned": "needed κ",
        "gradient_overflow": "grad > half max",
    }
    # the terminal's table: short headers, explained in its caption (report.md has the long ones)
    short_headers = {
        "cases": "cases",
        "value": "inf value",
        "gradient": "inf grad",
        "mismatch": "vs f64",
        "error": "error",
        "conditioned": "needs κ",
        "gradient_overflow": "grad > max",
    }
    caption = (
        "inf value, inf grad: a non-finite loss or gradient; vs f64: disagrees with float64 beyond the tolerance; "
        "needs κ: agrees within the allowance of the input's conditioning; grad > max: a half-precision gradient "
        "beyond its range (counted, not failed); *: not compared with float64 (a discontinuous loss)"
    )
    table = Table(
        title=f"detloss fuzz: {summary.total} cases, seed {seed}",
        caption=caption,
        box=SIMPLE_HEAD,
        padding=(0, 0),
    )
    widest = max((len(k) + (2 if k in DISCONTINUOUS else 0) for k in keys), default=4)
    table.add_column("loss", no_wrap=True, min_width=min(widest, 24))
    table.add_column("dtype", no_wrap=True, min_width=max(len(m) for m in DTYPE_MODES))
    for col in short_headers.values():
        table.add_column(col, justify="right", min_width=5)
    rows: list[dict[str, Any]] = []
    for (key, mode), counts in sorted(summary.rows.items(), key=lambda kv: (kv[0][0], DTYPE_MODES.index(kv[0][1]))):
        tol = TOLERANCES[mode]
        compared = key not in DISCONTINUOUS or mode == "float64"
        short = f"{tol.atol:g} + {tol.rtol:g}|ref| + {tol.k:g}u·κ" if compared else "not compared (discontinuous)"
        rows.append({"loss": key, "dtype": mode, **{k: counts[k] for k in headers}, "tolerance": short})
        table.add_row(key + ("" if compared else " *"), mode, *(str(counts[k]) for k in headers))
    console.print(table)
    for outcome in summary.failures[:20]:
        console.print(f"FAILED {outcome.case.describe()} [{outcome.failure}] {outcome.detail}", markup=False)
    totals = {k: sum(r[k] for r in rows) for k in headers}
    verdict = (
        f"{summary.total} cases, {summary.failed} failures (non-finite value {totals['value']}, non-finite gradient "
        f"{totals['gradient']}, mismatch {totals['mismatch']}, error {totals['error']}) in {summary.seconds:.0f} s"
    )
    console.print(verdict, markup=False)
    console.print(
        "tolerance: "
        + "; ".join(f"{m}: {TOLERANCES[m].describe()}" for m in ("float64", "float32"))
        + "; float16, bfloat16, autocast_bf16: as float32 (computed in float32 on the rounded inputs)",
        markup=False,
    )
    payload = {
        **run_header(
            "fuzz", {"cases": cases, "losses": list(keys), "seed": seed, "jobs": jobs, "backend": backend}, started
        ),
        "backend": backend or _default_backend(),
        "cases": summary.total,
        "failures": summary.failed,
        "totals": totals,
        "dtype_modes": list(DTYPE_MODES),
        "tolerances": {m: {**TOLERANCES[m].__dict__, "rule": TOLERANCES[m].describe()} for m in DTYPE_MODES},
        "sampling_margin": SAMPLING_MARGIN,
        "discontinuous": DISCONTINUOUS,
        "rows": rows,
        "failed_cases": [_failure_record(o) for o in summary.failures],
    }
    write_json(folder / "results.json", payload)
    write_csv(folder / "results.csv", rows)
    lines = [
        "# detloss fuzz",
        "",
        f"{verdict}. Seed {seed}; case `i` is replayed by `check_case(make_case(loss, dtype, {seed}, i))`.",
        "",
        "Tolerance per dtype mode (`kappa`: the condition number of the input, see `detloss.experiments.fuzz`):",
        "",
        *(f"- `{m}`: {TOLERANCES[m].describe()}" for m in DTYPE_MODES),
        "",
        "| loss | dtype | " + " | ".join(headers.values()) + " |",
        "|---|---|" + "---:|" * len(headers),
        *(f"| {r['loss']} | {r['dtype']} | " + " | ".join(str(r[k]) for k in headers) + " |" for r in rows),
    ]
    if summary.failures:
        lines += ["", "## Failures (first 50)", ""]
        lines += [f"- {o.case.describe()}: **{o.failure}** {o.detail}" for o in summary.failures[:50]]
    atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")
    console.print(f"results: {folder / 'results.json'}", markup=False)
    return summary, folder
