"""The table, the targets, JSON and the PNG chart."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Dict, List, Optional, TextIO

from .timing import Measurement

__all__ = ["ScenarioResult", "fmt_ns", "render_table", "render_variants", "evaluate_targets",
           "speedups", "read_json", "write_json", "write_png"]

RAWC_KEVENT = "rawC kevent"
RAWC_EPOLL = "rawC epoll"


class ScenarioResult:
    """Everything measured for one scenario."""

    def __init__(self, name: str, title: str, unit: str) -> None:
        self.name = name
        self.title = title
        self.unit = unit
        self.variants: Dict[str, Measurement] = {}
        self.roles: Dict[str, str] = {}
        self.notes: List[str] = []
        self.error: Optional[str] = None

    def role(self, role: str) -> Optional[float]:
        """ns/op (min of group medians) of the variant playing ``role``
        (kqueue_py, ctypes, stdlib, rawC kevent, rawC epoll)."""
        name = self.roles.get(role, role)
        m = self.variants.get(name)
        return m.value_ns if m else None

    def to_json(self) -> Dict[str, Any]:
        return {
            "title": self.title, "unit": self.unit, "roles": self.roles,
            "notes": self.notes, "error": self.error,
            "variants": {k: asdict(v) for k, v in self.variants.items()},
            "ratios": ratios(self),
            "speedups": speedups(self),
            "overhead_above_rawC_ns": {k: overhead(self, k) for k in ("kqueue_py", "ctypes")},
        }


def fmt_ns(ns: Optional[float]) -> str:
    if ns is None:
        return "-"
    if ns < 10_000:
        return f"{ns:,.0f} ns"
    if ns < 10_000_000:
        return f"{ns / 1e3:,.1f} µs"
    return f"{ns / 1e6:,.2f} ms"


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def ratios(r: ScenarioResult) -> Dict[str, Optional[float]]:
    kp = r.role("kqueue_py")
    return {
        "ctypes/kqueue_py": _ratio(r.role("ctypes"), kp),
        "kqueue_py/stdlib": _ratio(kp, r.role("stdlib")),
        "kqueue_py/rawC": _ratio(kp, r.role(RAWC_KEVENT)),
    }


#: Scenarios where one op is one kevent() call, so "time - raw C" is the
#: binding's own cost (call + decode).
OVERHEAD_SCENARIOS = ("empty_poll", "ready64", "active1of10", "active1of10000",
                      "timers_armed_wait")


def overhead(r: ScenarioResult, role: str) -> Optional[float]:
    t, c = r.role(role), r.role(RAWC_KEVENT)
    if t is None or c is None:
        return None
    return max(t - c, 1.0)


def _fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _grid(rows: List[List[str]], right: set[int]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for k, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def render_table(results: List[ScenarioResult], facts: Dict[str, Any], mode: str,
                 out: TextIO, verbose: bool = False) -> None:
    """The summary table and the binding-overhead table; with ``verbose``
    also every variant of every scenario."""
    def p(s: str = "") -> None:
        print(s, file=out)

    p(f"kqueue_py benchmark ({mode}): time per operation (min over groups of the "
      f"group median), ratios from this run")
    p(f"machine: {facts['cpu_model']}, {facts['cpu_count']} CPUs "
      f"({facts['cpu_usable']} usable), {facts['kernel']}, {facts['machine']}")
    p(f"python: {facts['python']}; cffi {facts['cffi']}; "
      f"kqueue_py {facts['kqueue_py_version']} backend={facts['kqueue_py_backend']}")
    load = facts.get("loadavg_at_start") or []
    if load:
        busy = load[0] > 0.5 * max(1, facts.get("cpu_usable") or 1)
        p(f"load average at start: {' '.join(map(str, load))}"
          + ("  -- WARNING: the machine was busy; ratios are noisy (see median vs value)"
             if busy else ""))
    p()
    head = ["scenario", "op", "kqueue_py", "ctypes", "stdlib", "rawC kevent", "rawC epoll",
            "ctypes/kqueue_py", "kqueue_py/stdlib", "kqueue_py/rawC"]
    rows = [head]
    for r in results:
        if r.error:
            rows.append([r.name, "ERROR", r.error[:60]] + [""] * 7)
            continue
        rt = ratios(r)
        rows.append([r.name, r.unit, fmt_ns(r.role("kqueue_py")), fmt_ns(r.role("ctypes")),
                     fmt_ns(r.role("stdlib")), fmt_ns(r.role(RAWC_KEVENT)),
                     fmt_ns(r.role(RAWC_EPOLL)),
                     _fmt_ratio(rt["ctypes/kqueue_py"]), _fmt_ratio(rt["kqueue_py/stdlib"]),
                     _fmt_ratio(rt["kqueue_py/rawC"])])
    for line in _grid(rows, right=set(range(2, 10))):
        p(line)
    p()
    p("What the binding adds above raw C of the same kevent() call (time - rawC kevent):")
    orows = [["scenario", "kqueue_py", "ctypes", "ctypes/kqueue_py"]]
    for r in results:
        if r.error or r.name not in OVERHEAD_SCENARIOS:
            continue
        kp_o, ct_o = overhead(r, "kqueue_py"), overhead(r, "ctypes")
        orows.append([r.name, fmt_ns(kp_o), fmt_ns(ct_o), _fmt_ratio(_ratio(ct_o, kp_o))])
    for line in _grid(orows, right={1, 2, 3}):
        p("  " + line)
    p()
    if verbose:
        render_variants(results, out)
    else:
        p("(every variant of every scenario: --verbose)")
        p()


def render_variants(results: List[ScenarioResult], out: TextIO) -> None:
    """Every variant of every scenario, with its notes."""
    def p(s: str = "") -> None:
        print(s, file=out)

    p("Every variant (min of group medians / overall median / fastest batch, per op;"
      " x = time / the kqueue_py column):")
    for r in results:
        if r.error:
            continue
        p(f"  {r.name}: {r.title}")
        kp = r.role("kqueue_py")
        vrows = [["variant", "value", "median", "min", "vs kqueue_py", "batch"]]
        for name, m in r.variants.items():
            role = [k for k, v in r.roles.items() if v == name]
            label = name + (f"  [{role[0]}]" if role else "")
            vrows.append([label, fmt_ns(m.value_ns), fmt_ns(m.median_ns), fmt_ns(m.min_ns),
                          _fmt_ratio(_ratio(m.value_ns, kp)), str(m.batch)])
        for line in _grid(vrows, right={1, 2, 3, 4, 5}):
            p("    " + line)
        for note in r.notes:
            p(f"    note: {note}")
    p()


def evaluate_targets(results: List[ScenarioResult]) -> List[Dict[str, Any]]:
    """The design's targets, each with its value from this run."""
    by = {r.name: r for r in results if not r.error}
    targets: List[Dict[str, Any]] = []

    def add(desc: str, value: Optional[float], op: str, bound: float) -> None:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        targets.append({"target": desc, "value": value, "op": op, "bound": bound,
                        "met": met})

    e: Any = by.get("empty_poll")
    add("empty poll: ctypes / kqueue_py (kq_wait)",
        e and _ratio(e.role("ctypes"), e.role("kqueue_py")), ">=", 2.5)
    add("empty poll: kqueue_py (kq_wait) / select.epoll.poll(0, 64)",
        e and _ratio(e.role("kqueue_py"), e.role("stdlib")), "<=", 1.2)
    r: Any = by.get("ready64")
    add("64 ready to Python: ctypes / kqueue_py",
        r and _ratio(r.role("ctypes"), r.role("kqueue_py")), ">=", 3.0)
    add("64 ready to Python: kqueue_py / raw C (same backend call)",
        r and _ratio(r.role("kqueue_py"), r.role(RAWC_KEVENT)), "<=", 1.3)
    a10: Any = by.get("active1of10")
    a10k: Any = by.get("active1of10000")
    add("1 active: among 10,000 / among 10 (kqueue_py)",
        a10 and a10k and _ratio(a10k.role("kqueue_py"), a10.role("kqueue_py")), "<=", 1.2)
    # The Pythonic queue against the raw helper (same backend call), and
    # kqueue_py's selector against the stdlib's default one.
    for name, label, bound in (("empty_poll", "empty poll", 1.3),
                               ("active1of10", "1 active among 10", 1.3),
                               ("ready64", "64 ready", 1.6)):
        s: Any = by.get(name)
        add(f"{label}: KQueue.wait / kq_wait",
            s and _ratio(s.role("KQueue.wait"), s.role("kqueue_py")), "<=", bound)
    for name, label, bound in (("empty_poll", "empty poll", 1.0),
                               ("active1of10", "1 active among 10", 1.1),
                               ("ready64", "64 ready", 1.0)):
        s = by.get(name)
        sel = s and s.roles.get("stdlib selector", "stdlib selector")
        add(f"{label}: KqueueSelector.select / {sel[len('stdlib '):] if sel else 'stdlib'}",
            s and _ratio(s.role("KqueueSelector"), s.role("stdlib selector")), "<=", bound)
    return targets


def render_targets(targets: List[Dict[str, Any]], out: TextIO, python: str = "") -> None:
    """``python``: the interpreter the run measured (machine facts' "python")."""
    print(f"Targets ({python or 'this interpreter'}, ratios from this run):", file=out)
    for t in targets:
        status = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}x"
        print(f"  [{status}] {t['target']}: {value} (target {t['op']} {t['bound']}x)",
              file=out)


def read_json(path: str) -> tuple[Dict[str, Any], List[ScenarioResult]]:
    """The machine facts and the results of a run saved by :func:`write_json`."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    results = []
    for name, sc in doc["scenarios"].items():
        r = ScenarioResult(name, sc["title"], sc["unit"])
        r.roles = dict(sc["roles"])
        r.notes = list(sc["notes"])
        r.error = sc["error"]
        r.variants = {k: Measurement(**v) for k, v in sc["variants"].items()}
        results.append(r)
    return doc["machine"], results


def write_json(path: str, facts: Dict[str, Any], settings: Dict[str, Any],
               results: List[ScenarioResult], targets: List[Dict[str, Any]]) -> None:
    doc = {"machine": facts, "settings": settings,
           "scenarios": {r.name: r.to_json() for r in results}, "targets": targets}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")


#: The chart's comparators: (role, label).
CHART_COMPARATORS = [("ctypes", "ctypes"), ("stdlib", "stdlib (epoll/selectors)"),
                     (RAWC_KEVENT, "raw C, same kevent()")]


def speedups(r: ScenarioResult) -> Dict[str, Optional[float]]:
    """kqueue_py's speed-up over each comparator: its time / kqueue_py's
    (> 1: kqueue_py is faster)."""
    kp = r.role("kqueue_py")
    return {role: _ratio(r.role(role), kp) for role, _ in CHART_COMPARATORS}


def write_png(path: str, results: List[ScenarioResult], facts: Dict[str, Any]) -> Optional[str]:
    """Left: kqueue_py's speed-up over each comparator (one direction:
    comparator time / kqueue_py time, > 1 = kqueue_py faster).  Right: the
    absolute times per operation.  Returns a message if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not importable: --png skipped (pip install 'kqueue_py[bench]')"
    ok = [r for r in results if not r.error and r.role("kqueue_py")]
    series = [("kqueue_py", "kqueue_py")] + CHART_COMPARATORS
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(max(12, 1.7 * len(ok)), 5.5),
                                   gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(CHART_COMPARATORS)
    for j, (role, label) in enumerate(CHART_COMPARATORS):
        vals = [speedups(r)[role] for r in ok]
        xs = [i + (j - (len(CHART_COMPARATORS) - 1) / 2) * width for i in range(len(ok))]
        bars = ax.bar([x for x, v in zip(xs, vals) if v], [v for v in vals if v], width,
                      label=f"over {label}")
        for b, v in zip(bars, [v for v in vals if v]):
            ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v),
                        ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ok)))
    ax.set_xticklabels([r.name for r in ok], rotation=25, ha="right")
    ax.set_ylabel("speed-up of kqueue_py (comparator time / kqueue_py time)")
    ax.set_yscale("log")       # (resets the tick formatters: set them after)
    plain = FuncFormatter(lambda v, _pos: f"{v:g}x")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_title("> 1: kqueue_py faster; < 1: the comparator is faster", fontsize=9)
    ax.legend(fontsize=8)
    width_t = 0.8 / len(series)
    for j, (role, label) in enumerate(series):
        vals = [r.role(role) for r in ok]
        xs = [i + (j - (len(series) - 1) / 2) * width_t for i in range(len(ok))]
        ax_t.bar([x for x, v in zip(xs, vals) if v], [v for v in vals if v], width_t, label=label)
    ax_t.set_xticks(range(len(ok)))
    ax_t.set_xticklabels([r.name for r in ok], rotation=25, ha="right")
    ax_t.set_ylabel("time per operation (ns, log scale)")
    ax_t.set_yscale("log")
    times = [v for r in ok for role, _ in series for v in [r.role(role)] if v]
    if times:
        ax_t.set_ylim(min(times) / 2, max(times) * 40)    # room for the legend above the bars
    ax_t.set_title("absolute times", fontsize=9)
    ax_t.legend(fontsize=8, loc="upper left", ncol=2)
    fig.suptitle(f"kqueue_py benchmark - {facts['python']}, {facts['cpu_model']}, "
                 f"backend={facts['kqueue_py_backend']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
