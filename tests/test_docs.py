"""The documentation site's pages: every example runs, and every public name has a page.

The examples are the ``python`` blocks of each page under ``docs/`` and of the README (run in order, in one
namespace per page, in an empty folder) and its ``pycon`` blocks (run as doctests). A block
that follows ``<!-- example: NAME -->`` needs a framework and is run by ``make integration``
(``tests/integration/test_readme.py``). ``make docs`` builds the site itself, strictly.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import detloss

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Folders of generated figures and reports: written by the commands, not examples.
GENERATED = {"bench", "detection", "plots", "simulation", "_ext"}
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] not in GENERATED)
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>python|pycon)\n(?P<code>.*?)```", re.DOTALL)
#: Every module whose ``__all__`` is the public interface.
PUBLIC = [
    "detloss",
    "detloss.functional",
    "detloss.nn",
    "detloss.boxes",
    "detloss.reduction",
    "detloss.registry",
    "detloss.assign",
    "detloss.integrations.ultralytics",
    "detloss.integrations.mmdet",
    "detloss.integrations.torchvision",
    "detloss.testing",
    "detloss.errors",
]


def blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, code)`` of the page's examples that run here."""
    found = []
    for match in BLOCK.finditer("\n" + page.read_text(encoding="utf-8")):
        if match["before"].startswith("<!-- example:"):
            continue
        found.append((match["lang"], match["code"]))
    return found


def test_the_pages_have_examples() -> None:
    assert len(PAGES) >= 20
    with_examples = {p.relative_to(DOCS).as_posix() for p in PAGES if blocks(p)}
    assert {"guides/getting-started.md", "guides/assigners.md", "guides/rotated.md", "index.md"} <= with_examples


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", [p for p in [ROOT / "README.md", *PAGES] if blocks(p)], ids=_name)
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write a dataset write it here
    torch.manual_seed(0)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for number, (lang, code) in enumerate(blocks(page)):
        name = f"{_name(page)} block {number}"
        if lang == "python":
            exec(compile(code, name, "exec"), namespace)
            continue
        test = doctest.DocTestParser().get_doctest(code, namespace, name, str(page), 0)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test, clear_globs=False)
        assert runner.failures == 0, f"{name}: {runner.failures} of {runner.tries} examples failed"


DIRECTIVE = re.compile(r"^\s*\.\. (?P<kind>auto\w+|py:\w+|detloss-loss)::\s+(?P<target>\S+)", re.MULTILINE)


@functools.cache
def documented() -> tuple[set[str], set[int]]:
    """The names the pages document (qualified) and the ids of those objects."""
    names: set[str] = set()
    objects: set[int] = set()
    for page in PAGES:
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            kind, target = match["kind"], match["target"]
            if kind == "detloss-loss":
                spec = detloss.LOSSES[target]
                targets = [f"detloss.functional.{spec.function.__name__}", f"detloss.nn.{spec.module.__name__}"]
            elif kind.startswith("py:") and "." not in target:
                continue  # a member (py:method) or a name under a py:currentmodule
            else:
                targets = [target]
            for qualified in targets:
                names.add(qualified)
                obj = resolve(qualified)
                if obj is not None:
                    objects.add(id(obj))
    return names, objects


def resolve(qualified: str) -> Any:
    parts = qualified.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def test_every_loss_has_its_entry() -> None:
    keys = {m["target"] for p in PAGES for m in DIRECTIVE.finditer(p.read_text()) if m["kind"] == "detloss-loss"}
    assert keys == set(detloss.LOSSES)


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_is_in_the_reference(module: str) -> None:
    names, objects = documented()
    mod = importlib.import_module(module)
    missing = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        by_identity = not isinstance(obj, (bool, int, float, str)) and id(obj) in objects
        if f"{module}.{name}" not in names and not by_identity:
            missing.append(name)
    assert not missing, f"{module}: no page documents {missing} (docs/reference/ or docs/losses/)"


LINK = re.compile(r"\]\((?P<path>[^)#\s]+\.md)(?:#(?P<anchor>[^)\s]+))?\)")


def anchors(page: Path) -> set[str]:
    """The heading anchors of a page, as code hosts and the site (``myst_heading_anchors``) make them."""
    found = set()
    for heading in re.findall(r"^#{1,4} (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).strip().replace(" ", "-")
        found.add(slug)
    return found


def test_the_readme_links_into_the_pages() -> None:
    """The README is the landing page: its links to the pages resolve, anchors included."""
    readme = ROOT / "README.md"
    links = list(LINK.finditer(readme.read_text(encoding="utf-8")))
    assert len(links) >= 10
    for link in links:
        target = (readme.parent / link["path"]).resolve()
        assert target.is_file(), link.group(0)
        if link["anchor"]:
            assert link["anchor"] in anchors(target), link.group(0)
