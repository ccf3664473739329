"""A device process's Pyro4 facade: its devices served at PYRO:<name>@<host>:<port>, as
python-microscope's device server serves them, so that Cockpit, `microscope.clients.Client`,
`DataClient` and a plain `Pyro4.Proxy` work unchanged against labctl.

Pyro4 answers each connection on a thread of its own; a call made there is not run there. It
becomes a `Call` request queued in the device process like any other (serialized with the lab's
other requests to that device, timed against its limits, counted, logged), and the Pyro thread
waits for its reply. A microscope device is called with microscope's own signatures (through the
driver's `scope_call`, `scope_get`, `scope_set`); a labctl driver with its remote methods. A
controller's `devices` and a stage's `axes` come back as proxies (Pyro's autoproxy), as from the
device server.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from typing import Any

from .messages import Call, Failure

log = logging.getLogger("labctl.pyro")


class PyroCall:
    """A Pyro thread's call waiting for the device process to answer it."""

    def __init__(self, request: Call) -> None:
        self.request = request
        self.reply = None
        self._done = threading.Event()

    def answer(self, reply) -> None:
        self.reply = reply
        self._done.set()

    def wait(self) -> Any:
        self._done.wait()
        if isinstance(self.reply, Failure):
            # A builtin exception: a client without labctl installed (Cockpit) can unpickle it.
            raise RuntimeError(f"{self.reply.error_type}: {self.reply.message}")
        return self.reply.value


def configure_pyro():
    """Pyro4, configured as python-microscope's device server configures it."""
    import Pyro4

    Pyro4.config.SERIALIZERS_ACCEPTED.add("pickle")
    Pyro4.config.SERIALIZER = "pickle"
    Pyro4.config.REQUIRE_EXPOSE = False
    Pyro4.config.AUTOPROXY = True
    return Pyro4


class PyroDesk:
    """The Pyro daemon of one device process, and the queue of its calls for the device host."""

    def __init__(self, host: str, port: int, hmac_key: bytes | None) -> None:
        pyro = configure_pyro()
        self.inbox: queue.SimpleQueue[PyroCall] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.daemon = pyro.Daemon(host=host, port=port)
        if hmac_key:
            self.daemon._pyroHmacKey = hmac_key
        self.thread: threading.Thread | None = None

    def serve(self, object_id: str, name: str, driver) -> None:
        """Serve the driver called `name` (and its parts) as Pyro object `object_id`."""
        self.daemon.register(self.facade(name, driver), object_id)

    def facade(self, name: str, driver) -> object:
        """The object Pyro serves for the driver called `name`."""
        scope = getattr(driver, "scope", None)
        if scope is not None:
            return scope_facade(self, name, driver, scope)
        return driver_facade(self, name, driver)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.daemon.requestLoop, name="labctl-pyro", daemon=True)
        self.thread.start()
        log.info("serving %s", ", ".join(str(self.daemon.uriFor(obj)) for obj in list(self.daemon.objectsById.values())
                                         if not str(self.daemon.uriFor(obj)).startswith("PYRO:Pyro.")))

    def call(self, device: str, method: str, args: tuple, kwargs: dict) -> Any:
        """From a Pyro thread: have the device process run `method` and wait for its reply."""
        call = PyroCall(Call(method=method, args=args, kwargs=kwargs, device=device, request_id=uuid.uuid4().hex))
        self.inbox.put(call)
        os.write(self.wake_w, b"x")
        return call.wait()

    def take(self) -> list[PyroCall]:
        """From the device host's thread: the calls that came in."""
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        calls = []
        while True:
            try:
                calls.append(self.inbox.get_nowait())
            except queue.Empty:
                return calls

    def close(self) -> None:
        try:
            self.daemon.shutdown()
        except Exception:
            log.exception("stopping the Pyro daemon")


def scope_facade(desk: PyroDesk, name: str, driver, scope) -> object:
    """A facade with the microscope object's public methods and properties, each a call queued in
    the device process; a controller's devices and a stage's axes are facades too (autoproxied)."""
    import microscope.abc

    members = {}
    for member in dir(type(scope)):
        if member.startswith("_"):
            continue
        static = _static(type(scope), member)
        if isinstance(static, property):
            if member == "devices" and isinstance(scope, microscope.abc.Controller) or \
                    member == "axes" and isinstance(scope, microscope.abc.Stage):
                # its parts, each served too, so that Pyro hands the client proxies of them
                parts = {key: desk.facade(f"{name}.{key}", part) for key, part in driver.sub_devices().items()}
                for key, part in parts.items():
                    desk.daemon.register(part, f"{name}.{key}")
                members[member] = property(lambda self, parts=parts: dict(parts))
                continue
            members[member] = property(
                lambda self, member=member: desk.call(name, "scope_get", (member,), {}),
                (lambda self, value, member=member: desk.call(name, "scope_set", (member, value), {}))
                if static.fset else None)
        elif callable(static):
            members[member] = _method(desk, name, "scope_call", member)
    return type(type(scope).__name__, (), members)()


def driver_facade(desk: PyroDesk, name: str, driver) -> object:
    """A facade with a labctl driver's remote methods."""
    from labctl.hardware import remote_methods

    members = {method: _method(desk, name, method, None) for method in remote_methods(driver)}
    return type(type(driver).__name__, (), members)()


def _method(desk: PyroDesk, device: str, method: str, member: str | None):
    if member is None:
        def call(self, *args, **kwargs):
            return desk.call(device, method, args, kwargs)
    else:
        def call(self, *args, **kwargs):
            return desk.call(device, method, (member, *args), kwargs)
    call.__name__ = member or method
    return call


def _static(cls: type, member: str):
    import inspect

    return inspect.getattr_static(cls, member, None)


class PyroDesks:
    """The Pyro daemons of one device process: one per (host, port) its devices are served on."""

    def __init__(self, devices, owned: list[tuple[str, Any]]) -> None:
        self.desks: dict[tuple[str, int], PyroDesk] = {}
        drivers = dict(owned)
        for spec in devices:
            if spec.pyro is None:
                continue
            where = (spec.pyro.host, spec.pyro.port)
            desk = self.desks.get(where)
            if desk is None:
                desk = self.desks[where] = PyroDesk(*where, read_key(spec.pyro.hmac_key_file))
            if spec.name in drivers:
                desk.serve(spec.pyro.name or spec.name, spec.name, drivers[spec.name])
            for name, driver in owned:   # a factory's parts, by their own names, as the device server does
                if name.startswith(spec.name + "."):
                    desk.serve(name[len(spec.name) + 1:], name, driver)
        for desk in self.desks.values():
            desk.start()

    def fds(self) -> list[int]:
        return [desk.wake_r for desk in self.desks.values()]

    def take(self, ready) -> list[PyroCall]:
        """The calls that came in on the daemons whose pipes are in `ready`."""
        return [call for desk in self.desks.values() if desk.wake_r in ready for call in desk.take()]

    def close(self) -> None:
        for desk in self.desks.values():
            desk.close()


def read_key(path: str) -> bytes | None:
    """A Pyro HMAC key from its file (its text, stripped), or None without a file."""
    if not path:
        return None
    with open(path, "rb") as file:
        return file.read().strip()
