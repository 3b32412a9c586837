"""The one cattrs converter of nastrain, and JSON helpers built on it.

Every structured document nastrain writes or reads (trainer specs, search
spaces, plugin listings, and the stores and checkpoints of the plugins) goes
through :data:`converter`, so a bad document always fails the same way: a
:class:`ValueError` that names the offending key.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.preconf.json import make_converter
from cattrs.v import format_exception

__all__ = ["SCHEMA_VERSION", "check_json_value", "converter", "dumps", "loads", "structure"]

T = TypeVar("T")

#: Version of the documents this release writes. A new field gets a default so
#: older documents still load; a reader refuses documents newer than it knows.
SCHEMA_VERSION = 1

converter = make_converter(forbid_extra_keys=True)


def _strict(kind: type, accepted: tuple[type, ...]) -> Any:
    # cattrs would coerce ("3" -> 3, 2.7 -> 2, "no" -> True): in a config a value of the
    # wrong type is a mistake to report, not to guess at.
    def structure_value(value: Any, _: type) -> Any:
        if isinstance(value, bool) and bool not in accepted:
            raise TypeError(f"expected {kind.__name__}, got a bool ({value!r})")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    return structure_value


for _scalar, _accepted in ((int, (int,)), (float, (int, float)), (str, (str,)), (bool, (bool,))):
    converter.register_structure_hook(_scalar, _strict(_scalar, _accepted))


def structure(data: Any, cls: type[T], *, what: str | None = None) -> T:
    """Structure ``data`` into ``cls``; a failure is a ``ValueError`` naming each bad key
    (and, for an attrs class, a document that is not an object names the document)."""
    if attrs.has(cls) and not isinstance(data, dict):
        raise ValueError(
            f"invalid {what or cls.__name__}: expected a JSON object (a table of keys), got "
            f"{_kind(data)}"
        )
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError) as exc:
        details = "; ".join(cattrs.transform_error(exc, format_exception=_describe))
        raise ValueError(f"invalid {what or cls.__name__}: {details}") from None


_KINDS = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _kind(data: Any) -> str:
    kind = "null" if data is None else _KINDS.get(type(data), f"a {type(data).__name__}")
    text = ascii(data)
    return f"{kind} ({text[:60]}{'...' if len(text) > 60 else ''})"


def _describe(exc: BaseException, type_: Any) -> str:
    # cattrs says only "invalid value" for a validator's ValueError; keep its message.
    if isinstance(exc, (AttributeError, TypeError)) and attrs.has(type_):
        return "expected a JSON object (a table of keys)"  # cattrs tried .keys() on it
    if type(exc) in (ValueError, TypeError) and str(exc):
        return f"invalid value ({exc})"
    return format_exception(exc, type_)


def dumps(obj: Any) -> str:
    """Serialize an attrs object to a JSON string through :data:`converter`."""
    return json.dumps(converter.unstructure(obj), sort_keys=True, allow_nan=False)


def loads(text: str | bytes, cls: type[T], *, what: str | None = None) -> T:
    """Parse JSON text into ``cls``; malformed JSON or a bad key is a ``ValueError``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid {what or cls.__name__}: not JSON ({exc})") from None
    return structure(data, cls, what=what)


def check_json_value(value: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``value`` survives a JSON round trip unchanged in kind.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, and lists,
    tuples and ``str``-keyed dicts of those. ``where`` names the value in the
    message (for example ``"argument 'lr' of MnistTrainer"``).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; "
                    "JSON object keys must be str"
                )
            check_json_value(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} has type {type(value).__module__}.{type(value).__qualname__}, "
        "which is not JSON-serializable; pass a name or a number instead "
        "(e.g. a dataset or optimizer name plus keyword arguments)"
    )
