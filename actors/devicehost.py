"""DeviceHost: the actor (one OS process) that owns one device's driver, or a shared group's.

It constructs its drivers on `StartUnit`, never in `__init__` (an exception there would kill the
process silently), turns requests into driver calls, and catches every driver exception itself:
an exception escaping `receiveMessage` would make Thespian deliver the same message again, and an
actuation would happen twice.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from thespian.actors import ActorExitRequest, WakeupMessage

from labctl.config.drivers import is_floating, resolve_driver, resolve_factory
from labctl.hardware import Device, LinkError, NotPresent, ValveController, declared_time_limits, remote_methods
from labctl.hardware import interfaces as hw_interfaces

from . import logs
from .actorsystem import PlacedActor
from .messages import (MESSAGE_FOR_METHOD, Call, DeviceDescription, DeviceNotice, Deliver, DeviceRequest, Done,
                       Failure, Image, MethodInfo, Ping, Pong, Reply, StartUnit, UnitFailed, UnitReady)

log = logging.getLogger("labctl.devicehost")

RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 5.0


class DeviceHost(PlacedActor):
    """Owns drivers in its own process and answers requests addressed to them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unit = ""
        self.incarnation = 0
        self.supervisor = None
        self.drivers: dict[str, Device] = {}        # every addressable name, sub-devices included
        self.owned: list[tuple[str, Device]] = []   # what to shut down, in construction order
        self.emulators: list[Any] = []
        self.degraded: dict[str, int] = {}          # device -> reconnect attempts so far
        self.frames: dict[str, int] = {}            # device -> images acquired, the frame counter
        self.last_heard = time.monotonic()
        self.watchdog_s = 30.0

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, Deliver):
                self.deliver(message)
            elif isinstance(message, Ping):
                self.last_heard = time.monotonic()
                self.send(sender, Pong(self.unit, self.incarnation, message.seq))
            elif isinstance(message, WakeupMessage):
                self.wakeup(message.payload)
            elif isinstance(message, StartUnit):
                self.start(message, sender)
            elif isinstance(message, ActorExitRequest):
                self.stop()
        except Exception:  # never let anything escape: Thespian would re-deliver the message
            log.exception("device host %s: unexpected error handling %s", self.unit, type(message).__name__)

    # -- construction -----------------------------------------------------------------------

    def start(self, message: StartUnit, supervisor) -> None:
        """Construct the unit's drivers (once) and report ready, or the error and exit."""
        if self.supervisor is not None:
            return  # constructed already; a repeated StartUnit must not open the hardware twice
        self.supervisor, self.unit, self.incarnation = supervisor, message.unit, message.incarnation
        logs.tag_records_with_device(message.unit)
        self.watchdog_s = max(10.0, message.heartbeat_s * (message.heartbeat_misses + 2) * 3)
        try:
            for spec in message.devices:
                with logs.driving(spec.name):
                    self.construct(spec, message.candidates.get(spec.name), message.run_dir)
        except Exception as exc:
            log.error("construction failed: %s: %s", type(exc).__name__, exc)
            self.release()
            self.send(supervisor, UnitFailed(self.unit, self.incarnation, os.getpid(), type(exc).__name__,
                                             str(exc), traceback.format_exc()))
            self.send(self.myAddress, ActorExitRequest())
            return
        for name, driver in list(self.drivers.items()):
            driver.subscribe(lambda event, detail, name=name: self.notice(name, event, detail))
        descriptions = tuple(describe(name, driver) for name, driver in self.drivers.items())
        self.send(supervisor, UnitReady(self.unit, self.incarnation, os.getpid(), descriptions))
        self.wakeupAfter(timedelta(seconds=self.watchdog_s), payload="watchdog")
        log.info("running (pid %d): %s", os.getpid(), ", ".join(self.drivers))

    def construct(self, spec, candidate: int | None, run_dir: str) -> None:
        """Build one configured device's driver (its emulator first, if it has one)."""
        conf = spec.fresh_conf()
        if spec.emulator is not None:
            from labctl.hardware.emulators import make_emulator

            Path(run_dir).mkdir(parents=True, exist_ok=True)
            link = Path(run_dir) / f"{spec.name}.tty"
            emulator = make_emulator(spec.emulator.kind, link=str(link), **spec.emulator.options).start()
            self.emulators.append(emulator)
            conf["port"] = emulator.port
        if spec.factory:
            built = resolve_factory(spec.factory)(**conf)
            if not isinstance(built, dict) or not all(isinstance(d, Device) for d in built.values()):
                raise TypeError(f"factory {spec.factory} must return {{name: driver}}, got {type(built).__name__}")
            for member, driver in built.items():
                self.adopt(f"{spec.name}.{member}", driver)
            return
        cls = resolve_driver(spec.driver)
        if is_floating(cls):
            if candidate is None:
                raise NotPresent(f"unit {spec.uid} was not found when probing")
            driver = cls.open_candidate(candidate, **conf)
            found = driver.get_id()
            if found != spec.uid:
                driver.shutdown()
                raise NotPresent(f"candidate {candidate} is now unit {found}, not {spec.uid} (units were re-ordered)")
        else:
            driver = cls(**conf)
        self.adopt(spec.name, driver)

    def adopt(self, name: str, driver: Device) -> None:
        """Register a constructed driver and its sub-devices under their names."""
        self.owned.append((name, driver))
        self.drivers[name] = driver
        for sub, part in driver.sub_devices().items():
            self.drivers[f"{name}.{sub}"] = part

    def release(self) -> None:
        """Shut down every driver (newest first) and emulator; never raises."""
        for name, driver in reversed(self.owned):
            with logs.driving(name):
                try:
                    driver.shutdown()
                except Exception:
                    log.exception("shutdown of %s failed", name)
        self.owned.clear()
        self.drivers.clear()
        for emulator in self.emulators:
            try:
                emulator.stop()
            except Exception:
                log.exception("stopping an emulator failed")
        self.emulators.clear()

    def stop(self) -> None:
        """On ActorExitRequest: release the hardware before Thespian ends the process."""
        log.info("stopping: shutting down %s", ", ".join(name for name, _ in self.owned) or "nothing")
        self.release()

    # -- requests ---------------------------------------------------------------------------

    def deliver(self, message: Deliver) -> None:
        """Answer one delivered request to its client, then tell the supervisor it is done."""
        request = message.request
        self.last_heard = time.monotonic()
        reply = self.handle(request)
        self.send(message.reply_to, reply)
        self.send(self.supervisor, Done(self.unit, request.request_id))
        self.last_heard = time.monotonic()

    def handle(self, request) -> Reply | Failure:
        """Run a request against its driver: the reply, or a failure; never raises."""
        name, rid = request.device, request.request_id
        driver = self.drivers.get(name)
        if driver is None:
            return Failure(rid, "unknown_device", "UnknownDevice",
                           f"no device {name!r} in this process; it has: {', '.join(self.drivers)}", name)
        if not isinstance(request, DeviceRequest):
            return Failure(rid, "unknown_message", "UnknownMessage", f"{type(request).__name__} is not a device "
                                                                     "request", name)
        method_name, args, kwargs = request.call()
        methods = remote_methods(driver)
        method = methods.get(method_name)
        if method is None:
            return Failure(rid, "unknown_message", "UnknownMessage", unknown_method_text(name, driver, method_name,
                                                                                         request), name)
        try:
            inspect.signature(method).bind(*args, **kwargs)
        except TypeError as exc:
            return Failure(rid, "bad_argument", "TypeError", f"{name}.{method_name}: {exc}", name)
        if name in self.degraded:
            self.try_reconnect(name)
        with logs.driving(name):
            try:
                value = method(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, LinkError):
                    self.link_lost(name, exc)
                log.warning("%s(%s) failed: %s: %s", method_name, _args_text(args, kwargs), type(exc).__name__, exc)
                return Failure(rid, "driver_error", type(exc).__name__, str(exc), name, traceback.format_exc())
        if isinstance(value, np.ndarray):
            self.frames[name] = self.frames.get(name, 0) + 1
            return Reply(rid, Image(value, self.frames[name], time.time()))
        return Reply(rid, plain(value))

    # -- links, notices, watchdog -----------------------------------------------------------

    def notice(self, device: str, event: str, detail: dict) -> None:
        """Forward a device's change (or link loss or recovery) to the supervisor."""
        self.send(self.supervisor, DeviceNotice(self.unit, device, event, dict(detail)))

    def owner_of(self, name: str) -> tuple[str, Device]:
        """The constructed driver that `name` belongs to (itself, or the controller of a sub-device)."""
        for owner, driver in self.owned:
            if name == owner or name.startswith(owner + "."):
                return owner, driver
        return name, self.drivers[name]

    def link_lost(self, name: str, exc: Exception) -> None:
        """Mark a device degraded after a LinkError and schedule reconnection."""
        owner, _ = self.owner_of(name)
        if owner in self.degraded:
            return
        self.degraded[owner] = 0
        log.warning("link lost: %s; reconnecting in the background", exc)
        self.notice(owner, "degraded", {"error": str(exc)})
        self.wakeupAfter(timedelta(seconds=RECONNECT_FIRST_S), payload=("reconnect", owner))

    def try_reconnect(self, name: str) -> bool:
        """Try once to reopen a degraded device's link; True when it is back."""
        owner, driver = self.owner_of(name)
        if owner not in self.degraded:
            return True
        with logs.driving(owner):
            try:
                driver.reconnect()
            except Exception as exc:
                self.degraded[owner] += 1
                log.info("reconnect attempt %d failed: %s", self.degraded[owner], exc)
                return False
        attempts = self.degraded.pop(owner)
        log.info("link restored after %d attempts", attempts + 1)
        self.notice(owner, "recovered", {"attempts": attempts + 1})
        return True

    def wakeup(self, payload) -> None:
        """Timers: the watchdog on the supervisor, and reconnection attempts."""
        if payload == "watchdog":
            silent = time.monotonic() - self.last_heard
            if silent > self.watchdog_s:
                # The supervisor is gone (a remote host's parent-death signal cannot reach us).
                log.error("no word from the supervisor for %.1f s; shutting down", silent)
                self.send(self.myAddress, ActorExitRequest())
            else:
                self.wakeupAfter(timedelta(seconds=self.watchdog_s), payload="watchdog")
        elif isinstance(payload, tuple) and payload[0] == "reconnect":
            owner = payload[1]
            if owner in self.degraded and not self.try_reconnect(owner):
                delay = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** self.degraded[owner])
                self.wakeupAfter(timedelta(seconds=delay), payload=("reconnect", owner))


def plain(value: Any) -> Any:
    """A driver's result with numpy scalars made Python ones (arrays travel inside an Image)."""
    return value.item() if isinstance(value, np.generic) else value


def describe(name: str, driver: Device) -> DeviceDescription:
    """What a driver is and what a client may ask of it."""
    interfaces = tuple(cls.__name__ for cls in type(driver).__mro__
                       if cls.__module__ == hw_interfaces.__name__ and cls.__name__ != "ABC")
    methods = []
    for method_name, method in sorted(remote_methods(driver).items()):
        message = MESSAGE_FOR_METHOD.get(method_name)
        methods.append(MethodInfo(method_name, _params(method), inspect.getdoc(method) or "",
                                  message.__name__ if message else Call.__name__))
    valves = driver.describe_valves() if isinstance(driver, ValveController) else {}
    return DeviceDescription(name, type(driver).__name__, interfaces, tuple(methods),
                             tuple(f"{name}.{sub}" for sub in driver.sub_devices()), valves,
                             declared_time_limits(driver))


def _params(method) -> tuple:
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return (("args", "VAR_POSITIONAL", False, None, ""), ("kwargs", "VAR_KEYWORD", False, None, ""))
    params = []
    for p in signature.parameters.values():
        has_default = p.default is not p.empty
        default = p.default if has_default and isinstance(p.default, (int, float, str, bool, type(None))) else None
        annotation = "" if p.annotation is p.empty else (p.annotation if isinstance(p.annotation, str)
                                                         else getattr(p.annotation, "__name__", str(p.annotation)))
        params.append((p.name, p.kind.name, has_default, default, annotation))
    return tuple(params)


def unknown_method_text(name: str, driver: Device, method_name: str, request) -> str:
    """The error text for a method or message a driver does not have."""
    accepted = sorted({MESSAGE_FOR_METHOD[m].__name__ for m in remote_methods(driver) if m in MESSAGE_FOR_METHOD})
    if isinstance(request, Call):
        return (f"{name} ({type(driver).__name__}) has no method {method_name!r}; "
                f"methods: {', '.join(sorted(remote_methods(driver)))}")
    return (f"{name} ({type(driver).__name__}) does not accept {type(request).__name__}; it accepts: "
            f"{', '.join(accepted + ['Call'])}")


def _args_text(args: tuple, kwargs: dict) -> str:
    return ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
