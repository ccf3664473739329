"""The device host's desk for its lane: requests taken in, replies and frames sent out, camera
streams and their shared-memory rings, and the report to the supervisor of what was answered.

Everything here runs on the device host actor's thread, except FrameRing.put, which the driver
worker calls for the frame it has just acquired.
"""

from __future__ import annotations

import collections
import logging

from .framering import FrameRing, SharedFrame
from .lanes import Conn, LaneServer
from .messages import Failure, FramesTaken, Image, Notice, Reply, Request, StreamEnd, StreamFrame, Subscribe
from .protocol import Deliver, LaneDone

log = logging.getLogger("labctl.lanes")

STREAM = "stream"   # the reply_to of a frame acquired for a camera's subscribers, not for a request
STREAM_WINDOW = 4   # frames sent to a subscriber and not yet taken in: past this, it misses frames


class LaneDesk:
    """One device process's lane: its server, its cameras' subscribers and rings, its counts."""

    def __init__(self, unit: str, devices: tuple[str, ...], cameras: set[str], key: bytes, socket_dir: str,
                 bind: str, max_bytes: int, lab_port: int) -> None:
        self.server = LaneServer(key, unit, devices, socket_dir, bind, max_bytes)
        self.cameras = cameras
        self.lab_port = lab_port
        self.rings: dict[str, FrameRing] = {}
        self.counts: dict[str, list[int]] = {}                  # device -> [answered, failed] since the last report
        self.failures: collections.deque = collections.deque(maxlen=10)
        self.turn = 0

    @property
    def lane(self):
        return self.server.lane

    def fds(self) -> list[int]:
        return self.server.fds()

    def receive(self, fds) -> list[Deliver]:
        """Read the ready sockets; the requests to queue (subscriptions are taken here)."""
        deliveries = []
        for conn, message in self.server.ready(fds):
            if isinstance(message, Subscribe):
                self.subscribe(conn, message)
            elif isinstance(message, FramesTaken):
                if message.device in conn.streams:
                    conn.streams[message.device] = max(0, conn.streams[message.device] - message.count)
            elif isinstance(message, Request) and message.request_id:
                conn.in_flight += 1
                deliveries.append(Deliver(message, conn))
            else:
                self.server.drop(conn, f"it sent {type(message).__name__}, which is not a request", warn=True)
        return deliveries

    def subscribe(self, conn: Conn, message: Subscribe) -> None:
        """Send this connection every frame the camera produces from now on (another device: its changes)."""
        if message.device in self.cameras:
            conn.streams[message.device] = 0   # frames in flight to it
        elif message.device in self.server.lane.devices:
            conn.notices.add(message.device)
        else:
            conn.send(Failure(message.request_id, "unknown_device", "UnknownDevice",
                              f"no device {message.device!r} in this process; it has: "
                              f"{', '.join(self.server.lane.devices)}", message.device))
            return
        conn.send(Reply(message.request_id, True))

    def notice(self, device: str, kind: str, detail: dict, when: float) -> None:
        """Hand a device's change to the connections that subscribed to it (and to its controller's)."""
        owner = device.split(".")[0]
        for conn in self.server.conns.values():
            if device in conn.notices or owner in conn.notices:
                conn.send(Notice(device, kind, detail, when))

    def subscribers(self, device: str) -> list[Conn]:
        return [conn for conn in self.server.conns.values() if device in conn.streams]

    def next_stream(self) -> str | None:
        """A camera that has subscribers, taking turns among them; None if none has."""
        live = sorted({device for conn in self.server.conns.values() for device in conn.streams})
        if not live:
            return None
        self.turn += 1
        return live[self.turn % len(live)]

    def ring_for(self, device: str, reply_to) -> FrameRing | None:
        """The camera's ring when its next frame goes to a client on this machine; else None."""
        if device not in self.cameras:
            return None
        local = (isinstance(reply_to, Conn) and reply_to.kind == "unix") or any(
            conn.kind == "unix" for conn in self.subscribers(device))
        if not local:
            return None
        if device not in self.rings:
            self.rings[device] = FrameRing(self.lab_port, device)
        return self.rings[device]

    def count(self, device: str, failed: bool) -> None:
        """Count a request this process answered (by lane or Pyro), for the next report."""
        counts = self.counts.setdefault(device, [0, 0])
        counts[0] += 1
        counts[1] += int(failed)

    def answer(self, conn: Conn, device: str, reply, shared: SharedFrame | None) -> None:
        """Send a request's reply on its connection (a frame in shared memory by reference), and count it."""
        conn.in_flight -= 1
        self.count(device, isinstance(reply, Failure))
        if isinstance(reply, Failure):
            self.failures.append((device, reply.error_type, reply.message[:300]))
        elif shared is not None and conn.kind == "unix" and isinstance(reply, Reply):
            reply = Reply(reply.request_id, shared)
        conn.send(reply)

    def publish(self, device: str, image: Image, shared: SharedFrame | None) -> None:
        """Hand a camera's new frame to its subscribers. One that has not taken in the last
        STREAM_WINDOW frames misses it (and learns of it from the gap in frame numbers): a subscriber
        that falls behind gets recent frames, not a queue of old ones."""
        for conn in self.subscribers(device):
            if conn.streams[device] >= STREAM_WINDOW:
                continue
            item = shared if shared is not None and conn.kind == "unix" else image
            if conn.send(StreamFrame(device, image.frame, item), droppable=True):
                conn.streams[device] += 1

    def end_streams(self, device: str, failure: Failure) -> None:
        """Tell a camera's subscribers its stream stopped, and why."""
        for conn in self.subscribers(device):
            del conn.streams[device]
            conn.send(StreamEnd(device, failure.error_type, f"{device}: {failure.message}"))

    def report(self, unit: str, incarnation: int) -> LaneDone | None:
        """What was answered on the lane since the last report, for the supervisor; None if nothing."""
        if not self.counts:
            return None
        report = LaneDone(unit, incarnation, {d: tuple(c) for d, c in self.counts.items()}, tuple(self.failures))
        self.counts.clear()
        self.failures.clear()
        return report

    def sweep(self) -> None:
        self.server.sweep()

    def close(self, why: str) -> None:
        """End every stream saying `why`, close every connection and socket, remove the rings."""
        for conn in self.server.conns.values():
            for device in conn.streams:
                conn.send(StreamEnd(device, "DeviceUnavailable", f"{device}: {why}"))
            conn.streams.clear()
        self.server.close()
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()
