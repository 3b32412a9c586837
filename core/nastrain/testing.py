"""nastrain's testing kit for plugin authors (and nastrain's own tests): an opt-in pytest plugin.

Enable it with ``pytest -p nastrain.testing`` or ``pytest_plugins =
["nastrain.testing"]`` in a ``conftest.py`` (a plugin written by ``nastrain
new-plugin`` has it in its ``pyproject.toml``). It gives:

- Fixtures: ``nastrain_plugin`` registers a plugin object (a module, class or
  instance with ``nastrain_*`` hook implementations) for one test, through the
  path entry-point plugins take; ``nastrain_builtin_plugins`` gives a test a
  fresh plugin manager holding only the core's built-ins; ``nastrain_reload``
  reloads the plugins after a test that changes ``NASTRAIN_PLUGINS``. The same
  without pytest: :func:`registered` and :func:`builtin_plugins_only`.
- Tiny spaces (pure torch and nastrain's core, no plugin needed): :class:`PlantedOp`,
  :class:`PlantedInput` and :class:`TinyCell`, a DARTS cell in miniature; tiny data,
  :func:`tiny_data`, also registered as datasets by :func:`registered_tiny_datasets`.
- The contract checks: :func:`check_trainer_plugin` (one-shot and classic trainers),
  :func:`check_strategy_plugin` and :func:`check_dataset_plugin`. Each raises a
  :class:`ContractError` (an ``AssertionError``) saying what the plugin got wrong, and
  returns a :class:`CheckReport` of what it checked.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain import plugins
from nastrain.hookspecs import hookimpl
from nastrain.space import SearchSpace
from nastrain.trainer import BaseOneShotTrainer

__all__ = [
    "TINY_CLASSES",
    "TINY_DATASET",
    "TINY_FEATURES",
    "TINY_REGRESSION_DATASET",
    "CheckReport",
    "ContractError",
    "FromModel",
    "PlantedInput",
    "PlantedOp",
    "TinyCell",
    "Zero",
    "builtin_plugins_only",
    "check_dataset_plugin",
    "check_strategy_plugin",
    "check_trainer_plugin",
    "from_model",
    "nastrain_builtin_plugins",
    "nastrain_plugin",
    "nastrain_reload",
    "registered",
    "registered_tiny_datasets",
    "tiny_data",
]

# --- plugins for one test -----------------------------------------------------------------


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[plugins.PluginInfo]:
    """Register ``plugin`` (a module, class or instance with ``nastrain_*`` hook
    implementations) while the block runs, through the path entry-point plugins take (its
    ``nastrain_register_*`` hooks run, and what they register becomes known); it is removed
    afterwards. Yields its :class:`~nastrain.plugins.PluginInfo`."""
    state = plugins._get_state()
    plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    plugins._add_plugin(state, plugin, plugin_name, plugin_name, None, None)
    try:
        yield state.infos[-1]
    finally:
        state.pm.unregister(plugin)
        state.remove_provider(f"plugin {plugin_name!r}")
        state.infos = [info for info in state.infos if info.name != plugin_name]


@contextlib.contextmanager
def builtin_plugins_only() -> Iterator[Any]:
    """While the block runs, nastrain's plugin manager is a fresh one holding only the core's
    built-in plugins: no entry-point plugin, no ``@register_trainer`` class from before.
    Yields the ``pluggy.PluginManager``; the previous manager is back afterwards."""
    with plugins._lock:
        saved_state, saved_decorated = plugins._state, plugins._decorated
        saved_env = os.environ.get(plugins.ENV_VAR)
        os.environ[plugins.ENV_VAR] = ""  # load no entry point
        try:
            plugins._decorated = type(saved_decorated)(saved_decorated.kind)
            plugins._state = plugins._build()
        finally:
            if saved_env is None:
                os.environ.pop(plugins.ENV_VAR, None)
            else:
                os.environ[plugins.ENV_VAR] = saved_env
    try:
        yield plugins._state.pm
    finally:
        with plugins._lock:
            plugins._state, plugins._decorated = saved_state, saved_decorated


@pytest.fixture
def nastrain_plugin() -> Iterator[Callable[..., plugins.PluginInfo]]:
    """Register plugin objects for one test: ``nastrain_plugin(obj, name=None)`` returns its
    ``PluginInfo``; every one is removed when the test ends."""
    with contextlib.ExitStack() as stack:

        def register(plugin: object, name: str | None = None) -> plugins.PluginInfo:
            return stack.enter_context(registered(plugin, name))

        yield register


@pytest.fixture
def nastrain_builtin_plugins() -> Iterator[Any]:
    """A fresh plugin manager holding only the core's built-ins, for one test (see
    :func:`builtin_plugins_only`)."""
    with builtin_plugins_only() as pm:
        yield pm


@pytest.fixture
def nastrain_reload() -> Iterator[Callable[[], object]]:
    """Give the test ``plugins.reload_plugins``; when it ends, put ``NASTRAIN_PLUGINS`` back
    as it was and reload again (``monkeypatch`` restores the variable only after this
    fixture's teardown, too late for the reload)."""
    saved = os.environ.get(plugins.ENV_VAR)
    yield plugins.reload_plugins
    if saved is None:
        os.environ.pop(plugins.ENV_VAR, None)
    else:
        os.environ[plugins.ENV_VAR] = saved
    plugins.reload_plugins()


# --- tiny spaces and data -----------------------------------------------------------------

#: The tiny data's input features and classes.
TINY_FEATURES = 6
TINY_CLASSES = 3
#: The registered names of :func:`tiny_data` (classes) and its regression form, while
#: :func:`registered_tiny_datasets` is active.
TINY_DATASET = "nastrain-testing-tiny"
TINY_REGRESSION_DATASET = "nastrain-testing-tiny-regression"


def _teacher() -> torch.Tensor:
    return torch.randn(TINY_CLASSES, TINY_FEATURES, generator=torch.Generator().manual_seed(1234))


def tiny_data(n: int = 96, *, seed: int = 0, regression: bool = False) -> TensorDataset:
    """``n`` pairs ``(x, y)``: ``x`` of :data:`TINY_FEATURES` standard normal features and
    ``y = argmax(T relu(x))`` for a fixed teacher ``T`` (a class in ``range(TINY_CLASSES)``),
    or, with ``regression``, the float vector ``T relu(x)`` itself. The same for a ``seed``;
    no download, no file."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, TINY_FEATURES, generator=generator)
    scores = torch.relu(x) @ _teacher().T
    return TensorDataset(x, scores if regression else scores.argmax(-1))


def _tiny_splits(*, n: int = 96, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, valid) of :func:`tiny_data`: ``n`` and ``n // 3`` items."""
    return tiny_data(n, seed=seed), tiny_data(max(n // 3, 1), seed=seed + 1)


def _tiny_regression_splits(*, n: int = 96, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, valid) of :func:`tiny_data` with ``regression=True``."""
    return (
        tiny_data(n, seed=seed, regression=True),
        tiny_data(max(n // 3, 1), seed=seed + 1, regression=True),
    )


class _TinyDatasets:
    """The plugin that registers the tiny datasets."""

    @hookimpl
    def nastrain_register_datasets(self, register: Callable[..., None]) -> None:
        register(_tiny_splits, name=TINY_DATASET)
        register(_tiny_regression_splits, name=TINY_REGRESSION_DATASET)


@contextlib.contextmanager
def registered_tiny_datasets() -> Iterator[None]:
    """While the block runs, :data:`TINY_DATASET` and :data:`TINY_REGRESSION_DATASET` are
    registered datasets (keyword arguments ``n`` and ``seed``), for classic trainers, which
    take their data by name."""
    with registered(_TinyDatasets(), name="nastrain.testing.datasets"):
        yield


class Zero(nn.Module):
    """The "none" candidate: zeros shaped like the input (``nastrain_zero`` tells DARTS it
    need not be computed)."""

    nastrain_zero = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


class _NegativeRelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(-x)


class PlantedOp(nn.Module):
    """One ``LayerChoice`` (label ``"op"``) before a linear head, over :func:`tiny_data`.

    The data's labels are a linear function of ``relu(x)``: ``"relu"`` is the planted
    candidate; ``"neg_relu"`` (``relu(-x)``) keeps half the information and ``"zero"``
    none. A search that works finds ``PLANTED``.
    """

    PLANTED: ClassVar[dict[str, Any]] = {"op": "relu"}

    def __init__(self) -> None:
        super().__init__()
        self.op = nastrain.LayerChoice(
            {"relu": nn.ReLU(), "neg_relu": _NegativeRelu(), "zero": Zero()}, label="op"
        )
        self.head = nn.Linear(TINY_FEATURES, TINY_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.op(x))


class PlantedInput(nn.Module):
    """One ``InputChoice`` (label ``"input"``, one of three) before a linear head, over
    :func:`tiny_data`: the inputs are ``relu(x)`` (planted), ``relu(-x)`` and zeros."""

    PLANTED: ClassVar[dict[str, Any]] = {"input": [0]}

    def __init__(self) -> None:
        super().__init__()
        self.pick = nastrain.InputChoice(3, 1, label="input")
        self.head = nn.Linear(TINY_FEATURES, TINY_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pick([torch.relu(x), torch.relu(-x), x * 0.0]))


def _tiny_ops(width: int) -> dict[str, nn.Module]:
    return {
        "linear": nn.Linear(width, width),
        "relu_linear": nn.Sequential(nn.ReLU(), nn.Linear(width, width)),
        "skip": nn.Identity(),
        "zero": Zero(),
    }


class _Cell(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        # Node 1 reads the cell's input through one edge; node 2 reads one of (the input,
        # node 1), each through its own edge; the cell's output is the sum of the nodes.
        self.edge_01 = nastrain.LayerChoice(_tiny_ops(width), label="edge_01")
        self.edge_02 = nastrain.LayerChoice(_tiny_ops(width), label="edge_02")
        self.edge_12 = nastrain.LayerChoice(_tiny_ops(width), label="edge_12")
        self.node_2 = nastrain.InputChoice(2, 1, label="node_2")

    def forward(self, s0: torch.Tensor) -> torch.Tensor:
        n1 = self.edge_01(s0)
        n2 = self.node_2([self.edge_02(s0), self.edge_12(n1)])
        return s0 + n1 + n2


class TinyCell(nn.Module):
    """A DARTS network in miniature, over :func:`tiny_data`: a linear stem, ``cells`` cells
    sharing their labels (so every cell takes one architecture, as DARTS' normal cells do)
    of three ``LayerChoice`` edges (``edge_01``, ``edge_02``, ``edge_12``: linear,
    relu-linear, skip, zero) and one ``InputChoice`` (``node_2``), and a linear head.
    128 architectures."""

    def __init__(self, cells: int = 2, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Linear(TINY_FEATURES, width)
        self.cells = nn.ModuleList(_Cell(width) for _ in range(cells))
        self.head = nn.Linear(width, TINY_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        return self.head(h)


# --- the contract checks ------------------------------------------------------------------


class ContractError(AssertionError):
    """A plugin does not keep nastrain's contract; the message says what and how."""


@attrs.frozen(kw_only=True)
class CheckReport:
    """What a contract check checked: the registered ``name``, its ``kind`` (``"one-shot"``,
    ``"classic"``, ``"strategy"`` or ``"dataset"``), the class or factory (``target``), one
    line per check passed (``checks``), and what it saw: the exported architecture
    (``arch``), the architectures an experiment proposed (``archs``), split sizes
    (``sizes``)."""

    name: str
    kind: str
    target: str
    checks: tuple[str, ...]
    arch: dict[str, Any] | None = None
    archs: tuple[dict[str, Any], ...] = ()
    sizes: tuple[int, ...] = ()


@attrs.frozen
class FromModel:
    """A trainer argument computed from each fresh model (see :func:`from_model`)."""

    make: Callable[[nn.Module], Any]


def from_model(make: Callable[[nn.Module], Any]) -> FromModel:
    """Mark a :func:`check_trainer_plugin` argument to compute from the model of each trainer
    the check builds: ``optimizer=from_model(lambda m: torch.optim.Adam(m.parameters()))``."""
    return FromModel(make)


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _importable(obj: Any) -> str | None:
    """``module:qualname`` when a fresh process can import ``obj`` by name, else ``None``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits.argmax(-1) == target).float().mean())


def _accuracy_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {"acc": _accuracy(logits, target)}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # Tiny models: a second intra-op thread costs more than it saves, and one thread keeps
    # the two runs the resume check compares bitwise comparable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    init = cls.__init__  # type: ignore[misc]  # the class's own, as the check builds it
    params = dict(list(inspect.signature(init).parameters.items())[2:])  # self, model
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return params, var_kw


def _arguments(
    cls: type,
    name: str,
    model: nn.Module,
    overrides: Mapping[str, Any],
    defaults: Mapping[str, Callable[[], Any]],
    options: frozenset[str],
) -> dict[str, Any]:
    """The keyword arguments the check builds ``cls`` with: ``overrides`` (``FromModel``
    values computed from ``model``), then the kit's ``defaults`` for the parameters ``cls``
    takes (``options`` also when it takes ``**kwargs``)."""
    params, var_kw = _parameters(cls)
    kwargs: dict[str, Any] = {}
    for key, make in defaults.items():
        if key not in overrides and (key in params or (var_kw and key in options)):
            kwargs[key] = make()
    for key, value in overrides.items():
        kwargs[key] = value.make(model) if isinstance(value, FromModel) else value
    missing = [
        key
        for key, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and key not in kwargs
    ]
    if missing:
        raise ContractError(
            f"trainer {name!r} ({_describe(cls)}) requires {', '.join(map(repr, missing))}, "
            "which the kit cannot guess; pass them to the check as keyword arguments "
            "(from_model(fn) for one made from each model)"
        )
    return kwargs


def _lookup(kind: str, name: str) -> Any:
    getter = {
        "trainer": plugins.get_trainer,
        "strategy": plugins.get_strategy,
        "dataset": plugins.get_dataset,
    }[kind]
    try:
        return getter(name)
    except plugins.UnknownNameError as exc:
        raise plugins.UnknownNameError(f"check_{kind}_plugin: {exc}") from None


def check_trainer_plugin(
    name: str,
    *,
    plugin: object | None = None,
    space: Callable[[], nn.Module] | None = None,
    resume: bool = True,
    **kwargs: Any,
) -> CheckReport:
    """Check that the trainer registered as ``name`` keeps nastrain's trainer contract.

    ``plugin``, when given, is registered while the check runs (a plugin not installed
    yet). ``kwargs`` are the trainer's arguments; the kit fills the ones it knows by their
    NNI names: ``loss`` (cross-entropy), ``metrics``, ``reward_function`` (accuracy),
    ``optimizer`` (SGD over the model's parameters), ``num_epochs``/``epochs``,
    ``dataset``, ``batch_size``, ``seed``, ``device`` (``"cpu"``), ``progress`` and
    ``checkpoint_dir``; an argument given as :func:`from_model` is computed from each
    model; a one-shot trainer's ``dataset`` defaults to :func:`tiny_data`, a classic
    one's to :data:`TINY_DATASET`. ``space`` makes a fresh model space (default
    :class:`TinyCell` for one-shot trainers, :class:`PlantedOp` for classic ones).

    A one-shot trainer is built and fitted for 2 epochs (``num_epochs=`` for more; one
    that takes no epoch count runs its own); its ``export()`` must be a JSON-ready
    architecture that validates against the space, in canonical form. With ``resume``
    (the default), a second run is stopped after its first epoch, and a new trainer on the
    same ``checkpoint_dir`` must resume it to the same architecture, the same weights and
    the same ``arch_parameters()`` as the uninterrupted run; that needs a trainer taking
    ``num_epochs`` (or ``epochs``) and at least 2 of them.

    A classic trainer is built on a fixed architecture of the space and fitted on
    :data:`TINY_DATASET` (``epochs=1``); it must report a final result, and its
    ``spec`` must rebuild the same trainer from JSON in a fresh process (so an
    experiment's workers can).

    An unregistered ``name`` raises ``UnknownNameError`` listing the known trainers; a
    broken contract raises :class:`ContractError`.
    """
    with contextlib.ExitStack() as stack:
        if plugin is not None:
            stack.enter_context(registered(plugin))
        cls = _lookup("trainer", name)
        stack.enter_context(_one_thread())
        if issubclass(cls, BaseOneShotTrainer):
            return _check_one_shot(name, cls, space or TinyCell, resume, kwargs, stack)
        return _check_classic(name, cls, space or PlantedOp, kwargs, plugin)


def _one_shot_defaults(model: nn.Module, data: Any, epochs: int) -> dict[str, Callable[[], Any]]:
    return {
        "loss": nn.CrossEntropyLoss,
        "metrics": lambda: _accuracy_metrics,
        "reward_function": lambda: _accuracy,
        "optimizer": lambda: torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        "num_epochs": lambda: epochs,
        "epochs": lambda: epochs,
        "dataset": lambda: data,
        "batch_size": lambda: 16,
        "seed": lambda: 0,
        "device": lambda: "cpu",
        "progress": lambda: False,
    }


_OPTIONS = frozenset({"seed", "device", "progress", "batch_size", "checkpoint_dir"})


class _StopAfter:
    """A plugin that stops one trainer's ``fit`` at its ``count + 1``-th intermediate report:
    the first report of the epoch after the ones to keep."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.trainer: Any = None
        self.seen = 0

    @hookimpl
    def nastrain_on_report(self, trainer: Any, final: bool) -> None:
        if trainer is self.trainer and not final:
            self.seen += 1
            if self.seen > self.count:
                raise _Stopped


class _Stopped(Exception):
    """The interruption :class:`_StopAfter` makes."""


def _tensors(trainer: Any) -> dict[str, torch.Tensor]:
    """The trainer's ``arch_parameters()``, and its model's weights and buffers."""
    found = {}
    arch_parameters = getattr(trainer, "arch_parameters", None)
    if callable(arch_parameters):
        params = arch_parameters()
        if isinstance(params, nn.Module):
            params = params.parameters()
        for i, p in enumerate(params):
            found[f"arch_parameters()[{i}]"] = p.detach()
    found.update((f"model.{k}", v.detach()) for k, v in trainer.model.state_dict().items())
    return found


def _check_arch(arch: Any, record: Any, who: str) -> dict[str, Any]:
    if not isinstance(arch, dict):
        raise ContractError(f"{who}: export() returned {type(arch).__name__}, not a dict")
    try:
        json.dumps(arch)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{who}: export() returned {arch!r}, not JSON-ready ({exc})") from None
    try:
        canonical = record.validate(arch)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{who}: export() returned {arch!r}, not of the space: {exc}") from None
    if canonical != arch:
        raise ContractError(
            f"{who}: export() returned {arch!r}; the canonical form is {canonical!r} (every "
            "label in the space's order, input indices sorted)"
        )
    return arch


def _check_one_shot(
    name: str,
    cls: type,
    space: Callable[[], nn.Module],
    resume: bool,
    overrides: Mapping[str, Any],
    stack: contextlib.ExitStack,
) -> CheckReport:
    who = f"trainer {name!r} ({_describe(cls)})"
    data = tiny_data()
    record = SearchSpace.from_model(space())
    params, var_kw = _parameters(cls)
    if resume and "checkpoint_dir" not in params and not var_kw:
        raise ContractError(
            f"{who} takes no checkpoint_dir, so it cannot resume an interrupted search; "
            "build it on nastrain.oneshot.SupernetTrainer, or pass resume=False"
        )
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nastrain-check-")))

    # The epoch count the trainer was built with (the kit's 2, or the caller's), or None
    # when it takes neither num_epochs nor epochs: what the report and the resume check say.
    epochs: list[int | None] = [None]

    def build(checkpoint_dir: Path | None) -> Any:
        torch.manual_seed(0)
        model = space()
        extra = {"checkpoint_dir": checkpoint_dir} if checkpoint_dir is not None else {}
        kwargs = _arguments(
            cls,
            name,
            model,
            {**extra, **overrides},
            _one_shot_defaults(model, data, 2),
            _OPTIONS,
        )
        count = kwargs.get("num_epochs", kwargs.get("epochs"))
        epochs[0] = count if isinstance(count, int) and not isinstance(count, bool) else None
        return cls(model, **kwargs)

    checks = []
    whole = build(folder / "whole" if resume else None)
    count = epochs[0]
    if resume and count is None:
        raise ContractError(
            f"{who} takes neither num_epochs nor epochs, so the kit cannot stop it after its "
            "first epoch to check that it resumes; build it on "
            "nastrain.oneshot.SupernetTrainer, or pass resume=False"
        )
    if resume and count is not None and count < 2:
        raise ValueError(
            f"check_trainer_plugin({name!r}): an epoch count of {count} leaves no epoch to "
            "resume; pass 2 or more (or leave it to the kit's 2), or resume=False"
        )
    whole.fit()
    arch = _check_arch(whole.export(), record, who)
    checks.append(f"{_fitted(count, type(space()).__name__)}; exported {arch}")
    if resume and count is not None:  # (resume without an epoch count is refused above)
        reports = len(whole.intermediate_results)
        if reports < count or reports % count:
            raise ContractError(
                f"{who} reported {reports} intermediate result(s) in {count} epochs; a one-shot "
                "trainer reports each epoch's metrics (report_intermediate_result) the same "
                "number of times per epoch"
            )
        stopper = _StopAfter(reports // count)
        stack.enter_context(registered(stopper, name="nastrain.testing.stop-after-epoch"))
        first = build(folder / "resumed")
        stopper.trainer = first
        try:
            first.fit()
        except _Stopped:
            pass
        else:
            raise ContractError(f"{who}: the kit could not stop its fit after the first epoch")
        resumed = build(folder / "resumed")
        resumed.fit()
        if len(resumed.intermediate_results) >= reports:
            raise ContractError(
                f"{who} did not resume from its checkpoint_dir: a new trainer on the folder of "
                "a search stopped after epoch 1 trained every epoch again"
            )
        resumed_arch = resumed.export()
        if resumed_arch != arch:
            raise ContractError(
                f"{who}: stopped after epoch 1 and resumed, it exported {resumed_arch!r}; "
                f"uninterrupted, {arch!r}"
            )
        expected, got = _tensors(whole), _tensors(resumed)
        if set(expected) != set(got):
            raise ContractError(
                f"{who}: resumed, it has tensors {sorted(got)}, not {sorted(expected)}"
            )
        for key, tensor in expected.items():
            if tensor.shape != got[key].shape or not torch.equal(tensor, got[key]):
                diff = (
                    float((tensor.double() - got[key].double()).abs().max())
                    if tensor.shape == got[key].shape
                    else math.nan
                )
                raise ContractError(
                    f"{who}: stopped after epoch 1 and resumed, its {key} differs from the "
                    f"uninterrupted run's (largest difference {diff:.3g}); save and restore "
                    "every state the search depends on (checkpointables(), RNG states)"
                )
        checks.append(
            f"stopped after epoch 1 and resumed: the same architecture and {len(expected)} "
            "tensors (weights, arch_parameters()) as uninterrupted"
        )
    return CheckReport(
        name=name, kind="one-shot", target=_describe(cls), checks=tuple(checks), arch=arch
    )


def _fitted(count: int | None, space: str) -> str:
    """What the check's report says the fit did: ``"fitted 2 epochs of TinyCell"``, or, for a
    trainer that takes no epoch count, only that its ``fit()`` ran."""
    if count is None:
        return f"fitted {space} (the trainer takes no num_epochs or epochs)"
    return f"fitted {count} epoch{'' if count == 1 else 's'} of {space}"


_CLASSIC_DEFAULTS: dict[str, Callable[[], Any]] = {
    "dataset": lambda: TINY_DATASET,
    "epochs": lambda: 1,
    "num_epochs": lambda: 1,
    "batch_size": lambda: 16,
    "seed": lambda: 0,
    "device": lambda: "cpu",
}

_FRESH_PROCESS = textwrap.dedent(
    """
    import importlib, json, sys
    import nastrain
    from nastrain import testing

    job = json.loads(sys.argv[1])

    def load(reference):
        module, _, attr = reference.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return obj

    with testing.registered_tiny_datasets():
        if job["plugin"]:
            testing.registered(load(job["plugin"])).__enter__()
        spec = nastrain.TrainerSpec.from_json(job["spec"])
        if spec.name not in nastrain.trainer_names():
            try:
                importlib.import_module(job["module"])
                problem = "did not register it"
            except Exception as exc:
                problem = f"failed: {type(exc).__name__}: {exc}"
            if spec.name not in nastrain.trainer_names():
                sys.exit(f"trainer {spec.name!r} is not registered in a fresh process "
                         f"(known: {nastrain.trainer_names()}), and importing its module "
                         f"{job['module']} {problem}; install the plugin that registers it")
        if job["space"]:
            model = nastrain.apply_arch(load(job["space"])(), job["arch"])
        else:
            model = nastrain.apply_arch(testing.PlantedOp(), testing.PlantedOp.PLANTED)
        trainer = spec.build(model)
        print(json.dumps({"spec": trainer.spec.to_json(),
                          "class": f"{type(trainer).__module__}.{type(trainer).__qualname__}"}))
    """
)


def _check_classic(
    name: str,
    cls: type,
    space: Callable[[], nn.Module],
    overrides: Mapping[str, Any],
    plugin: object | None,
) -> CheckReport:
    who = f"trainer {name!r} ({_describe(cls)})"
    template = space()
    arch = SearchSpace.from_model(template).sample(seed=0)
    model = nastrain.apply_arch(template, arch)
    with registered_tiny_datasets():
        kwargs = _arguments(cls, name, model, overrides, _CLASSIC_DEFAULTS, frozenset())
        trainer = cls(model, **kwargs)
        try:
            spec = trainer.spec
        except AttributeError:
            raise ContractError(
                f"{who} has no spec: decorate it with @nastrain.register_trainer, which records "
                "its JSON arguments (what an experiment sends to its workers)"
            ) from None
        trainer.fit()
    if trainer.final_result is None:
        raise ContractError(
            f"{who}: fit() reported no final result; call nastrain.report_final_result(metric) "
            "at its end (strategies rank architectures by it)"
        )
    checks = [f"fitted {arch} of {type(template).__name__}; final result {trainer.final_result}"]
    text = spec.to_json()
    job = {
        "spec": text,
        "module": cls.__module__,
        "plugin": _importable(plugin)
        if isinstance(plugin, type)
        else getattr(plugin, "__name__", None),
        "space": _importable(space),
        "arch": arch,
    }
    env = dict(os.environ)
    path = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise ContractError(
            f"{who}: its spec {text} did not rebuild the trainer in a fresh process: "
            f"{lines[-1] if lines else 'exit status ' + str(result.returncode)}"
        )
    rebuilt = json.loads(result.stdout.strip().splitlines()[-1])
    if json.loads(rebuilt["spec"]) != json.loads(text):
        raise ContractError(
            f"{who}: rebuilt from its spec in a fresh process, it has the spec {rebuilt['spec']}, "
            f"not {text}"
        )
    if rebuilt["class"] != _describe(cls):
        raise ContractError(
            f"{who}: its spec builds {rebuilt['class']} in a fresh process, not {_describe(cls)}"
        )
    checks.append(f"its spec {text} rebuilt the same trainer in a fresh process")
    return CheckReport(name=name, kind="classic", target=_describe(cls), checks=tuple(checks))


# --- strategies and datasets ----------------------------------------------------------------


#: The kit's trainer for strategy checks, registered while one runs.
_SCORE_TRAINER = "nastrain-testing-parameter-count"


def _parameter_count_trainer() -> type:
    class ParameterCountTrainer(nastrain.BaseTrainer):
        """Reports the model's number of parameters as its final result: a known function of
        the architecture, without training."""

        name = _SCORE_TRAINER

        def __init__(self, model: nn.Module) -> None:
            self.model = model

        def fit(self) -> None:
            nastrain.report_final_result(float(sum(p.numel() for p in self.model.parameters())))

    return ParameterCountTrainer


class _ScorePlugin:
    def __init__(self) -> None:
        self.trainer = _parameter_count_trainer()

    @hookimpl
    def nastrain_register_trainers(self, register: Callable[..., None]) -> None:
        register(self.trainer)


def check_strategy_plugin(
    name: str,
    *,
    plugin: object | None = None,
    space: Callable[[], nn.Module] | None = None,
    max_trials: int = 6,
    **kwargs: Any,
) -> CheckReport:
    """Check that the strategy registered as ``name`` keeps nastrain's strategy contract.

    ``kwargs`` are the strategy's (JSON) arguments; ``plugin``, when given, is registered
    while the check runs; ``space`` makes the model space (default :class:`TinyCell`).
    An experiment of ``max_trials`` trials (in this process; each trial's result is its
    model's parameter count) must run, proposing architectures that validate against the
    space; an experiment stopped after half the trials and run again on its store must
    propose the same architectures in the same order (a strategy keeps no state its trial
    history cannot rebuild). Raises ``UnknownNameError`` listing the known strategies for
    an unregistered ``name``, and :class:`ContractError` for a broken contract.
    """
    space = space or TinyCell
    with contextlib.ExitStack() as stack:
        if plugin is not None:
            stack.enter_context(registered(plugin))
        cls = _lookup("strategy", name)
        who = f"strategy {name!r} ({_describe(cls)})"
        stack.enter_context(registered(_ScorePlugin(), name="nastrain.testing.trainers"))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nastrain-check-")))
        record = SearchSpace.from_model(space())
        strategy = nastrain.StrategySpec(name=name, kwargs=dict(kwargs))
        trainer = nastrain.TrainerSpec(name=_SCORE_TRAINER)

        def run(store: Path, trials: int) -> list[Any]:
            experiment = nastrain.Experiment(
                space(),
                trainer,
                strategy,
                max_trials=trials,
                store=store,
                executor="inline",
                seed=0,
                progress=False,
            )
            return list(experiment.run().trials)

        whole = run(folder / "whole.sqlite", max_trials)
        if not whole:
            raise ContractError(f"{who} proposed no architecture at all for {record.labels}")
        archs = []
        for trial in whole:
            if trial.status != "succeeded":
                raise ContractError(
                    f"{who}: trial {trial.index} ({trial.arch}) ended {trial.status}: "
                    f"{trial.reason}"
                )
            archs.append(_check_arch(trial.arch, record, who).copy())
        checks = [f"an experiment of {max_trials} trials proposed {len(archs)} architectures"]
        half = max(1, max_trials // 2)
        run(folder / "resumed.sqlite", half)
        resumed = [trial.arch for trial in run(folder / "resumed.sqlite", max_trials)]
        if resumed != [trial.arch for trial in whole]:
            raise ContractError(
                f"{who}: stopped after {half} trials and resumed, it proposed {resumed}; "
                f"without a stop, {[t.arch for t in whole]}; keep no state that the trial "
                "history cannot rebuild, and draw randomness from self.rng(index)"
            )
        checks.append(f"stopped after {half} trials and resumed: the same architectures")
    return CheckReport(
        name=name, kind="strategy", target=_describe(cls), checks=tuple(checks), archs=tuple(archs)
    )


def _item_signature(item: Any) -> list[torch.Tensor]:
    return [torch.as_tensor(part) for part in item]


def check_dataset_plugin(name: str, *, plugin: object | None = None, **kwargs: Any) -> CheckReport:
    """Check that the dataset registered as ``name`` keeps nastrain's dataset contract.

    ``kwargs`` are the factory's (JSON) keyword arguments; ``plugin``, when given, is
    registered while the check runs. The factory must return ``(train, valid)`` or
    ``(train, valid, test)``: non-empty datasets whose items are ``(input, target)`` pairs
    of tensors (or numbers), the same items for the same arguments. Raises
    ``UnknownNameError`` listing the known datasets for an unregistered ``name``, and
    :class:`ContractError` for a broken contract.
    """
    with contextlib.ExitStack() as stack:
        if plugin is not None:
            stack.enter_context(registered(plugin))
        factory = _lookup("dataset", name)
        who = f"dataset {name!r} ({_describe(factory)})"
        try:
            json.dumps(kwargs)
        except (TypeError, ValueError) as exc:
            raise ContractError(f"{who}: arguments must be JSON values ({exc})") from None
        splits = factory(**kwargs)
        again = factory(**kwargs)
    if not isinstance(splits, (tuple, list)) or len(splits) not in (2, 3):
        raise ContractError(
            f"{who} returned {type(splits).__name__}, not (train, valid) or (train, valid, test)"
        )
    sizes = []
    for split, data, other in zip(("train", "valid", "test"), splits, again):
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise ContractError(f"{who}: its {split} split, {type(data).__name__}, is no Dataset")
        if len(data) == 0:
            raise ContractError(f"{who}: its {split} split is empty for {kwargs}")
        for index in (0, len(data) - 1):
            item = data[index]
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ContractError(
                    f"{who}: item {index} of its {split} split is {type(item).__name__}, not an "
                    "(input, target) pair"
                )
            try:
                first, second = _item_signature(item), _item_signature(other[index])
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ContractError(
                    f"{who}: item {index} of its {split} split is not tensors ({exc})"
                ) from None
            if not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second)):
                raise ContractError(
                    f"{who}: item {index} of its {split} split differs between two calls with "
                    f"the same arguments {kwargs}; seed its randomness"
                )
        sizes.append(len(data))
    checks = [f"returned {len(splits)} splits of sizes {sizes}, the same items twice"]
    return CheckReport(
        name=name,
        kind="dataset",
        target=_describe(factory),
        checks=tuple(checks),
        sizes=tuple(sizes),
    )
