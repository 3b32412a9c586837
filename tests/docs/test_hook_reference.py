"""Every hook in ``nastrain.hookspecs`` is documented in docs/plugins.md under a heading that
shows its full signature, as datasette's docs test does: the spec's argument names, in order
(``### `nastrain_fit(trainer)` ``), and "first result wins" for a first-result hook. A hook
added without its documentation, an argument added to a spec, or a heading left behind by a
removed hook fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from nastrain import hookspecs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def markdown_headings(text: str) -> list[str]:
    """The page's ATX headings: lines starting with ``#``, outside fenced code blocks (where
    a ``#`` line is a shell or Python comment)."""
    headings: list[str] = []
    fence = ""  # the open fence's backticks or tildes; "" outside code
    for line in text.splitlines():
        run = re.match(r" {0,3}(`{3,}|~{3,})(.*)", line)
        if run and not fence:
            fence = run.group(1)
        elif run and run.group(1).startswith(fence) and not run.group(2).strip():
            fence = ""  # a closing fence: the same character, at least as long, bare
        elif not fence and line.startswith("#"):
            headings.append(line)
    return headings


HEADINGS = markdown_headings(PAGE.read_text(encoding="utf-8"))
SPECS = {
    name: function
    for name, function in vars(hookspecs).items()
    if name.startswith("nastrain_") and getattr(function, "nastrain_spec", None) is not None
}


def signature(name: str) -> str:
    """``nastrain_x(a, b)``: the spec's name and argument names, in order."""
    return f"{name}({', '.join(inspect.signature(SPECS[name]).parameters)})"


def heading(name: str) -> str | None:
    return next((h for h in HEADINGS if f"`{name}(" in h), None)


def test_the_specs_are_found() -> None:
    assert {"nastrain_fit", "nastrain_register_trainers", "nastrain_on_report"} <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_hook_has_a_heading_with_its_full_signature(name: str) -> None:
    found = heading(name)
    assert found is not None, (
        f"docs/plugins.md has no heading for the hook {name}; add `### `{signature(name)}`` "
        "under 'Hook reference', saying when it is called and what it returns"
    )
    assert f"`{signature(name)}" in found, (
        f"docs/plugins.md's heading {found!r} does not show {signature(name)}, the spec's "
        "arguments in order"
    )
    first_result = SPECS[name].nastrain_spec.get("firstresult", False)
    assert ("first result wins" in found) == first_result, (
        f"{found!r}: say 'first result wins' in the heading exactly when the spec is firstresult "
        f"({first_result})"
    )


def test_no_heading_documents_a_hook_that_does_not_exist() -> None:
    documented = {m.group(1) for h in HEADINGS for m in re.finditer(r"`(nastrain_\w+)\(", h)}
    assert documented - set(SPECS) == set()


def test_a_comment_in_a_code_block_is_no_heading() -> None:
    text = (
        "# Title\n\n```python\n# ### `nastrain_fit(trainer)` in a comment\nx = 1\n```\n\n"
        "~~~\n# also code\n~~~\n\n## `nastrain_fit(trainer)`\n\n````md\n```\n# inside\n````\n"
    )
    assert markdown_headings(text) == ["# Title", "## `nastrain_fit(trainer)`"]
