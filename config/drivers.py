"""Finding driver classes and factories: registered short names (entry points) or "module:attr"."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from labctl.hardware import Device, FloatingDevice

ENTRY_POINT_GROUP = "labctl.drivers"


class DriverNotFound(Exception):
    """A driver or factory name that does not lead to something labctl can construct."""


def registered_drivers() -> dict[str, str]:
    """Short name -> "module:Class" for every driver registered under the `labctl.drivers` group."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def import_target(target: str, what: str = "driver", refused: Mapping[str, str] = {}) -> Any:
    """The object named by "package.module:attribute", or DriverNotFound saying why not.

    `refused` maps modules that must not be imported here (their import killed a child process) to why."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise DriverNotFound(f"{what} {target!r} is neither a registered name nor 'package.module:Name'")
    if module_name in refused:
        raise DriverNotFound(refused[module_name])
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail in any way a module's top level can
        raise DriverNotFound(f"cannot import module {module_name!r} for {what} {target!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DriverNotFound(f"module {module_name!r} has no {attribute!r} (for {what} {target!r})") from None
    return obj


def resolve_driver(name: str, refused: Mapping[str, str] = {}) -> type[Device]:
    """The driver class for a registered short name or "package.module:Class" (`refused`: see import_target)."""
    if name.startswith("microscope:"):
        from labctl.hardware import microscope_devices

        try:
            return microscope_devices.driver_class(name, lambda target: import_target(target, refused=refused))
        except microscope_devices.HardwareError as exc:
            raise DriverNotFound(str(exc)) from None
    registered = registered_drivers()
    target = registered.get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(registered)) or "none"
        raise DriverNotFound(f"unknown driver {name!r}; registered drivers: {known}; "
                             "or give 'package.module:Class'")
    cls = import_target(target, refused=refused)
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise DriverNotFound(f"{target!r} is not a driver class (a subclass of labctl.hardware.Device)")
    return cls


def resolve_factory(target: str, refused: Mapping[str, str] = {}) -> Callable[..., dict[str, Device]]:
    """The factory function for "package.module:function" (`refused`: see import_target)."""
    factory = import_target(target, what="factory", refused=refused)
    if not callable(factory):
        raise DriverNotFound(f"factory {target!r} is not callable")
    return factory


def is_floating(cls: type) -> bool:
    """Whether a driver class's units are told apart only by their id once opened."""
    return isinstance(cls, type) and issubclass(cls, FloatingDevice)


def check_arguments(target: Callable, conf: dict[str, Any],
                    supplied: frozenset[str] = frozenset()) -> list[tuple[str | None, str]]:
    """What is wrong with calling `target(**conf)`, as (conf key or None, problem) pairs.

    `supplied` names arguments labctl provides itself (an emulator's port)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []  # builtins and C extensions may not expose a signature; construction will tell
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    problems: list[tuple[str | None, str]] = []
    if not takes_any:
        for key in conf:
            if key not in named:
                problems.append((key, f"unknown argument; {_name(target)} takes: {', '.join(named) or 'nothing'}"))
    for p in params.values():
        if (p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
                and p.name not in conf and p.name not in supplied):
            problems.append((None, f"missing argument {p.name!r} required by {_name(target)}"))
    return problems


def _name(target: Callable) -> str:
    return getattr(target, "__qualname__", getattr(target, "__name__", repr(target)))
