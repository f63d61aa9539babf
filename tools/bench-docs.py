#!/usr/bin/env python3
"""Rewrite the benchmark numbers in the docs from the benchmark's JSON.

    python tools/bench-docs.py --cpython docs/bench/cpython.json \
        [--pypy docs/bench/pypy.json] [--check]

The JSON files are what ``python -m kqueue_py.bench --json PATH`` writes
(``make bench-docs`` runs the benchmark on CPython, and on PyPy when
``pypy3`` is installed, then this script).  Every generated part of
docs/benchmarks.md and README.md sits between marker comments::

    <!-- bench:NAME:begin -->
    ...generated, do not edit...
    <!-- bench:NAME:end -->

and only those parts are replaced.  A marker with a NAME this script does
not generate is an error, so a typo cannot leave stale numbers behind.
``--check`` rewrites nothing and exits 1 when a file is out of date.

Speed-ups have one direction throughout: *comparator time / kqueue_py
time*, so above 1 means kqueue_py is faster.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
_MARKER = re.compile(
    r"(?P<open><!-- bench:(?P<name>[A-Za-z0-9_.-]+):begin -->\n)(?P<body>.*?)"
    r"(?P<close><!-- bench:(?P=name):end -->)", re.S)

#: Prose names of the comparator columns (roles in the JSON).
RAWC_KEVENT = "rawC kevent"
RAWC_EPOLL = "rawC epoll"


# --------------------------------------------------------------- the data

class Run:
    """One ``--json`` output of the benchmark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self.machine: Dict[str, Any] = self.doc["machine"]
        self.settings: Dict[str, Any] = self.doc.get("settings", {})
        self.scenarios: Dict[str, Dict[str, Any]] = self.doc["scenarios"]

    @property
    def python(self) -> str:
        return str(self.machine.get("python", "?"))

    @property
    def when(self) -> str:
        """The run's date: recorded by the benchmark if it does, else the
        JSON file's modification time (stamped into the file on first use,
        so a later checkout does not change it)."""
        for key in ("finished_utc", "started_utc", "date"):
            if key in self.settings:
                return str(self.settings[key])[:10]
        if "docs_stamp_utc" not in self.settings:
            mtime = _dt.datetime.fromtimestamp(os.path.getmtime(self.path), _dt.timezone.utc)
            self.settings["docs_stamp_utc"] = mtime.strftime("%Y-%m-%dT%H:%M:%SZ")
            self.doc["settings"] = self.settings
            self.path.write_text(json.dumps(self.doc, indent=2, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
        return str(self.settings["docs_stamp_utc"])[:10]

    def ok(self, name: str) -> Optional[Dict[str, Any]]:
        sc = self.scenarios.get(name)
        if sc is None or sc.get("error"):
            return None
        return sc

    def variant(self, name: str, variant: str) -> Optional[float]:
        sc = self.ok(name)
        if sc is None:
            return None
        v = sc["variants"].get(variant)
        return None if v is None else float(v["value_ns"])

    def role(self, name: str, role: str) -> Optional[float]:
        """ns per op of the variant playing ``role`` (kqueue_py, ctypes,
        stdlib, stdlib_literal, rawC kevent, rawC epoll)."""
        sc = self.ok(name)
        if sc is None:
            return None
        return self.variant(name, sc.get("roles", {}).get(role, role))

    def role_name(self, name: str, role: str) -> Optional[str]:
        sc = self.ok(name)
        if sc is None:
            return None
        variant = sc.get("roles", {}).get(role, role)
        return variant if variant in sc["variants"] else None


def speedup(comparator: Optional[float], kqueue_py: Optional[float]) -> Optional[float]:
    if comparator is None or kqueue_py is None or kqueue_py <= 0:
        return None
    return comparator / kqueue_py


def fmt_ns(ns: Optional[float]) -> str:
    if ns is None:
        return "–"
    if ns < 10_000:
        return f"{ns:,.0f} ns"
    if ns < 10_000_000:
        return f"{ns / 1e3:,.1f} µs"
    return f"{ns / 1e6:,.2f} ms"


def fmt_x(x: Optional[float], bold_above: Optional[float] = None) -> str:
    if x is None:
        return "–"
    s = f"{x:.2f}x"
    return f"**{s}**" if bold_above is not None and x >= bold_above else s


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


def sec_main(run: Run) -> str:
    head = ["scenario", "unit", "kqueue_py", "ctypes", "stdlib", "raw C `kevent`",
            "raw C `epoll`", "ctypes ÷ kqueue_py", "stdlib ÷ kqueue_py", "raw C ÷ kqueue_py"]
    rows = []
    for name, sc in run.scenarios.items():
        if sc.get("error"):
            rows.append([f"`{name}`", "", sc["error"]] + [""] * 7)
            continue
        kp = run.role(name, "kqueue_py")
        rows.append([f"`{name}`", sc.get("unit", ""), fmt_ns(kp), fmt_ns(run.role(name, "ctypes")),
                     fmt_ns(run.role(name, "stdlib")), fmt_ns(run.role(name, RAWC_KEVENT)),
                     fmt_ns(run.role(name, RAWC_EPOLL)),
                     fmt_x(speedup(run.role(name, "ctypes"), kp), bold_above=1.0),
                     fmt_x(speedup(run.role(name, "stdlib"), kp)),
                     fmt_x(speedup(run.role(name, RAWC_KEVENT), kp))])
    return table(head, rows, right_from=2)


def sec_overhead(run: Run) -> str:
    """Time above raw C of the same kevent() call: what each binding adds."""
    head = ["scenario", "kqueue_py − raw C", "ctypes − raw C", "ctypes adds ÷ kqueue_py adds"]
    rows = []
    for name in run.scenarios:
        c = run.role(name, RAWC_KEVENT)
        kp, ct = run.role(name, "kqueue_py"), run.role(name, "ctypes")
        if c is None or kp is None or ct is None or name in ("regdel1000", "timers10000",
                                                             "user_wake_rt"):
            continue
        kp_o, ct_o = kp - c, ct - c
        if kp_o <= 0:   # within the noise of two separately timed programs
            rows.append([f"`{name}`", "below raw C (noise)", fmt_ns(ct_o), "–"])
            continue
        rows.append([f"`{name}`", fmt_ns(kp_o), fmt_ns(ct_o), fmt_x(speedup(ct_o, kp_o))])
    return table(head, rows)


def sec_pypy(cp: Run, pp: Optional[Run]) -> str:
    if pp is None:
        return ("PyPy was not run for this page (`make bench-docs` runs it when `pypy3` is "
                "installed).\n")
    head = ["scenario", f"kqueue_py, {cp.python}", f"kqueue_py, {pp.python}",
            "ctypes ÷ kqueue_py, CPython", "ctypes ÷ kqueue_py, PyPy",
            "stdlib ÷ kqueue_py, CPython", "stdlib ÷ kqueue_py, PyPy"]
    rows = []
    for name in cp.scenarios:
        rows.append([f"`{name}`", fmt_ns(cp.role(name, "kqueue_py")),
                     fmt_ns(pp.role(name, "kqueue_py")),
                     fmt_x(speedup(cp.role(name, "ctypes"), cp.role(name, "kqueue_py"))),
                     fmt_x(speedup(pp.role(name, "ctypes"), pp.role(name, "kqueue_py"))),
                     fmt_x(speedup(cp.role(name, "stdlib"), cp.role(name, "kqueue_py"))),
                     fmt_x(speedup(pp.role(name, "stdlib"), pp.role(name, "kqueue_py")))])
    return table(head, rows)


def sec_variants(name: str, cp: Run, pp: Optional[Run]) -> str:
    sc = cp.scenarios.get(name)
    if sc is None:
        return f"(scenario `{name}` is not in this run)\n"
    if sc.get("error"):
        return f"Not measured in this run: {sc['error']}\n"
    roles = {v: k for k, v in sc.get("roles", {}).items()}
    names = list(sc["variants"])
    if pp is not None and pp.ok(name):
        names += [v for v in pp.scenarios[name]["variants"] if v not in names]
    head = ["variant", "CPython", "median", "÷ kqueue_py"]
    if pp is not None:
        head += ["PyPy", "median", "÷ kqueue_py"]
    rows = []

    def cells(run: Run, variant: str) -> List[str]:
        s = run.ok(name)
        v = s["variants"].get(variant) if s else None
        if v is None:
            return ["–", "–", "–"]
        kp = run.role(name, "kqueue_py")
        return [fmt_ns(v["value_ns"]), fmt_ns(v["median_ns"]),
                fmt_x(None if kp is None else v["value_ns"] / kp)]

    for variant in names:
        label = f"`{variant}`" + (f" ({roles[variant]})" if variant in roles
                                  and roles[variant] != "stdlib_literal" else "")
        row = [label] + cells(cp, variant)
        if pp is not None:
            row += cells(pp, variant)
        rows.append(row)
    out = table(head, rows)
    notes = list(sc.get("notes", []))
    if pp is not None and pp.ok(name):
        notes += [f"PyPy: {n}" for n in pp.scenarios[name].get("notes", []) if n not in notes]
    if notes:
        out += "\n" + "".join(f"- {n}\n" for n in notes)
    return out


def sec_targets(run: Run) -> str:
    rows = []
    for t in run.doc.get("targets", []):
        met = {True: "met", False: "missed", None: "n/a"}[t.get("met")]
        value = "–" if t.get("value") is None else f"{t['value']:.2f}x"
        rows.append([t["target"], f"{t['op']} {t['bound']}x", value, met])
    if not rows:
        return "This run recorded no goals.\n"
    return table(["goal", "wanted", "this run", ""], rows)


def sec_headline(cp: Run, pp: Optional[Run]) -> str:
    """About five lines for the README."""
    def ratio_line(label: str, name: str, extra: Callable[[], str]) -> Optional[str]:
        kp = cp.role(name, "kqueue_py")
        if kp is None:
            return None
        ct = speedup(cp.role(name, "ctypes"), kp)
        return f"- {label}: {fmt_ns(kp)}, **{fmt_x(ct)}** faster than ctypes{extra()}"

    def vs_stdlib(name: str, what: str) -> Callable[[], str]:
        def f() -> str:
            st = cp.role(name, "stdlib")
            if st is None:
                return ""
            return f"; {what} {fmt_ns(st)} ({fmt_x(speedup(st, cp.role(name, 'kqueue_py')))})"
        return f

    lines = [f"{cp.python} on {cp.machine.get('cpu_model', '?')}, "
             f"{cp.machine.get('cpu_usable', '?')} CPUs, {cp.machine.get('kernel', '?')} "
             f"({cp.when}); speed-up = other's time ÷ kqueue_py's, above 1 = kqueue_py faster:",
             ""]
    stdlib_empty = cp.role_name("empty_poll", "stdlib") or "stdlib"
    for line in (
        ratio_line("empty poll", "empty_poll",
                   vs_stdlib("empty_poll", f"`{stdlib_empty.replace('stdlib ', 'select.')}`")),
        ratio_line("64 ready sockets handed to Python", "ready64",
                   vs_stdlib("ready64", "`select.epoll`, which reports no byte counts,")),
        ratio_line("cross-thread `EVFILT_USER` wake round trip", "user_wake_rt",
                   vs_stdlib("user_wake_rt", "eventfd + `select.epoll`")),
    ):
        if line:
            lines.append(line + ".")
    a10, a10k = cp.role("active1of10", "kqueue_py"), cp.role("active1of10000", "kqueue_py")
    if a10 and a10k:
        growth = a10k / a10
        verdict = ("the cost does not grow with registrations" if growth <= 1.2
                   else f"{growth:.2f}x the cost with 1,000 times the registrations")
        lines.append(f"- 1 active among 10,000 registered: {fmt_ns(a10k)}, against "
                     f"{fmt_ns(a10)} among 10: {verdict}.")
    if pp is not None:
        kp, ct = pp.role("empty_poll", "kqueue_py"), pp.role("empty_poll", "ctypes")
        r64 = speedup(pp.role("ready64", "ctypes"), pp.role("ready64", "kqueue_py"))
        if kp is not None:
            lines.append(f"- {pp.python}: empty poll {fmt_ns(kp)} ({fmt_x(speedup(ct, kp))} "
                         f"faster than ctypes), 64 ready sockets {fmt_x(r64)} faster than ctypes.")
    return "\n".join(lines) + "\n"


def render(cp: Run, pp: Optional[Run]) -> Dict[str, str]:
    parts = {
        "machine": sec_machine(cp, pp),
        "main": sec_main(cp),
        "overhead": sec_overhead(cp),
        "pypy": sec_pypy(cp, pp),
        "targets": sec_targets(cp),
        "headline": sec_headline(cp, pp),
    }
    for name in cp.scenarios:
        parts[f"variants-{name}"] = sec_variants(name, cp, pp)
    return parts


def rewrite(text: str, parts: Dict[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in parts:
            raise SystemExit(f"{where}: no generated section named {name!r} "
                             f"(known: {', '.join(sorted(parts))})")
        return m.group("open") + parts[name] + m.group("close")

    return _MARKER.sub(sub, text)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpython", required=True, type=Path, help="the CPython run's JSON")
    ap.add_argument("--pypy", type=Path, help="the PyPy run's JSON (optional)")
    ap.add_argument("files", nargs="*", type=Path,
                    default=[ROOT / "docs" / "benchmarks.md", ROOT / "README.md"],
                    help="Markdown files to rewrite (default: docs/benchmarks.md README.md)")
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if a file's generated parts are out of date")
    args = ap.parse_args(argv)

    cp = Run(args.cpython)
    pp = Run(args.pypy) if args.pypy and args.pypy.exists() else None
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
