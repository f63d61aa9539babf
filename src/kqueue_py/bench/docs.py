"""The benchmark numbers in the docs, generated from runs saved with ``--json``.

    python -m kqueue_py.bench.docs --cpython docs/bench/cpython.json \\
        [--pypy docs/bench/pypy.json] [--check] [FILE.md ...]

``make bench-docs`` runs the benchmark on CPython (and on PyPy when
``pypy3`` is installed), then this.  Every generated part of
docs/benchmarks.md and README.md (the default files, relative to the
current directory) sits between marker comments::

    <!-- bench:NAME:begin -->
    ...generated, do not edit...
    <!-- bench:NAME:end -->

and only those parts are replaced.  A marker with a NAME that is not
generated is an error, so a typo cannot leave stale numbers behind.
``--check`` writes nothing (neither the Markdown nor the JSON) and exits 1
when a file is out of date.

The runs are read through the benchmark's one data model
(:class:`.report.Run`), with its formatters and its checks: a flagged
(impossible) time is marked and has no ratio, here as in the terminal.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .report import (
    RAWC_EPOLL,
    RAWC_KEVENT,
    Run,
    ScenarioResult,
    evaluate_targets,
    fmt_ns,
    fmt_target_bound,
    fmt_target_value,
    fmt_x,
    overhead,
    ratio,
)

__all__ = ["main", "render", "rewrite"]

_MARKER = re.compile(
    r"(?P<open><!-- bench:(?P<name>[A-Za-z0-9_.-]+):begin -->\n)(?P<body>.*?)"
    r"(?P<close><!-- bench:(?P=name):end -->)", re.S)

DASH = "–"
#: Marks a time the run's checks flagged.
FLAG = " ⚠"


def _ns(r: Optional[ScenarioResult], role: str) -> str:
    if r is None:
        return DASH
    name = r.variant_name(role)
    if name is None:
        return DASH
    return fmt_ns(r.variants[name].value_ns) + (FLAG if name in r.suspect_variants else "")


def _x(x: Optional[float], bold_above: Optional[float] = None) -> str:
    s = fmt_x(x, DASH)
    return f"**{s}**" if x is not None and bold_above is not None and x >= bold_above else s


def _speedup(r: Optional[ScenarioResult], role: str, of: str = "kqueue_py") -> Optional[float]:
    """``role``'s time / ``of``'s (None if either is missing or flagged)."""
    if r is None:
        return None
    return ratio(r.trusted(role), r.trusted(of))


def table(head: List[str], rows: List[List[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def machine_line(run: Run) -> str:
    m = run.machine
    load = m.get("loadavg_at_start") or []
    busy = ""
    if load:
        busy = f"; load average {load[0]} at the start"
        if load[0] > 0.5 * max(1, int(m.get("cpu_usable") or 1)):
            busy += " (the machine was busy: read ratios, not absolute times)"
    return (f"{run.python}, cffi {m.get('cffi', '?')}, kqueue_py {m.get('kqueue_py_version', '?')} "
            f"(backend: {m.get('kqueue_py_backend', '?')}) on {m.get('cpu_model', '?')}, "
            f"{m.get('cpu_usable', '?')} of {m.get('cpu_count', '?')} CPUs, {m.get('kernel', '?')} "
            f"{m.get('machine', '')}; `{run.settings.get('mode', '?')}` mode, run on {run.when}"
            f"{busy}")


# --------------------------------------------------------------- sections

def sec_machine(cp: Run, pp: Optional[Run]) -> str:
    lines = [f"- {machine_line(cp)}."]
    if pp is not None:
        lines.append(f"- {machine_line(pp)}.")
    else:
        lines.append("- PyPy: not run (no `pypy3` on the machine that generated this page).")
    return "\n".join(lines) + "\n"


def _flag_notes(run: Run) -> str:
    notes = [f"- ⚠ `{r.name}`: {reason}" for r in run.results if not r.error
             for reason in r.suspect]
    if not notes:
        return ""
    return ("\nFlagged by the run's checks (measured again, still impossible; no ratio "
            "is drawn from these times):\n\n" + "\n".join(notes) + "\n")


def sec_main(run: Run) -> str:
    head = ["scenario", "unit", "kqueue_py", "ctypes", "stdlib", "raw C `kevent`",
            "raw C `epoll`", "ctypes ÷ kqueue_py", "stdlib ÷ kqueue_py", "raw C ÷ kqueue_py"]
    rows = []
    for r in run.results:
        if r.error:
            rows.append([f"`{r.name}`", "", r.error] + [""] * 7)
            continue
        rows.append([f"`{r.name}`", r.unit, _ns(r, "kqueue_py"), _ns(r, "ctypes"),
                     _ns(r, "stdlib"), _ns(r, RAWC_KEVENT), _ns(r, RAWC_EPOLL),
                     _x(_speedup(r, "ctypes"), bold_above=1.0), _x(_speedup(r, "stdlib")),
                     _x(_speedup(r, RAWC_KEVENT))])
    return table(head, rows, right_from=2) + _flag_notes(run)


def sec_overhead(run: Run) -> str:
    """Time above raw C of the same kevent() call: what each binding adds."""
    head = ["scenario", "kqueue_py − raw C", "ctypes − raw C", "ctypes adds ÷ kqueue_py adds"]
    rows = []
    for name in ("empty_poll", "ready64", "active1of10", "active1of10000", "timers_armed_wait"):
        r = run.get(name)
        if r is None or r.trusted(RAWC_KEVENT) is None:
            continue
        kp_o, ct_o = overhead(r, "kqueue_py"), overhead(r, "ctypes")
        rows.append([f"`{name}`", fmt_ns(kp_o, "within the noise of raw C"),
                     fmt_ns(ct_o, DASH), _x(ratio(ct_o, kp_o))])
    return table(head, rows)


def sec_pypy(cp: Run, pp: Optional[Run]) -> str:
    if pp is None:
        return ("PyPy was not run for this page (`make bench-docs` runs it when `pypy3` is "
                "installed).\n")
    head = ["scenario", f"kqueue_py, {cp.python}", f"kqueue_py, {pp.python}",
            "ctypes ÷ kqueue_py, CPython", "ctypes ÷ kqueue_py, PyPy",
            "stdlib ÷ kqueue_py, CPython", "stdlib ÷ kqueue_py, PyPy"]
    rows = []
    for r in cp.results:
        c, p = cp.get(r.name), pp.get(r.name)
        rows.append([f"`{r.name}`", _ns(c, "kqueue_py"), _ns(p, "kqueue_py"),
                     _x(_speedup(c, "ctypes")), _x(_speedup(p, "ctypes")),
                     _x(_speedup(c, "stdlib")), _x(_speedup(p, "stdlib"))])
    return table(head, rows) + _flag_notes(pp)


def sec_variants(name: str, cp: Run, pp: Optional[Run]) -> str:
    c = next((r for r in cp.results if r.name == name), None)
    if c is None:
        return f"(scenario `{name}` is not in this run)\n"
    if c.error:
        return f"Not measured in this run: {c.error}\n"
    p = pp.get(name) if pp is not None else None
    roles = {v: k for k, v in c.roles.items()}
    names = list(c.variants)
    if p is not None:
        names += [v for v in p.variants if v not in names]
        roles.update({v: k for k, v in p.roles.items() if v not in roles})
    head = ["variant", "CPython", "median", "÷ kqueue_py"]
    if pp is not None:
        head += ["PyPy", "median", "÷ kqueue_py"]
    rows = []

    def cells(r: Optional[ScenarioResult], variant: str) -> List[str]:
        m = r.variants.get(variant) if r is not None else None
        if r is None or m is None:
            return [DASH, DASH, DASH]
        flag = FLAG if variant in r.suspect_variants else ""
        kp = r.role("kqueue_py")
        return [fmt_ns(m.value_ns) + flag, fmt_ns(m.median_ns),
                _x(None if kp is None or flag else m.value_ns / kp)]

    for variant in names:
        label = f"`{variant}`" + (f" ({roles[variant]})" if variant in roles else "")
        row = [label] + cells(c, variant)
        if pp is not None:
            row += cells(p, variant)
        rows.append(row)
    out = table(head, rows)
    notes = list(c.notes)
    if p is not None:
        notes += [f"PyPy: {n}" for n in p.notes if n not in notes]
    notes += [f"⚠ {reason}" for reason in c.suspect]
    if p is not None:
        notes += [f"⚠ PyPy: {reason}" for reason in p.suspect]
    if notes:
        out += "\n" + "".join(f"- {n}\n" for n in notes)
    return out


def sec_targets(cp: Run, pp: Optional[Run]) -> str:
    runs = [cp] + ([pp] if pp is not None else [])
    evaluated = [evaluate_targets(run.results) for run in runs]
    head = ["target", "wanted"]
    for run in runs:
        head += [run.python, ""]
    rows = []
    for i, t in enumerate(evaluated[0]):
        row = [t["target"], fmt_target_bound(t)]
        for ev in evaluated:
            e = ev[i]
            status = e["status"].upper() if e["status"] in ("met", "missed") else e["status"]
            row += [DASH if e["value"] is None else fmt_target_value(e), status]
        rows.append(row)
    return table(head, rows)


def sec_headline(cp: Run, pp: Optional[Run]) -> str:
    """About six lines for the README."""
    def line(label: str, name: str, role: str, what: str) -> Optional[str]:
        r = cp.get(name)
        if r is None or r.trusted(role) is None:
            return None
        t = r.trusted(role)
        st = r.trusted("stdlib")
        if st is None:
            return None
        return (f"- {label}: {fmt_ns(t)}, against {fmt_ns(st)} for {what} "
                f"(**{fmt_x(ratio(t, st))}** its time)")

    ep = cp.get("empty_poll")
    stdlib_empty = (ep.variant_name("stdlib") if ep else None) or "stdlib"
    lines = [f"{cp.python} on {cp.machine.get('cpu_model', '?')}, "
             f"{cp.machine.get('cpu_usable', '?')} CPUs, {cp.machine.get('kernel', '?')} "
             f"({cp.when}); kqueue_py's time against the stdlib doing the same work:", ""]
    for candidate in (
        line("empty poll, `kq_wait`", "empty_poll", "kqueue_py",
             f"`{stdlib_empty.replace('stdlib ', 'select.')}`"),
        line("empty poll, `KQueue.wait`", "empty_poll", "KQueue.wait", "the same"),
        line("cross-thread wake round trip, `KQueue.trigger`/`wait`", "user_wake_rt", "KQueue",
             "eventfd + `select.epoll`"),
        line("`KQueue.trigger`", "trigger", "KQueue.trigger", "`os.eventfd_write`"),
    ):
        if candidate:
            lines.append(candidate + ".")
    def echo(run: Run) -> Optional[str]:
        """The echo's ratio, and the default loop's against itself."""
        e = run.get("asyncio_echo")
        x = _speedup(e, "stdlib")
        if e is None or x is None:
            return None
        again = _speedup(e, "stdlib", "stdlib again")
        spread = (f" (the default loop timed twice, apart: {fmt_x(again)})"
                  if again is not None else "")
        return f"**{fmt_x(x)}** the requests per second of the default loop{spread}"

    e, served = cp.get("asyncio_echo"), echo(cp)
    if e is not None and served is not None:
        lines.append(f"- asyncio echo server, {e.unit.split('(')[-1].rstrip(')')}: "
                     f"`SelectorEventLoop(KqueueSelector())` serves {served}.")
    r = cp.get("empty_poll")
    if r is not None and _speedup(r, "ctypes") is not None:
        lines.append(f"- against ctypes calling the same compiled `kevent()`: "
                     f"{fmt_x(_speedup(r, 'ctypes'))} faster on an empty poll.")
    if pp is not None:
        p = pp.get("empty_poll")
        if p is not None and p.trusted("kqueue_py") is not None:
            lines.append(f"- {pp.python}: empty poll {fmt_ns(p.trusted('kqueue_py'))} "
                         f"({fmt_x(_speedup(p, 'stdlib'))} faster than its "
                         f"`select.epoll`).")
        served = echo(pp)
        if served is not None:
            lines.append(f"- {pp.python}: the asyncio echo server serves {served}.")
    return "\n".join(lines) + "\n"


def render(cp: Run, pp: Optional[Run]) -> Dict[str, str]:
    """Every generated section, by marker name."""
    parts: Dict[str, Callable[[], str]] = {
        "machine": lambda: sec_machine(cp, pp),
        "main": lambda: sec_main(cp),
        "overhead": lambda: sec_overhead(cp),
        "pypy": lambda: sec_pypy(cp, pp),
        "targets": lambda: sec_targets(cp, pp),
        "headline": lambda: sec_headline(cp, pp),
    }
    out = {k: f() for k, f in parts.items()}
    for r in cp.results:
        out[f"variants-{r.name}"] = sec_variants(r.name, cp, pp)
    return out


def rewrite(text: str, parts: Dict[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in parts:
            raise SystemExit(f"{where}: no generated section named {name!r} "
                             f"(known: {', '.join(sorted(parts))})")
        return m.group("open") + parts[name] + m.group("close")

    return _MARKER.sub(sub, text)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kqueue_py.bench.docs",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cpython", required=True, type=Path, help="the CPython run's JSON")
    ap.add_argument("--pypy", type=Path, help="the PyPy run's JSON (optional)")
    ap.add_argument("files", nargs="*", type=Path,
                    default=[Path("docs") / "benchmarks.md", Path("README.md")],
                    help="Markdown files to rewrite (default: docs/benchmarks.md README.md)")
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if a file's generated parts are out of date")
    args = ap.parse_args(argv)

    cp = Run.read(str(args.cpython))
    pp = Run.read(str(args.pypy)) if args.pypy and args.pypy.exists() else None
    parts = render(cp, pp)
    stale = []
    for path in args.files:
        old = path.read_text(encoding="utf-8")
        if not _MARKER.search(old):
            print(f"{path}: no bench markers", file=sys.stderr)
            continue
        new = rewrite(old, parts, str(path))
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
                print(f"rewrote {path}", file=sys.stderr)
    if args.check and stale:
        print("out of date: " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
