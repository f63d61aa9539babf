"""Every ```python block in the documentation runs as pasted.

The blocks come from README.md, docs/*.md and CONTRIBUTING.md (files that do
not exist are skipped).  Each one runs in a fresh subprocess of the test
interpreter, from an empty temporary directory, with a timeout
and ``-W default``, and must exit with status 0 without a traceback or a
warning on stderr.  A block whose first line starts with ``>>>``
is run as a doctest instead (its printed output must match).

A block that deliberately does not run as pasted (a server that runs until
interrupted, code for BSD only) is marked, with the reason, either by an
HTML comment on the line before its fence::

    <!-- no-run: serves until Ctrl-C -->

or by ``no-run`` after the fence's language (```` ```python no-run ````).
Shell blocks (```sh) are never run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_GLOBS = ("README.md", "docs/*.md", "CONTRIBUTING.md")
TIMEOUT_S = 60

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_NO_RUN = re.compile(r"<!--\s*no-run\s*:\s*(?P<why>.*?)\s*-->")

# Words that name project internals a reader cannot look up: the project's
# internal notes, the module kqueue_py was first written from (and that
# module's helpers), issue numbers.  Each pattern is written so that its own
# text here does not match it ("[ ]", "\." ...), so this file is checked too.
# A bare "seed" stays allowed: random.Random(seed), hypothesis' seed=.
_INTERNAL_WORDS = re.compile("|".join((
    r"\bthe[ ]seed\b", r"\bseed['’]s\b", r"\bseed[ ]helpers?\b",
    r"\.\./shared\b", r"\bDESIGN\.md\b", r"\borigin[ ]module\b",
    r"\bbenchmark[ ]issue\b", r"\bissues?[ #-]{0,2}\d+\b",
)), re.IGNORECASE)
# Where kqueue_py came from and the targets it was first written to: history,
# which the README tells in one sentence; nothing else may lean on it.
_HISTORY_WORDS = re.compile("|".join((
    r"\bsx[ ]language\b", r"\bdesign[ ]cards?\b", r"\bthe[ ]design['’]s[ ]targets?\b",
)), re.IGNORECASE)
#: Where the words are looked for besides the documentation: the code, the
#: C backend, the tests and the tools (text files only).
SOURCE_DIRS = ("src", "csrc", "tests", "tools")
SOURCE_FILES = ("CHANGELOG.md", "Makefile", "build_kqueue.py", "setup.py", "noxfile.py",
                "pyproject.toml")
_BINARY_SUFFIXES = (".so", ".pyd", ".o", ".a", ".pyc", ".whl")


@dataclass
class Block:
    path: Path
    line: int            # 1-based line of the opening fence
    lang: str
    info: str            # the whole info string after the fence
    code: str
    no_run: Optional[str]  # the reason, when marked not runnable

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


def doc_files(root: Path = ROOT) -> List[Path]:
    files: List[Path] = []
    for pattern in DOC_GLOBS:
        files.extend(sorted(p for p in root.glob(pattern) if p.is_file()))
    return files


def extract_blocks(path: Path, text: Optional[str] = None) -> List[Block]:
    """The fenced code blocks of a Markdown file (CommonMark fences: a closing
    fence uses the same character, at least as long as the opening one)."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
        start = i
        body: List[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (close and close.group("fence")[0] == fence[0]
                    and len(close.group("fence")) >= len(fence) and not close.group("info").strip()):
                break
            line = lines[i]
            # Strip the fence's indentation (a block inside a list item).
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        else:
            raise ValueError(f"{path}:{start + 1}: code block never closed")
        i += 1
        words = info.split()
        lang = words[0].lower() if words else ""
        no_run: Optional[str] = None
        if "no-run" in words[1:]:
            no_run = " ".join(w for w in words[1:] if w != "no-run") or "marked no-run"
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        if prev >= 0:
            c = _NO_RUN.search(lines[prev])
            if c:
                no_run = c.group("why")
        blocks.append(Block(path, start + 1, lang, info, textwrap.dedent("\n".join(body)) + "\n",
                            no_run))
    return blocks


_DOCTEST_DRIVER = """\
import doctest, sys
text = sys.stdin.read()
test = doctest.DocTestParser().get_doctest(text, {"__name__": "__main__"}, "snippet", None, 0)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
runner.run(test)
sys.exit(1 if runner.failures else 0)
"""


def run_block(code: str, cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one snippet the way a reader would paste it into a file and run it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    first = next((ln for ln in code.splitlines() if ln.strip()), "")
    if first.lstrip().startswith(">>>"):
        argv = [sys.executable, "-W", "default", "-c", _DOCTEST_DRIVER]
        stdin = code
    else:
        script = cwd / "snippet.py"
        script.write_text(code, encoding="utf-8")
        argv = [sys.executable, "-W", "default", str(script)]
        stdin = ""
    return subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout)


#: What a snippet must not print even when it exits 0: a traceback (from a
#: thread, or a __del__), a deprecation, or a RuntimeWarning (a coroutine
#: never awaited), as shown by -W default.  (ResourceWarnings for sockets
#: left to the interpreter's exit are tolerated: snippets stay short.)
_STDERR_PROBLEMS = ("Traceback (most recent call last)", "Exception ignored",
                    "DeprecationWarning", "RuntimeWarning")


def stderr_problem(stderr: str) -> Optional[str]:
    for marker in _STDERR_PROBLEMS:
        if marker in stderr:
            return f"stderr has {marker!r}"
    return None


def _python_blocks() -> List[Block]:
    return [b for f in doc_files() for b in extract_blocks(f) if b.lang in ("python", "py")]


BLOCKS = _python_blocks()


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    if block.no_run is not None:
        assert block.no_run.strip(), f"{block.id}: a no-run block must say why"
        pytest.skip(f"marked no-run: {block.no_run}")
    r = run_block(block.code, tmp_path)
    problem = stderr_problem(r.stderr)
    assert r.returncode == 0 and problem is None, (
        f"{block.id}: exit status {r.returncode}, {problem or 'stderr clean'}\n"
        f"--- code ---\n{block.code}--- stdout ---\n{r.stdout}--- stderr ---\n{r.stderr}")


def test_readme_has_runnable_blocks() -> None:
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert len([b for b in readme if b.no_run is None]) >= 4, \
        "README.md should show at least one runnable snippet per layer"
    assert len([b for b in BLOCKS if b.no_run is not None]) <= 5, \
        "keep the not-runnable exceptions few"


def source_files(root: Path = ROOT) -> List[Path]:
    """The text files of SOURCE_DIRS and SOURCE_FILES (no build products)."""
    files = [root / name for name in SOURCE_FILES if (root / name).is_file()]
    for d in SOURCE_DIRS:
        files.extend(sorted(
            p for p in (root / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
            and not any(part.endswith(".egg-info") for part in p.parts)
            and not p.name.endswith(_BINARY_SUFFIXES)))
    return files


def _internal_word(path: Path) -> Optional[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None   # not text
    history_told = path == ROOT / "README.md"   # its one sentence is checked below
    for n, line in enumerate(text.splitlines(), 1):
        m = _INTERNAL_WORDS.search(line) or (None if history_told else _HISTORY_WORDS.search(line))
        if m is not None:
            return f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} means nothing to a reader: {line}"
    return None


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT)))
                                  for p in doc_files() + source_files()])
def test_no_internal_words(path: Path) -> None:
    found = _internal_word(path)
    assert found is None, found


def test_readme_tells_the_history_in_one_sentence_at_most() -> None:
    lines = [line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
             if _HISTORY_WORDS.search(line)]
    assert len(lines) <= 1, lines


def test_this_file_and_the_code_are_checked_for_internal_words() -> None:
    checked = {p.relative_to(ROOT).as_posix() for p in source_files()}
    assert {"tests/packaging/test_docs.py", "tests/backend/test_timer.py", "tests/helpers.py", "src/kqueue_py/_core.py", "csrc/kqueue.c"} <= checked


# Each sample is split in two in the source, so this file does not hold it.
@pytest.mark.parametrize("line", [
    "see the " "seed for details", "The se" "ed's wait loop", "as a seed " "helper did",
    "seed " "helpers", "read ../" "shared/notes", "per DESIGN" ".md", "the origin " "module",
    "fixed in issue " "12", "Issue-" "7 again", "issues #" "3", "the benchmark " "issue",
])
def test_internal_words_are_caught(line: str) -> None:
    assert _INTERNAL_WORDS.search(line), line


@pytest.mark.parametrize("line", [
    "as in the sx " "language's std/net/kqueue", "This is the design " "card's comparison",
    "see the Design " "Cards", "the design's " "targets (below)",
])
def test_history_words_are_caught(line: str) -> None:
    assert _HISTORY_WORDS.search(line), line


@pytest.mark.parametrize("line", [
    "rng = random.Random(seed)", "def waiter(seed):", "@settings(derandomize=True)",
    "@seed(1234)", "given(st.integers()).example(seed=3)", "seeded = 1",
    "a real issue with 2 queues", "shared/ memory", "tis" "sue 12", "designs.md",
])   # (the split literal keeps this file clean for word checks without boundaries)
def test_internal_words_spare_ordinary_code(line: str) -> None:
    assert not _INTERNAL_WORDS.search(line), line


# -- the checker itself can fail ------------------------------------------

_SAMPLE = """\
Text.

```python
print("ok")
```

- a list item:
  ```python
  import sys
  sys.exit(3)
  ```

<!-- no-run: serves until interrupted -->
```python
while True: pass
```

````python no-run
```python
````

```sh
exit 1
```

```python
>>> 1 + 1
3
```
"""


def test_extractor_and_runner_catch_broken_snippets(tmp_path: Path) -> None:
    blocks = extract_blocks(tmp_path / "sample.md", _SAMPLE)
    assert [(b.lang, b.line) for b in blocks] == [
        ("python", 3), ("python", 8), ("python", 14), ("python", 18), ("sh", 22), ("python", 26)]
    ok, exits3, forever, fenced, sh, doctest_ = blocks
    assert ok.no_run is None and exits3.no_run is None
    assert forever.no_run == "serves until interrupted"
    assert fenced.no_run == "marked no-run" and fenced.code == "```python\n"
    assert exits3.code == "import sys\nsys.exit(3)\n"
    assert run_block(ok.code, tmp_path).returncode == 0
    assert run_block(exits3.code, tmp_path).returncode == 3
    assert run_block("import kqueue_py\nkqueue_py.no_such_name\n", tmp_path).returncode == 1
    r = run_block(doctest_.code, tmp_path)
    assert r.returncode == 1 and "Expected:" in r.stdout
    assert run_block(">>> 1 + 1\n2\n", tmp_path).returncode == 0
    # Exit status 0 is not enough: a traceback in a thread, an unclosed socket.
    r = run_block("import threading\nt = threading.Thread(target=lambda: 1 / 0)\n"
                  "t.start()\nt.join()\n", tmp_path)
    assert r.returncode == 0 and stderr_problem(r.stderr) is not None
    if sys.implementation.name == "cpython":   # PyPy warns when its GC gets round to it
        r = run_block("async def f(): pass\nf()\n", tmp_path)
        assert r.returncode == 0 and stderr_problem(r.stderr) == "stderr has 'RuntimeWarning'"
    with pytest.raises(subprocess.TimeoutExpired):
        run_block(forever.code, tmp_path, timeout=1)

