"""Docs that run: every ```python block of ``docs/*.md`` is executed.

A page's blocks run in order in one module (a later block may use what an earlier one
defined; ``sys.modules[__name__]`` is that module, as a plugin's code would see its own),
in a temporary working directory. A block is not run only when the line before its
fence is ``<!-- not run: REASON -->``; each such block shows up as a skipped test with its
reason. A page whose block imports a first-party plugin that is not installed (the ``core``
tox env has none) stops there, skipped, naming the plugin; the env with every plugin runs it
whole. A page added to ``docs/`` is picked up by itself.

The README is a page too; its one sketch (the three searches, whose runnable version is
docs/one-shot.md) is marked not to run.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import traceback
import types
from pathlib import Path

import attrs
import pytest

from nastrain import plugins

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIRST_PARTY = (
    "nastrain_darts",
    "nastrain_enas",
    "nastrain_classic",
    "nastrain_cpu",
    "nastrain_tensorboard",
    "nastrain_ray",
)
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*$")


@attrs.frozen
class Block:
    page: Path
    line: int  # of the fence
    code: str
    not_run: str | None  # the reason, for a block marked not to run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's python blocks, in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        marker = _NOT_RUN.match(before[-1].strip()) if before else None
        line = text.count("\n", 0, match.start()) + 1
        reason = marker.group("reason") if marker else None
        found.append(Block(page, line, match.group(1), reason))
    return found


def missing_plugins(code: str) -> list[str]:
    """The first-party plugins a block imports that are not installed here."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names & set(FIRST_PARTY) if importlib.util.find_spec(n) is None)


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_the_python_blocks_of_a_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # What a page registers with @register_trainer is forgotten after it (as a plugin's test
    # fixture would), so a page's example class cannot take a name from a later test.
    decorated = plugins._decorated.entries
    monkeypatch.setattr(
        plugins._decorated, "entries", {name: list(e) for name, e in decorated.items()}
    )
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks(page):
        if block.not_run is not None:
            continue  # reported by test_blocks_marked_not_to_run
        missing = missing_plugins(block.code)
        if missing:
            pytest.skip(
                f"{block.where} imports {', '.join(missing)}, not installed here (the core env); "
                "the rest of the page runs where every plugin is installed"
            )
        # Blank lines first, so that tracebacks give the line numbers of the page itself.
        code = compile("\n" * block.line + block.code, str(page), "exec")
        try:
            exec(code, module.__dict__)
        except Exception:
            pytest.fail(
                f"the block at {block.where} failed:\n{traceback.format_exc(limit=-3)}",
                pytrace=False,
            )


NOT_RUN = [block for page in PAGES for block in blocks(page) if block.not_run is not None]


@pytest.mark.parametrize("block", NOT_RUN, ids=[block.where for block in NOT_RUN])
def test_blocks_marked_not_to_run(block: Block) -> None:
    pytest.skip(f"not run: {block.not_run}")


def test_the_block_finder_sees_fences_markers_and_plugins(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```python\nx = 1\n```\n\n<!-- not run: needs a GPU -->\n```python\n"
        "y = 2\n```\n\n```console\n$ z\n```\n```python\nimport nastrain_nosuch\n```\n"
    )
    page = page.resolve()
    global ROOT
    saved, ROOT = ROOT, tmp_path.resolve()
    try:
        found = blocks(page)
        assert [(b.line, b.code, b.not_run) for b in found] == [
            (3, "x = 1\n", None),
            (8, "y = 2\n", "needs a GPU"),
            (15, "import nastrain_nosuch\n", None),
        ]
        assert found[1].where == "page.md:8"
    finally:
        ROOT = saved
    assert missing_plugins("import os\nfrom nastrain import testing\n") == []
    assert missing_plugins("from nastrain_nosuch import X") == []  # not a first-party name
    assert missing_plugins("x = 1") == []
