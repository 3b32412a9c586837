"""The 0.x API has one home per name: a module's ``__all__`` lists only what that module
defines (no re-export left behind when a name moved), and no module keeps a second name
bound to one of its own classes or functions (an alias kept for an old name).

A package's ``__init__`` gathers its names from its modules, so it is not scanned. The
sources are read, not imported, so the plugins under plugins/ are checked without them
being installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: module path -> names it re-exports on purpose, and why.
FACADES = {
    # The trainer guide's utilities module offers the one-shot trainers' calibration helper
    # beside replace_layer_choice (README, "BatchNorm statistics"); it was never elsewhere.
    "core/nastrain/utils.py": {"recalibrate_bn"},
}


def _modules() -> list[Path]:
    sources = [*(ROOT / "core" / "nastrain").rglob("*.py")]
    for package in (ROOT / "plugins").glob("*/nastrain_*"):
        sources.extend(package.rglob("*.py"))
    return sorted(p for p in sources if "plugin_template" not in p.parts)


def _problems(path: Path, allowed: set[str] | frozenset[str] = frozenset()) -> list[str]:
    tree = ast.parse(path.read_text())
    defined: set[str] = set()
    exported: list[str] = []
    problems = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if "__all__" in names and isinstance(node.value, (ast.List, ast.Tuple)):
                exported = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            if isinstance(node.value, ast.Name) and node.value.id in defined:
                problems.append(f"{names} = {node.value.id} (line {node.lineno}): an alias")
            defined.update(names)
    if path.name != "__init__.py":
        for name in exported:
            if name not in defined and name not in allowed:
                problems.append(f"{name!r} is in __all__ but defined elsewhere")
    return problems


def test_every_public_name_has_one_home() -> None:
    modules = _modules()
    assert len(modules) > 20  # the scan found the core and the plugins
    found = {}
    for path in modules:
        name = path.relative_to(ROOT).as_posix()
        if problems := _problems(path, FACADES.get(name, set())):
            found[name] = problems
    assert not found, found


def test_the_scan_finds_an_alias_and_a_re_export(tmp_path: Path) -> None:
    module = tmp_path / "old.py"
    module.write_text(
        "from elsewhere import moved\n\n__all__ = ['Record', 'moved']\n\n\n"
        "class Record:\n    pass\n\n\nOldRecord = Record\n"
    )
    problems = _problems(module)
    assert any("OldRecord" in p and "alias" in p for p in problems), problems
    assert any("'moved'" in p for p in problems), problems
