"""An opt-in pytest plugin for plugin authors (and nastrain's own tests).

Enable it with ``pytest -p nastrain.testing`` or ``pytest_plugins =
["nastrain.testing"]`` in a ``conftest.py``. It offers:

- ``nastrain_plugin``: a function that registers a plugin object (a module,
  class or instance with ``nastrain_*`` hook implementations) for the
  duration of one test, through the same path entry-point plugins take, so
  its ``nastrain_register_*`` hooks run and what they register becomes known.
- ``nastrain_reload``: reloads the plugins after the test, for tests that
  change ``NASTRAIN_PLUGINS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from nastrain import plugins

__all__ = ["nastrain_plugin", "nastrain_reload"]


@pytest.fixture
def nastrain_plugin() -> Iterator[Callable[..., plugins.PluginInfo]]:
    """Register plugin objects for one test; they are removed afterwards."""
    state = plugins._get_state()
    added: list[tuple[object, str]] = []

    def register(plugin: object, name: str | None = None) -> plugins.PluginInfo:
        plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        plugins._add_plugin(state, plugin, plugin_name, plugin_name, None, None)
        added.append((plugin, plugin_name))
        return state.infos[-1]

    yield register
    for plugin, plugin_name in reversed(added):
        state.pm.unregister(plugin)
        state.remove_provider(f"plugin {plugin_name!r}")
        state.infos = [info for info in state.infos if info.name != plugin_name]


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
