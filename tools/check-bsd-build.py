"""Cross-compile the macOS/FreeBSD branch of the builder from Linux.

No BSD machine is at hand here, so this is the check that the builder's
kernel-kqueue branch builds against the real system headers: for each
target, the builder's C source for that platform (``make_ffi(platform)``,
exactly what setup.py would compile there) is compiled and linked by zig's
clang, with its bundled macOS and FreeBSD libc headers, into an extension
module.  Appended to the source are compile-time checks that cffi itself
leaves to import time: every field of the cdef's partial ``struct kevent``
and ``struct timespec`` has the size and signedness it is declared with.
A second unit reports the target's ``struct kevent`` layout.

What it cannot check: running there.  Usage (make check-bsd):
  python tools/check-bsd-build.py [target ...]     (needs: pip install ziglang cffi)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import build_kqueue  # noqa: E402  (the checkout's builder, not an installed one)

# zig target -> the sys.platform value Python reports there.
TARGETS = {
    "x86_64-macos": "darwin",
    "aarch64-macos": "darwin",
    "x86_64-freebsd": "freebsd14",
    "aarch64-freebsd": "freebsd14",
}

# The six fields every platform's struct kevent has.
KEVENT_FIELDS = ("ident", "filter", "flags", "fflags", "data", "udata")


def declared() -> FFI:
    """The builder's cdef with its structs made complete (``...;`` dropped),
    so that the declared field types can be read back."""
    decl = FFI()
    decl.cdef(re.sub(r"^\s*\.\.\.;\s*$", "", build_kqueue.CDEF, flags=re.M))
    return decl


def field_checks(struct_name: str) -> str:
    """C11 static asserts: each declared field of ``struct_name`` has the
    declared type's size and signedness (cffi only checks sizes when the
    module is imported, which can't happen here)."""
    out = []
    for name, field in declared().typeof(f"struct {struct_name}").fields:
        ctype = field.type.cname
        member = f"((struct {struct_name} *)0)->{name}"
        out.append(f'_Static_assert(sizeof({member}) == sizeof({ctype}), '
                   f'"struct {struct_name}.{name} is not {ctype}-sized");')
        if field.type.kind == "primitive":
            out.append(f'_Static_assert(((__typeof__({member}))-1 < 0) == (({ctype})-1 < 0), '
                       f'"struct {struct_name}.{name} signedness differs from {ctype}");')
    return "\n".join(out) + "\n"


LAYOUT_SOURCE = (
    "#include <stddef.h>\n#include <sys/types.h>\n#include <sys/event.h>\n"
    "const unsigned long long kqueue_py_layout[] = {\n    sizeof(struct kevent),\n"
    + "".join(f"    offsetof(struct kevent, {f}), sizeof(((struct kevent *)0)->{f}),\n"
              for f in KEVENT_FIELDS)
    + "};\n"
)


def python_includes(work: str) -> list[str]:
    """-I flags for Python.h.  Debian's pyconfig.h is a wrapper that, on
    Linux only, includes the real one from /usr/include/<multiarch>/; for
    another target it includes nothing.  Python.h finds pyconfig.h next to
    itself, so such headers are copied with the real pyconfig.h in place."""
    include = sysconfig.get_paths()["include"]
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    real = os.path.join("/usr/include", multiarch, os.path.basename(include), "pyconfig.h")
    with open(os.path.join(include, "pyconfig.h")) as f:
        wrapper = bool(multiarch) and f"<{multiarch}/" in f.read()
    if not wrapper or not os.path.exists(real):
        return ["-I", include]
    copy = os.path.join(work, "pyinc")
    shutil.copytree(include, copy)
    os.remove(os.path.join(copy, "pyconfig.h"))
    shutil.copy(real, os.path.join(copy, "pyconfig.h"))
    return ["-I", copy]


def zig_cc(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", target, *args],
                          capture_output=True, text=True)


def layout(target: str, work: str) -> list[int]:
    """sizeof(struct kevent), then (offset, size) of each common field, read
    from the assembly of a constant array compiled for ``target``."""
    src = os.path.join(work, "layout.c")
    with open(src, "w") as f:
        f.write(LAYOUT_SOURCE)
    asm = os.path.join(work, "layout.s")
    r = zig_cc(target, "-S", "-O1", "-g0", src, "-o", asm)
    if r.returncode:
        raise RuntimeError(r.stderr)
    with open(asm) as f:
        text = f.read()
    # The array's label, then one 8-byte directive per element.
    body = re.search(r"^_?kqueue_py_layout:\n((?:\s*\.(?:quad|xword|8byte)\s+\S+.*\n)+)", text, re.M)
    if body is None:
        raise RuntimeError(f"no layout array in the assembly for {target}")
    return [int(v, 0) for v in re.findall(r"\.(?:quad|xword|8byte)\s+(\S+)", body.group(1))]


def check(target: str, work: str) -> str:
    platform = TARGETS[target]
    ffi = build_kqueue.make_ffi(platform)
    src = os.path.join(work, "_kqueue.c")
    ffi.emit_c_code(src)
    with open(src, "a") as f:
        f.write("\n/* check-bsd-build: declared field types match the system's */\n")
        f.write(field_checks("kevent") + field_checks("timespec"))
    obj, module = os.path.join(work, "_kqueue.o"), os.path.join(work, "_kqueue.abi3.so")
    r = zig_cc(target, "-c", src, "-o", obj, *python_includes(work), "-std=gnu11", "-Wall", "-Wextra",
               "-Werror", "-fvisibility=hidden", "-fPIC", "-O2")
    if r.returncode:
        raise RuntimeError(f"compile failed:\n{r.stderr}")
    link = ["-shared", obj, "-o", module]
    if platform == "darwin":
        link += ["-Wl,-undefined,dynamic_lookup"]   # as a macOS extension: Python's symbols resolve at load
    r = zig_cc(target, *link)
    if r.returncode:
        raise RuntimeError(f"link failed:\n{r.stderr}")
    values = layout(target, work)
    if len(values) != 1 + 2 * len(KEVENT_FIELDS):
        raise RuntimeError(f"could not read the layout: {values}")
    fields = ", ".join(f"{name}@{values[1 + 2 * i]}:{values[2 + 2 * i]}"
                       for i, name in enumerate(KEVENT_FIELDS))
    return f"struct kevent {values[0]} bytes ({fields}); {os.path.getsize(module)}-byte module"


def main(argv: list[str]) -> int:
    targets = argv or list(TARGETS)
    failed = 0
    for target in targets:
        if target not in TARGETS:
            print(f"{target}: unknown target (choose from {', '.join(TARGETS)})")
            return 2
        with tempfile.TemporaryDirectory(prefix="kqueue_py-bsd-") as work:
            try:
                print(f"{target} ({TARGETS[target]}): OK, {check(target, work)}", flush=True)
            except RuntimeError as exc:
                failed += 1
                print(f"{target} ({TARGETS[target]}): FAILED\n{exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
