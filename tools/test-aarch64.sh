#!/usr/bin/env bash
# Runs the test suite against the aarch64 wheel on an x86_64 Linux host, with
# Debian's arm64 CPython 3.11 under qemu-user (no aarch64 machine, container
# or binfmt registration needed).  Written for Debian 12 x86_64, as root:
#  - installs qemu-user-static with apt-get if qemu-aarch64-static is missing;
#  - builds an arm64 Debian sysroot (python3.11 + libpython3.11-stdlib and
#    their dependency closure) in a cache dir, reused once complete: the .debs
#    come from Debian's archive through a PRIVATE apt configuration in a temp
#    dir (the system's apt sources and dpkg architectures are never touched)
#    and are unpacked with dpkg-deb -x (no maintainer scripts run);
#  - builds the aarch64 wheel with tools/build-wheels.sh unless WHEEL is given;
#  - installs WHEEL (with its cffi) and pyproject's test group as aarch64
#    binary wheels into a temp site-packages with the host's pip;
#  - runs the suite from this checkout with the arm64 python under qemu.
# Exits non-zero if anything fails, the tests included.
# Usage: tools/test-aarch64.sh [WHEEL] [-- PYTEST-ARGS...]
#   KQUEUE_PY_ARM64_ROOT  the sysroot (default
#                         ${XDG_CACHE_HOME:-$HOME/.cache}/kqueue_py/arm64-root;
#                         remove it to rebuild)
#   DEBIAN_SUITE          the sysroot's Debian release (default bookworm)
#   PYTHON                the host python for pip and the wheel build (python3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
suite=${DEBIAN_SUITE:-bookworm}
sysroot=${KQUEUE_PY_ARM64_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/kqueue_py/arm64-root}
pyver=3.11   # bookworm's python3.11; pip below fetches wheels for this version

wheel=
pytest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; pytest_args=("$@"); break ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) [ -z "$wheel" ] || { echo "only one WHEEL" >&2; exit 2; }
           [ -f "$1" ] || { echo "no such wheel: $1" >&2; exit 2; }
           wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift ;;
    esac
done
case $(basename "${wheel:-kqueue_py-aarch64.whl}") in
    kqueue_py-*aarch64*.whl) ;;
    *) echo "not an aarch64 kqueue_py wheel: $wheel" >&2; exit 2 ;;
esac
case $(uname -s)-$(uname -m) in
    Linux-x86_64) ;;
    *) echo "this script runs aarch64 code under qemu on x86_64 Linux only" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/kqueue_py-aarch64.XXXXXX")
new=   # a sysroot being unpacked, removed if we stop half-way
trap 'rm -rf "$work" ${new:+"$new"}' EXIT
step() { printf '== %s\n' "$*"; }

# --- qemu-user --------------------------------------------------------------
# The static build: it needs no arm64 host libraries, and -L points it at the
# sysroot for the guest's dynamic loader and libraries.
if ! command -v qemu-aarch64-static >/dev/null; then
    step "installing qemu-user-static"
    [ "$(id -u)" = 0 ] || { echo "qemu-aarch64-static is missing; install qemu-user-static (needs root)" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q update
    apt-get -q install -y --no-install-recommends qemu-user-static
fi
qemu=$(command -v qemu-aarch64-static)
step "$("$qemu" --version | head -n 1)"

# --- the arm64 sysroot ------------------------------------------------------
# Complete = the stamp exists, written last, after the python ran once.
if [ -f "$sysroot/.kqueue_py-complete" ] && [ -x "$sysroot/usr/bin/python$pyver" ]; then
    step "reusing the arm64 sysroot $sysroot"
else
    step "building the arm64 sysroot $sysroot (Debian $suite)"
    for tool in apt-get dpkg-deb; do
        command -v "$tool" >/dev/null || { echo "$tool is needed to build the sysroot" >&2; exit 1; }
    done
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || { echo "$keyring is missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
    apt=$work/apt
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d" \
        "$apt/preferences.d" "$apt/debs"
    : >"$apt/status"   # an empty dpkg database: apt resolves the full closure
    # The machine's own Debian mirrors (as apt is set up here), for arm64:
    # each configured URI with a suite of this release, main only.
    {
        # (Missing files are fine: a machine has one style or the other.)
        { cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | awk '
            /^URIs:/ { uris = substr($0, 7) }
            /^Suites:/ { suites = substr($0, 9) }
            /^[[:space:]]*$/ { flush() }
            END { flush() }
            function flush(   u, s, nu, ns, i, j) {
                nu = split(uris, u, " "); ns = split(suites, s, " ")
                for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
                uris = ""; suites = ""
            }'
        { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
            sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" { print $2, $3 }'
    } | awk -v suite="$suite" '$2 == suite || $2 == suite "-security" || $2 == suite "-updates"' |
        sort -u | while read -r uri dist; do
            echo "deb [arch=arm64 signed-by=$keyring] $uri $dist main"
        done >"$apt/sources.list"
    [ -s "$apt/sources.list" ] || { echo "no Debian $suite source in /etc/apt: cannot fetch arm64 packages" >&2; exit 1; }
    # Every path apt reads or writes points into $apt; arm64 is the only
    # architecture.  Sandbox::User root: the _apt user cannot enter the 0700
    # temp dir (apt would fall back to root with a warning anyway).
    cat >"$apt/apt.conf" <<EOF
Dir::State "$apt";
Dir::State::Lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt/cache";
Dir::Etc::SourceList "$apt/sources.list";
Dir::Etc::SourceParts "$apt/sources.list.d";
Dir::Etc::Preferences "$apt/preferences";
Dir::Etc::PreferencesParts "$apt/preferences.d";
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
APT::Sandbox::User "root";
EOF
    export APT_CONFIG=$apt/apt.conf
    apt-get -q update >"$work/apt-update.log" 2>&1 || { cat "$work/apt-update.log"; exit 1; }
    # apt's own solver against the empty status picks the dependency closure
    # (one provider per alternative/virtual package); a simulated install
    # prints it as "Inst NAME (VERSION ...)" lines.
    apt-get -s -q install "python$pyver-minimal" "libpython$pyver-stdlib" >"$work/apt-sim.log" 2>&1 \
        || { cat "$work/apt-sim.log"; exit 1; }
    mapfile -t pkgs < <(sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p' "$work/apt-sim.log")
    [ ${#pkgs[@]} -gt 0 ] || { cat "$work/apt-sim.log"; echo "apt resolved no packages" >&2; exit 1; }
    echo "${#pkgs[@]} packages: ${pkgs[*]}"
    (cd "$apt/debs" && apt-get -q download "${pkgs[@]}") >"$work/apt-download.log" 2>&1 \
        || { cat "$work/apt-download.log"; exit 1; }
    unset APT_CONFIG
    # Unpack next to the final place, then rename: an interrupted build never
    # leaves a half-made sysroot that looks complete.
    mkdir -p "$(dirname "$sysroot")"
    new=$(mktemp -d "$sysroot.new.XXXXXX")
    for deb in "$apt"/debs/*.deb; do
        dpkg-deb -x "$deb" "$new"
    done
    printf '%s\n' "${pkgs[@]}" >"$new/.kqueue_py-packages"
    # Replace only what this script made (or nothing): never rm -rf a
    # directory KQUEUE_PY_ARM64_ROOT happens to name.
    if [ -e "$sysroot" ]; then
        [ -f "$sysroot/.kqueue_py-packages" ] \
            || { echo "$sysroot exists and is not a sysroot made by $0; remove it or choose another KQUEUE_PY_ARM64_ROOT" >&2; exit 1; }
        rm -rf "$sysroot"
    fi
    mv "$new" "$sysroot"
    new=
fi

# The guest python is started through this wrapper, whose path is also the
# guest's argv[0] (qemu -0): python derives sys.prefix and sys.executable from
# argv[0], so the stdlib is found in the sysroot and the tests' subprocesses
# (sys.executable) run under qemu too.  Rewritten every run: it holds the
# sysroot's absolute path.
pyq=$sysroot/usr/bin/pyq
cat >"$pyq" <<EOF
#!/bin/sh
exec "$qemu" -L "$sysroot" -0 "$pyq" "$sysroot/usr/bin/python$pyver" "\$@"
EOF
chmod +x "$pyq"
arch=$("$pyq" -c 'import platform, ssl, ctypes, sqlite3; print(platform.machine())')
[ "$arch" = aarch64 ] || { echo "the sysroot python reports machine '$arch'" >&2; exit 1; }
[ -f "$sysroot/.kqueue_py-complete" ] || date -u +%FT%TZ >"$sysroot/.kqueue_py-complete"
step "$("$pyq" -c 'import sys; print("arm64", sys.implementation.name, sys.version.split()[0], sys.executable)')"

# --- the wheel --------------------------------------------------------------
if [ -z "$wheel" ]; then
    step "building the aarch64 wheel"
    PYTHON=$PYTHON tools/build-wheels.sh --arch aarch64 "$work/dist"
    wheel=$(ls "$work"/dist/kqueue_py-*aarch64*.whl)
fi
step "wheel $(basename "$wheel")"

# --- the aarch64 site-packages ----------------------------------------------
# The host's pip (in a venv: Debian's python is externally managed) fetches
# aarch64 binary wheels for cp311 into a plain directory; cffi's binary wheel
# carries _cffi_backend (and its libffi).  No zig: only tests/packaging/test_bsd_build.py
# uses it, deselected below.  The directory must be named site-packages:
# tests/conftest.py checks kqueue_py is an installed copy.
step "installing the wheel and the test requirements for aarch64"
site=$work/site-packages
"$PYTHON" -m venv "$work/hostvenv"
"$work/hostvenv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$work/hostvenv/bin/python" -m pip install -q --disable-pip-version-check \
    --platform manylinux2014_aarch64 --python-version "$pyver" --implementation cp \
    --only-binary :all: --target "$site" \
    --group "$root/pyproject.toml:test" "$wheel"

# --- probe qemu -------------------------------------------------------------
# The backend reports a listening socket's pending connections through
# getsockopt(TCP_INFO) (tcpi_unacked) for TCP and a NETLINK_SOCK_DIAG query
# (UNIX_DIAG_RQLEN) for AF_UNIX.  qemu-user 7.2 emulates neither (it hands
# TCP_INFO back truncated and refuses the NETLINK_SOCK_DIAG protocol), so
# the two backlog tests cannot pass under it.  The probe does what the backend
# does, natively and under qemu; a test is deselected only when its probe
# passes natively and fails under qemu, so a qemu that emulates these runs
# the tests.
cat >"$work/probe.py" <<'EOF'
import os, socket, struct, sys, tempfile, time

def pending(check):
    # connect() on loopback returns once the handshake is done; allow the
    # listener's queue a moment anyway.
    for _ in range(50):
        got = check()
        if got == 3:
            return "ok"
        time.sleep(0.02)
    return "got %r, want 3" % (got,)

def tcp():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    clients = [socket.create_connection(lst.getsockname()) for _ in range(3)]
    def check():
        b = lst.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        # struct tcp_info: u8 tcpi_state (10 = TCP_LISTEN) ... u32 tcpi_unacked at 24
        if len(b) < 28:
            return "%d-byte tcp_info" % len(b)
        if b[0] != 10:
            return "tcpi_state %d" % b[0]
        return struct.unpack_from("=I", b, 24)[0]
    return pending(check)

def unix():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "s")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(16)
    clients = []
    for _ in range(3):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        clients.append(c)
    ino = os.fstat(lst.fileno()).st_ino
    def check():
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)  # NETLINK_SOCK_DIAG
        try:
            # unix_diag_req: family, protocol, pad, states, ino, show
            # (UDIAG_SHOW_RQLEN), cookie (none)
            req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF,
                              ino & 0xFFFFFFFF, 0x10, 0xFFFFFFFF, 0xFFFFFFFF)
            # nlmsghdr: len, type (SOCK_DIAG_BY_FAMILY), flags (NLM_F_REQUEST), seq, pid
            nl.sendto(struct.pack("=IHHII", 16 + len(req), 20, 1, 0, 0) + req, (0, 0))
            r = nl.recv(1024)
        finally:
            nl.close()
        if len(r) < 32:
            return "%d-byte reply" % len(r)
        n, typ = struct.unpack_from("=IH", r)
        if typ != 20:
            return "reply type %d" % typ
        off = 32   # nlmsghdr (16) + unix_diag_msg (16), then rtattrs
        while off + 4 <= n:
            alen, atyp = struct.unpack_from("=HH", r, off)
            if alen < 4:
                break
            if atyp == 4:   # UNIX_DIAG_RQLEN: rqueue, wqueue
                return struct.unpack_from("=I", r, off + 4)[0]
            off += (alen + 3) & ~3
        return "no UNIX_DIAG_RQLEN"
    try:
        return pending(check)
    finally:
        for s in clients + [lst]:
            s.close()
        os.unlink(path)
        os.rmdir(d)

for name, f in (("tcp", tcp), ("unix", unix)):
    try:
        res = f()
    except OSError as e:
        res = "OSError: %s" % e
    print(name, res)
EOF
native=$("$PYTHON" "$work/probe.py")
emulated=$("$pyq" "$work/probe.py")
deselect=(--deselect tests/packaging/test_bsd_build.py)   # it runs zig (x86_64) on the tree
for kind in tcp unix; do
    n=$(sed -n "s/^$kind //p" <<<"$native")
    q=$(sed -n "s/^$kind //p" <<<"$emulated")
    echo "listen backlog probe, $kind: native: $n; under qemu: $q"
    if [ "$n" = ok ] && [ "$q" != ok ]; then
        echo "   -> qemu-user does not emulate it: deselecting the $kind backlog test"
        deselect+=(--deselect "tests/backend/test_read_write.py::test_listening_${kind}_socket_data_is_number_of_pending_connections")
    fi
done

# --- the suite --------------------------------------------------------------
# kqueue_py comes from $site (its source is in src/, never on sys.path).
# No bytecode or cache written into the checkout.
step "pytest under qemu (slow: a few minutes)"
set +e
PYTHONPATH=$site PYTHONDONTWRITEBYTECODE=1 \
    "$pyq" -P -m pytest -q -p no:cacheprovider "${deselect[@]}" "${pytest_args[@]}" 2>&1 \
    | tee "$work/pytest.log"
rc=${PIPESTATUS[0]}
set -e
echo "aarch64 (qemu, CPython $pyver): $(tail -n 1 "$work/pytest.log")"
exit "$rc"
