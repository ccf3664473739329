"""python-microscope's device classes as labctl drivers.

`driver = "microscope:PACKAGE.MODULE:Class"` names a subclass of `microscope.abc.Device`; the
driver labctl runs is that class wrapped in the labctl interface it matches (a microscope Camera is
a labctl Camera, and so on for filter wheels, light sources, stages and controllers), so labctl's
own messages (`Acquire`, `SetPosition`, `MoveTo`, `SetPower`, `TurnOn` ...) reach it. Every public
method of the microscope class is callable too (`Call get_setting exposure`), and each property
as `get_NAME`/`set_NAME`. The microscope object constructs (and initializes, as microscope
devices do in their constructor) with the device's `conf` as keyword arguments, and is shut down
with the driver. A controller's devices and a stage's axes are sub-devices. python-microscope is an
optional dependency: `pip install -e '.[microscope]'`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import numpy as np

from .interfaces import (Camera, Device, FilterWheel, FloatingDevice, HardwareError, LightSource, Stage, remote)

PREFIX = "microscope:"
INSTALL_HINT = "python-microscope is not installed; install labctl with it: pip install -e '.[microscope]'"
# What a wrapper never forwards: labctl's own Device API, and what only makes sense inside
# microscope's device server (its Pyro client callbacks) or at construction.
NOT_FORWARDED = {"shutdown", "status", "sub_devices", "reconnect", "subscribe", "initialize", "add_setting",
                 "receiveClient", "receiveData", "get_id"}


class MicroscopeMissing(HardwareError):
    """A lab file names a microscope device, and python-microscope is not installed."""


def scope_abc():
    """microscope.abc, or MicroscopeMissing saying how to install it."""
    try:
        return importlib.import_module("microscope.abc")
    except ImportError:
        raise MicroscopeMissing(INSTALL_HINT) from None


def driver_class(target: str, find) -> type[Device]:
    """The labctl driver class for "microscope:package.module:Class" (`find` imports "module:attr")."""
    abc_ = scope_abc()
    scope_class = find(target.removeprefix(PREFIX))
    if not (isinstance(scope_class, type) and issubclass(scope_class, abc_.Device)):
        raise HardwareError(f"{target!r} is not a python-microscope device class (a subclass of microscope.abc.Device)")
    return wrapper_for(scope_class)


@functools.cache
def wrapper_for(scope_class: type) -> type[Device]:
    """A labctl driver class around a microscope device class (one per class)."""
    abc_ = scope_abc()
    base = next((wrapper for interface, wrapper in _interfaces(abc_) if issubclass(scope_class, interface)),
                ScopeDevice)
    bases = (base, FloatingScope) if issubclass(scope_class, abc_.FloatingDeviceMixin) else (base,)
    namespace = {"scope_class": scope_class, "__module__": __name__,
                 "__doc__": f"python-microscope's {scope_class.__module__}.{scope_class.__qualname__} as a labctl driver."}
    taken = {name for cls in bases for name in dir(cls)}
    for name, member in inspect.getmembers(scope_class):
        if name.startswith("_") or name in NOT_FORWARDED:
            continue
        static = inspect.getattr_static(scope_class, name)
        if isinstance(static, property):
            accessors = [("get_" + name, _getter)] + ([("set_" + name, _setter)] if static.fset else [])
            for accessor, make in accessors:
                if accessor not in taken and not hasattr(scope_class, accessor):
                    namespace[accessor] = make(name)
        elif callable(member) and name not in taken:
            namespace[name] = _forward(name, member)
    return type(f"Microscope{scope_class.__name__}", bases, namespace)


def _interfaces(abc_) -> list[tuple[type, type]]:
    return [(abc_.Camera, ScopeCamera), (abc_.FilterWheel, ScopeFilterWheel), (abc_.LightSource, ScopeLight),
            (abc_.Stage, ScopeStage), (abc_.Controller, ScopeController)]


def _forward(name: str, member) -> Any:
    @functools.wraps(member)
    def call(self, *args, **kwargs):
        return getattr(self.scope, name)(*args, **kwargs)
    return remote(call)


def _getter(name: str) -> Any:
    def get(self):
        return getattr(self.scope, name)
    get.__name__, get.__doc__ = f"get_{name}", f"The microscope device's `{name}`."
    return remote(get)


def _setter(name: str) -> Any:
    def set_(self, value):
        setattr(self.scope, name, value)
        return getattr(self.scope, name)
    set_.__name__, set_.__doc__ = f"set_{name}", f"Set the microscope device's `{name}`; returns it."
    return remote(set_)


def conf_for(scope_class: type, conf: dict) -> dict:
    """The device's conf as the microscope class's keyword arguments: a stage's `limits` as
    AxisLimits, a controller's `devices` ({name: {driver, conf}}) as constructed devices."""
    import microscope

    abc_ = scope_abc()
    kwargs = dict(conf)
    if issubclass(scope_class, abc_.Stage) and isinstance(kwargs.get("limits"), dict):
        kwargs["limits"] = {axis: microscope.AxisLimits(*limits) for axis, limits in kwargs["limits"].items()}
    if issubclass(scope_class, abc_.Controller) and isinstance(kwargs.get("devices"), dict):
        kwargs["devices"] = {name: _construct(part) for name, part in kwargs["devices"].items()}
    return kwargs


def _construct(part: dict):
    module, _, name = part["driver"].removeprefix(PREFIX).partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(**conf_for(cls, part.get("conf", {})))


class ScopeDevice(Device):
    """A microscope device run as a labctl driver (see the module docstring)."""

    scope_class: type = object

    def __init__(self, **conf: Any) -> None:
        self.scope = self.scope_class(**conf_for(self.scope_class, conf))

    @classmethod
    def around(cls, scope) -> ScopeDevice:
        """A driver for an existing microscope object (a controller's device, a stage's axis)."""
        driver = cls.__new__(cls)
        driver.scope = scope
        return driver

    @remote
    def scope_call(self, member: str, *args: Any, **kwargs: Any) -> Any:
        """Call a public method of the microscope object by name, with microscope's own signature (the
        Pyro facade's way in: a stage's `move_to({"x": 1.0})`, where labctl's is `move_to("x", 1.0)`)."""
        return getattr(self.scope, public(self.scope, member))(*args, **kwargs)

    @remote
    def scope_get(self, member: str) -> Any:
        """A public attribute or property of the microscope object."""
        return getattr(self.scope, public(self.scope, member))

    @remote
    def scope_set(self, member: str, value: Any) -> None:
        """Set a public property of the microscope object."""
        setattr(self.scope, public(self.scope, member), value)

    def shutdown(self) -> None:
        shutdown = getattr(self.scope, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {}
        if hasattr(self.scope, "get_is_enabled"):
            status["enabled"] = bool(self.scope.get_is_enabled())
        return status


class FloatingScope(FloatingDevice):
    """A microscope FloatingDeviceMixin class: units told apart by get_id(), opened by index."""

    @classmethod
    def count_candidates(cls, units: int = 1, **conf: Any) -> int:
        return int(units)

    @classmethod
    def open_candidate(cls, candidate: int, /, units: int = 1, **conf: Any) -> FloatingScope:
        return cls(index=candidate, **conf)

    def get_id(self) -> str:
        return str(self.scope.get_id())


def public(scope, member: str) -> str:
    """`member` if it is a public member of the microscope object, else HardwareError."""
    if not isinstance(member, str) or member.startswith("_") or member in NOT_FORWARDED - {"get_id"} \
            or not hasattr(scope, member):
        raise HardwareError(f"{type(scope).__name__} has no public member {member!r}")
    return member


def wrap(obj) -> Device:
    """A labctl driver for a constructed microscope device (a factory's part)."""
    abc_ = scope_abc()
    if not isinstance(obj, abc_.Device):
        raise TypeError(f"{type(obj).__qualname__} is neither a labctl driver nor a python-microscope device")
    return wrapper_for(type(obj)).around(obj)


class ScopeCamera(Camera, ScopeDevice):
    """A microscope Camera: `acquire` enables it if need be and grabs one software-triggered frame."""

    def _do_get_exposure(self) -> float:
        return self.scope.get_exposure_time()

    def _do_set_exposure(self, seconds: float) -> None:
        self.scope.set_exposure_time(seconds)

    def _do_get_sensor_shape(self) -> tuple[int, int]:
        return self._frame_shape()

    def _do_get_dtype(self) -> str:
        dtype = getattr(self, "_dtype", None)
        if dtype is None:
            dtype = self._dtype = np.asarray(self._do_acquire()).dtype.name
        return dtype

    def _frame_shape(self) -> tuple[int, int]:
        # A frame is the ROI's size, binned; (rows, columns) as numpy gives it.
        roi, binning = self.scope.get_roi(), self.scope.get_binning()
        return (roi.height // binning.v, roi.width // binning.h)

    def _do_acquire(self) -> np.ndarray:
        if not self.scope.get_is_enabled():
            self.scope.enable()
        data = self.scope.grab_next_data()
        frame = np.asarray(data[0] if isinstance(data, tuple) else data)
        self._dtype = frame.dtype.name
        return frame


class ScopeFilterWheel(FilterWheel, ScopeDevice):
    """A microscope FilterWheel."""

    def _do_get_n_positions(self) -> int:
        return self.scope.n_positions

    def _do_get_position(self) -> int:
        return self.scope.position

    def _do_set_position(self, position: int) -> None:
        self.scope.position = position


class ScopeLight(LightSource, ScopeDevice):
    """A microscope LightSource: on is enabled, power its `power` (0..1)."""

    def _do_enable(self, on: bool) -> None:
        self.scope.enable() if on else self.scope.disable()

    def _do_get_enabled(self) -> bool:
        return self.scope.get_is_on()

    def _do_set_power(self, power: float) -> None:
        self.scope.power = power

    def _do_get_power(self) -> float:
        return self.scope.power


class ScopeStage(Stage, ScopeDevice):
    """A microscope Stage; its axes are also sub-devices."""

    def _do_get_limits(self):
        return {axis: (limits.lower, limits.upper) for axis, limits in self.scope.limits.items()}

    def _do_get_position(self):
        return self.scope.position

    def _do_move(self, axis: str, position: float) -> None:
        self.scope.move_to({axis: position})

    def sub_devices(self) -> dict[str, Device]:
        return {axis: wrapper_for(type(part)).around(part) for axis, part in self.scope.axes.items()}


class ScopeController(ScopeDevice):
    """A microscope Controller: its devices are sub-devices (`controller.laser`)."""

    def sub_devices(self) -> dict[str, Device]:
        return {name: wrapper_for(type(part)).around(part) for name, part in self.scope.devices.items()}
