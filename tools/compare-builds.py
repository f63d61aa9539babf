"""Compare builds of the backend on the raw-C benchmark program.

What a change to the C backend costs or saves, per ``kevent()`` call, with no
Python in the way: the benchmark's raw-C program (``rawc_bench.c``, built once)
``dlopen()``s every build's extension into one process, gives each build its
own queues on the same descriptors, and times the builds' batches in turn,
batch by batch, in a rotating order -- so that a slow spell of the machine,
which on a shared VM comes and goes within a second, falls on all of them
alike.  Each build's number is the median of its batches, with the median
of its ratios to the first build's batch timed beside it (and the middle
half of those ratios).  The first build is also loaded once more, as if it
were another ("REF again", an A/A comparison): its ratios are what the
machine's noise alone makes of two equal builds.  The kernel floors the
program also times (plain epoll) are given beside them.  A round is one
run of the program per scenario; the batches of all rounds are pooled.

    python tools/compare-builds.py BUILD [BUILD ...] [--scenario NAME:N ...]

BUILD is ``installed`` (the package installed in this interpreter), the path
of a built extension (``.so``, a variant built by hand), or a git
revision of this checkout (built into a wheel with this interpreter's pip, in
a temporary directory), optionally followed by ``:NAME=VALUE,...`` -- the
environment of that build's runs (``installed:KQUEUE_PY_IO_URING=0``: the
same build with io_uring forced off).  Scenarios are the program's: ``ready``
and ``ready_tcp`` (N ready sockets), ``active`` (1 ready among N),
``regdel`` (N registrations added and deleted), ``empty_poll``, ``user_rt``,
``trigger``, ``timers``.  Example, the lifetime mechanism's before/after:

    .venv/bin/python tools/compare-builds.py 340847c installed \\
        installed:KQUEUE_PY_IO_URING=0 --scenario ready:64 ready_tcp:64 regdel:1000
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, NoReturn, Tuple

from kqueue_py.bench.rawc import RawC, RawCError

ROOT = Path(__file__).resolve().parent.parent
#: The program's variant timing the backend's kevent() (the others are floors).
KEVENT = "kq"


def _fail(msg: str) -> NoReturn:
    print(f"compare-builds: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _parse_build(spec: str) -> Tuple[str, Dict[str, str]]:
    rev, _, env_text = spec.partition(":")
    env: Dict[str, str] = {}
    for item in filter(None, env_text.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name:
            _fail(f"{spec!r}: the environment is NAME=VALUE[,NAME=VALUE...]")
        if ";" in item:
            _fail(f"{spec!r}: a setting cannot hold ';'")
        env[name] = value
    if not rev:
        _fail(f"{spec!r}: no revision (or 'installed')")
    return rev, env


def _parse_scenario(spec: str) -> Tuple[str, int]:
    name, _, n = spec.partition(":")
    try:
        return name, int(n or "0")
    except ValueError:
        _fail(f"{spec!r}: a scenario is NAME or NAME:N")


def _installed_extension() -> str:
    from kqueue_py import _kqueue  # the compiled module: the backend with it

    path = _kqueue.__file__
    if not path:
        _fail("the installed kqueue_py has no compiled extension file")
    return path


def _has_build_deps() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("cffi", "setuptools"))


def _build_revision(rev: str, workdir: Path) -> str:
    """The extension of revision ``rev``, built into a wheel; its path."""
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        _fail(f"{rev!r} is not a revision of {ROOT}: {proc.stderr.strip()}")
    commit = proc.stdout.strip()
    src = workdir / commit[:12]
    if not src.exists():
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        print(f"compare-builds: building {rev} ({commit[:12]})", file=sys.stderr)
        # This interpreter's setuptools and cffi where it has them (no
        # download), else pip's isolated build environment.
        isolation = ["--no-build-isolation"] if _has_build_deps() else []
        built = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
                                "wheel", "--no-deps", *isolation,
                                "-w", str(src / "wheel"), str(src)],
                               capture_output=True, text=True, check=False)
        if built.returncode != 0:
            _fail(f"building {rev} failed:\n{built.stderr.strip()[-2000:]}")
    wheels = list((src / "wheel").glob("*.whl"))
    if len(wheels) != 1:
        _fail(f"building {rev} left {len(wheels)} wheels")
    with zipfile.ZipFile(wheels[0]) as z:
        names = [n for n in z.namelist()
                 if n.startswith("kqueue_py/_kqueue") and n.endswith(".so")]
        if len(names) != 1:
            _fail(f"{wheels[0].name} holds {len(names)} kqueue_py/_kqueue*.so")
        z.extract(names[0], src / "ext")
    return str(src / "ext" / names[0])


def _program_builds(builds: List[Tuple[str, str, Dict[str, str]]], paths: Dict[str, str],
                    workdir: Path) -> str:
    """The program's SO_PATH argument: one file per build (the A/A build
    too: dlopen() would hand back a path it has loaded already), each with
    the settings its first queue is made under."""
    specs = []
    for i, (_, rev, env) in enumerate(builds):
        copy = workdir / f"build{i}" / Path(paths[rev]).name
        copy.parent.mkdir()
        shutil.copy2(paths[rev], copy)
        if any(c in str(copy) for c in ",;"):
            _fail(f"the temporary directory's path {workdir} holds ',' or ';'")
        specs.append(";".join([str(copy), *(f"{k}={v}" for k, v in env.items())]))
    return ",".join(specs)


def _fmt_us(ns: float) -> str:
    return f"{ns / 1000:.3f} µs" if ns < 1e6 else f"{ns / 1e6:.3f} ms"


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", metavar="BUILD",
                    help="'installed' or a git revision, optionally :NAME=VALUE,... "
                         "(the environment of its runs); the first is the reference")
    ap.add_argument("--scenario", nargs="+", default=["ready:64"], metavar="NAME:N")
    ap.add_argument("--rounds", type=int, default=5,
                    help="runs of the program per scenario (default 5), their batches pooled")
    ap.add_argument("--batch-ms", type=float, default=10.0,
                    help="the program's batch length (default 10 ms)")
    ap.add_argument("--repeats", type=int, default=10,
                    help="batches of each build per run (default 10)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.batch_ms <= 0:
        _fail("--rounds and --repeats must be at least 1, --batch-ms above 0")
    builds = [(spec, *_parse_build(spec)) for spec in args.builds]
    # The first build once more, as if it were another (an A/A comparison):
    # the spread of its ratios is what the machine's noise alone gives.
    builds.append((f"{builds[0][0]} again", builds[0][1], builds[0][2]))
    scenarios = [_parse_scenario(s) for s in args.scenario]

    with tempfile.TemporaryDirectory(prefix="kqueue_py-builds-") as tmp:
        paths: Dict[str, str] = {}
        for _, rev, _ in builds:
            if rev not in paths:
                if rev == "installed":
                    paths[rev] = _installed_extension()
                elif rev.endswith(".so") and Path(rev).is_file():
                    paths[rev] = rev        # an extension built elsewhere
                else:
                    paths[rev] = _build_revision(rev, Path(tmp))
        program = RawC(_program_builds(builds, paths, Path(tmp)))
        try:
            program.build()
        except RawCError as e:
            _fail(str(e))

        # Per scenario: each build's batches (ns per call, in the order
        # timed, build i's j-th beside build 0's j-th), and the floors'.
        batches: Dict[Tuple[str, int], List[List[float]]] = {}
        floors: Dict[Tuple[str, int, str], List[float]] = {}
        for _ in range(args.rounds):
            for name, n in scenarios:
                try:
                    got = program.run(name, n, args.batch_ms / 1000, repeats=1,
                                      group=args.repeats)
                except RawCError as e:
                    _fail(str(e))
                into = batches.setdefault((name, n), [[] for _ in builds])
                for i in range(len(builds)):
                    key = KEVENT if i == 0 else f"{KEVENT}@{i}"
                    if key not in got:
                        _fail(f"the program reported no {key!r} line for {name}")
                    into[i] += got[key].samples_ns
                for variant, m in got.items():
                    if variant.partition("@")[0] != KEVENT:
                        floors.setdefault((name, n, variant), []).append(m.value_ns)

    print(f"{args.rounds} rounds of {args.repeats} batches per build, the builds' batches "
          f"timed in turn in one process; each build's median batch, and the median of its "
          f"ratios to {builds[0][0]}'s batch beside it (with their middle half); "
          f"'{builds[0][0]} again' is the first build loaded once more (A/A): its ratios "
          f"are the machine's noise")
    for name, n in scenarios:
        times = batches[(name, n)]
        cells = [f"{builds[0][0]} {_fmt_us(statistics.median(times[0]))} (1.00x)"]
        for (spec, _, _), mine in zip(builds[1:], times[1:]):
            ratios = [t / r for t, r in zip(mine, times[0])]
            spread = ""
            if len(ratios) >= 4:
                q1, _, q3 = statistics.quantiles(ratios, n=4)
                spread = f", middle half {q1:.3f}-{q3:.3f}x"
            cells.append(f"{spec} {_fmt_us(statistics.median(mine))} "
                         f"({statistics.median(ratios):.3f}x{spread})")
        cells += [f"[{variant}: {_fmt_us(statistics.median(v))}]"
                  for (sc, k, variant), v in sorted(floors.items()) if (sc, k) == (name, n)]
        print(f"  {name}:{n}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
