#!/usr/bin/env python3
"""What an idle keep-alive connection costs the HTTP example, beside
uvicorn + httptools: ``python tools/http-idle-memory.py [--connections N]``.

Each server runs in its own process on 127.0.0.1 with the same answer to
``GET /`` (21 bytes of text), keep-alive timeouts long enough that nothing
is closed during the run, and a listen backlog of 4096.  For each one:

1. one warm-up connection makes 1,000 sequential requests (latency "before");
2. the server's resident set (VmRSS) is read;
3. N connections are opened and each makes one request, then stays idle;
4. VmRSS is read again: (after - before) / N is the cost per idle
   connection (user space only: the kernel's socket buffers are not in RSS);
5. the warm-up connection makes 1,000 more requests (latency "with N idle").

The servers take turns, ``--rounds`` times, and each one's median round is
reported.  ``--write-docs docs/servers.md`` puts the table between the
``<!-- idle-memory:begin -->`` and ``<!-- idle-memory:end -->`` markers.
Needs ``uvicorn`` and ``httptools`` (pip); the uvloop rows need ``uvloop``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from kqueue_py.bench.servers import read_response_body, wait_listening

HELLO = b"Hello from kqueue_py\n"
KINDS = ["kqueue_py", "kqueue_py --workers 2", "uvicorn+httptools", "uvicorn+httptools+uvloop"]


def _serve(kind: str, port: int) -> None:
    if kind.startswith("kqueue_py"):
        from kqueue_py.examples.http import HTTPServer, ServerConfig
        config = ServerConfig(workers=2 if "workers" in kind else 0, backlog=4096,
                              idle_timeout=3600.0)
        HTTPServer(port=port, config=config, handle_signals=True).serve_forever()
        return
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", b"%d" % len(HELLO))]})
        await send({"type": "http.response.body", "body": HELLO})

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools",
                loop="uvloop" if kind.endswith("uvloop") else "asyncio", lifespan="off",
                log_level="warning", access_log=False, timeout_keep_alive=3600, backlog=4096)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _get(sock: socket.socket, f: Any) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    if read_response_body(f) != HELLO:
        raise RuntimeError("unexpected body")


def _latencies(sock: socket.socket, f: Any, n: int) -> dict[str, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        _get(sock, f)
        lat.append((time.perf_counter() - t0) * 1e6)
    lat.sort()
    return {"p50_us": statistics.median(lat), "p99_us": lat[int(len(lat) * 0.99) - 1]}


def _start(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)],
                            stderr=subprocess.DEVNULL, cwd="/")
    wait_listening(proc, port, f"{kind}: the server", 20.0)
    return proc, port


def measure(kind: str, n: int, requests: int) -> dict[str, float]:
    proc, port = _start(kind)
    idle: list[socket.socket] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as w, w.makefile("rb") as f:
            before_lat = _latencies(w, f, requests)
            time.sleep(0.5)                        # let the server settle before the reading
            before = _rss(proc.pid)
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                with s.makefile("rb") as sf:
                    _get(s, sf)
                idle.append(s)
            time.sleep(0.5)
            after = _rss(proc.pid)
            after_lat = _latencies(w, f, requests)
            if proc.poll() is not None:
                raise RuntimeError(f"{kind}: the server died")
        return {"rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
                "kib_per_conn": (after - before) / n / 1024,
                "p50_us_before": before_lat["p50_us"], "p99_us_before": before_lat["p99_us"],
                "p50_us_idle": after_lat["p50_us"], "p99_us_idle": after_lat["p99_us"]}
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:   # noqa: BLE001
        return "?"


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"{meta['connections']:,} idle keep-alive connections, each after one `GET /`; "
        f"median of {meta['rounds']} rounds; Python {meta['python']}, {meta['cpus']} CPUs, "
        f"{meta['system']}; uvicorn {meta['uvicorn']}, httptools {meta['httptools']}, "
        f"uvloop {meta['uvloop']}.  Generated by `python tools/http-idle-memory.py "
        f"--write-docs docs/servers.md`.",
        "",
        "| server | RSS before | RSS with the idle connections | per idle connection "
        "| GET / p50 / p99 before | with the idle connections |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in meta["kinds"]:
        r = results[kind]
        lines.append(
            f"| {kind} | {r['rss_before_mib']:.1f} MiB | {r['rss_after_mib']:.1f} MiB "
            f"| {r['kib_per_conn']:.2f} KiB | {r['p50_us_before']:.0f} / {r['p99_us_before']:.0f} µs "
            f"| {r['p50_us_idle']:.0f} / {r['p99_us_idle']:.0f} µs |")
    return "\n".join(lines) + "\n"


def write_docs(path: Path, text: str) -> None:
    doc = path.read_text()
    begin, end = "<!-- idle-memory:begin -->\n", "<!-- idle-memory:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no {begin.strip()} ... {end} markers")
    path.write_text(pattern.sub(lambda _: begin + text + end, doc))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=1000, help="latency samples per reading")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", choices=KINDS)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--write-docs", metavar="MARKDOWN")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the children inherit it
    if args.serve:
        _serve(args.serve, args.port)
        return 0
    if hard < args.connections + 100:
        print(f"RLIMIT_NOFILE hard limit {hard} is below {args.connections + 100}", file=sys.stderr)
        return 2
    kinds = []
    for kind in args.only or KINDS:
        needs = ["uvicorn", "httptools"] + (["uvloop"] if kind.endswith("uvloop") else [])
        if kind.startswith("uvicorn") and not all(_version(m) != "?" for m in needs):
            print(f"{kind}: needs {' and '.join(needs)} (pip install), skipped", file=sys.stderr)
            continue
        kinds.append(kind)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for rnd in range(args.rounds):
        for kind in kinds:
            print(f"round {rnd + 1}/{args.rounds}: {kind}, {args.connections} connections ...",
                  file=sys.stderr, flush=True)
            runs[kind].append(measure(kind, args.connections, args.requests))
    results: dict[str, Any] = {"meta": {
        "connections": args.connections, "rounds": args.rounds, "kinds": kinds,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "uvicorn": _version("uvicorn"), "httptools": _version("httptools"),
        "uvloop": _version("uvloop")}}
    for kind in kinds:
        ordered = sorted(runs[kind], key=lambda r: r["kib_per_conn"])
        results[kind] = {**ordered[len(ordered) // 2],
                         "kib_per_conn_every_round": [r["kib_per_conn"] for r in runs[kind]]}
    text = table(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.write_docs:
        write_docs(Path(args.write_docs), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
