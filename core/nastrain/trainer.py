"""Trainers: the classic :class:`BaseTrainer`, :class:`BaseOneShotTrainer`, and
:func:`register_trainer` with the :class:`TrainerSpec` it records.

Every ``fit()`` and ``export()`` of a trainer, also one a user's subclass
overrides, runs through the ``nastrain_fit`` / ``nastrain_export`` hooks: the
subclass's method is wrapped when the class is created, and the core's default
hook implementation calls the original.
"""

from __future__ import annotations

import abc
import contextvars
import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, TypeVar, overload

import attrs
from torch import nn

from nastrain import plugins, reporting
from nastrain.serialization import SCHEMA_VERSION, check_json_value, dumps, loads

__all__ = ["BaseOneShotTrainer", "BaseTrainer", "TrainerSpec", "register_trainer"]

T = TypeVar("T", bound=type)

_HOOKED = ("fit", "export")
_constructing: contextvars.ContextVar[BaseTrainer | None] = contextvars.ContextVar(
    "nastrain_constructing", default=None
)


class _Call:
    """A hooked call in flight: the arguments the caller gave, and what the method returned."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.started = False
        self.value: Any = None


class _Ran:
    """The core's marker that the trainer's own method ran (``None`` is "no result" to pluggy)."""


RAN = _Ran()


def run_own_method(trainer: BaseTrainer, method: str) -> Any:
    """Call the trainer's own ``fit``/``export`` with the arguments of the hooked call."""
    call: _Call | None = trainer.__dict__.get("_nastrain_calls", {}).get(method)
    if call is None:  # called outside a dispatch (e.g. by a plugin): just run it
        return getattr(trainer, method)()
    getattr(trainer, method)()
    return call.value


def _dispatch(
    trainer: BaseTrainer, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    calls: dict[str, _Call] = trainer.__dict__.setdefault("_nastrain_calls", {})
    call = calls[method] = _Call(args, kwargs)
    try:
        with reporting.running(trainer):
            if method == "fit":
                result = plugins.call_fit(trainer)
                return call.value if result is RAN else None
            result = plugins.call_export(trainer)
    finally:
        del calls[method]
    if not isinstance(result, dict):
        raise TypeError(
            f"{type(trainer).__qualname__}.export() returned {type(result).__name__}; it must "
            "return the architecture as a dict of label -> choice"
        )
    return result


def _hooked(method: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def entry(self: BaseTrainer, *args: Any, **kwargs: Any) -> Any:
        call: _Call | None = self.__dict__.get("_nastrain_calls", {}).get(method)
        if call is None:
            return _dispatch(self, method, args, kwargs)
        if not call.started:
            # The core's default hook implementation asks for the trainer's own method.
            call.started = True
            call.value = original(self, *call.args, **call.kwargs)
            return call.value
        # super().fit() or a nested call from inside the running method.
        return original(self, *args, **kwargs)

    entry.__nastrain_hooked__ = True  # type: ignore[attr-defined]
    return entry


def _tracked_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: BaseTrainer, *args: Any, **kwargs: Any) -> None:
        token = _constructing.set(self)
        try:
            original(self, *args, **kwargs)
        finally:
            _constructing.reset(token)

    __init__.__nastrain_tracked__ = True  # type: ignore[attr-defined]
    return __init__


def trainer_in_context() -> BaseTrainer | None:
    """The trainer being constructed, else the one whose fit/export runs, else ``None``."""
    return _constructing.get() or reporting.current_trainer()


class BaseTrainer:
    """A classic trainer: trains and evaluates one fixed model in :meth:`fit`.

    Subclasses implement ``fit`` and report results with
    :func:`nastrain.report_intermediate_result` and
    :func:`nastrain.report_final_result`; decorate them with
    :func:`register_trainer` so that an experiment can rebuild them elsewhere.
    Calling ``super().__init__()`` is optional.
    """

    #: Results reported while this trainer's ``fit`` ran outside an experiment.
    intermediate_results: list[reporting.Metric]
    final_result: reporting.Metric | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in _HOOKED:
            original = cls.__dict__.get(method)
            if (
                callable(original)
                and not getattr(original, "__isabstractmethod__", False)
                and not getattr(original, "__nastrain_hooked__", False)
            ):
                setattr(cls, method, _hooked(method, original))
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "__nastrain_tracked__", False):
            cls.__init__ = _tracked_init(init)  # type: ignore[method-assign]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        missing = cls.__dict__.get("_nastrain_missing")
        if missing is None:  # once per class: abstractness does not change after creation
            missing = tuple(
                name
                for name in dir(cls)
                if getattr(getattr(cls, name, None), "__isabstractmethod__", False)
            )
            cls._nastrain_missing = missing
        if missing:
            raise TypeError(
                f"{cls.__qualname__} cannot be instantiated: it does not implement "
                f"{', '.join(m + '()' for m in missing)}, which its base class requires"
            )
        self = super().__new__(cls)
        self.intermediate_results = []
        self.final_result = None
        return self

    @abc.abstractmethod
    def fit(self) -> None:
        """Train (and, for one-shot trainers, search); report results as they come."""

    @property
    def spec(self) -> TrainerSpec:
        """The registered name and JSON arguments this trainer was built with."""
        spec = self.__dict__.get("_nastrain_spec")
        if spec is None:
            raise AttributeError(
                f"{type(self).__qualname__} has no spec: only classes decorated with "
                "@nastrain.register_trainer record their arguments"
            )
        return spec


class BaseOneShotTrainer(BaseTrainer):
    """A one-shot trainer: searches and trains a supernet in :meth:`fit`, and
    returns the best architecture from :meth:`export`.

    Its ``__init__`` takes any Python arguments. The model it receives holds
    ``LayerChoice``/``InputChoice`` modules; replace them with
    :func:`nastrain.utils.replace_layer_choice` and friends (module replacement
    goes through the ``nastrain_replace_module`` hook).
    """

    @abc.abstractmethod
    def export(self) -> dict[str, Any]:
        """The best architecture found: label -> candidate name / sorted input indices."""


@attrs.frozen(kw_only=True)
class TrainerSpec:
    """A registered trainer's name and JSON-ready constructor arguments (all but the model).

    ``spec.to_json()`` travels to another process, where
    ``TrainerSpec.from_json(text).build(model)`` makes the same trainer.
    """

    name: str
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __attrs_post_init__(self) -> None:
        if not self.name:
            raise ValueError("TrainerSpec.name must be a registered trainer name")
        for key, value in self.kwargs.items():
            check_json_value(value, f"argument {key!r} of trainer {self.name!r}")
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"this trainer spec has schema_version {self.schema_version}, newer than this "
                f"nastrain understands ({SCHEMA_VERSION}); upgrade nastrain"
            )

    def to_json(self) -> str:
        """This spec as a JSON string."""
        return dumps(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainerSpec:
        """Read a spec written by :meth:`to_json`; a bad document names its bad key."""
        return loads(text, cls, what="trainer spec")

    def build(self, model: nn.Module) -> BaseTrainer:
        """Construct the registered trainer for ``model`` with the recorded arguments."""
        cls = plugins.get_trainer(self.name)
        return cls(model, **self.kwargs)


def _record_arguments(cls: type[BaseTrainer], name: str) -> None:
    original = cls.__init__
    signature = inspect.signature(original)
    params = list(signature.parameters.values())[1:]  # drop self
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(
            f"@register_trainer: {cls.__qualname__}.__init__ must take the model as its first "
            "argument"
        )
    for param in params[1:]:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise TypeError(
                f"@register_trainer: {cls.__qualname__}.__init__ argument {param.name!r} is "
                "positional-only or *args; the arguments after the model must be named"
            )

    @functools.wraps(original)
    def __init__(self: BaseTrainer, *args: Any, **kwargs: Any) -> None:
        if type(self) is cls and "_nastrain_spec" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for param in params[1:]:
                value = bound.arguments.get(param.name)
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value or {})
                else:
                    recorded[param.name] = value
            for key, value in recorded.items():
                check_json_value(
                    value,
                    f"argument {key!r} of trainer {cls.__qualname__} (registered as {name!r})",
                )
            # A JSON round trip, so the spec holds exactly what another process will read.
            recorded = json.loads(json.dumps(recorded))
            self.__dict__["_nastrain_spec"] = TrainerSpec(name=name, kwargs=recorded)
        original(self, *args, **kwargs)

    # Replacing a class's __init__ is what this decorator is for; mypy refuses any such
    # assignment (and types the wrapper's signature apart from the original's).
    cls.__init__ = __init__  # type: ignore[method-assign, assignment]


plugins.declare_registry_base(
    "trainer", BaseTrainer, "nastrain.BaseTrainer or nastrain.BaseOneShotTrainer"
)


@overload
def register_trainer(cls: T, *, name: str | None = None) -> T: ...
@overload
def register_trainer(cls: None = None, *, name: str | None = None) -> Callable[[T], T]: ...
def register_trainer(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Register a classic trainer and record its constructor arguments.

    Use bare (``@register_trainer``) or with a name
    (``@register_trainer(name="mnist")``); the name defaults to the class
    attribute ``name``, else the class name. Every argument after the model
    must be JSON-serializable; a ``TypeError`` naming the argument and its type
    is raised when the trainer is constructed otherwise. The recorded
    arguments are ``trainer.spec``.
    """

    def decorate(target: T) -> T:
        if not (isinstance(target, type) and issubclass(target, BaseTrainer)):
            raise TypeError(
                f"@register_trainer decorates subclasses of nastrain.BaseTrainer, got {target!r}"
            )
        reg_name = name or plugins.default_name(target)
        if not isinstance(reg_name, str):
            raise TypeError(f"@register_trainer: name must be a str, got {reg_name!r}")
        _record_arguments(target, reg_name)
        plugins.register_decorated(target, reg_name)
        return target

    return decorate if cls is None else decorate(cls)
