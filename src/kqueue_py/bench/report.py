"""The benchmark's one data model and its formatters.

* :class:`ScenarioResult` (one scenario of one run) and :class:`Run` (a
  whole run: machine facts, settings, results), written and read back as
  JSON (:meth:`Run.write`, :meth:`Run.read`): the terminal table, the
  chart and the docs (:mod:`.docs`) are all drawn from this one model;
* the sanity checks (:func:`check_result`): a run that measured something
  impossible -- a variant faster than the raw-C floor it is built on, a
  comparator whose batches mostly ran far slower than its reported value --
  is flagged (``suspect``), never charted, and its targets are not scored;
* the targets (:func:`evaluate_targets`, over :data:`.scenarios.TARGETS`);
* the formatters: :func:`fmt_ns`, :func:`fmt_x`, the text table
  (:func:`render_table`), the targets (:func:`render_targets`), the chart
  (:func:`write_png`).

Speed-ups have one direction throughout: *comparator time / kqueue_py
time*, so above 1 means kqueue_py is faster.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict
from typing import Any, Dict, List, Optional, TextIO

from .scenarios import FLOOR_SLACK, RAWC_EPOLL, RAWC_KEVENT, TARGETS, Target, floors
from .timing import Measurement

__all__ = ["ScenarioResult", "Run", "fmt_ns", "fmt_x", "ratio", "check_result",
           "evaluate_targets", "render_table", "render_variants", "render_targets",
           "speedups", "write_png", "utc_now", "UNSTABLE", "RAWC_KEVENT", "RAWC_EPOLL"]

#: A role's variant is unstable when the median of its batches is more than
#: this many times its reported value (min over groups of the group medians):
#: most of its batches ran in a much slower mode than the one reported.
UNSTABLE = 3.0

#: A variant whose batches ran in two modes (its slowest tenth more than
#: UNSTABLE times its fastest tenth) and whose reported time is more than
#: this factor above its fast mode: its groups mixed the two modes, and the
#: time reported is neither (a PyPy wake-up round trip: batches of 7 and of
#: 45-66 us, reported 10.3 us against a comparator's 7.8 us).
MIXED = 1.25

#: A program timed twice, apart (a role and its "<role> again", the same
#: program on objects of its own), whose two times differ by more than
#: this factor: the run measured the machine's phases, not the programs,
#: and no ratio of that scenario says anything.
AA_SPREAD = 1.05

#: Scenarios where one op is one kevent() call, so "time - raw C" is the
#: binding's own cost (call + decode).
OVERHEAD_SCENARIOS = ("empty_poll", "ready64", "active1of10", "active1of10000",
                      "timers_armed_wait")


def utc_now() -> str:
    """The time now, as recorded in a run (ISO 8601, UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        self.floors: Dict[str, List[str]] = {}
        #: Why this scenario's numbers cannot be trusted (empty: they can).
        self.suspect: List[str] = []
        #: The variants those reasons name: never charted, no target on them.
        self.suspect_variants: List[str] = []
        self.attempts = 1

    def variant_name(self, role: str) -> Optional[str]:
        """The variant playing ``role`` (a role or a variant name), if measured."""
        name = self.roles.get(role, role)
        return name if name in self.variants else None

    def role(self, role: str) -> Optional[float]:
        """ns/op (min of group medians) of the variant playing ``role``
        (kqueue_py, ctypes, stdlib, rawC kevent, rawC epoll, ...)."""
        name = self.variant_name(role)
        return self.variants[name].value_ns if name else None

    def trusted(self, role: str) -> Optional[float]:
        """:meth:`role`, or None if that variant is flagged."""
        name = self.variant_name(role)
        if name is None or name in self.suspect_variants:
            return None
        return self.variants[name].value_ns

    def to_json(self) -> Dict[str, Any]:
        return {
            "title": self.title, "unit": self.unit, "roles": self.roles,
            "notes": self.notes, "error": self.error, "floors": self.floors,
            "suspect": self.suspect, "suspect_variants": self.suspect_variants,
            "attempts": self.attempts,
            "variants": {k: asdict(v) for k, v in self.variants.items()},
            "speedups": speedups(self),
        }

    @classmethod
    def from_json(cls, name: str, sc: Dict[str, Any]) -> ScenarioResult:
        r = cls(name, sc.get("title", name), sc.get("unit", ""))
        r.roles = dict(sc.get("roles", {}))
        r.notes = list(sc.get("notes", []))
        r.error = sc.get("error")
        r.variants = {k: Measurement(**v) for k, v in sc.get("variants", {}).items()}
        # Runs saved before floors were recorded get them from the names.
        r.floors = dict(sc["floors"] if "floors" in sc else floors(list(r.variants), name))
        r.attempts = int(sc.get("attempts", 1))
        r.suspect = list(sc.get("suspect", []))
        r.suspect_variants = list(sc.get("suspect_variants", []))
        return r


class Run:
    """One run of the benchmark: machine facts, settings, results."""

    def __init__(self, facts: Dict[str, Any], settings: Dict[str, Any],
                 results: List[ScenarioResult]) -> None:
        self.machine = facts
        self.settings = settings
        self.results = results

    @property
    def python(self) -> str:
        return str(self.machine.get("python", "?"))

    @property
    def when(self) -> str:
        """The day the run was made (recorded in the run when it is made)."""
        stamp = self.settings.get("finished_utc") or self.settings.get("started_utc")
        return str(stamp)[:10] if stamp else "an unrecorded date"

    def get(self, name: str) -> Optional[ScenarioResult]:
        """Scenario ``name`` if it was measured without error."""
        for r in self.results:
            if r.name == name:
                return None if r.error else r
        return None

    def to_json(self) -> Dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings,
                "scenarios": {r.name: r.to_json() for r in self.results},
                "targets": evaluate_targets(self.results)}

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=2, ensure_ascii=False)
            f.write("\n")

    @classmethod
    def read(cls, path: str) -> Run:
        """A run saved by :meth:`write`; the checks are applied again (a
        file from an older version, or edited by hand, is judged the same)."""
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        results = [ScenarioResult.from_json(name, sc) for name, sc in doc["scenarios"].items()]
        for r in results:
            if not r.error:
                reasons, names = check_result(r)
                for reason in reasons:
                    if reason not in r.suspect:
                        r.suspect.append(reason)
                r.suspect_variants += [n for n in names if n not in r.suspect_variants]
        return cls(doc["machine"], doc.get("settings", {}), results)


# ---------------------------------------------------------------- formatting

def fmt_ns(ns: Optional[float], none: str = "-") -> str:
    if ns is None:
        return none
    if ns < 10_000:
        return f"{ns:,.0f} ns"
    if ns < 10_000_000:
        return f"{ns / 1e3:,.1f} µs"
    return f"{ns / 1e6:,.2f} ms"


def fmt_x(x: Optional[float], none: str = "-") -> str:
    return none if x is None else f"{x:.2f}x"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def overhead(r: ScenarioResult, role: str) -> Optional[float]:
    """Time above raw C of the same kevent() call (None if not both
    measured and trusted, or within the noise: not above raw C)."""
    t, c = r.trusted(role), r.trusted(RAWC_KEVENT)
    if t is None or c is None or t <= c:
        return None
    return t - c


#: The chart's comparators: (role, label).
CHART_COMPARATORS = [("ctypes", "ctypes"), ("stdlib", "stdlib (epoll/selectors)"),
                     (RAWC_KEVENT, "raw C, same kevent()")]


def speedups(r: ScenarioResult) -> Dict[str, Optional[float]]:
    """kqueue_py's speed-up over each comparator: its time / kqueue_py's
    (> 1: kqueue_py is faster); None where either is flagged."""
    kp = r.trusted("kqueue_py")
    return {role: ratio(r.trusted(role), kp) for role, _ in CHART_COMPARATORS}


# ---------------------------------------------------------------- checks

def check_result(r: ScenarioResult) -> tuple[List[str], List[str]]:
    """What makes ``r``'s numbers impossible: (reasons, the variants they
    name).  A variant faster than a raw-C variant it is built on (by more
    than :data:`.scenarios.FLOOR_SLACK`, the noise of two separately timed
    programs) means one of the two measured nothing real -- typically the
    C program ran while the machine was busy; a role's variant whose median
    batch is more than :data:`UNSTABLE` times its reported value spent most
    of the run in another mode than the one reported; one whose fastest
    tenth of batches is more than UNSTABLE times faster than its reported
    value ran in two modes and is reported from the slow one (a wake-up
    round trip on a VM: the comparator of a PyPy run took 55 us, its
    fast batches 11 us); one whose batches ran in two modes and whose
    reported time is more than :data:`MIXED` times its fast mode mixed the
    two in every group; a program timed twice, apart, whose two times
    differ by more than :data:`AA_SPREAD` ran on a machine too noisy for
    its scenario's ratios (an asyncio echo's default loop against itself:
    0.88x in a full PyPy run)."""
    reasons: List[str] = []
    names: List[str] = []
    for floor, above in r.floors.items():
        f = r.variants.get(floor)
        if f is None:
            continue
        for name in above:
            m = r.variants.get(name)
            if m is not None and f.value_ns > FLOOR_SLACK * m.value_ns:
                why = ("a part of the same system calls" if name.startswith("rawC")
                       else "the same call with no Python")
                reasons.append(f"impossible: {name} ({fmt_ns(m.value_ns)}) is faster than "
                               f"{floor} ({fmt_ns(f.value_ns)}), which does {why}")
                names += [floor, name]
    role_variants = set(r.roles.values()) | {RAWC_KEVENT, RAWC_EPOLL}
    for name in sorted(role_variants):
        m = r.variants.get(name)
        if m is None:
            continue
        if m.median_ns > UNSTABLE * m.value_ns:
            reasons.append(f"unstable: {name}'s median batch ({fmt_ns(m.median_ns)}) is "
                           f"{m.median_ns / m.value_ns:.1f}x its reported time "
                           f"({fmt_ns(m.value_ns)})")
            names.append(name)
            continue
        tenths = _tenths(m.samples_ns)
        if tenths is None:
            continue
        fast, slow = tenths
        if m.value_ns > UNSTABLE * fast:
            reasons.append(f"bimodal: {name}'s reported time ({fmt_ns(m.value_ns)}) is "
                           f"{m.value_ns / fast:.1f}x its fastest tenth of batches "
                           f"({fmt_ns(fast)}): most of its groups ran in the slow mode")
            names.append(name)
        elif slow > UNSTABLE * fast and m.value_ns > MIXED * fast:
            reasons.append(f"mixed: {name}'s batches ran in two modes (its slowest tenth, "
                           f"{fmt_ns(slow)}, is {slow / fast:.1f}x its fastest, "
                           f"{fmt_ns(fast)}), and its reported time ({fmt_ns(m.value_ns)}) is "
                           f"{m.value_ns / fast:.2f}x the fast one: its groups mixed the two")
            names.append(name)
    for role, name in sorted(r.roles.items()):
        twin = r.roles.get(f"{role} again")
        a = r.variants.get(name)
        b = r.variants.get(twin) if twin is not None else None
        if a is None or b is None or twin is None or b.value_ns <= 0:
            continue
        aa = a.value_ns / b.value_ns
        if not 1 / AA_SPREAD <= aa <= AA_SPREAD:
            reasons.append(f"noisy: {name}, timed twice apart, came out {aa:.2f}x of itself "
                           f"(A/A, beyond {AA_SPREAD:g}x): the run measured the machine's "
                           f"phases, not the programs")
            names += [name, twin]
    return reasons, sorted(set(names))


def _tenths(samples: List[float]) -> Optional[tuple[float, float]]:
    """(the batch time a tenth of the batches beat, the one a tenth exceed);
    None: too few batches to say."""
    if len(samples) < 10:
        return None
    ordered = sorted(samples)
    return ordered[len(samples) // 10], ordered[-1 - len(samples) // 10]


# ---------------------------------------------------------------- targets

def _target_side(by: Dict[str, ScenarioResult], scenario: str, role: Optional[str]
                 ) -> tuple[Optional[float], Optional[str], bool]:
    """(ns, variant name, flagged) of ``role`` in ``scenario``."""
    r = by.get(scenario)
    if r is None or role is None:
        return None, None, False
    name = r.variant_name(role)
    if name is None:
        return None, None, False
    return r.variants[name].value_ns, name, name in r.suspect_variants


def evaluate_targets(results: List[ScenarioResult],
                     targets: Optional[List[Target]] = None) -> List[Dict[str, Any]]:
    """Every target with its value from this run and a status: ``met``,
    ``missed``, ``n/a`` (not measured here) or ``suspect`` (a variant it
    needs was flagged by :func:`check_result`)."""
    by = {r.name: r for r in results if not r.error}
    out: List[Dict[str, Any]] = []
    for t in TARGETS if targets is None else targets:
        num, num_name, num_bad = _target_side(by, t.scenario, t.num)
        unit = "ns" if t.den is None else "x"
        if t.den is None:
            value, den_name, den_bad = num, None, False
        else:
            den, den_name, den_bad = _target_side(by, t.den_scenario or t.scenario, t.den)
            value = ratio(num, den)
        # num's program timed again, apart (A/A), where the scenario has it;
        # shown even when flagged: an A/A far from 1 is why it is.
        aa = ratio(num, _target_side(by, t.scenario, f"{t.num} again")[0])
        if value is None:
            status = "n/a"
        elif num_bad or den_bad:
            status = "suspect"
        elif t.op == "<=":
            status = "met" if value <= t.bound else "missed"
        else:
            status = "met" if value >= t.bound else "missed"
        out.append({"target": t.label, "scenario": t.scenario, "value": value,
                    "unit": unit, "op": t.op, "bound": t.bound, "status": status,
                    "met": {"met": True, "missed": False}.get(status),
                    "num": num_name, "den": den_name, "aa": aa})
    return out


def fmt_target_value(t: Dict[str, Any]) -> str:
    """The value; with the A/A ratio beside it where the target has one."""
    if t["value"] is None:
        return "-"
    text = fmt_ns(t["value"]) if t["unit"] == "ns" else fmt_x(t["value"])
    if t["unit"] == "x" and text == fmt_x(t["bound"]) and t["value"] != t["bound"]:
        text = f"{t['value']:.3f}x"     # not "1.00x" for a miss of 1.0 by 0.002
    if t.get("aa") is not None:
        text += f" (A/A {fmt_x(t['aa'])})"
    return text


def fmt_target_bound(t: Dict[str, Any]) -> str:
    b = t["bound"]
    return f"{t['op']} {fmt_ns(b)}" if t["unit"] == "ns" else f"{t['op']} {b:g}x"


def render_targets(targets: List[Dict[str, Any]], out: TextIO, python: str = "") -> None:
    """``python``: the interpreter the run measured (machine facts' "python")."""
    print(f"Targets ({python or 'this interpreter'}, ratios from this run):", file=out)
    for t in targets:
        status = {"met": "MET    ", "missed": "MISSED ", "suspect": "SUSPECT",
                  "n/a": "n/a    "}[t["status"]]
        what = f" [{t['num']} / {t['den']}]" if t["den"] else ""
        print(f"  [{status}] {t['target']}: {fmt_target_value(t)} "
              f"(target {fmt_target_bound(t)}){what}", file=out)


# ---------------------------------------------------------------- text tables

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


def _cell(r: ScenarioResult, role: str) -> str:
    name = r.variant_name(role)
    if name is None:
        return "-"
    return fmt_ns(r.variants[name].value_ns) + ("!" if name in r.suspect_variants else "")


def render_table(results: List[ScenarioResult], facts: Dict[str, Any], mode: str,
                 out: TextIO, verbose: bool = False) -> None:
    """The summary table and the binding-overhead table; with ``verbose``
    also every variant of every scenario.  A flagged time has a "!" and
    no ratio."""
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
        kp = r.trusted("kqueue_py")
        rows.append([r.name, r.unit, _cell(r, "kqueue_py"), _cell(r, "ctypes"),
                     _cell(r, "stdlib"), _cell(r, RAWC_KEVENT), _cell(r, RAWC_EPOLL),
                     fmt_x(ratio(r.trusted("ctypes"), kp)),
                     fmt_x(ratio(kp, r.trusted("stdlib"))),
                     fmt_x(ratio(kp, r.trusted(RAWC_KEVENT)))])
    for line in _grid(rows, right=set(range(2, 10))):
        p(line)
    flagged = [r for r in results if r.suspect]
    if flagged:
        p()
        p("Flagged (! above; not charted, their targets not scored):")
        for r in flagged:
            for reason in r.suspect:
                p(f"  {r.name} (after {r.attempts} attempt{'s' * (r.attempts > 1)}): {reason}")
    p()
    p("What the binding adds above raw C of the same kevent() call (time - rawC kevent):")
    orows = [["scenario", "kqueue_py", "ctypes", "ctypes/kqueue_py"]]
    for r in results:
        if r.error or r.name not in OVERHEAD_SCENARIOS:
            continue
        kp_o, ct_o = overhead(r, "kqueue_py"), overhead(r, "ctypes")
        orows.append([r.name, fmt_ns(kp_o), fmt_ns(ct_o), fmt_x(ratio(ct_o, kp_o))])
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
            label += "  (flagged)" if name in r.suspect_variants else ""
            vrows.append([label, fmt_ns(m.value_ns), fmt_ns(m.median_ns), fmt_ns(m.min_ns),
                          fmt_x(ratio(m.value_ns, kp)), str(m.batch)])
        for line in _grid(vrows, right={1, 2, 3, 4, 5}):
            p("    " + line)
        for note in r.notes:
            p(f"    note: {note}")
    p()


# ---------------------------------------------------------------- the chart

def write_png(path: str, results: List[ScenarioResult], facts: Dict[str, Any]) -> Optional[str]:
    """Left: kqueue_py's speed-up over each comparator (one direction:
    comparator time / kqueue_py time, > 1 = kqueue_py faster).  Right: the
    absolute times per operation.  Flagged variants are left out (a gap,
    and "flagged" under the scenario's name).  Returns a message if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not importable: --png skipped (pip install 'kqueue_py[bench]')"
    ok = [r for r in results if not r.error and r.role("kqueue_py")]
    names = [r.name + ("\n(flagged)" if r.suspect else "") for r in ok]
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
    ax.set_xticklabels(names, rotation=25, ha="right")
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
        vals = [r.trusted(role) for r in ok]
        xs = [i + (j - (len(series) - 1) / 2) * width_t for i in range(len(ok))]
        ax_t.bar([x for x, v in zip(xs, vals) if v], [v for v in vals if v], width_t, label=label)
    ax_t.set_xticks(range(len(ok)))
    ax_t.set_xticklabels(names, rotation=25, ha="right")
    ax_t.set_ylabel("time per operation (ns, log scale)")
    ax_t.set_yscale("log")
    times = [v for r in ok for role, _ in series for v in [r.trusted(role)] if v]
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
