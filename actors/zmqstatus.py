"""The lab's status channel on ZMQ (driver `zmq-status`, needs `pip install 'labctl[zmq]'`): what
Pychron's dashboard and other nodes listen to.

PUB on `port`: single frames `<topic> <json>`, the topics `valve`, `lock`, `refused`, `lifecycle`
(a device's process lost or back, its link degraded or recovered), `temperature`, and `dashboard
{"kind": "heartbeat", ...}` every `heartbeat_s`. REP on `port + 1`: `ping` -> `echo`,
`config_json` and `status` -> JSON, anything else -> `error ...` (Pychron's REP never answered an
unknown request and stuck; this one always answers). Changes come pushed from the devices' own
processes by their lanes (a valve change is published within milliseconds); a ZMQ socket is used
by one thread only.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

from labctl.hardware import Device, HardwareError, remote

log = logging.getLogger("labctl.zmq")

TOPICS = {"valve": "valve", "valve_lock": "lock", "valve_refused": "refused", "degraded": "lifecycle",
          "recovered": "lifecycle", "setpoint": "setpoint"}
RETRY_S = 0.5


class ZmqStatus(Device):
    """Publishes the changes of `devices` (and the temperature of `temperatures`) on ZMQ PUB `port`,
    and answers on REP `port + 1`."""

    def __init__(self, port: int = 5555, bind: str = "127.0.0.1", devices: list[str] | tuple = (),
                 temperatures: list[str] | tuple = (), heartbeat_s: float = 1.0, poll_s: float = 1.0) -> None:
        try:
            import zmq
        except ImportError:
            raise HardwareError("the zmq-status device needs pyzmq: pip install 'labctl[zmq]'") from None
        if not 0 < float(heartbeat_s) <= 2.0:
            raise HardwareError(f"heartbeat_s must be in (0, 2] (dashboards expect one at least every 2 s), "
                                f"got {heartbeat_s}")
        self.port, self.bind = int(port), str(bind)
        self.devices, self.temperatures = [str(d) for d in devices], [str(d) for d in temperatures]
        self.heartbeat_s, self.poll_s = float(heartbeat_s), float(poll_s)
        self.context = zmq.Context()
        self.pub = self.context.socket(zmq.PUB)
        self.rep = self.context.socket(zmq.REP)
        for sock in (self.pub, self.rep):
            sock.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://{self.bind}:{self.port}")
        self.rep.bind(f"tcp://{self.bind}:{self.port + 1}")
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.connected: dict[str, bool] = {name: False for name in self.devices}
        self.published = 0
        self.subscriptions: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []
        self.lab = None

    def attach_lab(self, lab) -> None:
        """Start publishing, with `lab` (a client of this lab) to reach its devices."""
        self.lab = lab
        targets = [(self._publish_loop, ()), (self._answer_loop, ())]
        targets += [(self._watch, (name,)) for name in self.devices]
        if self.temperatures:
            targets.append((self._temperature_loop, ()))
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, name="labctl-zmq", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _do_shutdown(self) -> None:
        self.stopping.set()
        for subscription in list(self.subscriptions.values()):
            subscription.close()   # a watcher blocked in its lane wakes and ends
        for thread in self.threads:
            thread.join(2.0)
        self.pub.close()
        self.rep.close()
        self.context.term()
        if self.lab is not None:
            self.lab.close()

    @remote
    def status(self) -> dict[str, Any]:
        return {"port": self.port, "connected": dict(self.connected), "published": self.published}

    def publish(self, topic: str, payload: dict) -> None:
        """Queue one message (sent by the publishing thread, which alone uses the PUB socket)."""
        self.outbox.put(f"{topic} {json.dumps({**payload, 'ts': time.time()})}")

    # -- the threads -------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        beat = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= beat:
                beat = now + self.heartbeat_s
                self.publish("dashboard", {"kind": "heartbeat", "devices": dict(self.connected)})
            try:
                message = self.outbox.get(timeout=max(0.0, beat - time.monotonic()))
            except queue.Empty:
                continue
            self.pub.send_string(message)
            self.published += 1

    def _answer_loop(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self.rep, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(100):
                continue
            try:
                request = self.rep.recv().decode("utf-8", "replace").strip()
            except zmq.ZMQError:
                continue
            self.rep.send_string(self._answer(request))   # always an answer: REP must alternate

    def _answer(self, request: str) -> str:
        if request == "ping":
            return "echo"
        if request == "config_json":
            return json.dumps({"pub": self.port, "rep": self.port + 1, "devices": self.devices,
                               "temperatures": self.temperatures, "heartbeat_s": self.heartbeat_s,
                               "topics": sorted({*TOPICS.values(), "temperature", "dashboard"})})
        if request == "status":
            return json.dumps({"connected": self.connected, "published": self.published})
        return f"error unknown request: {request[:100]!r}; ask ping, config_json or status"

    def _watch(self, device: str) -> None:
        while not self.stopping.is_set():
            try:
                subscription = self.subscriptions[device] = self.lab.notices(device)
            except Exception:
                self.stopping.wait(RETRY_S)   # not running (yet): its lane is published once it is
                continue
            self.connected[device] = True
            self.publish("lifecycle", {"device": device, "kind": "running"})
            try:
                for notice in subscription:
                    self.publish(TOPICS.get(notice.kind, notice.kind),
                                 {"device": notice.device, "kind": notice.kind, **notice.detail})
            except Exception as exc:   # its process ended (a LabError), or the lane broke
                if not self.stopping.is_set():
                    self.connected[device] = False
                    self.publish("lifecycle", {"device": device, "kind": "lost", "error": str(exc)})

    def _temperature_loop(self) -> None:
        from labctl.actors.errors import LabError
        from labctl.actors.messages import ReadTemperature

        while not self.stopping.wait(self.poll_s):
            for device in self.temperatures:
                try:
                    self.publish("temperature", {"device": device, "value": self.lab.send(device, ReadTemperature())})
                except LabError:
                    continue
