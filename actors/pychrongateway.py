"""A Pychron command gateway: a lab's valves, furnace and flags served over Pychron's extraction-line
protocol (../shared/PYCHRON.md), so that an unmodified pyExperiment can drive them.

It runs as a device of the lab (driver `pychron-gateway`: its own process, supervised, restarted,
in `labctl status`), and reaches the lab's devices by their lanes like any client, so every rule
of the valve controllers (interlocks, locks, owners) applies to what it asks. One request per
connection, reply then close, as Pychron's clients expect. What the StatusMonitor polls (states,
locks, owners, checksums) is answered at once from what the gateway keeps, never queued behind a
slow actuation: it reads each controller's valves once, then follows the changes each controller's
process pushes on its lane (and its own actuations' results); the furnace is read every `poll_s`.
Actuations run one at a time per device, on a thread per device.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labctl.hardware import Device, HardwareError, remote
from labctl.hardware import pychronwire as wire

log = logging.getLogger("labctl.gateway")

IDLE_S = 5.0                 # a connection that sends nothing (or half a request) for this long is dropped
REQUEST_WAIT_S = 0.1         # after a request's first byte, as long as Pychron's server waits for the rest
MAX_REQUEST = 64 << 10
FLAG_EXPIRY_S = 60.0
VERSION = "1.0"


class PychronGateway(Device):
    """Serves Pychron's valve, furnace and flag commands on `port` for the named valve controllers
    (`valves`), furnace (`furnace`) and flags (`flags`)."""

    def __init__(self, port: int = 1061, bind: str = "127.0.0.1", valves: list[str] | tuple = (),
                 furnace: str = "", flags: list[str] | tuple = (), unknown: str = "close",
                 poll_s: float = 0.2) -> None:
        if unknown not in ("close", "error"):
            raise HardwareError(f"unknown must be 'close' (Pychron's way: close without a reply) or 'error' "
                                f"(answer ERROR 003), got {unknown!r}")
        self.port, self.bind, self.unknown, self.poll_s = int(port), str(bind), unknown, float(poll_s)
        self.controllers, self.furnace = [str(v) for v in valves], str(furnace)
        self.flags: dict[str, list] = {str(name): [0, 0.0] for name in flags}   # name -> [value, last ping]
        self.started = time.time()
        self.lab = None
        self.valves: dict[str, str] = {}           # valve -> its controller, in configuration order
        self.state: dict[str, bool] = {}           # valve -> open
        self.locked: dict[str, bool] = {}
        self.owners: dict[str, str] = {}
        self.heat: dict[str, float] = {}           # temperature, setpoint, output
        self.lock = threading.Lock()               # guards the kept state between the threads
        self.workers: dict[str, ThreadPoolExecutor] = {}
        self.stopping = threading.Event()
        self.subscriptions: dict[str, Any] = {}
        self.served = 0
        self.listener = socket.create_server((self.bind, self.port), backlog=512)
        self.listener.setblocking(False)

    # -- lifecycle ---------------------------------------------------------------------------

    def attach_lab(self, lab) -> None:
        """Start serving, with `lab` (a client of this lab) to reach its devices."""
        self.lab = lab
        for name in {*self.controllers, *([self.furnace] if self.furnace else [])}:
            self.workers[name] = ThreadPoolExecutor(1, thread_name_prefix=f"labctl-gateway-{name}")
        for controller in self.controllers:
            threading.Thread(target=self._follow, args=(controller,), name="labctl-gateway-follow",
                             daemon=True).start()
        if self.furnace:
            threading.Thread(target=self._poll_furnace, name="labctl-gateway-poll", daemon=True).start()
        threading.Thread(target=self._serve, name="labctl-gateway", daemon=True).start()

    def _do_shutdown(self) -> None:
        self.stopping.set()
        for subscription in list(self.subscriptions.values()):
            subscription.close()
        for worker in self.workers.values():
            worker.shutdown(wait=False, cancel_futures=True)
        self.listener.close()
        if self.lab is not None:
            self.lab.close()

    @remote
    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"port": self.port, "bind": self.bind, "valves": len(self.valves), "served": self.served,
                    "flags": {name: value for name, (value, _) in self.flags.items()}}

    # -- what it keeps -----------------------------------------------------------------------

    def _follow(self, controller: str) -> None:
        """Keep a controller's valves current: subscribe to its changes first, then read them all (so
        that no change falls between), then apply each change as it comes; again after a restart."""
        while not self.stopping.is_set():
            try:
                subscription = self.subscriptions[controller] = self.lab.notices(controller)
                self._refresh(controller)
                for notice in subscription:
                    self._apply(notice)
            except Exception as exc:  # not running yet, restarting: its valves keep their last state
                log.debug("following %s: %s", controller, exc)
                self.stopping.wait(self.poll_s)

    def _apply(self, notice) -> None:
        with self.lock:
            valve = notice.detail.get("valve")
            if notice.kind == "valve" and valve in self.state:
                self.state[valve] = notice.detail.get("state") == "open"
            elif notice.kind == "valve_lock" and valve in self.locked:
                self.locked[valve] = bool(notice.detail.get("locked"))

    def _poll_furnace(self) -> None:
        while not self.stopping.wait(self.poll_s):
            try:
                self._refresh_furnace()
            except Exception as exc:  # not running yet, restarting: the last values stay
                log.debug("polling %s: %s", self.furnace, exc)

    def _refresh(self, controller: str) -> None:
        from labctl.actors.messages import Call, GetValveStates

        states = self.lab.send(controller, GetValveStates())
        locks = self.lab.send(controller, Call("get_locks"))
        rules = self.lab.send(controller, Call("valve_rules")) if not any(
            c == controller for c in self.valves.values()) else None
        with self.lock:
            if rules is not None:
                for valve, rule in rules.items():
                    self.valves[valve] = controller
                    self.owners[valve] = rule.get("owner", "")
                self.valves = {v: c for ctrl in self.controllers for v, c in self.valves.items() if c == ctrl}
            # A reading older than a change is set right by that change's notice, which follows it
            # (notices are applied only after this reading, in the order the controller made them).
            for valve, state in states.items():
                self.state[valve] = state == "open"
            self.locked.update(locks)

    def _refresh_furnace(self) -> None:
        from labctl.actors.messages import Call, GetSetpoint, ReadTemperature

        values = {"temperature": self.lab.send(self.furnace, ReadTemperature()),
                  "setpoint": self.lab.send(self.furnace, GetSetpoint()),
                  "output": self.lab.send(self.furnace, Call("get_output"))}
        with self.lock:
            self.heat.update(values)

    # -- the server --------------------------------------------------------------------------

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        pending: dict[socket.socket, list] = {}   # conn -> [bytes so far, opened, first byte at]
        while not self.stopping.is_set():
            for key, _ in selector.select(timeout=0.05):
                if key.fileobj is self.listener:
                    self._accept(selector, pending)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(MAX_REQUEST + 1)
                except OSError:
                    data = b""
                if not data:
                    self._drop(selector, pending, conn)
                    continue
                entry = pending[conn]
                entry[0] += data
                entry[2] = entry[2] or time.monotonic()
                if complete(entry[0]):
                    self._take(selector, pending, conn)
            now = time.monotonic()
            for conn, (data, opened, first) in list(pending.items()):
                if first and now - first >= REQUEST_WAIT_S:
                    self._take(selector, pending, conn)   # Pychron's server also answers what came so far
                elif now - opened >= IDLE_S:
                    self._drop(selector, pending, conn)
        selector.close()

    def _accept(self, selector, pending) -> None:
        for _ in range(64):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, OSError):
                return
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ)
            pending[conn] = [b"", time.monotonic(), 0.0]

    @staticmethod
    def _drop(selector, pending, conn) -> None:
        pending.pop(conn, None)
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _take(self, selector, pending, conn) -> None:
        data = pending.pop(conn)[0]
        selector.unregister(conn)
        try:
            self._answer(data, conn)
        except Exception:  # nothing a client sends may stop the server: that client is closed, others go on
            log.exception("gateway: a request of %d bytes could not be handled", len(data))
            conn.close()

    def _answer(self, data: bytes, conn) -> None:
        try:
            peer = conn.getpeername()[0].removeprefix("::ffff:")   # an IPv4 client of a dual-stack bind
        except OSError:
            peer = "unknown"   # never '' (the lab's own clients): an owned valve stays refused
        if len(data) > MAX_REQUEST:
            # Answered, then the rest of it read and dropped, on a thread of its own: closing with
            # unread bytes would reset the connection before the client could read the answer.
            threading.Thread(target=self._refuse_oversize, args=(conn,), daemon=True).start()
            return
        try:
            request = wire.parse(data)
        except wire.ProtocolError as exc:
            framed = wire.is_framed(data)
            if exc.code == wire.INVALID_COMMAND and self.unknown == "close":
                self._reply(conn, None, framed)
            else:
                self._reply(conn, exc.reply(), framed)
            return
        with self.lock:
            self.served += 1
        handler = COMMANDS.get(request.command)
        if handler is None:
            answer = wire.error(wire.INVALID_COMMAND, f"invalid command: {request.command}") \
                if self.unknown == "error" else None
            self._reply(conn, answer, request.framed)
            return
        answer = handler(self, request, peer)
        if isinstance(answer, Deferred):
            self.workers[answer.device].submit(self._finish, conn, answer, request.framed)
        else:
            self._reply(conn, answer, request.framed)

    def _finish(self, conn, deferred: Deferred, framed: bool) -> None:
        try:
            answer = deferred.work()
        except Exception as exc:  # a fault of the gateway's own: still answer, never leave a client hanging
            log.exception("gateway: %s failed", deferred.device)
            answer = wire.error(wire.VALVE_ACTUATION_FAILED, f"{deferred.device}: {exc}")
        self._reply(conn, answer, framed)

    @staticmethod
    def _refuse_oversize(conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(wire.error(wire.INVALID_ARGUMENTS, f"invalid arguments: a request of over {MAX_REQUEST} "
                                                            "bytes").encode())
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and conn.recv(65536):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _reply(conn: socket.socket, text: str | None, framed: bool) -> None:
        try:
            if text is not None:
                conn.setblocking(True)
                conn.settimeout(2.0)
                conn.sendall((wire.frame(text) if framed else text).encode("utf-8"))
        except (OSError, ValueError):   # ValueError: an answer too long for a {XXXX} frame
            pass
        finally:
            conn.close()

    # -- valves ------------------------------------------------------------------------------

    def _valve_arg(self, request) -> str | None:
        if len(request.args) != 1 or request.args[0] not in self.valves:
            return None
        return request.args[0]

    def _actuate(self, request, peer: str):
        valve = self._valve_arg(request)
        if valve is None:
            return wire.error(wire.INVALID_ARGUMENTS, f"invalid arguments: {request.command} "
                                                      f"{','.join(request.args)}".rstrip())
        open_ = request.command == "Open"

        def work() -> str:
            from labctl.actors.errors import LabError
            from labctl.actors.messages import Call

            try:
                moved = self.lab.send(self.valves[valve], Call("actuate", (valve, open_), {"requester": peer}))
            except LabError as exc:
                log.info("%s %s for %s refused: %s", request.command, valve, peer or "a client", exc)
                return wire.error(wire.VALVE_ACTUATION_FAILED, f"Valve {valve} failed to actuate "
                                                     f"{'open' if open_ else 'close'}")
            if moved:
                with self.lock:
                    self.state[valve] = open_   # so that the client's GetIndicatorState 50 ms later agrees
            return "OK" if moved else "ok"

        return Deferred(self.valves[valve], work)

    def _state(self, request, peer: str):
        valve = self._valve_arg(request)
        if valve is None:
            name = request.args[0] if request.args else ""
            return wire.error(wire.INVALID_VALVE, f"{name} is not a registered valve name")
        with self.lock:
            return wire.render(self.state.get(valve, False))

    def _lock_state(self, request, peer: str):
        valve = self._valve_arg(request)
        with self.lock:
            return wire.render(self.locked.get(valve)) if valve is not None and valve in self.locked else "No Response"

    def _states(self, request, peer: str):
        with self.lock:
            return wire.with_crc(wire.state_word((v, self.state.get(v, False)) for v in self.valves))

    def _lock_states(self, request, peer: str):
        with self.lock:
            return wire.with_crc(wire.state_word((v, self.locked.get(v, False)) for v in self.valves))

    def _owners(self, request, peer: str):
        with self.lock:
            groups: dict[str, list[str]] = {}
            for valve in self.valves:
                groups.setdefault(self.owners.get(valve, ""), []).append(valve)
        parts = [",".join(groups.pop(""))] if "" in groups else []
        parts += [f"{owner}-{','.join(names)}" for owner, names in groups.items()]
        return wire.with_crc(":".join(parts))

    def _checksum(self, request, peer: str):
        with self.lock:
            return str(wire.state_checksum((name, self.state.get(name, False), self.locked.get(name, False))
                                           for name in request.args if name in self.valves))

    # -- flags, gauges -----------------------------------------------------------------------

    def _flag(self, request, peer: str):
        name = request.args[0] if request.args else ""
        if name not in self.flags:
            return wire.error(wire.DEVICE_NOT_CONNECTED, f"device {name} not connected")
        with self.lock:
            flag = self.flags[name]
            if time.monotonic() - flag[1] > FLAG_EXPIRY_S:
                flag[0] = 0   # not pinged for a minute: its holder is gone
            if request.command == "Set":
                if len(request.args) != 2 or request.args[1] not in ("0", "1"):
                    return wire.error(wire.INVALID_ARGUMENTS, f"invalid arguments: Set {' '.join(request.args)}")
                flag[0], flag[1] = int(request.args[1]), time.monotonic()
                return "OK"
            if request.command == "Ping":
                flag[1] = time.monotonic()
                return wire.render(time.time())
            return str(flag[0])

    def _pressure(self, request, peer: str):
        what = " ".join(request.args)
        return wire.error(wire.GAUGE_NOT_AVAILABLE, f"{what} not available")

    # -- furnace -----------------------------------------------------------------------------

    def _furnace_value(self, key: str):
        def read(request, peer: str):
            if not self.furnace:
                return wire.error(wire.DEVICE_NOT_CONNECTED, "device furnace not connected")
            with self.lock:
                return wire.render(float(self.heat[key])) if key in self.heat else "No Response"
        return read

    def _set_setpoint(self, request, peer: str):
        if not self.furnace:
            return wire.error(wire.DEVICE_NOT_CONNECTED, "device furnace not connected")
        try:
            value = float(request.args[0])
        except (IndexError, ValueError):
            return wire.error(wire.INVALID_ARGUMENTS, f"invalid arguments: SetSetpoint {','.join(request.args)}")

        def work() -> str:
            from labctl.actors.errors import LabError
            from labctl.actors.messages import SetSetpoint

            try:
                value_set = self.lab.send(self.furnace, SetSetpoint(value))
            except LabError as exc:
                return wire.error(wire.INVALID_ARGUMENTS, f"invalid arguments: SetSetpoint {value}: {exc}")
            with self.lock:
                self.heat["setpoint"] = value_set
            return "OK"

        return Deferred(self.furnace, work)

    def _summary(self, request, peer: str):
        with self.lock:
            return json.dumps({"setpoint": self.heat.get("setpoint"), "response": self.heat.get("temperature"),
                               "output": self.heat.get("output")})


def complete(data: bytes) -> bool:
    """Whether a request has all come: a framed one its declared length, a raw one its CR or LF."""
    if len(data) > MAX_REQUEST:
        return True
    if wire.is_framed(data) and len(data) >= 6:
        try:
            return len(data) >= int(data[1:5], 16)
        except ValueError:
            return True   # not a frame header after all: refused as soon as it is read
    return b"\r" in data or b"\n" in data


class Deferred:
    """An answer that needs a device: worked out on that device's own thread."""

    def __init__(self, device: str, work) -> None:
        self.device, self.work = device, work


def _fixed(text_of):
    return lambda gateway, request, peer: text_of(gateway)


COMMANDS = {
    "Open": PychronGateway._actuate, "Close": PychronGateway._actuate,
    "GetValveState": PychronGateway._state, "GetIndicatorState": PychronGateway._state,
    "GetValveLockState": PychronGateway._lock_state, "GetValveStates": PychronGateway._states,
    "GetValveLockStates": PychronGateway._lock_states, "GetValveOwners": PychronGateway._owners,
    "GetStateChecksum": PychronGateway._checksum,
    "Read": PychronGateway._flag, "Set": PychronGateway._flag, "Ping": PychronGateway._flag,
    "GetPressure": PychronGateway._pressure,
    "GetTemperature": lambda g, r, p: g._furnace_value("temperature")(r, p),
    "GetProcessValue": lambda g, r, p: g._furnace_value("temperature")(r, p),
    "GetSetpoint": lambda g, r, p: g._furnace_value("setpoint")(r, p),
    "GetPercentOutput": lambda g, r, p: g._furnace_value("output")(r, p),
    "SetSetpoint": PychronGateway._set_setpoint,
    "GetVersion": _fixed(lambda g: VERSION),
    "GetHeartBeat": _fixed(lambda g: f"{time.time()},{g.started}"),
    "GetFurnaceSummary": PychronGateway._summary,
}
