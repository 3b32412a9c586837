"""The plugin manager: loading plugins, the trainer registry, and the typed hook facade.

Plugins are found through entry points in the group ``nastrain``; the core's
own hook implementations (:data:`BUILTIN_PLUGINS`) are registered by the same
function. Core code calls hooks only through the facade functions at the end
of this module (``call_fit``, ``call_export``, ...), never through
``pm.hook`` directly.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from nastrain import hookspecs

if TYPE_CHECKING:
    from torch import nn

    from nastrain.trainer import BaseTrainer, Metric

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "PluginFailure",
    "PluginInfo",
    "PluginWarning",
    "failed_plugins",
    "get_trainer",
    "loaded_plugins",
    "plugin_manager",
    "trainer_names",
    "trainer_providers",
]

ENTRY_POINT_GROUP = "nastrain"
#: Comma-separated entry point names to load; unset loads all, empty loads none.
ENV_VAR = "NASTRAIN_PLUGINS"
#: The core's own hook implementations, registered like any other plugin.
BUILTIN_PLUGINS = ("nastrain.builtin",)


class PluginWarning(UserWarning):
    """A plugin could not be loaded (or conflicts with another); the rest goes on."""


@attrs.frozen(kw_only=True)
class PluginInfo:
    """A loaded plugin, as ``nastrain plugins --json`` lists it."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    trainers: tuple[str, ...] = ()
    builtin: bool = False


@attrs.frozen(kw_only=True)
class PluginFailure:
    """A plugin that failed to import or register, and why."""

    name: str
    distribution: str | None
    version: str | None
    error: str


@attrs.frozen(kw_only=True)
class TrainerProvider:
    """Who made a trainer name known: a plugin, or ``register_trainer`` in some module."""

    cls: type
    provider: str

    def describe(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__} (from {self.provider})"


class _Registry:
    """Trainer name -> every distinct class registered under it."""

    def __init__(self) -> None:
        self.entries: dict[str, list[TrainerProvider]] = {}

    def add(self, cls: type, name: str, provider: str) -> bool:
        """Record ``cls`` under ``name``; returns False when another class already has it."""
        from nastrain.trainer import BaseTrainer

        if not (isinstance(cls, type) and issubclass(cls, BaseTrainer)):
            raise TypeError(
                f"{provider} registered {cls!r} as trainer {name!r}, but only subclasses of "
                "nastrain.BaseTrainer or nastrain.BaseOneShotTrainer can be registered"
            )
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{provider} registered {cls.__qualname__} under an invalid name {name!r}"
            )
        entries = self.entries.setdefault(name, [])
        for i, entry in enumerate(entries):
            if entry.cls is cls or (
                entry.cls.__module__ == cls.__module__
                and entry.cls.__qualname__ == cls.__qualname__
            ):
                # The same class, or the same class defined again (a re-run notebook cell).
                entries[i] = TrainerProvider(cls=cls, provider=provider)
                return True
        entries.append(TrainerProvider(cls=cls, provider=provider))
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
        self.registry = _Registry()


_lock = threading.RLock()
_state: _State | None = None
# Trainers made known by @register_trainer; they outlive a reload of the plugins.
_decorated = _Registry()


def default_trainer_name(cls: type) -> str:
    """A trainer's registered name by default: its own class attribute ``name``, else the
    class name (an inherited ``name`` is not used, so a subclass does not clash with its base)."""
    own = getattr(cls, "__dict__", {}).get("name")
    return own if isinstance(own, str) and own else getattr(cls, "__name__", repr(cls))


def _registration_hooks(pm: pluggy.PluginManager, plugin: object) -> list[Any]:
    return [
        impl
        for impl in pm.hook.nastrain_register_trainers.get_hookimpls()
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
    """Register one plugin and its trainers; raises on any problem (the caller cleans up)."""
    pm = state.pm
    provider = f"plugin {name!r}" + (f" of distribution {distribution}" if distribution else "")
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
        provided: list[str] = []

        def register(cls: type, name: str | None = None) -> None:
            reg_name = name or default_trainer_name(cls)
            if not state.registry.add(cls, reg_name, provider):
                others = [
                    e.describe() for e in state.registry.entries[reg_name] if e.cls is not cls
                ]
                warnings.warn(
                    f"nastrain: trainer name {reg_name!r} is provided by both "
                    f"{' and '.join(others)} and {cls.__module__}.{cls.__qualname__} "
                    f"(from {provider}); get_trainer({reg_name!r}) will fail until one is removed",
                    PluginWarning,
                    stacklevel=2,
                )
            provided.append(reg_name)

        for impl in _registration_hooks(pm, plugin):
            impl.function(**{arg: register for arg in impl.argnames})
    except BaseException:
        pm.unregister(plugin)
        state.registry.remove_provider(provider)
        raise
    state.infos.append(
        PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            module=module,
            trainers=tuple(dict.fromkeys(provided)),
            builtin=builtin,
        )
    )


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
    except Exception as exc:
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
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nastrain")
    except PackageNotFoundError:
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


def trainer_providers() -> dict[str, list[TrainerProvider]]:
    """Every trainer name with every class that provides it (more than one is a conflict)."""
    merged: dict[str, list[TrainerProvider]] = {}
    for registry in (_get_state().registry, _decorated):
        for name, entries in registry.entries.items():
            bucket = merged.setdefault(name, [])
            bucket.extend(e for e in entries if all(e.cls is not b.cls for b in bucket))
    return dict(sorted(merged.items()))


def trainer_names() -> list[str]:
    """Every trainer name that a loaded plugin or ``@register_trainer`` made known, sorted."""
    return list(trainer_providers())


def get_trainer(name: str) -> type[BaseTrainer]:
    """The trainer class registered as ``name``.

    Raises ``KeyError`` listing the known names for an unknown name, and
    ``ValueError`` naming both providers when two classes claim ``name``.
    """
    providers = trainer_providers()
    if name not in providers:
        raise KeyError(
            f"unknown trainer {name!r}; known trainers: {sorted(providers) or 'none'} "
            "(install a plugin that provides it, or check NASTRAIN_PLUGINS)"
        )
    entries = providers[name]
    if len(entries) > 1:
        raise ValueError(
            f"trainer name {name!r} is provided by "
            f"{' and '.join(e.describe() for e in entries)}; uninstall one of them or "
            "leave one out with NASTRAIN_PLUGINS"
        )
    return entries[0].cls


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
    init_fn: Callable[[nn.Module], nn.Module] | None,
) -> nn.Module | None:
    """Ask ``nastrain_replace_module`` for the replacement of ``module``."""
    return plugin_manager().hook.nastrain_replace_module(
        module=module, trainer=trainer, init_fn=init_fn
    )


def call_on_report(trainer: BaseTrainer | None, metric: Metric, final: bool) -> None:
    """Broadcast ``nastrain_on_report``."""
    plugin_manager().hook.nastrain_on_report(trainer=trainer, metric=metric, final=final)
