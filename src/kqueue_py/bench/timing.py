"""Timing: ``time.perf_counter_ns`` over repeated batches.

A comparator is a *runner*: ``run(n)`` performs the operation ``n`` times in
its own loop (so a Python-level call per operation is not added on top of
the work being measured).  :func:`measure_group` warms every runner up,
sizes a batch so it lasts about ``target_batch_s``, then times ``repeats``
batches of every runner *interleaved* (runner A, B, C, A, B, C, ...), so a
slow drift of the machine hits every comparator alike.  The reported value
is the *min of medians*: the batches come in groups of ``group``
consecutive batches; each group's median is taken, and the smallest of those
is reported.  On a shared 2-core machine a neighbour's burst inflates some
batches; the group median ignores a burst inside one group and the minimum
over groups ignores a group it swamped, while a plain minimum would reward a
single lucky batch.  The overall median and minimum are kept too.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

__all__ = ["Runner", "Measurement", "measure_group", "calibrate", "summarize"]

#: ``run(n)`` performs the operation n times.
Runner = Callable[[int], None]


@dataclass
class Measurement:
    """ns per operation of one comparator in one scenario."""

    value_ns: float                # min over groups of the group's median
    median_ns: float               # median of all batches
    min_ns: float                  # fastest batch
    batch: int                     # operations per batch
    repeats: int                   # batches timed
    group: int = 1                 # batches per group
    samples_ns: List[float] = field(default_factory=list)


def summarize(samples: List[float], batch: int, group: int) -> Measurement:
    """A :class:`Measurement` from per-batch ns/op, in the order timed."""
    group = max(1, min(group, len(samples)))
    medians = [statistics.median(samples[i:i + group])
               for i in range(0, len(samples) - group + 1, group)]
    return Measurement(value_ns=min(medians), median_ns=statistics.median(samples),
                       min_ns=min(samples), batch=batch, repeats=len(samples),
                       group=group, samples_ns=[round(x, 1) for x in samples])


def _time_batch(run: Runner, n: int) -> float:
    t0 = time.perf_counter_ns()
    run(n)
    return (time.perf_counter_ns() - t0) / n


def calibrate(run: Runner, target_s: float, max_n: int = 1_000_000) -> int:
    """The batch size that makes ``run(n)`` last about ``target_s``."""
    n = 1
    while True:
        t0 = time.perf_counter_ns()
        run(n)
        dt = (time.perf_counter_ns() - t0) / 1e9
        if dt >= target_s / 4 or n >= max_n:
            if dt <= 0:
                return min(max_n, n * 4)
            return max(1, min(max_n, int(n * target_s / dt)))
        n *= 4 if dt < target_s / 40 else 2


def measure_group(runners: Dict[str, Runner], *, repeats: int, group: int,
                  target_batch_s: float, warmup_s: float, max_batch: int = 1_000_000,
                  progress: Callable[[str], None] | None = None) -> Dict[str, Measurement]:
    """Measure several runners of one scenario: ``repeats`` groups of
    ``group`` batches each, the runners interleaved group by group."""
    sizes: Dict[str, int] = {}
    for name, run in runners.items():
        # Warm up: caches, branch predictors, lazily built cdata, the kernel.
        deadline = time.perf_counter() + warmup_s
        run(1)
        while time.perf_counter() < deadline:
            run(max(1, sizes.get(name, 1)))
            sizes[name] = min(max_batch, sizes.get(name, 1) * 2)
        sizes[name] = calibrate(run, target_batch_s, max_batch)
    samples: Dict[str, List[float]] = {name: [] for name in runners}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for name, run in runners.items():
                for _ in range(group):
                    samples[name].append(_time_batch(run, sizes[name]))
            if progress is not None:
                progress(f"repeat {r + 1}/{repeats}")
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: summarize(s, sizes[name], group) for name, s in samples.items()}
