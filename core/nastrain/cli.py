"""The ``nastrain`` command line: what is installed (plugins, trainers, strategies, datasets,
executors),
running an experiment described in a file, and reporting on its store.

Importing this module, building the parser, ``--help`` and ``--version`` import no torch:
each command imports what it needs when it runs. An error is one line on stderr (exit 1;
2 for a bad command line), or its full traceback with ``--debug`` or ``NASTRAIN_DEBUG=1``.
Output cut short by a closed pipe (``nastrain report STORE | head -1``) ends quietly with
exit status 141, the status of a program that SIGPIPE ended.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import nastrain  # cheap: its names are imported on first use (PEP 562)
from nastrain.terminal import printable

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["main"]

#: Set to ``1`` (or ``true``, ``yes``, ``on``) to show an error's full traceback, as
#: ``--debug`` does.
DEBUG_ENV_VAR = "NASTRAIN_DEBUG"

#: The exit status when the reader of stdout has gone: 128 + SIGPIPE, what a shell reports
#: for ``cat`` or ``git log`` ended the same way, so that ``set -o pipefail`` treats
#: nastrain as it treats them (and it is not 1, the status of a real error).
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse swallows a failed write (a closed pipe under --help or --version) only
        # when stdout is unbuffered; let it reach main(), which ends every command the same
        # way, whatever the buffering (PYTHONUNBUFFERED, a terminal or a pipe).
        if message:
            (file or sys.stderr).write(message)


def _count(minimum: int) -> Any:
    """An argparse type: an integer >= ``minimum`` (anything else exits 2, saying so)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    text = str(message).removeprefix("nastrain: ")
    print(f"nastrain: warning: {printable(text)}", file=sys.stderr)


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def _plugins() -> Any:
    """:mod:`nastrain.plugins`, imported when a command runs rather than with this module:
    its registries load the plugins, which import torch, and ``--help`` must not wait."""
    from nastrain import plugins  # see the docstring

    return plugins


def _converter() -> Any:
    """nastrain's one cattrs converter, for the commands that print JSON (imported then:
    cattrs is not needed to parse a command line)."""
    from nastrain.serialization import converter  # see the docstring

    return converter


def _cmd_plugins(args: argparse.Namespace) -> int:
    plugins, converter = _plugins(), _converter()
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
        extra = "".join(
            f"  {what}: {', '.join(names)}"
            for what, names in (("strategies", info.strategies), ("datasets", info.datasets))
            if names
        )
        print(
            f"{info.name}  {info.distribution or '?'} {info.version or '?'}  "
            f"({info.module})  trainers: {trainers}{extra}"
        )
    for failure in failures:
        print(
            f"FAILED {failure.name}  {failure.distribution or '?'} {failure.version or '?'}  "
            f"{failure.error}"
        )
    return 0


def _cmd_trainers(args: argparse.Namespace) -> int:
    providers = _plugins().trainer_providers()
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


def _registry_command(providers: str, what: str, empty: str) -> Any:
    """The command listing a registry; ``providers`` names its function in
    :mod:`nastrain.plugins`, looked up when the command runs."""

    def command(args: argparse.Namespace) -> int:
        listing = getattr(_plugins(), providers)()
        if args.json:
            document = {
                name: [
                    {
                        "object": f"{getattr(e.cls, '__module__', '?')}."
                        f"{getattr(e.cls, '__qualname__', e.cls)}",
                        "provider": e.provider,
                    }
                    for e in entries
                ]
                for name, entries in listing.items()
            }
            print(json.dumps(document, indent=2))
            return 0
        if not listing:
            print(empty)
        for name, entries in listing.items():
            conflict = "  CONFLICT: " if len(entries) > 1 else "  "
            print(f"{name}{conflict}{' | '.join(e.describe() for e in entries)}")
        return 0

    command.__doc__ = f"List every registered {what}."
    return command


def _cmd_run(args: argparse.Namespace) -> int:
    # The experiments package imports torch: only the commands that run or read one load it.
    from nastrain.experiments.experiment import load_config

    # Like `python -m` (and uvicorn's --app-dir): the user's own modules are importable.
    app_dir = os.path.abspath(args.app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    config_path = Path(args.config)
    config = load_config(config_path)
    store = args.store
    if store is None and config.store is None:
        store = config_path.with_suffix(".sqlite")
    progress: Any = False if args.quiet else (True if sys.stderr.isatty() else "lines")
    experiment = config.experiment(
        config_path.resolve().parent,
        store=store,
        max_trials=args.max_trials,
        concurrency=args.concurrency,
        progress=progress,
    )
    result = experiment.run()
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts().items()))
    print(printable(f"{len(result.trials)} trials ({counts}); store {experiment.store_path}"))
    if result.stop_reason is not None:
        print(
            printable(
                f"stopped after {len(result.trials)} trials (max_trials is "
                f"{experiment.max_trials}): {result.stop_reason}"
            )
        )
    best = result.best_trial
    if best is None:
        print("no trial succeeded; see the reasons with: nastrain report STORE")
        return 1
    print(f"best: trial {best.index}, {best.value:.6g}, {json.dumps(best.arch)}")
    return 0


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0 (anything else exits 2, saying so)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _htmlreport() -> Any:
    """:mod:`nastrain.htmlreport`, imported when a report is asked for (it loads the report's
    page frame; an experiment's report then loads the experiments package, and torch)."""
    from nastrain import htmlreport  # see the docstring

    return htmlreport


def _cmd_report(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.report_parser
    if args.output is None:
        if args.watch:
            parser.error("--watch needs -o/--output: the page it rewrites")
        if args.interval is not None:
            parser.error("--interval goes with --watch and -o/--output")
        return _print_report(args)
    if args.json or args.top is not None:
        parser.error(
            "-o/--output writes the HTML page; --json and --top print the table (without -o)"
        )
    if args.interval is not None and not args.watch:
        parser.error("--interval goes with --watch")
    htmlreport = _htmlreport()
    kind, _ = htmlreport.source_kind(args.source)
    what = "experiment" if kind == "experiment" else "run"
    if not args.watch:
        written = htmlreport.report(args.source, args.output)
        print(printable(f"wrote {written} ({_report_summary(kind, written)})"))
        return 0
    interval = 5.0 if args.interval is None else args.interval
    writes = 0

    def on_write(path: Path) -> None:
        nonlocal writes
        writes += 1
        if writes == 1:
            print(
                printable(
                    f"wrote {path} ({_report_summary(kind, path)}); rewriting it every "
                    f"{interval:g} s until the {what} ends (Ctrl-C stops)"
                ),
                flush=True,
            )

    try:
        written = htmlreport.watch(args.source, args.output, interval=interval, on_write=on_write)
    except KeyboardInterrupt:
        print(printable(f"stopped watching; {args.output} is the page written last"))
        return 0
    print(
        printable(
            f"wrote {written} ({_report_summary(kind, written)}); the {what} has ended "
            f"({writes} write{'' if writes == 1 else 's'})"
        )
    )
    return 0


def _report_summary(kind: str, page: Path) -> str:
    """What the page at ``page`` shows, in a few words: how many trials (or epochs)."""
    data = _htmlreport().read_embedded(page.read_text(encoding="utf-8"))
    if kind == "experiment":
        count = len(data.get("trials") or ())
        return f"{count} trial{'' if count == 1 else 's'}"
    epochs = data.get("epochs")
    if isinstance(epochs, list):
        return f"{len(epochs)} epoch{'' if len(epochs) == 1 else 's'}"
    return "a one-shot run"


def _print_report(args: argparse.Namespace) -> int:
    """``nastrain report STORE`` without ``-o``: the trials of an experiment store, as text."""
    # The experiments package imports torch: only the commands that run or read one load it.
    from nastrain.experiments.records import ExperimentResult
    from nastrain.experiments.store import Store

    source = Path(args.source)
    if _is_run_record(source):
        raise ValueError(
            f"{source} is a one-shot run record: its report is a page, written with "
            f"nastrain report {source} -o report.html"
        )
    converter = _converter()
    with Store.read(args.source) as store:
        record = store.record
        # A trial left "running" by a process that is gone shows as interrupted.
        trials = store.observed_trials()
    result = ExperimentResult(trials=tuple(trials), mode=record.mode, store=str(args.source))
    ranked = result.ranked()
    ranks = {t.index: i + 1 for i, t in enumerate(ranked)}
    ordered = ranked + [t for t in trials if t.index not in ranks]
    if args.top is not None:
        ordered = ordered[: args.top]
    if args.json:
        document = {
            "schema_version": record.schema_version,
            "store": str(args.source),
            "experiment": converter.unstructure(record),
            "counts": result.counts(),
            "best_arch": result.best_arch,
            "trials": [{"rank": ranks.get(t.index), **converter.unstructure(t)} for t in ordered],
        }
        print(json.dumps(document, indent=2))
        return 0
    # Text read from the store is printed through printable(): a store may come from anyone.
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts().items()))
    print(
        printable(
            f"{args.source}: {len(trials)} trials ({counts or 'none yet'}); strategy "
            f"{record.strategy.name}, trainer {record.trainer.name}, "
            f"{'larger' if record.mode == 'max' else 'smaller'} is better"
        )
    )
    rows = [("rank", "trial", "status", "metric", "steps", "seconds", "architecture")]
    for t in ordered:
        reason = f"  {t.reason.splitlines()[0]}" if t.reason else ""
        rows.append(
            (
                str(ranks.get(t.index, "-")),
                str(t.index),
                printable(t.status),
                "-" if t.value is None else f"{t.value:.6g}",
                str(len(t.intermediate)),
                "-" if t.seconds is None else f"{t.seconds:.1f}",
                printable(json.dumps(t.arch) + reason),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[6])
    return 0


def _is_run_record(path: Path) -> bool:
    """Whether ``path`` is a one-shot run record (or a folder holding one); a folder without
    one is an error saying so. Anything else is left to the store to name."""
    htmlreport = _htmlreport()
    if path.is_dir():
        htmlreport.source_kind(path)  # a folder without a run record: says so
        return True
    try:
        return path.is_file() and htmlreport.source_kind(path)[0] == "run"
    except htmlreport.ReportError:
        return False  # the store says what it is not


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    from nastrain.kit import run_new_plugin  # only this command needs the kit

    return run_new_plugin(args.name, args.kind, args.dir)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nastrain`` command (building it imports no plugin)."""
    debug_help = f"on an error, show its full traceback, not one line (or set {DEBUG_ENV_VAR}=1)"
    # --debug before or after the command. The command's own copy has no default: argparse
    # would let a subcommand's default overwrite what the main parser read.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    parser = _Parser(
        prog="nastrain",
        description="Neural architecture search trainers for PyTorch, extended by plugins.",
        epilog="An error prints one line on stderr and exits 1 (2 for a bad command line); "
        f"--debug or {DEBUG_ENV_VAR}=1 prints its traceback instead.",
    )
    parser.add_argument("--version", action="version", version=f"nastrain {nastrain.__version__}")
    parser.add_argument("--debug", action="store_true", help=debug_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add_command(name: str, **options: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **options)

    p = add_command(
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

    p = add_command(
        "trainers",
        help="list every registered trainer name and who provides it",
        description="List every trainer name made known by a loaded plugin or by "
        "@register_trainer, with its class and provider; a name with two providers is marked "
        "CONFLICT.",
    )
    p.add_argument("--json", action="store_true", help="print JSON: name -> providers")
    p.set_defaults(func=_cmd_trainers)

    for word, plural, providers, empty in (
        ("strategy", "strategies", "strategy_providers", "no strategies registered"),
        ("executor", "executors", "executor_providers", "no executors registered"),
        (
            "dataset",
            "datasets",
            "dataset_providers",
            "no datasets registered (install a plugin such as nastrain-classic)",
        ),
    ):
        p = add_command(
            plural,
            help=f"list every registered {word} name and who provides it",
            description=f"List every {word} name made known by a loaded plugin (the core's "
            f"built-ins included), with what provides it; a name with two providers is "
            "marked CONFLICT.",
        )
        p.add_argument("--json", action="store_true", help="print JSON: name -> providers")
        p.set_defaults(func=_registry_command(providers, word, empty))

    p = add_command(
        "run",
        help="run (or resume) the experiment a TOML or JSON config describes",
        description="Run a multi-trial experiment described in CONFIG (.toml or .json): "
        "'space' names the model space as module:attr in your code, 'trainer' a registered "
        "trainer (name and kwargs), 'strategy' a registered strategy, 'executor' where the "
        "trials run (a registered name, or a table with name and the executor's options). "
        "Running it again "
        "resumes from its store (by default CONFIG with the suffix .sqlite): trials "
        "interrupted (Ctrl-C) run again. A run that ends before max_trials says why.",
    )
    p.add_argument("config", metavar="CONFIG", help="the experiment config (.toml or .json)")
    p.add_argument("--store", help="the experiment's SQLite store (overrides the config)")
    p.add_argument("--max-trials", type=_count(1), help="overrides max_trials")
    p.add_argument("--concurrency", type=_count(1), help="overrides concurrency")
    p.add_argument(
        "--app-dir",
        default=".",
        help="folder put first on sys.path, where the space's module is found (default: .)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress while trials run")
    p.set_defaults(func=_cmd_run)

    p = add_command(
        "report",
        help="write an HTML report of an experiment or a one-shot run (-o), or show the "
        "trials of a store, best first",
        description="With -o REPORT.html: write one self-contained HTML page (it opens "
        "anywhere, offline) reporting on STORE_OR_RUN, an experiment's SQLite store or a "
        "one-shot run (its run record run.jsonl, or the checkpoint or log folder holding "
        "it); its data is embedded as JSON. --watch rewrites it until the run ends. Without "
        "-o: show every trial recorded in the store, the succeeded ones ranked by their "
        "final result, then the others with the reason they failed or were interrupted. "
        "Safe while the experiment runs; trials left running by an experiment process that "
        "is gone show as interrupted.",
    )
    p.add_argument(
        "source",
        metavar="STORE_OR_RUN",
        help="an experiment's SQLite store, or a one-shot run record (or its folder)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="REPORT.html",
        help="write the HTML report to this file (its folder must exist)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="with -o: rewrite the report every --interval seconds until the run ends "
        "(Ctrl-C stops)",
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        metavar="SECONDS",
        help="with --watch: seconds between rewrites (default: 5)",
    )
    p.add_argument(
        "--json", action="store_true", help="without -o: print the experiment and trials as JSON"
    )
    p.add_argument("--top", type=_count(1), help="without -o: show only the first TOP trials")
    p.set_defaults(func=_cmd_report, report_parser=p)

    p = add_command(
        "new-plugin",
        help="write a new plugin distribution (a trainer, strategy or dataset) to start from",
        description="Write a plugin distribution NAME into a new folder: pyproject.toml with "
        "the 'nastrain' entry point, one hook module of the kind asked for, tests (the "
        "contract check of nastrain.testing, and the plugin found as installed), a tox.ini "
        "testing it installed from its wheel beside nastrain, and a README. A folder that is "
        "not empty, or a NAME that is not a valid distribution and module name, is refused "
        "(exit 2) and nothing is written.",
    )
    p.add_argument("name", metavar="NAME", help="the distribution's name, e.g. nastrain-my-algo")
    p.add_argument(
        "--kind",
        choices=("one-shot", "classic", "strategy", "dataset"),
        default="one-shot",
        help="what the hook module provides (default: one-shot)",
    )
    p.add_argument("--dir", help="the folder to write into (default: ./NAME)")
    p.set_defaults(func=_cmd_new_plugin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # output still buffered meets a closed pipe here, if not before
    except BrokenPipeError:
        # The reader of our output has gone (`nastrain report STORE | head -1`). As Python's
        # documentation on SIGPIPE advises: stdout becomes devnull, so that the flush at exit
        # cannot fail again, and the command ends quietly.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or _debug_from_env()
    if args.command is None:
        parser.print_help()
        return 2
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        again = " (run the same command again to resume)" if args.command == "run" else ""
        print(f"nastrain: interrupted{again}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # main() ends quietly
    except Exception as exc:
        if debug:
            traceback.print_exc()
            return 1
        # One line, not a traceback, for any error.
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"nastrain: error: {printable(message)}", file=sys.stderr)
        return 1
