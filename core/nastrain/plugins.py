"""The plugin manager: loading plugins, the registries of trainers, strategies, datasets
and executors, and the typed hook facade.

Plugins are found through entry points in the group ``nastrain``; the core's
own hook implementations (:data:`BUILTIN_PLUGINS`) are registered by the same
function. Each registry is filled by its ``nastrain_register_*`` hook and
behaves the same way: a name two providers claim is a conflict naming both,
and an unknown name is an error listing the known ones. Core code calls hooks
only through the facade functions at the end of this module (``call_fit``,
``call_export``, ...), never through ``pm.hook`` directly.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from nastrain import hookspecs

if TYPE_CHECKING:
    from torch import nn

    from nastrain.experiments.executor import ExecutorFactory
    from nastrain.experiments.strategies import Strategy
    from nastrain.reporting import Metric
    from nastrain.trainer import BaseTrainer

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "PluginFailure",
    "PluginInfo",
    "PluginWarning",
    "Provider",
    "UnknownNameError",
    "dataset_names",
    "dataset_providers",
    "declare_registry_base",
    "executor_names",
    "executor_providers",
    "failed_plugins",
    "get_dataset",
    "get_executor",
    "get_strategy",
    "get_trainer",
    "loaded_plugins",
    "plugin_manager",
    "strategy_names",
    "strategy_providers",
    "trainer_names",
    "trainer_providers",
]

ENTRY_POINT_GROUP = "nastrain"
#: Comma-separated entry point names to load; unset loads all, empty loads none.
ENV_VAR = "NASTRAIN_PLUGINS"
#: The core's own hook implementations, registered like any other plugin.
BUILTIN_PLUGINS = ("nastrain.builtin", "nastrain.experiments.builtin")


class PluginWarning(UserWarning):
    """A plugin could not be loaded (or conflicts with another); the rest goes on."""


class UnknownNameError(KeyError):
    """No trainer, strategy or dataset is registered under the name asked for.

    A ``KeyError`` whose message (without ``KeyError``'s quotes) lists the known names.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@attrs.frozen(kw_only=True)
class PluginInfo:
    """A loaded plugin, as ``nastrain plugins --json`` lists it."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    trainers: tuple[str, ...] = ()
    builtin: bool = False
    strategies: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class PluginFailure:
    """A plugin that failed to import or register, and why."""

    name: str
    distribution: str | None
    version: str | None
    error: str


@attrs.frozen(kw_only=True)
class Provider:
    """Who made a name known: a plugin, or ``register_trainer`` in some module.

    ``cls`` is what was registered: a trainer or strategy class, or a dataset factory.
    """

    cls: Any
    provider: str

    def describe(self) -> str:
        name = getattr(self.cls, "__qualname__", None) or repr(self.cls)
        return f"{getattr(self.cls, '__module__', '?')}.{name} (from {self.provider})"


#: kind word -> (base class, how error messages name it), declared by the base's module.
_BASES: dict[str, tuple[type, str]] = {}


def declare_registry_base(word: str, base: type, described: str) -> None:
    """Declare that only subclasses of ``base`` may be registered as ``word`` (``"trainer"``,
    ``"strategy"``); called by the module that defines ``base``, so that this module need not
    import it. The built-in plugins, loaded before any other, import those modules."""
    _BASES[word] = (base, described)


def _check_subclass(word: str) -> Callable[[Any, str, str], None]:
    def check(obj: Any, name: str, provider: str) -> None:
        if word not in _BASES:
            return
        base, described = _BASES[word]
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(
                f"{provider} registered {obj!r} as {word} {name!r}, but only subclasses of "
                f"{described} can be registered"
            )

    return check


def _check_dataset(obj: Any, name: str, provider: str) -> None:
    if not callable(obj):
        raise TypeError(
            f"{provider} registered {obj!r} as dataset {name!r}, but a dataset is a callable "
            "taking keyword arguments and returning (train, valid) datasets"
        )


def _check_executor(obj: Any, name: str, provider: str) -> None:
    if not callable(obj):
        raise TypeError(
            f"{provider} registered {obj!r} as executor {name!r}, but an executor is a "
            "callable (a factory or a class) taking an ExecutorContext"
        )


@attrs.frozen
class _Kind:
    """One kind of registered thing: its words, its registration hook and its check."""

    word: str  # "trainer"
    plural: str  # "trainers"
    check: Callable[[Any, str, str], None]

    @property
    def hook(self) -> str:
        return f"nastrain_register_{self.plural}"


TRAINERS = _Kind("trainer", "trainers", _check_subclass("trainer"))
STRATEGIES = _Kind("strategy", "strategies", _check_subclass("strategy"))
DATASETS = _Kind("dataset", "datasets", _check_dataset)
EXECUTORS = _Kind("executor", "executors", _check_executor)
_KINDS = (TRAINERS, STRATEGIES, DATASETS, EXECUTORS)

#: Executors of first-party plugins: name -> the distribution to install for it.
_EXECUTOR_DISTRIBUTIONS = {"ray": "nastrain-ray"}


class _Registry:
    """Name -> every distinct object registered under it (more than one is a conflict)."""

    def __init__(self, kind: _Kind) -> None:
        self.kind = kind
        self.entries: dict[str, list[Provider]] = {}

    def add(self, obj: Any, name: str, provider: str) -> bool:
        """Record ``obj`` under ``name``; returns False when another object already has it."""
        self.kind.check(obj, name, provider)
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{provider} registered {getattr(obj, '__qualname__', obj)!r} as a "
                f"{self.kind.word} under an invalid name {name!r}"
            )
        entries = self.entries.setdefault(name, [])
        for i, entry in enumerate(entries):
            if entry.cls is obj or (
                getattr(entry.cls, "__module__", None) == getattr(obj, "__module__", None)
                and getattr(entry.cls, "__qualname__", None) == getattr(obj, "__qualname__", 0)
            ):
                # The same object, or the same class defined again (a re-run notebook cell).
                entries[i] = Provider(cls=obj, provider=provider)
                return True
        entries.append(Provider(cls=obj, provider=provider))
        return len(entries) == 1

    def remove_provider(self, provider: str) -> None:
        for name in list(self.entries):
            self.entries[name] = [e for e in self.entries[name] if e.provider != provider]
            if not self.entries[name]:
                del self.entries[name]


class _State:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("nastrain")
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []
        self.registries = {kind.plural: _Registry(kind) for kind in _KINDS}

    @property
    def registry(self) -> _Registry:
        """The trainer registry."""
        return self.registries[TRAINERS.plural]

    def remove_provider(self, provider: str) -> None:
        """Forget everything ``provider`` registered, in every registry."""
        for registry in self.registries.values():
            registry.remove_provider(provider)


_lock = threading.RLock()
_state: _State | None = None
# Trainers made known by @register_trainer; they outlive a reload of the plugins.
_decorated = _Registry(TRAINERS)


def default_name(obj: Any) -> str:
    """A registered name by default: the object's own attribute ``name``, else its
    ``__name__`` (an inherited ``name`` is not used, so a subclass does not clash with its
    base)."""
    own = getattr(obj, "__dict__", {}).get("name")
    return own if isinstance(own, str) and own else getattr(obj, "__name__", repr(obj))


def _registration_hooks(pm: pluggy.PluginManager, plugin: object, hook: str) -> list[Any]:
    return [
        impl
        for impl in getattr(pm.hook, hook).get_hookimpls()
        if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper)
    ]


def _add_plugin(
    state: _State,
    plugin: object,
    name: str,
    module: str,
    distribution: str | None,
    version: str | None,
    builtin: bool = False,
) -> None:
    """Register one plugin and what it provides; raises on any problem (the caller cleans up)."""
    pm = state.pm
    provider = f"plugin {name!r}" + (f" of distribution {distribution}" if distribution else "")
    pm.register(plugin, name=name)
    provided: dict[str, list[str]] = {kind.plural: [] for kind in _KINDS}
    try:
        pm.check_pending()
        for kind in _KINDS:
            registry = state.registries[kind.plural]
            for impl in _registration_hooks(pm, plugin, kind.hook):
                register = _register_callback(registry, provider, provided[kind.plural])
                impl.function(**{arg: register for arg in impl.argnames})
    except BaseException:
        pm.unregister(plugin)
        state.remove_provider(provider)
        raise
    state.infos.append(
        PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            module=module,
            trainers=tuple(dict.fromkeys(provided["trainers"])),
            builtin=builtin,
            strategies=tuple(dict.fromkeys(provided["strategies"])),
            datasets=tuple(dict.fromkeys(provided["datasets"])),
        )
    )


def _register_callback(
    registry: _Registry, provider: str, provided: list[str]
) -> Callable[..., None]:
    """The ``register`` a plugin's ``nastrain_register_*`` hook calls."""
    word = registry.kind.word

    def register(obj: Any, name: str | None = None) -> None:
        reg_name = name or default_name(obj)
        if not registry.add(obj, reg_name, provider):
            others = [e.describe() for e in registry.entries[reg_name] if e.cls is not obj]
            this = Provider(cls=obj, provider=provider).describe()
            warnings.warn(
                f"nastrain: {word} name {reg_name!r} is provided by both "
                f"{' and '.join(others)} and {this}; get_{word}({reg_name!r}) will fail until "
                "one is removed",
                PluginWarning,
                stacklevel=2,
            )
        provided.append(reg_name)

    return register


def _selected_names() -> set[str] | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _load_entry_point(state: _State, ep: EntryPoint) -> None:
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None else None
    version = dist.version if dist is not None else None
    try:
        plugin = ep.load()
        if state.pm.is_registered(plugin):
            raise ValueError(
                f"it names {ep.value}, which plugin {state.pm.get_name(plugin)!r} already is"
            )
        _add_plugin(state, plugin, ep.name, ep.value, dist_name, version)
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the host
        error = f"{type(exc).__name__}: {exc}"
        state.failures.append(
            PluginFailure(name=ep.name, distribution=dist_name, version=version, error=error)
        )
        warnings.warn(
            f"nastrain: plugin {ep.name!r} from distribution {dist_name or '?'} {version or ''} "
            f"failed to load and is skipped: {error}",
            PluginWarning,
            stacklevel=3,
        )


def _build() -> _State:
    state = _State()
    for module_name in BUILTIN_PLUGINS:
        _add_plugin(
            state,
            importlib.import_module(module_name),
            module_name,
            module_name,
            "nastrain",
            _core_version(),
            builtin=True,
        )
    wanted = _selected_names()
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    for ep in found:
        if wanted is None or ep.name in wanted:
            _load_entry_point(state, ep)
    if wanted:
        unknown = sorted(wanted - {ep.name for ep in found})
        if unknown:
            warnings.warn(
                f"nastrain: {ENV_VAR} names {unknown}, which no installed distribution provides; "
                f"installed plugins: {sorted(ep.name for ep in found)}",
                PluginWarning,
                stacklevel=3,
            )
    return state


def _core_version() -> str | None:
    try:
        return importlib.metadata.version("nastrain")
    except importlib.metadata.PackageNotFoundError:
        return None


def _get_state() -> _State:
    global _state
    with _lock:
        if _state is None:
            _state = _build()
        return _state


def plugin_manager() -> pluggy.PluginManager:
    """The loaded plugin manager (plugins are loaded on the first call)."""
    return _get_state().pm


def reload_plugins() -> pluggy.PluginManager:
    """Forget the loaded plugins and load them again (after changing ``NASTRAIN_PLUGINS``)."""
    global _state
    with _lock:
        _state = None
        return plugin_manager()


def loaded_plugins(*, include_builtin: bool = False) -> list[PluginInfo]:
    """The plugins that loaded, in load order."""
    return [info for info in _get_state().infos if include_builtin or not info.builtin]


def failed_plugins() -> list[PluginFailure]:
    """The plugins that failed to import or register."""
    return list(_get_state().failures)


def register_decorated(cls: type, name: str) -> None:
    """Record a trainer made known by ``@register_trainer``."""
    provider = f"@register_trainer in {cls.__module__}"
    with _lock:
        if not _decorated.add(cls, name, provider):
            others = [e.describe() for e in _decorated.entries[name] if e.cls is not cls]
            _decorated.entries[name] = [e for e in _decorated.entries[name] if e.cls is not cls]
            raise ValueError(
                f"trainer name {name!r} is already taken by {' and '.join(others)}; "
                f"register {cls.__qualname__} under another name with "
                "@register_trainer(name=...)"
            )


def _providers(kind: _Kind) -> dict[str, list[Provider]]:
    registries = [_get_state().registries[kind.plural]]
    if kind is TRAINERS:
        registries.append(_decorated)
    merged: dict[str, list[Provider]] = {}
    for registry in registries:
        for name, entries in registry.entries.items():
            bucket = merged.setdefault(name, [])
            bucket.extend(e for e in entries if all(e.cls is not b.cls for b in bucket))
    return dict(sorted(merged.items()))


def _lookup(kind: _Kind, name: str) -> Any:
    providers = _providers(kind)
    if name not in providers:
        raise UnknownNameError(
            f"unknown {kind.word} {name!r}; known {kind.plural}: {sorted(providers) or 'none'} "
            "(install a plugin that provides it, or check NASTRAIN_PLUGINS)"
        )
    entries = providers[name]
    if len(entries) > 1:
        raise ValueError(
            f"{kind.word} name {name!r} is provided by "
            f"{' and '.join(e.describe() for e in entries)}; uninstall one of them or "
            "leave one out with NASTRAIN_PLUGINS"
        )
    return entries[0].cls


def trainer_providers() -> dict[str, list[Provider]]:
    """Every trainer name with every class that provides it (more than one is a conflict)."""
    return _providers(TRAINERS)


def trainer_names() -> list[str]:
    """Every trainer name that a loaded plugin or ``@register_trainer`` made known, sorted."""
    return list(trainer_providers())


def get_trainer(name: str) -> type[BaseTrainer]:
    """The trainer class registered as ``name``.

    Raises :class:`UnknownNameError` (a ``KeyError``) listing the known names for an
    unknown name, and ``ValueError`` naming both providers when two classes claim ``name``.
    """
    return _lookup(TRAINERS, name)


def strategy_providers() -> dict[str, list[Provider]]:
    """Every strategy name with every class that provides it (more than one is a conflict)."""
    return _providers(STRATEGIES)


def strategy_names() -> list[str]:
    """Every strategy name that a loaded plugin (the core's included) made known, sorted."""
    return list(strategy_providers())


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name`` (errors as for :func:`get_trainer`)."""
    return _lookup(STRATEGIES, name)


def dataset_providers() -> dict[str, list[Provider]]:
    """Every dataset name with every factory that provides it (more than one is a conflict)."""
    return _providers(DATASETS)


def dataset_names() -> list[str]:
    """Every dataset name that a loaded plugin made known, sorted."""
    return list(dataset_providers())


def get_dataset(name: str) -> Callable[..., Any]:
    """The dataset factory registered as ``name`` (errors as for :func:`get_trainer`).

    Call it with keyword arguments to get ``(train, valid)`` datasets.
    """
    return _lookup(DATASETS, name)


def executor_providers() -> dict[str, list[Provider]]:
    """Every executor name with every factory that provides it (more than one is a conflict)."""
    return _providers(EXECUTORS)


def executor_names() -> list[str]:
    """Every executor name that a loaded plugin (the core's ``local`` and ``inline``
    included) made known, sorted."""
    return list(executor_providers())


def get_executor(name: str) -> ExecutorFactory:
    """The executor factory registered as ``name`` (errors as for :func:`get_trainer`; an
    executor of a first-party plugin that is not installed, ``"ray"``, says which
    distribution to install).

    Call it with an :class:`nastrain.experiments.executor.ExecutorContext` to get the
    executor."""
    try:
        return _lookup(EXECUTORS, name)
    except UnknownNameError as exc:
        distribution = _EXECUTOR_DISTRIBUTIONS.get(name)
        if distribution is None:
            raise
        raise UnknownNameError(
            f"unknown executor {name!r}: it is provided by the {distribution} plugin (pip "
            f"install {distribution}), which is not installed or not loaded (check "
            f"NASTRAIN_PLUGINS); known executors: {executor_names()}"
        ) from exc


# --- the typed facade: the only places the core calls hooks -----------------------------


def call_fit(trainer: BaseTrainer) -> Any:
    """Run ``nastrain_fit`` for ``trainer``."""
    return plugin_manager().hook.nastrain_fit(trainer=trainer)


def call_export(trainer: BaseTrainer) -> Any:
    """Run ``nastrain_export`` for ``trainer``."""
    return plugin_manager().hook.nastrain_export(trainer=trainer)


def call_replace_module(
    module: nn.Module,
    trainer: BaseTrainer | None,
    init_fn: Callable[[Any], nn.Module | None] | None,
) -> nn.Module | None:
    """Ask ``nastrain_replace_module`` for the replacement of ``module``."""
    return plugin_manager().hook.nastrain_replace_module(
        module=module, trainer=trainer, init_fn=init_fn
    )


def call_on_report(
    trainer: BaseTrainer | None, metric: Metric, final: bool, trial: int | None = None
) -> None:
    """Broadcast ``nastrain_on_report``."""
    plugin_manager().hook.nastrain_on_report(
        trainer=trainer, metric=metric, final=final, trial=trial
    )


def call_on_epoch(trainer: Any, record: Mapping[str, Any]) -> None:
    """Broadcast ``nastrain_on_epoch``."""
    plugin_manager().hook.nastrain_on_epoch(trainer=trainer, record=record)


def call_prepare_model(
    trainer: Any, model: nn.Module, device: Any, modules: Sequence[nn.Module]
) -> dict[str, dict[str, int]]:
    """Run every ``nastrain_prepare_model`` implementation, each on its own: one that
    raises (or answers something that is not a name -> count mapping) is skipped with a
    :class:`PluginWarning` naming its plugin, and what it changed in the model's structure
    (children, parameters, buffers, hooks) is undone, so the model keeps only what the
    others did. Returns each answering plugin's name -> what it rewrote.

    A wrapper (``wrapper=True`` or ``hookwrapper=True``) cannot wrap this hook, since each
    implementation is called on its own; one is skipped with a warning."""
    pm = plugin_manager()
    kwargs = {"trainer": trainer, "model": model, "device": device, "modules": modules}
    done: dict[str, dict[str, int]] = {}
    # pluggy's own call order (last registered first, tryfirst/trylast honoured), but one
    # call per implementation, so that one plugin's error does not cancel the others.
    for impl in reversed(pm.hook.nastrain_prepare_model.get_hookimpls()):
        name = impl.plugin_name
        if impl.hookwrapper or getattr(impl, "wrapper", False):
            warnings.warn(
                f"plugin {name!r} implements nastrain_prepare_model as a wrapper, which this "
                "hook does not support (each implementation runs on its own); it is skipped",
                PluginWarning,
                stacklevel=3,
            )
            continue
        saved = _structure(model)
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except Exception as exc:
            _restore(saved)
            warnings.warn(
                f"plugin {name!r} failed in nastrain_prepare_model "
                f"({type(exc).__name__}: {exc}); the search runs without its rewrite",
                PluginWarning,
                stacklevel=3,
            )
            continue
        counts = _counts(result)
        if counts is None:
            warnings.warn(
                f"plugin {name!r} returned {result!r} from nastrain_prepare_model, not a "
                "name -> count mapping or None; its rewrite is kept but not logged",
                PluginWarning,
                stacklevel=3,
            )
        elif counts:
            done[name] = counts
    return done


def _counts(result: Any) -> dict[str, int] | None:
    """A plugin's answer as name -> count (empty for ``None``), or ``None`` if it is not one."""
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        return None
    counts = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        counts[str(key)] = value
    return counts


#: The per-module dicts a rewrite may change, restored when a plugin fails halfway.
_MODULE_DICTS = (
    "_modules",
    "_parameters",
    "_buffers",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _structure(model: nn.Module) -> list[tuple[nn.Module, dict[str, dict[Any, Any]]]]:
    return [
        (m, {key: dict(vars(m)[key]) for key in _MODULE_DICTS if key in vars(m)})
        for m in model.modules()
    ]


def _restore(saved: list[tuple[nn.Module, dict[str, dict[Any, Any]]]]) -> None:
    for module, dicts in saved:
        for key, content in dicts.items():
            current = vars(module)[key]
            current.clear()
            current.update(content)
