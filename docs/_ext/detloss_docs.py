"""Two directives that write pages from the code, so that they cannot fall behind it.

``detloss-loss KEY``: one loss of :data:`detloss.LOSSES`: its registry key, paper and input
kind, then the autodoc of its function and of its module class.

``detloss-cli``: every command of the ``detloss`` tool, read from the typer application: the
command's help and a table of its options (names, type, default, help).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective


def _escape(text: str) -> str:
    """Plain text as reStructuredText: no markup is read into it."""
    return re.sub(r"([\\`*|_<>\[\]])", r"\\\1", " ".join(text.split()))


class _Generated(SphinxDirective):
    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return list(container.children)


class LossDirective(_Generated):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        from detloss import LOSSES

        key = self.arguments[0]
        if key not in LOSSES:
            raise self.error(f"detloss-loss: no registry key {key!r}")
        spec = LOSSES[key]
        function = f"detloss.functional.{spec.function.__name__}"
        module = f"detloss.nn.{spec.module.__name__}"
        lines = [
            f".. rubric:: ``{key}``: :func:`~{function}` / :class:`~{module}`",
            "",
            f"Registry key ``{key}`` (``build_loss(\"{key}\")``); paper: {_escape(spec.paper)}, {spec.year};"
            f" inputs: ``{spec.inputs}``.",
            "",
            f".. autofunction:: {function}",
            "",
            f".. autoclass:: {module}",
            "   :members:",
            "",
        ]
        return self._parse(lines)


def _default(param: Any) -> str:
    if param.is_flag:
        return "on" if param.default else "off"
    default = param.default
    if default is None or default in ((), "") or callable(default):
        return ""
    return f"``{default}``"


def _type(param: Any) -> str:
    if param.is_flag:
        return "flag"
    annotation = param.type_descriptor.annotation
    name = getattr(annotation, "__name__", None) or str(annotation)
    if param.multiple:
        name = name if name != "list" else "str"
        return f"{name}, repeatable"
    return _escape(name).replace(" | None", "")


def _options_table(command: Any) -> list[str]:
    rows = []
    for param in command.params:
        names = ", ".join(param.opts + param.secondary_opts)
        rows.append((names, _type(param), _default(param), _escape(getattr(param, "help", None) or "")))
    if not rows:
        return ["No options.", ""]
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 25 12 13 50", ""]
    lines += ["   * - option", "     - type", "     - default", "     - meaning"]
    for names, kind, default, help_text in rows:
        lines += [f"   * - ``{names}``", f"     - {kind}", f"     - {default}", f"     - {help_text}"]
    return [*lines, ""]


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    """Every command under a group, depth first, with its full invocation."""
    found: list[tuple[str, Any]] = []
    for name, command in group.commands.items():
        found.append((f"{prefix} {name}", command))
        if hasattr(command, "commands"):
            found += _commands(command, f"{prefix} {name}")
    return found


class CLIDirective(_Generated):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from detloss.cli import app

        root = typer.main.get_command(app)
        lines: list[str] = []
        for path, command in [("detloss", root), *_commands(root, "detloss")]:
            lines += [f".. rubric:: ``{path}``", ""]
            if command.help:
                lines += [_escape(command.help), ""]
            if hasattr(command, "commands"):
                names = ", ".join(f"``{name}``" for name in command.commands)
                lines += [f"Commands: {names}.", ""]
            lines += _options_table(command)
        return self._parse(lines)


def _comment_of_reexport(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """A constant re-exported by a package (``detloss.boxes.IOU_KINDS``) has its ``#:`` comment
    where it is defined; without this, autodoc would show the docstring of its type (``tuple``)."""
    if what != "data" or (lines and type(obj).__doc__ is None):
        return
    type_doc = [line.strip() for line in (type(obj).__doc__ or "").strip().splitlines()]
    if lines and [line.strip() for line in lines if line.strip()] != [line for line in type_doc if line]:
        return
    attr = name.rsplit(".", 1)[-1]
    for modname, module in sorted(sys.modules.items()):
        if not modname.startswith("detloss") or getattr(module, attr, _MISSING) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except PycodeError:
            continue
        if ("", attr) in docs:
            lines[:] = [*docs[("", attr)]]
            return
    lines[:] = []


_MISSING = object()
_RAW: dict[tuple[str, str], list[str]] = {}


def _keep_raw(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in ("data", "attribute"):
        _RAW[(what, name)] = list(lines)


def _restore_raw(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """The ``#:`` comments of constants are prose: napoleon would read ``Words: more words`` on
    their first line as ``type: description``. They are shown as they are written."""
    raw = _RAW.pop((what, name), None)
    if raw is not None:
        lines[:] = raw


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _keep_raw, priority=100)
    app.connect("autodoc-process-docstring", _restore_raw, priority=900)
    app.connect("autodoc-process-docstring", _comment_of_reexport, priority=950)
    app.add_directive("detloss-loss", LossDirective)
    app.add_directive("detloss-cli", CLIDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
