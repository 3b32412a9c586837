"""The plugin author's kit: ``nastrain new-plugin`` writes a plugin distribution.

:func:`new_plugin` renders the template folder beside this module
(``plugin_template/``: files shared by every kind under ``common/``, the hook
module and contract test of each kind under its own folder) into a new folder:
``pyproject.toml`` with the ``nastrain`` entry point, one hook module, a test
running the contract check of :mod:`nastrain.testing`, a test finding the plugin
in ``nastrain plugins --json`` from a subprocess, a ``tox.ini`` that tests the
plugin installed from its wheel beside nastrain, and a README. Template files end
in ``.tmpl`` and are :class:`string.Template` texts; a path component
``PACKAGE`` becomes the plugin's import name.

This module imports neither torch nor the plugins, so the command is quick.
"""

from __future__ import annotations

import importlib.metadata
import keyword
import os
import re
import shutil
import string
import sys
from pathlib import Path

import attrs

from nastrain import __version__

__all__ = [
    "FIRST_PARTY",
    "KINDS",
    "TEMPLATE",
    "TORCH_LAYER_WHEEL",
    "NewPluginError",
    "PluginNames",
    "check_name_is_free",
    "new_plugin",
    "plugin_names",
]

#: What ``--kind`` can be: what the plugin's hook module provides.
KINDS = ("one-shot", "classic", "strategy", "dataset")
#: The template folder.
TEMPLATE = Path(__file__).with_name("plugin_template")
#: The entry points of nastrain's first-party plugins (and the core's name): a plugin
#: written by the kit takes none of them, nor their distributions ``nastrain-NAME``.
FIRST_PARTY = ("nastrain", "darts", "enas", "classic", "cpu", "ray", "tensorboard")
#: The wheel of ``tools/torch-layer-pth`` (nastrain's dev-only .pth that shares one torch):
#: the template's ``tox.ini`` installs it by this file name from the wheels folder.
TORCH_LAYER_WHEEL = "nastrain_dev_torch_layer-1.0-py2.py3-none-any.whl"
#: Import names a plugin must not take: they would shadow what it runs beside.
_TAKEN = frozenset({"nastrain", "torch", "torchvision", "pytest", "pluggy", "attrs", "cattrs"})
# PEP 508's names: letters, digits, and . _ - inside.
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# What each kind registers, as `nastrain plugins --json` lists it.
_REGISTERS = {"one-shot": "trainers", "classic": "trainers", "strategy": "strategies"}
_SUFFIX = {"one-shot": "Trainer", "classic": "Trainer", "strategy": "Strategy", "dataset": ""}


class NewPluginError(ValueError):
    """``new_plugin`` was asked for something it cannot write; nothing was written."""


@attrs.frozen(kw_only=True)
class PluginNames:
    """The names a plugin called ``NAME`` gets.

    ``distribution`` is NAME as given (what pip installs), ``module`` its import
    name (lower case, ``-`` and ``.`` as ``_``), ``entry_point`` the entry point's and
    the registered thing's name (NAME without a leading ``nastrain-``), ``class_name``
    the trainer's or strategy's class (``MyAlgoTrainer``; for a dataset, the factory's
    function name).
    """

    distribution: str
    module: str
    entry_point: str
    class_name: str
    kind: str


def plugin_names(name: str, kind: str = "one-shot") -> PluginNames:
    """The names of a plugin called ``name`` of ``kind``; a ``NewPluginError`` says what is
    wrong with a name that is not a valid distribution or module name."""
    if kind not in KINDS:
        raise NewPluginError(f"unknown kind {kind!r}; the kinds are {', '.join(KINDS)}")
    if not isinstance(name, str) or not _DISTRIBUTION.match(name):
        raise NewPluginError(
            f"{name!r} is not a valid distribution name: use letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit (e.g. nastrain-my-algo)"
        )
    module = re.sub(r"[-.]+", "_", name).lower()
    if not module.isidentifier() or keyword.iskeyword(module):
        raise NewPluginError(
            f"{name!r} gives the import name {module!r}, which is not a Python identifier; "
            "start the name with a letter (e.g. nastrain-my-algo)"
        )
    if module in _TAKEN or module in sys.stdlib_module_names:
        raise NewPluginError(
            f"{name!r} gives the import name {module!r}, which is already taken by "
            f"{'the standard library' if module in sys.stdlib_module_names else 'a package'}; "
            f"choose another name (e.g. nastrain-{name})"
        )
    entry = re.sub(r"^nastrain[-_.]+", "", name.lower()) or name.lower()
    entry = re.sub(r"[-_.]+", "-", entry)
    words = [word for word in re.split(r"[-_.]+", entry) if word]
    if kind == "dataset":
        class_name = "_".join(words)
        if not class_name.isidentifier() or keyword.iskeyword(class_name):
            class_name = f"{module}_dataset"
    else:
        class_name = "".join(word[:1].upper() + word[1:] for word in words) + _SUFFIX[kind]
        if not class_name.isidentifier():
            class_name = "Plugin" + class_name
    return PluginNames(
        distribution=name, module=module, entry_point=entry, class_name=class_name, kind=kind
    )


def _normalized(name: str) -> str:
    """A distribution or entry point name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_name_is_free(names: PluginNames) -> None:
    """Refuse, with a :class:`NewPluginError` saying what to pick instead, a plugin whose
    distribution or entry point is one of nastrain's first-party plugins
    (:data:`FIRST_PARTY`) or one already installed here (an entry point in the group
    ``nastrain``): nastrain would load two plugins under one name, or pip would replace
    one with the other."""
    distribution = _normalized(names.distribution)
    entry = _normalized(names.entry_point)
    suggestion = f"nastrain-my-{entry}"
    if entry in FIRST_PARTY or distribution in {f"nastrain-{n}" for n in FIRST_PARTY}:
        raise NewPluginError(
            f"{names.distribution!r} (entry point {names.entry_point!r}) is the name of one of "
            f"nastrain's first-party plugins ({', '.join(FIRST_PARTY)}); pick a name of your "
            f"own algorithm (e.g. {suggestion})"
        )
    for point in importlib.metadata.entry_points(group="nastrain"):
        owner = point.dist.name if point.dist is not None else "an installed distribution"
        if _normalized(point.name) == entry or _normalized(owner) == distribution:
            raise NewPluginError(
                f"{names.distribution!r} (entry point {names.entry_point!r}) is taken here: "
                f"{owner} is installed with the nastrain entry point {point.name!r}; pick "
                f"another name (e.g. {suggestion})"
            )


def _substitutions(names: PluginNames) -> dict[str, str]:
    return {
        "dist": names.distribution,
        "module": names.module,
        "entry": names.entry_point,
        "cls": names.class_name,
        "kind": names.kind,
        "registers": _REGISTERS.get(names.kind, "datasets"),
        "nastrain_version": __version__,
        "torch_layer_wheel": TORCH_LAYER_WHEEL,
    }


def render(name: str, kind: str = "one-shot") -> dict[str, str]:
    """The files of a plugin distribution: relative path -> text (nothing is written)."""
    names = plugin_names(name, kind)
    values = _substitutions(names)
    files: dict[str, str] = {}
    for part in ("common", kind):
        root = TEMPLATE / part
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(root).as_posix().replace("PACKAGE", names.module)
            text = path.read_text(encoding="utf-8")
            if relative.endswith(".tmpl"):
                relative = relative.removesuffix(".tmpl")
                try:
                    text = string.Template(text).substitute(values)
                except (KeyError, ValueError) as exc:  # a broken template is the kit's bug
                    raise RuntimeError(f"template {path}: bad placeholder {exc}") from None
            files[relative] = text
    return files


def new_plugin(
    name: str, *, kind: str = "one-shot", directory: str | os.PathLike[str] | None = None
) -> Path:
    """Write a plugin distribution called ``name`` into ``directory`` (default: a new folder
    ``./NAME``) and return the folder.

    Refuses, with a :class:`NewPluginError` and before writing anything, an invalid
    ``name`` or ``kind``, a name a first-party or installed plugin has
    (:func:`check_name_is_free`), and a ``directory`` that is a file or a folder that is
    not empty.
    """
    files = render(name, kind)
    check_name_is_free(plugin_names(name, kind))
    target = Path(directory if directory is not None else name)
    if target.exists() and not target.is_dir():
        raise NewPluginError(f"{target} is a file, not a folder to write the plugin into")
    if target.is_dir() and any(target.iterdir()):
        raise NewPluginError(
            f"{target} is not empty; new-plugin writes only into a new or empty folder "
            "(pass --dir NEW_FOLDER)"
        )
    created = not target.exists()
    try:
        for relative, text in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        # Leave nothing half-written behind: the folder as it was (absent, or empty).
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise NewPluginError(f"could not write the plugin into {target}: {exc}") from None
    return target


def next_steps(target: Path, names: PluginNames) -> str:
    """What ``nastrain new-plugin`` prints after writing a plugin."""
    return (
        f"wrote {names.distribution} ({names.kind}; module {names.module}, entry point "
        f"{names.entry_point!r}) into {target}\n"
        f"next: see {target / 'README.md'}; test it as installed with "
        f"NASTRAIN_WHEELS=FOLDER_OF_NASTRAIN_WHEELS tox -c {target / 'tox.ini'}"
    )


def run_new_plugin(name: str, kind: str, directory: str | None) -> int:
    """The ``nastrain new-plugin`` command: 0 when written, 2 (with one line) when refused."""
    try:
        names = plugin_names(name, kind)
        target = new_plugin(name, kind=kind, directory=directory)
    except NewPluginError as exc:
        print(f"nastrain new-plugin: error: {exc}", file=sys.stderr)
        return 2
    print(next_steps(target, names))
    return 0
