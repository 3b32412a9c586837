"""The ``nastrain`` command line: what is installed, and (with plugins) what to run."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

import nastrain
from nastrain import plugins
from nastrain.serialization import converter

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    text = str(message)
    prefix = "" if text.startswith("nastrain:") else "nastrain: "
    print(f"{prefix}warning: {text.removeprefix('nastrain: ')}", file=sys.stderr)


def _cmd_plugins(args: argparse.Namespace) -> int:
    infos = plugins.loaded_plugins(include_builtin=args.all)
    failures = plugins.failed_plugins()
    if args.json:
        document = {
            "plugins": [converter.unstructure(info) for info in infos],
            "failed": [converter.unstructure(failure) for failure in failures],
        }
        print(json.dumps(document, indent=2))
        return 0
    if not infos:
        print(
            "no plugins loaded"
            + ("" if failures else " (none installed, or NASTRAIN_PLUGINS is empty)")
        )
    for info in infos:
        trainers = ", ".join(info.trainers) or "-"
        print(
            f"{info.name}  {info.distribution or '?'} {info.version or '?'}  "
            f"({info.module})  trainers: {trainers}"
        )
    for failure in failures:
        print(
            f"FAILED {failure.name}  {failure.distribution or '?'} {failure.version or '?'}  "
            f"{failure.error}"
        )
    return 0


def _cmd_trainers(args: argparse.Namespace) -> int:
    providers = plugins.trainer_providers()
    if args.json:
        document = {
            name: [
                {
                    "class": f"{e.cls.__module__}.{e.cls.__qualname__}",
                    "provider": e.provider,
                    "one_shot": issubclass(e.cls, nastrain.BaseOneShotTrainer),
                }
                for e in entries
            ]
            for name, entries in providers.items()
        }
        print(json.dumps(document, indent=2))
        return 0
    if not providers:
        print("no trainers registered (install a plugin such as nastrain-darts)")
    for name, entries in providers.items():
        conflict = "  CONFLICT: " if len(entries) > 1 else "  "
        kinds = {
            "one-shot" if issubclass(e.cls, nastrain.BaseOneShotTrainer) else "classic"
            for e in entries
        }
        described = " | ".join(e.describe() for e in entries)
        print(f"{name}{conflict}{described}  [{', '.join(sorted(kinds))}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nastrain`` command."""
    parser = _Parser(
        prog="nastrain",
        description="Neural architecture search trainers for PyTorch, extended by plugins.",
    )
    parser.add_argument("--version", action="version", version=f"nastrain {nastrain.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = commands.add_parser(
        "plugins",
        help="list the loaded plugins and the ones that failed to load",
        description="List each plugin loaded from the 'nastrain' entry point group: entry point "
        "name, distribution, version, module and the trainers it provides; then the plugins "
        "that failed, with why. NASTRAIN_PLUGINS (comma-separated names) limits what loads.",
    )
    p.add_argument(
        "--json", action="store_true", help="print JSON: {plugins: [...], failed: [...]}"
    )
    p.add_argument("--all", action="store_true", help="include the core's built-in hook plugins")
    p.set_defaults(func=_cmd_plugins)

    p = commands.add_parser(
        "trainers",
        help="list every registered trainer name and who provides it",
        description="List every trainer name made known by a loaded plugin or by "
        "@register_trainer, with its class and provider; a name with two providers is marked "
        "CONFLICT.",
    )
    p.add_argument("--json", action="store_true", help="print JSON: name -> providers")
    p.set_defaults(func=_cmd_trainers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("nastrain: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, not a traceback, for any error
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"nastrain: error: {message}", file=sys.stderr)
        return 1
