# One-command entry points.  Each installs what it needs into .venv first,
# building the wheel from this checkout (tests never use an in-place build).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q

# Every tool's version is pinned once, in pyproject.toml's [dependency-groups]
# (test, docs, release, zig), installed with pip's --group (pip >= 25.1).
# Extra pytest arguments:  make test ARGS="-k timer"
ARGS   ?=

.PHONY: install install-pkg pip zig docs test test-no-uring test-fast tsan bench bench-docs compare-builds asan matrix wheel wheels wheels-all test-wheel test-aarch64 sdist-check check-bsd lint peers clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# A pip that knows dependency groups.
pip: $(PY)
	$(PIP) install --upgrade pip

# Dependency tiers: install-pkg is kqueue_py alone (all `make bench` needs);
# install adds the test group; zig only comes with `make zig`/check-bsd/wheels.
install-pkg: pip
	$(PIP) install --upgrade setuptools wheel cffi
	rm -rf build   # setuptools reuses objects there, even from a sanitizer build
	$(PIP) install --force-reinstall --no-deps .

install: install-pkg
	$(PIP) install --group test

# zig for tests/packaging/test_bsd_build.py (which skips, saying so, without it).
zig: pip
	$(PIP) install --group zig

# The whole test suite, against the freshly built and installed wheel.
test: install
	$(VENV)/bin/pytest $(ARGS)

# The behaviour tests with io_uring forced off (KQUEUE_PY_IO_URING=0): the
# backend's plain system calls, as where seccomp, gVisor or
# kernel.io_uring_disabled refuse io_uring.  .ci/run runs both.
test-no-uring: install
	KQUEUE_PY_IO_URING=0 $(VENV)/bin/pytest tests/backend tests/api tests/servers $(ARGS)

# The inner loop: everything but the tests marked slow (stress, soak,
# fuzzing, the BSD cross-build).
test-fast: install
	$(VENV)/bin/pytest -m "not slow" $(ARGS)

# The threaded tests on a ThreadSanitizer build of the backend
# (tools/run-tsan.sh says what it runs and why the preload).
tsan:
	bash tools/run-tsan.sh $(PYTHON) $(ARGS)

# The HTML documentation into docs/_build/html (docs/conf.py): README.md,
# docs/*.md, CONTRIBUTING.md and CHANGELOG.md as they are, and the API
# reference generated from the installed package's docstrings.  Strict:
# warnings are errors, every reference must resolve, and a public name
# missing from the reference fails the build.
DOCS_OUT ?= docs/_build/html
docs: install-pkg
	$(PIP) install --group docs
	rm -rf $(DOCS_OUT)
	$(VENV)/bin/sphinx-build -W --keep-going -n -q -c docs . $(DOCS_OUT)
	@echo "docs: $(DOCS_OUT)/index.html"

# The main job: kqueue_py against ctypes, the stdlib and raw C.
bench: install-pkg
	$(PY) -m kqueue_py.bench --quick

# The numbers in docs/benchmarks.md and README.md, regenerated: a full run on
# CPython (this venv) and, when pypy3 is installed, on PyPy (in .venv-pypy),
# their JSON kept in docs/bench/; then python -m kqueue_py.bench.docs rewrites the tables
# between the <!-- bench:...:begin/end --> markers,
# and the benchmark's own --replot draws the CPython run's chart (docs/bench.png).
# BENCH_DOCS_ARGS=--quick for a faster, noisier run.
PYPY ?= pypy3
BENCH_DOCS_ARGS ?=
bench-docs: install-pkg
	# The chart's matplotlib: the [bench] extra of the kqueue_py just installed.
	$(PIP) install "kqueue_py[bench]"
	mkdir -p docs/bench
	$(PY) -m kqueue_py.bench $(BENCH_DOCS_ARGS) --json docs/bench/cpython.json
	if command -v $(PYPY) >/dev/null 2>&1; then \
	    [ -x .venv-pypy/bin/python ] || $(PYPY) -m venv .venv-pypy; \
	    rm -rf build; \
	    .venv-pypy/bin/python -m pip --disable-pip-version-check -q install --force-reinstall --no-deps . && \
	    .venv-pypy/bin/python -m kqueue_py.bench $(BENCH_DOCS_ARGS) --json docs/bench/pypy.json; \
	else \
	    echo "bench-docs: no $(PYPY): the docs will say PyPy was not run"; \
	    rm -f docs/bench/pypy.json; \
	fi
	$(PY) -m kqueue_py.bench.docs --cpython docs/bench/cpython.json --pypy docs/bench/pypy.json
	$(PY) -m kqueue_py.bench --replot docs/bench/cpython.json --png docs/bench.png

# The backend of git revision REF against this checkout's (with io_uring on
# and forced off), kevent() timed by the raw-C program, the builds in one process:
#   make compare-builds REF=340847c ARGS="--scenario ready:64 regdel:1000"
compare-builds: install-pkg
	$(if $(REF),,$(error REF=<a git revision> is required))
	$(PY) tools/compare-builds.py $(REF) installed installed:KQUEUE_PY_IO_URING=0 $(ARGS)

# The whole suite with the C backend under AddressSanitizer + UBSan.
asan: $(PY)
	bash tools/run-sanitized.sh $(PY) $(ARGS)

# CPython 3.9-3.13 and PyPy 3 via nox (noxfile.py), each against an installed wheel.
matrix:
	bash tools/matrix.sh $(ARGS)

wheel: pip
	$(PIP) install --group release
	$(PY) -m build

# manylinux2014 (manylinux_2_17) cp39-abi3 wheels built with zig, into dist/.
wheels:
	PYTHON=$(PYTHON) bash tools/build-wheels.sh dist

# Also the aarch64 wheel (cross-built; auditwheel-checked; make test-aarch64 tests it).
wheels-all:
	PYTHON=$(PYTHON) bash tools/build-wheels.sh --arch x86_64 --arch aarch64 dist

# The suite against a built wheel on CPython 3.9 and 3.13:
#   make test-wheel WHEEL=dist/kqueue_py-...whl
test-wheel:
	bash tools/test-wheel.sh $(WHEEL)

# The suite against the aarch64 wheel under qemu-user, with Debian's arm64
# CPython 3.11 from a cached sysroot (Debian 12 x86_64, as root; builds the
# wheel unless WHEEL is given):  make test-aarch64 [WHEEL=dist/kqueue_py-...aarch64.whl]
test-aarch64:
	PYTHON=$(PYTHON) bash tools/test-aarch64.sh $(WHEEL)

# The sdist is complete: a wheel built from the unpacked sdist passes the
# suite in a fresh venv (everything happens in a temp dir).
sdist-check:
	bash tools/check-sdist.sh $(PYTHON)

# The builder's macOS/FreeBSD branch, cross-compiled and linked with zig
# against those systems' headers (tests/packaging/test_bsd_build.py runs it too).
check-bsd: zig
	$(PIP) install cffi --group test
	$(PY) tools/check-bsd-build.py

# The slow tier, not part of `make test`: watchdog's and eventlet's own test
# suites (pinned, from their PyPI sdists) on their Linux path and on their
# kqueue path through `python -m kqueue_py.run`, in venvs under
# ~/.cache/kqueue_py-peers (PEERS_ARGS="--cache DIR", "--only eventlet");
# rewrites docs/peers.md.  About 15 minutes on 2 CPUs.
PEERS_ARGS ?=
peers:
	$(PYTHON) tools/peer-suites.py $(PEERS_ARGS)

# mypy --strict on the package and ruff on the code (config in pyproject.toml).
lint: $(PY)
	$(PIP) install mypy ruff
	$(VENV)/bin/mypy --strict src/kqueue_py
	$(VENV)/bin/ruff check src tests tools docs build_kqueue.py setup.py noxfile.py

clean:
	rm -rf build dist docs/_build *.egg-info $(VENV) .venv-sanitize .venv-tsan .venv-pypy .nox .venv-nox src/kqueue_py/_kqueue.c src/kqueue_py/*.so
