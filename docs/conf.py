"""Sphinx configuration: `make docs` builds the HTML documentation.

    sphinx-build -W --keep-going -n -c docs . docs/_build/html

The source directory is the checkout's root, so that README.md (the home
page), CONTRIBUTING.md, CHANGELOG.md and docs/*.md are read where they are
and their links between each other resolve as they do on a forge; MyST reads
the Markdown.  Only docs/reference.md is generated: autodoc fills it from the
docstrings of the *installed* kqueue_py (the Makefile installs the wheel
first; src/ is never put on sys.path).

The build is strict (warnings are errors, every cross-reference must
resolve).  Two checks of our own: `check_public_names` fails it when a name
in the ``__all__`` of a public module is missing from the reference (no
docstring: autodoc skips those silently), and `link_api_names` when inline
code in a Markdown page names an attribute kqueue_py does not have (renamed
since the page was written).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import kqueue_py

logger = logging.getLogger(__name__)

project = "kqueue_py"
author = "the kqueue_py authors"
release = version = kqueue_py.__version__
copyright = "kqueue_py authors, MIT licence"

extensions = ["sphinx.ext.autodoc", "myst_parser"]

# The pages, where they live in the checkout.  README.md is the home page.
root_doc = "README"
include_patterns = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "docs/*.md"]
exclude_patterns = ["docs/_build"]
source_suffix = {".md": "markdown"}

# Headings get anchors (README and the guides link to "#sections").
myst_heading_anchors = 3
# A code block without a language (a file tree, a signature) is plain text.
highlight_language = "none"

#: The modules whose ``__all__`` make up the public API.
PUBLIC_MODULES = ("kqueue_py", "kqueue_py.queue", "kqueue_py.raw", "kqueue_py.compat",
                  "kqueue_py.selectors")

# A public module's ``__all__`` is what it documents, wherever a name is
# defined (kqueue_py.queue's Event comes from the internal core).  Data
# defined elsewhere (autodoc only finds ``#:`` comments in the module's own
# source) is listed in docs/reference.md with ``autodata``.
autodoc_default_options = {"members": True, "member-order": "bysource", "imported-members": True}
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# Only kqueue_py's own docstrings: KqueueSelector's methods would otherwise
# show the standard library's selectors docstrings (which are not reST).
autodoc_inherit_docstrings = False

#: Private modules whose ``#:`` comments document data that a public module
#: re-exports (``KEEP`` is defined in the core, public in kqueue_py.queue).
DEFINING_MODULES = ("kqueue_py._core",)

# Every cross-reference must resolve (a docstring naming a renamed method
# fails the build).  The standard library is not in this build (no
# intersphinx: the build needs no network), so its classes stay plain text.
nitpicky = True
nitpick_ignore_regex = [(r"py:class", r"(selectors|struct)\.\w+")]

html_theme = "furo"
html_title = f"kqueue_py {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


# The navigation: README.md stays as it is in the checkout; the site's
# table of contents is appended to it when Sphinx reads it.
TOCTREE = """

```{toctree}
:hidden:
:caption: Documentation

docs/api
docs/reference
docs/linux-backend
docs/benchmarks
docs/servers
docs/run
docs/peers
CONTRIBUTING
CHANGELOG
```
"""


def add_toctree(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname == root_doc:
        source[0] += TOCTREE


class ConstantsTable(SphinxDirective):
    """``{kqueue-constants} MODULE PREFIX``: a table of the module's integer
    constants whose names (in its ``__all__``) start with PREFIX, with their
    value on this build, each a ``py:data`` target.  ``:decimal:`` for
    numbers (filters), else hex (flags and masks)."""

    required_arguments = 2
    option_spec = {"decimal": directives.flag}

    def run(self) -> list[nodes.Node]:
        modname, prefix = self.arguments
        module = importlib.import_module(modname)
        names = sorted(n for n in module.__all__
                       if n.startswith(prefix) and isinstance(getattr(module, n), int))
        if not names:
            raise self.error(f"{modname}.__all__ has no constant named {prefix}*")
        show = str if "decimal" in self.options else hex_or_int
        domain: Any = self.env.get_domain("py")
        table = nodes.table(classes=["kqueue-constants"])
        group = nodes.tgroup(cols=2)
        table += group
        group += nodes.colspec(colwidth=3)
        group += nodes.colspec(colwidth=1)
        head = nodes.thead()
        group += head
        head += _row([nodes.Text("name")], [nodes.Text("value")])
        body = nodes.tbody()
        group += body
        for name in names:
            fullname = f"{modname}.{name}"
            target = nodes.target("", "", ids=[fullname])
            self.state.document.note_explicit_target(target)
            domain.note_object(fullname, "data", fullname, location=target)
            body += _row([target, nodes.literal(name, name)],
                         [nodes.literal(text=show(getattr(module, name)))])
        return [table]


def _row(*cells: list[nodes.Node]) -> nodes.row:
    """A table row, one paragraph of the given nodes per cell."""
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += nodes.paragraph("", "", *content)
        row += entry
    return row


def hex_or_int(value: int) -> str:
    """Flags and masks read best in hex (0 as 0)."""
    return f"{value:#x}" if value > 0 else str(value)


def _defining_comment(name: str, obj: object) -> list[str]:
    """The ``#:`` comment of ``name`` where it is defined, when that is a
    private module and the object is the same."""
    for modname in DEFINING_MODULES:
        docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        lines = docs.get(("", name))
        if lines and getattr(importlib.import_module(modname), name, None) is obj:
            return list(lines)
    return []


def reexported_data_doc(app: Sphinx, what: str, name: str, obj: object, options: Any,
                        lines: list[str]) -> None:
    """Re-exported data: its ``#:`` comment where defined, not its type's
    docstring."""
    if what == "data":
        comment = _defining_comment(name.rpartition(".")[2], obj)
        if comment:
            lines[:] = comment


def skip_field_aliases(app: Sphinx, what: str, name: str, obj: object, skip: bool,
                       options: Any) -> bool | None:
    """A named tuple's fields say "Alias for field number N": not worth a line."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def protocol_signature(app: Sphinx, what: str, name: str, obj: object, options: Any,
                       signature: str | None, return_annotation: str | None
                       ) -> tuple[str, str | None] | None:
    """A Protocol is never instantiated: no ``(*args, **kwargs)`` signature."""
    if what == "class" and signature == "(*args, **kwargs)":
        return "", return_annotation
    return None


def check_public_names(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn (an error under -W) for every public name the reference lacks.

    A name in a module's ``__all__`` counts as documented when the reference
    describes it under that module, or under another public module where the
    same object is re-exported (``kqueue_py.KQueue`` is
    ``kqueue_py.queue.KQueue``)."""
    domain: Any = env.get_domain("py")
    modules = {name: importlib.import_module(name) for name in PUBLIC_MODULES}
    for modname, module in modules.items():
        for name in module.__all__:
            obj = getattr(module, name)
            if f"{modname}.{name}" in domain.objects:
                continue
            where = next((f"{other}.{name}" for other, mod in modules.items()
                          if f"{other}.{name}" in domain.objects
                          and getattr(mod, name, None) is obj), None)
            if where is not None:
                # The re-export is an alias of the documented object, so
                # that :class:`kqueue_py.KQueue` resolves too.
                entry = domain.objects[where]
                domain.objects[f"{modname}.{name}"] = entry._replace(aliased=True)
                continue
            logger.warning(
                "%s.%s is public (in __all__) but not in the API reference: "
                "give it a docstring (a #: comment for data) or document it in docs/reference.md",
                modname, name, type="kqueue_py", subtype="undocumented",
                location="docs/reference")


# Inline code in the Markdown pages that names kqueue_py's API: `KQueue.wait`,
# `kqueue_py.compat.install()`, `compat.kqueue.control`, `EV_ADD`.  Each one
# becomes a link into the reference, and one that names an attribute the
# package does not have (a method renamed since the page was written) fails
# the build.  A name counts when it starts with "kqueue_py.<public module>",
# "raw." or "compat.", or with a name from a public module's __all__ (except
# kqueue and kevent: also the C calls).  CHANGELOG.md is history: left alone.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NOT_ROOTS = {"kqueue", "kevent"}


def _api_roots() -> dict[str, object]:
    roots: dict[str, object] = {}
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        roots.update((n, getattr(module, n)) for n in module.__all__ if n not in _NOT_ROOTS)
    roots.update(raw=importlib.import_module("kqueue_py.raw"),
                 compat=importlib.import_module("kqueue_py.compat"))
    return roots


def _api_name(text: str, roots: dict[str, object]) -> tuple[object, list[str]] | None:
    """(the object the first part names, the remaining parts), or None when
    the text is not a name of kqueue_py's API."""
    text = text[:-2] if text.endswith("()") else text
    if not _NAME.fullmatch(text):
        return None
    parts = text.split(".")
    if parts[0] == "kqueue_py":
        if len(parts) == 1:
            return None
        if f"kqueue_py.{parts[1]}" in PUBLIC_MODULES:
            return importlib.import_module(f"kqueue_py.{parts[1]}"), parts[2:]
        if parts[1] in kqueue_py.__all__:
            return getattr(kqueue_py, parts[1]), parts[2:]
        return None   # another module (the benchmark, the examples)
    if parts[0] in ("raw", "compat") and len(parts) == 1:
        return None   # the word, not the module
    if parts[0] in roots:
        return roots[parts[0]], parts[1:]
    return None


def link_api_names(app: Sphinx, doctree: nodes.document) -> None:
    env = app.env
    if env.docname in ("CHANGELOG", "docs/reference"):
        return
    roots = _api_roots()
    for node in list(doctree.findall(nodes.literal)):
        if isinstance(node.parent, (nodes.reference, addnodes.pending_xref, nodes.title,
                                    nodes.literal_block)):
            continue
        text = node.astext()
        found = _api_name(text, roots)
        if found is None:
            continue
        obj, rest = found
        for attr in rest:
            if not hasattr(obj, attr):
                logger.warning("`%s` names no attribute of kqueue_py's API (%r has no %r): "
                               "renamed? Update the page.", text, obj, attr,
                               type="kqueue_py", subtype="stale_name", location=node)
                break
            obj = getattr(obj, attr)
        else:
            target = text[:-2] if text.endswith("()") else text
            xref = addnodes.pending_xref("", refdomain="py", reftype="obj", reftarget=target,
                                         refspecific=True, refexplicit=True, refwarn=False,
                                         kqueue_py_literal=True)
            node.replace_self(xref)
            xref += node


def unresolved_api_name(app: Sphinx, env: BuildEnvironment, node: addnodes.pending_xref,
                        contnode: nodes.Element) -> nodes.Element | None:
    """An API name without an entry of its own (an inherited method, an
    attribute of ffi) stays plain code: the name itself was checked."""
    if node.get("kqueue_py_literal"):
        return contnode
    return None


def add_index_redirect(app: Sphinx, exception: Exception | None) -> None:
    """index.html for the site's root: the home page is README.html."""
    if exception is None and app.builder.format == "html":
        Path(app.outdir, "index.html").write_text(
            '<!DOCTYPE html>\n<meta charset="utf-8">\n<title>kqueue_py</title>\n'
            '<meta http-equiv="refresh" content="0; url=README.html">\n'
            '<a href="README.html">kqueue_py documentation</a>\n', encoding="utf-8")


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", add_toctree)
    app.add_directive("kqueue-constants", ConstantsTable)
    app.connect("autodoc-process-docstring", reexported_data_doc)
    app.connect("autodoc-skip-member", skip_field_aliases)
    app.connect("autodoc-process-signature", protocol_signature)
    app.connect("env-check-consistency", check_public_names)
    app.connect("doctree-read", link_api_names)
    app.connect("missing-reference", unresolved_api_name)
    app.connect("build-finished", add_index_redirect)
    return {"parallel_read_safe": False}
