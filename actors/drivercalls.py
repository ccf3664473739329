"""Requests turned into driver calls: checked against the driver, run in arrival order on one worker
thread, their results made fit to send; and what a driver is, described for clients.

The worker keeps the device host's actor thread free while a call blocks: heartbeats are answered,
replies and notices leave at once, and the host can tell a long call within its time limit from a
hung one.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import pickle
import queue
import threading
import time
import traceback
from typing import Any

import attrs
import numpy as np

from labctl.hardware import (Device, LinkError, ValveController, declared_time_limits, remote_methods,
                             time_limit_of)
from labctl.hardware import interfaces as hw_interfaces

from . import logs
from .messages import (MESSAGE_FOR_METHOD, Call, DeviceDescription, DeviceRequest, Failure, Image, MethodInfo,
                       Reply, Request)


@attrs.define
class Job:
    """One piece of work for the worker: a request to answer, or (no request) a link to reopen."""

    id: int
    device: str
    driver: Device
    link_driver: Device             # whose link to reopen: the device's own, or its controller's
    request: Request | None = None
    reply_to: Any = None
    args: tuple = ()
    kwargs: dict = attrs.Factory(dict)
    limit: float = 0.0
    reconnect_first: bool = False   # the device's link is down: try to reopen it before the call
    started: float = 0.0
    ring: Any = None                # framering.FrameRing: a frame it acquires goes there too

    @property
    def method(self) -> str:
        return self.request.call()[0] if self.request is not None else "reconnect"


@attrs.frozen
class LimitKnown:
    """The worker worked out a call's time limit (seconds from the call's start)."""

    job_id: int
    seconds: float


@attrs.frozen
class Notice:
    """A device reported a change from within a driver call."""

    device: str
    event: str
    detail: dict


@attrs.frozen
class Outcome:
    """What a job came to: the reply (None for a reconnect) and what happened to the link."""

    job: Job
    reply: Reply | Failure | None
    link: str | None = None         # "lost" or "restored" when that changed, else None
    detail: str = ""
    shared: Any = None              # framering.SharedFrame: where the frame lies in shared memory


MAX_ARGUMENT_BYTES = 1 << 20   # the default of [lab] max_argument_bytes


def check(drivers: dict[str, Device], methods: dict[str, dict], request: Request,
          max_argument_bytes: int = MAX_ARGUMENT_BYTES) -> tuple[Device, tuple, dict] | Failure:
    """The driver a request addresses and its bound arguments, or the failure saying why not.

    `methods` holds each driver's remote methods, found once (not per request) with remote_methods.
    Arguments whose pickle is longer than `max_argument_bytes` never reach the driver."""
    name, rid = request.device, request.request_id
    driver = drivers.get(name)
    if driver is None:
        return Failure(rid, "unknown_device", "UnknownDevice",
                       f"no device {name!r} in this process; it has: {', '.join(drivers)}", name)
    if not isinstance(request, DeviceRequest):
        return Failure(rid, "unknown_message", "UnknownMessage", f"{type(request).__name__} is not a device request",
                       name)
    method_name, args, kwargs = request.call()
    method = methods[name].get(method_name)
    if method is None:
        return Failure(rid, "unknown_message", "UnknownMessage", unknown_method_text(name, driver, method_name, request),
                       name)
    try:
        size = len(pickle.dumps((args, kwargs), protocol=5))
    except Exception as exc:  # it came unpickled, so this is rare; still the driver must not see it
        return Failure(rid, "bad_argument", "UnsendableArgument",
                       f"{name}: arguments of {type(request).__name__} {method_name!r} cannot be measured "
                       f"({type(exc).__name__}: {exc})", name)
    if size > max_argument_bytes:
        return Failure(rid, "bad_argument", "ArgumentTooLarge",
                       f"{name}: arguments of {type(request).__name__} {method_name!r} are {byte_size(size)}; "
                       f"the limit is {byte_size(max_argument_bytes, exact=True)} (max_argument_bytes)", name)
    try:
        _bind(method, args, kwargs)
    except TypeError as exc:
        return Failure(rid, "bad_argument", "TypeError", f"{name}.{method_name}: {exc}", name)
    return driver, args, kwargs


@functools.lru_cache(maxsize=4096)
def _signature(func) -> inspect.Signature:
    return inspect.signature(func)


def _bind(method, args: tuple, kwargs: dict) -> None:
    """Bind arguments to a driver method's signature (TypeError if they do not fit); signatures are
    worked out once per function, not per call."""
    func = getattr(method, "__func__", None)
    if func is None:
        inspect.signature(method).bind(*args, **kwargs)
    else:
        _signature(func).bind(method.__self__, *args, **kwargs)


def byte_size(size: int, exact: bool = False) -> str:
    """A size in bytes for people: '2.0 MiB'; with `exact`, '1 MiB' or, if not a whole unit, bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            if not exact:
                return f"{size / scale:.1f} {unit}"
            if size % scale == 0:
                return f"{size // scale} {unit}"
    return f"{size} bytes"


def run(job: Job, post) -> Outcome:
    """Do one job on this thread; never raises (an escaping exception would have Thespian repeat it).

    A call's time limit is worked out here, first (it may ask the hardware, e.g. a camera's
    exposure), and handed over with `post`; until then the default limit applies."""
    link, detail = None, ""
    if job.reconnect_first or job.request is None:
        try:
            with logs.driving(job.device):
                job.link_driver.reconnect()
            link = "restored"
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if job.request is None:
                return Outcome(job, None, None, detail)
    if job.request is None:
        return Outcome(job, None, link)
    request, rid = job.request, job.request.request_id
    method = getattr(job.driver, job.method)
    with logs.driving(job.device):
        try:
            limit = time_limit_of(job.driver, job.method, job.args, job.kwargs)
            if limit is not None:
                if math.isfinite(limit) and limit > 0:
                    post(LimitKnown(job.id, limit))
                else:
                    logging.getLogger("labctl.devicehost").warning(
                        "%s's time limit came out as %r; using the default, %g s", job.method, limit, job.limit)
            value = method(*job.args, **job.kwargs)
        except Exception as exc:
            if isinstance(exc, LinkError):
                link, detail = "lost", str(exc)
            logs.log_failure(job.device, job.method, job.args, job.kwargs, exc)
            return Outcome(job, Failure(rid, "driver_error", type(exc).__name__, str(exc), job.device,
                                        traceback.format_exc()), link, detail)
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        return Outcome(job, Reply(rid, value), link, detail)  # the worker makes it an Image
    return Outcome(job, sendable(Reply(rid, plain(value)), request), link, detail)


def sendable(reply: Reply, request: Request) -> Reply | Failure:
    """The reply itself if it can travel (be pickled), else a failure saying why it cannot."""
    if plain_data(reply.value):
        return reply  # nothing to try: a trial pickle of a frame inside a tuple would cost milliseconds
    try:
        pickle.dumps(reply)
    except Exception as exc:
        return Failure(request.request_id, "driver_error", "UnsendableResult",
                       f"{request.device}: the result of {type(request).__name__} cannot be sent "
                       f"({type(exc).__name__}: {exc}); return plain data or a numpy array", request.device)
    return reply


def plain_data(value: Any, budget: int = 1000) -> bool:
    """Whether a value is made only of what always pickles: None, numbers, strings, bytes, numpy
    arrays of plain dtypes, and tuples, lists and dicts of those (at most `budget` items looked at)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return False
        if item is None or isinstance(item, (bool, int, float, str, bytes, np.generic)):
            continue
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                return False
        elif type(item) in (tuple, list):
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            return False
    return True


def plain(value: Any) -> Any:
    """A driver's result with numpy scalars made Python ones (arrays travel inside an Image)."""
    return value.item() if isinstance(value, np.generic) else value


class Worker:
    """The one thread that calls drivers, in the order jobs arrive; wakes the actor through a pipe."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.frames: dict[str, int] = {}   # device -> frames acquired: each frame's number (this thread's own)
        self.waiting = False               # the actor is blocked in collect(wait=...): no need to wake it
        self.thread = threading.Thread(target=self._work, name="labctl-driver", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job."""
        self.jobs.put(job)

    def post(self, item: Any) -> None:
        """Hand something to the actor's thread (an outcome, a device's notice) and wake it, unless it
        is waiting for it already (a wake-up then would only cost it a turn for nothing)."""
        self.done.put(item)
        if not self.waiting:
            os.write(self.wake_w, b"x")

    def collect(self, wait: float = 0.0) -> list:
        """Everything handed over since the last call (on the actor's thread, when woken), waiting up
        to `wait` seconds for the first item if there is none yet."""
        items = []
        if wait > 0:
            self.waiting = True
            try:
                items.append(self.done.get(timeout=wait))
            except queue.Empty:
                pass
            finally:
                # From here on the worker wakes the actor again; what it posted before, while this
                # was still waiting, is taken below.
                self.waiting = False
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                items.append(self.done.get_nowait())
            except queue.Empty:
                return items

    def stop(self, timeout: float) -> bool:
        """Let the current job finish (up to `timeout`) and end the thread; True if it ended."""
        self.jobs.put(None)
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                outcome = run(job, self.post)
            except BaseException as exc:  # a fault of labctl's own: still answer, keep the thread
                rid = job.request.request_id if job.request is not None else ""
                outcome = Outcome(job, Failure(rid, "lab_error", type(exc).__name__,
                                               f"labctl failed running {job.method}: {exc}", job.device,
                                               traceback.format_exc()) if job.request is not None else None)
            if isinstance(outcome.reply, Reply) and isinstance(outcome.reply.value, np.ndarray):
                outcome = self.framed(outcome)
            self.post(outcome)

    def framed(self, outcome: Outcome) -> Outcome:
        """A frame's outcome: its array numbered and wrapped in an Image, and put in the camera's ring if
        it has one (a client on this machine wants it)."""
        job, data = outcome.job, outcome.reply.value
        frame = self.frames[job.device] = self.frames.get(job.device, 0) + 1
        image = Image(data, frame, time.time())
        shared = None
        if job.ring is not None:
            try:
                shared = job.ring.put(np.ascontiguousarray(data), frame, image.timestamp)
            except Exception as exc:  # /dev/shm full, say: the frame still travels, as bytes
                if not getattr(job.ring, "reported", False):
                    job.ring.reported = True
                    logging.getLogger("labctl.lanes").error("frames of %s go as bytes, not through shared "
                                                           "memory: %s", job.device, exc)
        return attrs.evolve(outcome, reply=Reply(outcome.reply.request_id, image), shared=shared)


def describe(name: str, driver: Device) -> DeviceDescription:
    """What a driver is and what a client may ask of it."""
    interfaces = tuple(cls.__name__ for cls in type(driver).__mro__
                       if cls.__module__ == hw_interfaces.__name__ and cls.__name__ != "ABC")
    methods, remote = [], remote_methods(driver)
    for method_name, method in sorted(remote.items()):
        message = MESSAGE_FOR_METHOD.get(method_name)
        methods.append(MethodInfo(method_name, _params(method), inspect.getdoc(method) or "",
                                  message.__name__ if message else Call.__name__))
    valves = driver.describe_valves() if isinstance(driver, ValveController) else {}
    # Only the limits of methods a client can call: the description names nothing else.
    limits = {m: limit for m, limit in declared_time_limits(driver).items() if m in remote}
    return DeviceDescription(name, type(driver).__name__, interfaces, tuple(methods),
                             tuple(f"{name}.{sub}" for sub in driver.sub_devices()), valves, limits)


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


def unknown_method_text(name: str, driver: Device, method_name: str, request: Request) -> str:
    """The error text for a method or message a driver does not have."""
    accepted = sorted({MESSAGE_FOR_METHOD[m].__name__ for m in remote_methods(driver) if m in MESSAGE_FOR_METHOD})
    if isinstance(request, Call):
        return (f"{name} ({type(driver).__name__}) has no method {method_name!r}; "
                f"methods: {', '.join(sorted(remote_methods(driver)))}")
    return (f"{name} ({type(driver).__name__}) does not accept {type(request).__name__}; it accepts: "
            f"{', '.join(accepted + ['Call'])}")
