"""Every code block of docs/api.md runs as pasted (each in a fresh interpreter,
against the installed package)."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"),
                    re.S | re.M) if DOC.exists() else []


def test_the_reference_has_code_blocks():
    if not DOC.exists():
        pytest.skip("docs/api.md is not shipped with this copy of the tests")
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_code_block_runs(code):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, f"{code}\n--- stderr:\n{proc.stderr}"
