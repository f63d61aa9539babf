"""The package around the code: one version, the metadata, the dependency
tiers (what each make target installs) agreeing with each other."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

import kqueue_py

ROOT = Path(__file__).resolve().parents[2]


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


def test_the_only_extra_is_the_benchmark_chart():
    """The developer tiers are dependency groups (pyproject.toml), never
    published: a user's ``pip install kqueue_py[...]`` offers the chart only."""
    assert set(metadata.metadata("kqueue_py").get_all("Provides-Extra") or []) == {"bench"}
    assert _requires("bench") == {"matplotlib>=3.5"}


def _checkout_file(name: str) -> str:
    path = ROOT / name
    if not path.is_file():
        pytest.skip(f"{name} is not beside the tests (a checkout or an unpacked sdist has it)")
    return path.read_text(encoding="utf-8")


def _groups() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    groups: dict[str, list[str]] = tomllib.loads(_checkout_file("pyproject.toml"))["dependency-groups"]
    return groups


def test_zig_is_its_own_dependency_group():
    """zig (379 MB) comes only with `make zig`, the cross-builds and the
    wheels: never with the test or docs tools."""
    groups = _groups()
    assert {"test", "docs", "release", "zig"} <= set(groups)
    assert [r for r in groups["zig"] if r.startswith("ziglang==")] == groups["zig"]
    assert not any("ziglang" in str(r) for name in ("test", "docs", "release") for r in groups[name])


def test_make_bench_installs_no_test_or_release_tier():
    """`make bench` depends on install-pkg (kqueue_py alone), not install."""
    make = _checkout_file("Makefile")
    assert re.search(r"^bench: install-pkg$", make, re.M)
    rule = re.search(r"^install-pkg:.*?(?=^\S)", make, re.M | re.S).group(0)
    assert "--group" not in rule and "ziglang" not in rule
