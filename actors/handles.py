"""Device handles: objects whose methods are a device's, built from its description.

`lab.furnace.set_setpoint(500)` checks its arguments against the driver's signature before
anything is sent, then sends the typed message (SetSetpoint) or a generic Call.
"""

from __future__ import annotations

import inspect
from typing import Any

from .errors import BadArgument
from .messages import DEVICE_MESSAGES, Call, DeviceDescription, MethodInfo

_CHECKS = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,)}


class DeviceHandle:
    """Base of device handles; each device gets a subclass with its driver's methods."""

    def __init__(self, lab: Any, description: DeviceDescription) -> None:
        self._lab = lab
        self._description = description

    @property
    def name(self) -> str:
        return self._description.name

    def send(self, message: Any, timeout: float | None = None) -> Any:
        """Send any message to this device."""
        return self._lab.send(self.name, message, timeout)

    def stream(self, n: int | None = None, timeout: float | None = None):
        """A camera's frames as it produces them (`n`, or until closed); each Image has `frame` and `lost`."""
        if "Camera" not in self._description.interfaces:
            raise AttributeError(f"{self.name} ({self._description.driver}) is not a camera: it has no frames "
                                 f"to stream")
        return self._lab.stream(self.name, n, timeout)

    def __getattr__(self, name: str) -> DeviceHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        full = f"{self._description.name}.{name}"
        if full in self._description.sub_devices:
            return self._lab.device(full)
        methods = ", ".join(m.name for m in self._description.methods)
        raise AttributeError(f"{self._description.name} ({self._description.driver}) has no method {name!r}; "
                             f"methods: {methods}")

    def __dir__(self) -> list[str]:
        subs = [s.rsplit(".", 1)[1] for s in self._description.sub_devices]
        return sorted(set(super().__dir__()) | set(subs))

    def __repr__(self) -> str:
        return f"<{self._description.name}: {self._description.driver}>"


def signature_of(info: MethodInfo) -> inspect.Signature:
    """The driver method's signature, rebuilt from its description."""
    params = []
    for name, kind, has_default, default, annotation in info.params:
        params.append(inspect.Parameter(name, getattr(inspect.Parameter, kind),
                                        default=default if has_default else inspect.Parameter.empty,
                                        annotation=annotation or inspect.Parameter.empty))
    return inspect.Signature(params)


def message_for(info: MethodInfo, device: str, args: tuple, kwargs: dict) -> Any:
    """Check arguments against the method, then build the message that carries the call."""
    signature = signature_of(info)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise BadArgument(f"{device}.{info.name}{signature}: {exc}; nothing was sent", device, "TypeError") from None
    for name, value in bound.arguments.items():
        annotation = signature.parameters[name].annotation
        allowed = _CHECKS.get(annotation) if isinstance(annotation, str) else None
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            raise BadArgument(f"{device}.{info.name}: {name} must be {annotation}, got {value!r}; nothing was sent",
                              device, "TypeError")
    if info.message != Call.__name__:
        return DEVICE_MESSAGES[info.message](*bound.args, **bound.kwargs)
    return Call(info.name, bound.args, bound.kwargs)


def _method(info: MethodInfo):
    def call(self, *args, **kwargs):
        return self._lab.send(self.name, message_for(info, self.name, args, kwargs))

    signature = signature_of(info)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    call.__name__ = call.__qualname__ = info.name
    call.__doc__ = info.doc or f"Send {info.message} to the device."
    call.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
    return call


def make_handle(lab: Any, description: DeviceDescription) -> DeviceHandle:
    """A handle for one device: its methods send messages to it."""
    # Exactly the described methods; a private or dunder name (which no lab describes) would reach
    # into the handle class itself, so it is never made a method.
    namespace = {info.name: _method(info) for info in description.methods if not info.name.startswith("_")}
    namespace["__doc__"] = (f"{description.name}: a {description.driver} "
                            f"({', '.join(i for i in description.interfaces if i != 'Device') or 'device'}).\n"
                            f"Methods send messages to the device; sub-devices: "
                            f"{', '.join(description.sub_devices) or 'none'}.")
    cls = type(f"{description.name.replace('.', '_')}_handle", (DeviceHandle,), namespace)
    return cls(lab, description)
