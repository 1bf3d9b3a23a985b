"""Many cases: the plan that spreads them over losses and dtype modes, the counts, the
runner (in one process or several)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from detloss.experiments.fuzz.checker import Outcome, check_case
from detloss.experiments.fuzz.generators import DTYPE_MODES, Case, make_case


def case_plan(keys: Sequence[str], cases: int, start: int = 0) -> Iterator[tuple[int, str, str]]:
    """``(index, loss, dtype mode)`` for cases ``start .. cases - 1``, spread evenly over
    losses and modes (case ``i`` is ``(loss, mode)`` number ``i mod (losses x modes)``)."""
    combos = [(k, d) for k in keys for d in DTYPE_MODES]
    for i in range(start, cases):
        k, d = combos[i % len(combos)]
        yield i, k, d


#: What :class:`Summary` counts per ``(loss, dtype)``: the failures, then the notes.
COUNTS = ("cases", "value", "gradient", "mismatch", "error", "conditioned", "gradient_overflow", "not_compared")


@dataclass
class Summary:
    """Counts per ``(loss, dtype)`` and the failures (up to ``keep`` kept in full)."""

    rows: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    failures: list[Outcome] = field(default_factory=list)
    total: int = 0
    failed: int = 0
    seconds: float = 0.0
    keep: int = 200

    def _row(self, key: tuple[str, str]) -> dict[str, int]:
        return self.rows.setdefault(key, dict.fromkeys(COUNTS, 0))

    def add(self, outcome: Outcome) -> None:
        c = outcome.case
        row = self._row((c.loss, c.dtype))
        row["cases"] += 1
        if outcome.note is not None:
            row[outcome.note] += 1
        self.total += 1
        if outcome.failure is not None:
            row[outcome.failure] += 1
            self.failed += 1
            if len(self.failures) < self.keep:
                self.failures.append(outcome)

    def merge(self, other: Summary) -> None:
        for key, counts in other.rows.items():
            row = self._row(key)
            for name, value in counts.items():
                row[name] += value
        self.total += other.total
        self.failed += other.failed
        self.failures.extend(other.failures[: max(self.keep - len(self.failures), 0)])


def _run_range(keys: Sequence[str], seed: int, start: int, stop: int) -> Summary:
    summary = Summary()
    for i, key, mode in case_plan(keys, stop, start):
        try:
            case = make_case(key, mode, seed, i)
        except Exception as exc:  # a generator bug is a failure to report, not a crash
            dummy = Case(key, mode, "?", "?", "?", (), (), index=i, seed=seed)
            summary.add(Outcome(dummy, "error", f"case generation: {type(exc).__name__}: {exc}"))
            continue
        summary.add(check_case(case))
    return summary


def _run_range_star(args: tuple[Sequence[str], int, int, int, str | None]) -> Summary:
    import detloss

    torch.set_num_threads(1)
    if args[4] is not None:
        detloss.set_backend(args[4])
    return _run_range(*args[:4])


def run_fuzz(
    keys: Sequence[str],
    cases: int,
    seed: int = 0,
    *,
    jobs: int = 1,
    backend: str | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = 500,
) -> Summary:
    """Run cases ``0 .. cases - 1`` over ``keys`` (all five dtype modes), in ``jobs``
    processes, with the losses' ``backend`` (None: the library's default, the fastest)."""
    import detloss

    summary = Summary()
    started = time.perf_counter()
    ranges = [(keys, seed, lo, min(lo + chunk, cases), backend) for lo in range(0, cases, chunk)]
    if jobs <= 1:
        chosen = detloss.backend_info().requested if backend is None else backend
        with detloss.use_backend(chosen):
            for r in ranges:
                summary.merge(_run_range(*r[:4]))
                if progress is not None:
                    progress(r[3] - r[2])
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for part in pool.imap(_run_range_star, ranges):
                summary.merge(part)
                if progress is not None:
                    progress(part.total)
    summary.seconds = time.perf_counter() - started
    return summary
