"""Device interfaces: each public method validates its arguments, then calls a small `_do_*` hook
that a driver implements. Drivers know nothing about actors."""

from __future__ import annotations

import abc
import inspect
import math
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .errors import HardwareError, InterlockRefused, OutOfRange, UnknownName, ValveLocked

# Methods that belong to a driver's lifecycle, not to what a client may ask of it.
LIFECYCLE_METHODS = frozenset(
    {"shutdown", "subscribe", "sub_devices", "reconnect", "count_candidates", "open_candidate"}
)


def time_limit(seconds: float | Callable[..., float]) -> Callable:
    """Declare that a driver method may legitimately take up to `seconds` before it counts as hung.

    `seconds` may be a function of the driver and the call's arguments, for a limit that depends
    on them: `@time_limit(lambda camera: 2 * camera.get_exposure() + 10)`."""
    if not callable(seconds) and not seconds > 0:
        raise ValueError(f"time_limit must be positive, got {seconds!r}")

    def mark(method: Callable) -> Callable:
        method.__labctl_time_limit__ = seconds if callable(seconds) else float(seconds)
        return method

    return mark


def declared_time_limits(driver: Any) -> dict[str, float | str]:
    """Method name -> its time limit in seconds ('depends' when it is computed per call)."""
    limits = {}
    for name in dir(type(driver)):
        limit = getattr(getattr(type(driver), name, None), "__labctl_time_limit__", None)
        if limit is not None:
            limits[name] = "depends" if callable(limit) else limit
    return limits


def time_limit_of(driver: Any, method: str, args: tuple = (), kwargs: dict | None = None) -> float | None:
    """The time limit of one call, in seconds, or None when the method declares none."""
    limit = getattr(getattr(type(driver), method, None), "__labctl_time_limit__", None)
    if callable(limit):
        return float(limit(driver, *args, **(kwargs or {})))
    return limit


def remote(method: Callable) -> Callable:
    """Mark a driver method that its interface does not declare as callable by clients (`Call`)."""
    # Refused here, when the driver module is imported, rather than silently left out later.
    if not isinstance(method, types.FunctionType):
        raise TypeError(f"@remote marks a plain method (def name(self, ...)), not {type(method).__name__}; "
                        "put @remote below @staticmethod, @classmethod or @property if you meant those, "
                        "which are never remote")
    if method.__name__.startswith("_") or method.__name__ in LIFECYCLE_METHODS:
        raise ValueError(f"@remote: {method.__name__!r} cannot be remote (a private or lifecycle method)")
    method.__labctl_remote__ = True
    return method


def interface_classes() -> tuple[type, ...]:
    """The interfaces a driver may implement, whose public methods clients may call."""
    return (Device, ValveController, TemperatureController, Camera, FilterWheel, Stage, LightSource,
            FloatingDevice)


def remote_methods(driver: Any) -> dict[str, Callable]:
    """The methods a client may call on a driver, by name, bound to it: the public methods of the
    interfaces it implements (as the driver overrides them) and the methods it marks @remote."""
    cls, interfaces = type(driver), interface_classes()
    names = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, value in vars(klass).items():
            if klass in interfaces or getattr(value, "__labctl_remote__", False) is True:
                names.add(name)
    methods = {}
    for name in names:
        if name.startswith("_") or name in LIFECYCLE_METHODS or hasattr(object, name):
            continue
        # The descriptor, not what getattr makes of it: a staticmethod, classmethod or property (even
        # one overriding an interface method) or a plain attribute is never remote; nor is a name
        # the instance itself shadows.
        if not isinstance(inspect.getattr_static(cls, name, None), types.FunctionType) \
                or name in getattr(driver, "__dict__", {}):
            continue
        methods[name] = getattr(driver, name)
    return methods


def number(value: Any, what: str) -> float:
    """`value` as a finite float, or OutOfRange saying what was expected."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OutOfRange(f"{what} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise OutOfRange(f"{what} must be a finite number, got {value!r}")
    return result


def whole_number(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
    """`value` as an int within [low, high] (no upper bound when high is None), or OutOfRange."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OutOfRange(f"{what} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise OutOfRange(f"{what} {value} is out of range {bounds}")
    return value


def within(value: Any, low: float, high: float, what: str) -> float:
    """`value` as a float within [low, high], or OutOfRange naming the range."""
    result = number(value, what)
    if not low <= result <= high:
        raise OutOfRange(f"{what} {result:g} is out of range [{low:g}, {high:g}]")
    return result


def choose(name: Any, known: Iterable[str], what: str) -> str:
    """`name` if it is one of `known`, else UnknownName listing the known ones."""
    known = list(known)
    if name not in known:
        raise UnknownName(f"unknown {what} {name!r}; known: {', '.join(map(str, known)) or 'none'}")
    return name


class Device(abc.ABC):
    """Base of every driver: lifecycle, status, sub-devices and change notifications."""

    def shutdown(self) -> None:
        """Release the hardware. Safe to call more than once."""
        if getattr(self, "_labctl_shut", False):
            return
        self._labctl_shut = True
        self._do_shutdown()

    def _do_shutdown(self) -> None:
        """Release whatever the driver holds (ports, handles); the default holds nothing."""

    def status(self) -> dict[str, Any]:
        """A small summary of the device's state, for people and logs."""
        return {}

    def sub_devices(self) -> dict[str, Device]:
        """Parts of this device that clients address on their own, as `device.part`."""
        return {}

    def reconnect(self) -> None:
        """Re-open the link to the instrument after a LinkError."""
        raise HardwareError(f"{type(self).__name__} cannot reconnect")

    def subscribe(self, callback: Callable[[str, dict], None]) -> None:
        """Call `callback(event, detail)` whenever the device reports a change."""
        self.__dict__.setdefault("_labctl_listeners", []).append(callback)

    def _notify(self, event: str, **detail: Any) -> None:
        for callback in list(self.__dict__.get("_labctl_listeners", ())):
            callback(event, detail)


class ValveController(Device):
    """Named valves that open and close, under Pychron's safety model: a valve with `interlocks`
    opens only while they are all closed, one with `positive_interlocks` only while they are all
    open, a locked valve does not move, and a valve with an `owner` moves only for that requester
    (the gateway passes a client's address; labctl's own clients hold the lab key and own the lab).
    The rules are checked here, in the device's process, where every way of actuating passes and
    where actuations run one at a time: two requests can never both pass a check that the
    other's success would have failed."""

    def __init__(self, valves: Mapping[str, Any] | Iterable[str]) -> None:
        self._channels, self._descriptions, self._rules = parse_valve_rules(valves)
        self._locked: set[str] = {name for name, rules in self._rules.items() if rules.get("locked")}

    def valve_names(self) -> list[str]:
        """The valves' names, in configured order."""
        return list(self._channels)

    def describe_valves(self) -> dict[str, str]:
        """Valve name -> its description (empty when none was configured)."""
        return {name: self._descriptions.get(name, "") for name in self._channels}

    def open(self, valve: str) -> str:
        """Open a valve; returns its new state."""
        return self._move(valve, True)

    def close(self, valve: str) -> str:
        """Close a valve; returns its new state."""
        return self._move(valve, False)

    def get_state(self, valve: str) -> str:
        """'open' or 'closed'."""
        return valve_state(self._do_get(self._valve(valve)))

    def get_states(self) -> dict[str, str]:
        """Every valve's state, by name."""
        return {name: valve_state(self._do_get(name)) for name in self._channels}

    def lock(self, valve: str) -> bool:
        """Soft-lock a valve so that it refuses to move; returns True."""
        valve = self._valve(valve)
        self._locked.add(valve)
        self._notify("valve_lock", valve=valve, locked=True)
        return True

    def unlock(self, valve: str) -> bool:
        """Release a soft lock; returns False (not locked)."""
        valve = self._valve(valve)
        self._locked.discard(valve)
        self._notify("valve_lock", valve=valve, locked=False)
        return False

    def is_locked(self, valve: str) -> bool:
        """Whether a valve is soft-locked."""
        return self._valve(valve) in self._locked

    def get_locks(self) -> dict[str, bool]:
        """Every valve's soft lock, by name."""
        return {name: name in self._locked for name in self._channels}

    def _restore_locks(self, locks: Mapping[str, bool]) -> None:
        # The lock states kept from an earlier run (they outlive the process and the lab); called by
        # the device's process after construction, not by clients.
        for name, locked in locks.items():
            if name in self._channels:
                (self._locked.add if locked else self._locked.discard)(name)

    def valve_rules(self) -> dict[str, dict]:
        """Each valve's interlocks, positive interlocks and owner, as configured."""
        return {name: {"interlocks": list(self._rules.get(name, {}).get("interlocks", ())),
                       "positive_interlocks": list(self._rules.get(name, {}).get("positive_interlocks", ())),
                       "owner": self._rules.get(name, {}).get("owner", "")} for name in self._channels}

    def actuate(self, valve: str, open_: bool, requester: str = "") -> bool:
        """Open or close a valve for `requester` (an address, '' for the lab's own clients): True
        once it is in that state (moved, or already so), False when it was acceptably left alone
        (locked; or a close while an interlock is open and it is already closed); InterlockRefused
        or a HardwareError when it could not move."""
        valve = self._valve(valve)
        if valve in self._locked:
            return False
        owner = self._rules.get(valve, {}).get("owner", "")
        if owner and requester and requester != owner:
            self._refuse(valve, open_, f"valve {valve} is owned by {owner}")
        interlocks = self._rules.get(valve, {}).get("interlocks", ())
        open_interlocks = [name for name in interlocks if self._is_open(name)]
        if open_ and open_interlocks:
            self._refuse(valve, open_, f"interlock {', '.join(open_interlocks)} is open")
        if not open_ and open_interlocks:
            if not self._do_get(valve):
                return False
            self._refuse(valve, open_, f"interlock {', '.join(open_interlocks)} is open")
        closed = [name for name in self._rules.get(valve, {}).get("positive_interlocks", ())
                  if not self._is_open(name)]
        if open_ and closed:
            self._refuse(valve, open_, f"positive interlock {', '.join(closed)} is closed")
        self._do_set(valve, open_)
        self._notify("valve", valve=valve, state=valve_state(open_))
        return True

    def _link_peers(self, peers: Mapping[str, ValveController]) -> None:
        # The other valve controllers of this process, for interlocks named `device:valve`. Only
        # controllers sharing a process may interlock (the lab file enforces it): their actuations
        # then run one at a time on the same thread, so a check and the move it allows are never
        # split by another controller's move.
        self._peers = dict(peers)

    def _is_open(self, name: str) -> bool:
        if ":" not in name:
            return bool(self._do_get(name))
        device, valve = name.split(":", 1)
        peer = getattr(self, "_peers", {}).get(device)
        if peer is None:
            raise InterlockRefused(f"interlock {name} cannot be read: {device} is not in this process")
        return bool(peer._do_get(peer._valve(valve)))

    def _refuse(self, valve: str, open_: bool, why: str) -> None:
        self._notify("valve_refused", valve=valve, action="open" if open_ else "close", reason=why)
        raise InterlockRefused(f"valve {valve} may not {'open' if open_ else 'close'}: {why}")

    def status(self) -> dict[str, Any]:
        return {"states": self.get_states(), "locked": sorted(self._locked)}

    def _valve(self, valve: Any) -> str:
        return choose(valve, self._channels, "valve")

    def _move(self, valve: str, want_open: bool) -> str:
        valve = self._valve(valve)
        if valve in self._locked:
            raise ValveLocked(f"valve {valve} is locked; unlock it before it can {'open' if want_open else 'close'}")
        if not self.actuate(valve, want_open):
            # Left alone: closing a closed valve while an interlock is open (Pychron's rule).
            return valve_state(self._do_get(valve))
        return valve_state(want_open)

    @abc.abstractmethod
    def _do_set(self, valve: str, open_: bool) -> None:
        """Drive one valve open (True) or closed (False)."""

    @abc.abstractmethod
    def _do_get(self, valve: str) -> bool:
        """True when the valve is open."""


def valve_state(is_open: bool) -> str:
    """'open' or 'closed', the words every valve controller answers with."""
    return "open" if is_open else "closed"


RULE_KEYS = ("interlocks", "positive_interlocks", "locked", "owner")


def parse_valve_rules(valves: Mapping[str, Any] | Iterable[str]) -> tuple[dict[str, int], dict[str, str], dict]:
    """parse_valve_table, plus each valve's safety rules: {name: {interlocks, positive_interlocks,
    locked, owner}}; an interlock must name a valve of the same controller."""
    rules: dict[str, dict] = {}
    plain = valves
    if isinstance(valves, Mapping):
        plain = {}
        for name, spec in valves.items():
            if isinstance(spec, Mapping):
                rules[str(name)] = {k: spec[k] for k in RULE_KEYS if k in spec}
                spec = {k: v for k, v in spec.items() if k not in RULE_KEYS}
            plain[name] = spec
    channels, descriptions = parse_valve_table(plain)
    for name, rule in rules.items():
        for key in ("interlocks", "positive_interlocks"):
            names = rule.get(key, [])
            if isinstance(names, str) or not isinstance(names, Iterable):
                raise HardwareError(f"valve {name}: {key} must be a list of valve names, got {names!r}")
            # `device:valve` names a valve of another controller (which the lab file checks exists)
            unknown = [str(n) for n in names if str(n) not in channels and ":" not in str(n)]
            if unknown:
                raise HardwareError(f"valve {name}: {key} names {', '.join(unknown)}, not a valve of this "
                                    f"controller (valves: {', '.join(channels)}; another controller's: "
                                    f"'device:valve')")
            rule[key] = tuple(str(n) for n in names)
        if not isinstance(rule.get("locked", False), bool):
            raise HardwareError(f"valve {name}: locked must be true or false, got {rule['locked']!r}")
        if not isinstance(rule.get("owner", ""), str):
            raise HardwareError(f"valve {name}: owner must be an address (text), got {rule['owner']!r}")
    return channels, descriptions, rules


def parse_valve_table(valves: Mapping[str, Any] | Iterable[str]) -> tuple[dict[str, int], dict[str, str]]:
    """Valve name -> channel and name -> description, from `{A = 0}`, `{A = {channel = 0,
    description = "..."}}` or a plain list of names (channels in order)."""
    if isinstance(valves, str) or not isinstance(valves, (Mapping, Iterable)):
        raise HardwareError(f"valves must be a table of name = channel or a list of names, got {valves!r}")
    if not isinstance(valves, Mapping):
        valves = {name: index for index, name in enumerate(valves)}
    if not valves:
        raise HardwareError("valves is empty; a valve controller needs at least one valve")
    channels, descriptions = {}, {}
    for name, spec in valves.items():
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"channel", "description"}
            if unknown or "channel" not in spec:
                raise HardwareError(f"valve {name}: expected {{channel = N, description = \"...\", "
                                    f"interlocks = [...], positive_interlocks = [...], locked = false, "
                                    f"owner = \"...\"}}, got {dict(spec)!r}")
            channel, descriptions[str(name)] = spec["channel"], str(spec.get("description", ""))
        else:
            channel = spec
        if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
            raise HardwareError(f"valve {name}: channel must be a non-negative integer, got {channel!r}")
        channels[str(name)] = channel
    return channels, descriptions


class TemperatureController(Device):
    """A setpoint within limits, a process temperature that follows it, and the output power."""

    def __init__(self, min_setpoint: float = 0.0, max_setpoint: float = 1200.0) -> None:
        if not number(min_setpoint, "min_setpoint") < number(max_setpoint, "max_setpoint"):
            raise OutOfRange(f"min_setpoint {min_setpoint} must be below max_setpoint {max_setpoint}")
        self._limits = (float(min_setpoint), float(max_setpoint))

    def get_limits(self) -> list[float]:
        """[lowest, highest] setpoint accepted."""
        return list(self._limits)

    def get_setpoint(self) -> float:
        """The setpoint, in degrees C."""
        return float(self._do_get_setpoint())

    def set_setpoint(self, value: float) -> float:
        """Set the setpoint within the configured limits; returns it."""
        value = within(value, *self._limits, what="setpoint")
        self._do_set_setpoint(value)
        self._notify("setpoint", value=value)
        return value

    def read_temperature(self) -> float:
        """The process temperature (PV), in degrees C."""
        return float(self._do_read_temperature())

    def get_output(self) -> float:
        """The heater output, in percent."""
        return float(self._do_get_output())

    def status(self) -> dict[str, Any]:
        return {"setpoint": self.get_setpoint(), "temperature": self.read_temperature(),
                "output": self.get_output()}

    @abc.abstractmethod
    def _do_get_setpoint(self) -> float: ...

    @abc.abstractmethod
    def _do_set_setpoint(self, value: float) -> None: ...

    @abc.abstractmethod
    def _do_read_temperature(self) -> float: ...

    @abc.abstractmethod
    def _do_get_output(self) -> float: ...


class Camera(Device):
    """Exposure, sensor shape and pixel type; `acquire` returns one image."""

    max_exposure_s = 3600.0

    def get_exposure(self) -> float:
        """Exposure time in seconds."""
        return float(self._do_get_exposure())

    def set_exposure(self, seconds: float) -> float:
        """Set the exposure time (0 < seconds <= max_exposure_s); returns it."""
        seconds = number(seconds, "exposure")
        if not 0 < seconds <= self.max_exposure_s:
            raise OutOfRange(f"exposure {seconds:g} s is out of range (0, {self.max_exposure_s:g}]")
        self._do_set_exposure(seconds)
        return seconds

    def get_sensor_shape(self) -> list[int]:
        """[rows, columns] of an acquired image."""
        return [int(n) for n in self._do_get_sensor_shape()]

    def get_dtype(self) -> str:
        """The numpy dtype of an acquired image, e.g. 'uint16'."""
        return np.dtype(self._do_get_dtype()).name

    @time_limit(lambda camera: 2 * camera.get_exposure() + 10)
    def acquire(self) -> np.ndarray:
        """Expose and read one image of the sensor's shape and dtype."""
        image = np.asarray(self._do_acquire())
        if list(image.shape) != self.get_sensor_shape() or image.dtype.name != self.get_dtype():
            raise HardwareError(
                f"camera returned a {image.dtype.name} image of shape {list(image.shape)}; "
                f"expected {self.get_dtype()} {self.get_sensor_shape()}")
        return image

    def status(self) -> dict[str, Any]:
        return {"exposure": self.get_exposure(), "shape": self.get_sensor_shape(), "dtype": self.get_dtype()}

    @abc.abstractmethod
    def _do_get_exposure(self) -> float: ...

    @abc.abstractmethod
    def _do_set_exposure(self, seconds: float) -> None: ...

    @abc.abstractmethod
    def _do_get_sensor_shape(self) -> tuple[int, int]: ...

    @abc.abstractmethod
    def _do_get_dtype(self) -> str: ...

    @abc.abstractmethod
    def _do_acquire(self) -> np.ndarray: ...


class FilterWheel(Device):
    """A wheel of N filter positions, numbered 0..N-1."""

    def get_n_positions(self) -> int:
        """How many positions the wheel has."""
        return int(self._do_get_n_positions())

    def get_position(self) -> int:
        """The current position, 0..N-1."""
        return int(self._do_get_position())

    def set_position(self, position: int) -> int:
        """Turn to a position in 0..N-1; returns it."""
        count = self.get_n_positions()
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise OutOfRange(f"position must be an integer, got {position!r}")
        if not 0 <= position < count:
            raise OutOfRange(f"position {position} is out of range 0..{count - 1}")
        self._do_set_position(int(position))
        self._notify("position", position=int(position))
        return int(position)

    def status(self) -> dict[str, Any]:
        return {"position": self.get_position(), "positions": self.get_n_positions()}

    @abc.abstractmethod
    def _do_get_n_positions(self) -> int: ...

    @abc.abstractmethod
    def _do_get_position(self) -> int: ...

    @abc.abstractmethod
    def _do_set_position(self, position: int) -> None: ...


class Stage(Device):
    """Named axes, each with [low, high] limits; moves outside them are refused."""

    def get_axes(self) -> dict[str, list[float]]:
        """Axis name -> [low, high] limit."""
        return {axis: [float(lo), float(hi)] for axis, (lo, hi) in self._do_get_limits().items()}

    def get_position(self) -> dict[str, float]:
        """Axis name -> current position."""
        return {axis: float(value) for axis, value in self._do_get_position().items()}

    def move_to(self, axis: str, position: float) -> float:
        """Move one axis to an absolute position within its limits; returns the position."""
        limits = self.get_axes()
        axis = choose(axis, limits, "axis")
        position = within(position, *limits[axis], what=f"axis {axis} position")
        self._do_move(axis, position)
        self._notify("position", axis=axis, position=position)
        return position

    def move_by(self, axis: str, delta: float) -> float:
        """Move one axis by `delta`; refused if the target lies outside its limits. Returns the position."""
        axis = choose(axis, self.get_axes(), "axis")
        return self.move_to(axis, self.get_position()[axis] + number(delta, "delta"))

    def status(self) -> dict[str, Any]:
        return {"position": self.get_position()}

    @abc.abstractmethod
    def _do_get_limits(self) -> Mapping[str, tuple[float, float]]: ...

    @abc.abstractmethod
    def _do_get_position(self) -> Mapping[str, float]: ...

    @abc.abstractmethod
    def _do_move(self, axis: str, position: float) -> None: ...


class LightSource(Device):
    """A light that turns on and off, with a power level from 0 to 1."""

    def turn_on(self) -> bool:
        """Switch on; returns True."""
        self._do_enable(True)
        self._notify("light", on=True)
        return True

    def turn_off(self) -> bool:
        """Switch off; returns False."""
        self._do_enable(False)
        self._notify("light", on=False)
        return False

    def get_is_on(self) -> bool:
        """Whether the light is on."""
        return bool(self._do_get_enabled())

    def set_power(self, power: float) -> float:
        """Set the power level, 0..1; returns it."""
        power = within(power, 0.0, 1.0, what="power")
        self._do_set_power(power)
        return power

    def get_power(self) -> float:
        """The power level, 0..1."""
        return float(self._do_get_power())

    def status(self) -> dict[str, Any]:
        return {"on": self.get_is_on(), "power": self.get_power()}

    @abc.abstractmethod
    def _do_enable(self, on: bool) -> None: ...

    @abc.abstractmethod
    def _do_get_enabled(self) -> bool: ...

    @abc.abstractmethod
    def _do_set_power(self, power: float) -> None: ...

    @abc.abstractmethod
    def _do_get_power(self) -> float: ...


class FloatingDevice(Device):
    """A device whose identical units are told apart only by the id read once a unit is open.

    labctl probes the candidates (`count_candidates`, `open_candidate`, `get_id`) to find which
    candidate carries the uid a lab asks for, then opens that one. `candidate` is positional-only,
    so the driver's own keyword arguments (even one named `index` or `uid`) pass through untouched.
    """

    @classmethod
    @abc.abstractmethod
    def count_candidates(cls, **conf: Any) -> int:
        """How many units of this class are connected now."""

    @classmethod
    @abc.abstractmethod
    def open_candidate(cls, candidate: int, /, **conf: Any) -> FloatingDevice:
        """Open the unit at position `candidate` (0-based) among those connected now."""

    @abc.abstractmethod
    def get_id(self) -> str:
        """The opened unit's own id (serial number)."""


def probe(cls: type[FloatingDevice], conf: Mapping[str, Any]) -> tuple[dict[str, int], dict[int, str]]:
    """Open each candidate unit of a floating class in turn and read its id.

    Returns (uid -> candidate, candidate -> error text for units that could not be opened)."""
    found, errors = {}, {}
    for candidate in range(int(cls.count_candidates(**dict(conf)))):
        try:
            unit = cls.open_candidate(candidate, **dict(conf))
        except Exception as exc:  # a unit held by another process, or broken: skip it, say why
            errors[candidate] = f"{type(exc).__name__}: {exc}"
            continue
        try:
            found[str(unit.get_id())] = candidate
        except Exception as exc:
            errors[candidate] = f"{type(exc).__name__}: {exc}"
        finally:
            unit.shutdown()
    return found, errors
