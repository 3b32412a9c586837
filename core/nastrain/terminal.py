"""Text for people's terminals: :func:`printable`.

A leaf with no imports, so that the command line can print an error (or a warning) without
importing the rest of nastrain, and torch with it.
"""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: object) -> str:
    """``text`` with every control or invisible character escaped (``\\x1b``, ``\\u202e``),
    so that text read from a store, a stranger's included, cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))
