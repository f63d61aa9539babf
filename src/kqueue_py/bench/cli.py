"""``python -m kqueue_py.bench``: run the scenarios, print the table."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .timing import measure_group

__all__ = ["main"]

if TYPE_CHECKING:
    from .rawc import RawC
    from .report import ScenarioResult
    from .scenarios import Context, Scenario


def _raise_nofile() -> tuple[int, str]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; (limit, note)."""
    try:
        import resource
    except ImportError:  # pragma: no cover
        return 1024, "resource module unavailable"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    note = ""
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            note = f"could not raise RLIMIT_NOFILE to {want}: {e}"
    return soft, note


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def _progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    from .scenarios import SCENARIOS

    names = [s.name for s in SCENARIOS]
    ap = argparse.ArgumentParser(
        prog="python -m kqueue_py.bench",
        description="kqueue_py against a ctypes binding of the same compiled functions, "
                    "the stdlib and raw C. Progress on stderr, the table on stdout.")
    ap.add_argument("--quick", action="store_true",
                    help="short batches and few repeats (whole run well under a minute)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also print every variant of every scenario (the per-variant breakdown)")
    ap.add_argument("--only", metavar="NAME", action="append",
                    help=f"run only this scenario (repeatable; comma-separated ok): "
                         f"{', '.join(names)}")
    ap.add_argument("--json", metavar="PATH", help="write every result and the machine facts")
    ap.add_argument("--png", metavar="PATH",
                    help="chart: kqueue_py's speed-up over each comparator and the absolute "
                         "times (needs matplotlib: the [bench] extra)")
    ap.add_argument("--replot", metavar="JSON",
                    help="measure nothing: draw --png from a run saved with --json")
    ap.add_argument("--repeats", type=int,
                    help="groups of timed batches per comparator (min of group medians)")
    ap.add_argument("--no-rawc", action="store_true", help="skip the raw C comparator")
    ap.add_argument("--retries", type=int, default=2,
                    help="measure a scenario again, up to this many times, while its "
                         "numbers are impossible (default 2); what is still flagged "
                         "then is reported as such, not charted, its targets not scored")
    ap.add_argument("--dump-c", metavar="PATH", help="write the raw C program's source and exit")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args(argv)

    if args.dump_c:
        from .rawc import source

        with open(args.dump_c, "w", encoding="utf-8") as f:
            f.write(source())
        return 0
    if args.replot:
        from .report import Run, write_png

        if not args.png:
            ap.error("--replot needs --png PATH")
        saved = Run.read(args.replot)
        msg = write_png(args.png, saved.results, saved.machine)
        _progress(msg or f"wrote {args.png}")
        return 1 if msg else 0
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:20} {s.title}")
        return 0

    selected = SCENARIOS
    if args.only:
        wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        selected = [s for s in SCENARIOS if s.name in wanted]

    # repeats groups of `group` batches per comparator; min over groups of
    # the group medians is the reported value (see timing.py).
    if args.quick:
        settings: Dict[str, Any] = {"mode": "quick", "repeats": 5, "group": 3,
                                    "target_batch_s": 0.012, "warmup_s": 0.03}
    else:
        settings = {"mode": "full", "repeats": 7, "group": 5, "target_batch_s": 0.04,
                    "warmup_s": 0.2}
    if args.repeats:
        settings["repeats"] = max(1, args.repeats)

    from . import report
    from .ctypes_binding import load
    from .machine import machine_facts
    from .rawc import RawC, RawCError
    from .scenarios import Context

    t_start = time.perf_counter()
    settings["started_utc"] = report.utc_now()
    limit, limit_note = _raise_nofile()
    facts = machine_facts()
    facts["rlimit_nofile"] = limit
    budget = max(10, limit - _open_fds() - 256)
    _progress(f"{facts['python']}, cffi {facts['cffi']}, backend "
              f"{facts['kqueue_py_backend']}, RLIMIT_NOFILE {limit}"
              + (f" ({limit_note})" if limit_note else ""))

    ct = load()
    rawc: Optional[RawC] = None
    rawc_note = ""
    if not args.no_rawc:
        rawc = RawC(ct.path)
        try:
            rawc.build()
            _progress(f"raw C: {rawc.compile_note}")
        except RawCError as e:
            rawc_note = f"raw C comparator unavailable: {e}"
            _progress(rawc_note)
            rawc = None

    ctx = Context(ct=ct, quick=args.quick, fd_budget=budget)
    results: List[report.ScenarioResult] = []
    for i, sc in enumerate(selected, 1):
        tag = f"[{i}/{len(selected)}] {sc.name}"
        res = _measure(sc, ctx, rawc, rawc_note, settings, tag)
        # An impossible result is measured again; the first sound attempt
        # counts, else the one with the fewest flags, flagged.
        attempt = 1
        while res.suspect and attempt <= max(0, args.retries):
            for reason in res.suspect:
                _progress(f"{tag}: {reason}")
            attempt += 1
            _progress(f"{tag}: measuring again (attempt {attempt})")
            again = _measure(sc, ctx, rawc, rawc_note, settings, tag)
            if again.error or len(again.suspect) >= len(res.suspect):
                res.attempts = attempt
                continue
            again.attempts = attempt
            res = again
        for reason in res.suspect:
            _progress(f"{tag}: FLAGGED {reason}")
        results.append(res)

    elapsed = time.perf_counter() - t_start
    settings["finished_utc"] = report.utc_now()
    _progress(f"done in {elapsed:.1f} s")
    report.render_table(results, facts, settings["mode"], sys.stdout, verbose=args.verbose)
    targets = report.evaluate_targets(results)
    report.render_targets(targets, sys.stdout, facts["python"])
    print(f"(run took {elapsed:.1f} s)")
    settings["elapsed_s"] = round(elapsed, 2)
    settings["argv"] = sys.argv[1:] if argv is None else argv
    run = report.Run(facts, settings, results)
    if args.json:
        run.write(args.json)
        _progress(f"wrote {args.json}")
    if args.png:
        msg = report.write_png(args.png, results, facts)
        _progress(msg or f"wrote {args.png}")
    return 1 if any(r.error and not r.error.startswith("skipped") for r in results) else 0


def _measure(sc: Scenario, ctx: Context, rawc: Optional[RawC], rawc_note: str,
             settings: Dict[str, Any], tag: str) -> ScenarioResult:
    """One measurement of scenario ``sc``: its Python variants, then the raw
    C program's; the result carries what :func:`report.check_result` finds."""
    from . import report
    from .rawc import RawCError
    from .scenarios import SkipScenario, floors

    res = report.ScenarioResult(sc.name, sc.title, "")
    _progress(f"{tag}: setting up")
    built = None
    try:
        built = sc.build(ctx)
        res.unit = built.unit
        res.roles = dict(built.roles)
        res.notes += built.notes
        for check in built.checks:
            check()
        _progress(f"{tag}: timing {len(built.runners)} Python variants")
        res.variants.update(measure_group(
            built.runners, repeats=settings["repeats"], group=settings["group"],
            target_batch_s=settings["target_batch_s"], warmup_s=settings["warmup_s"],
            progress=lambda m: _progress(f"{tag}: {m}")))
    except SkipScenario as e:
        res.error = f"skipped: {e}"
    except Exception as e:  # noqa: BLE001 - one scenario must not sink the run
        res.error = f"{type(e).__name__}: {e}"
        _progress(f"{tag}: FAILED {res.error}")
    finally:
        if built is not None:
            built.close()
    if rawc is not None and built is not None and built.rawc and not res.error:
        _progress(f"{tag}: raw C")
        cname, n = built.rawc
        try:
            for variant, m in rawc.run(cname, n, settings["target_batch_s"],
                                       settings["repeats"], settings["group"]).items():
                key = "rawC kevent" if variant == "kq" else f"rawC {variant}"
                res.variants[key] = m
        except RawCError as e:
            res.notes.append(str(e))
    elif rawc_note and built is not None and built.rawc:
        res.notes.append(rawc_note)
    if not res.error:
        res.floors = floors(list(res.variants), sc.name)
        res.suspect, res.suspect_variants = report.check_result(res)
    return res
