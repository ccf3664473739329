"""A client's lanes: direct connections to device processes, learnt from the supervisor once.

Each thread has its own connection to each device process (so two threads never see each other's
replies) and sends one request at a time on it. A request is sent once: if the connection drops
after it went out, the process ended with the request in flight, and the caller gets a failure
saying so, never a second attempt. Only a request that never left (the process was gone before it
was sent) goes to the device's new process, or through the supervisor.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any

from . import lanewire
from .errors import DeviceError, DeviceUnavailable, LabError, LabTimeout
from .framering import FrameOverwritten, RingReader, SharedFrame
from .messages import (Failure, FramesTaken, GetLanes, Image, Lane, Reply, Request, StreamEnd, StreamFrame,
                       Subscribe, WhyEnded)

MODES = ("auto", "unix", "tcp", "off")
CONNECT_TIMEOUT_S = 2.0
MAX_REPLY_BYTES = 4 << 30
UNREACHABLE_RETRY_S = 30.0   # a lane that could not be reached is tried again after this
WHY_TIMEOUT_S = 5.0          # the supervisor's answer to why a process's connection dropped

_MACHINE = None


def this_machine() -> str:
    """This machine's identity, as device processes report theirs."""
    global _MACHINE
    if _MACHINE is None:
        from .lanes import machine_id
        _MACHINE = machine_id()
    return _MACHINE


class NotTaken(Exception):
    """The request cannot go by lane (none, or unreachable); nothing was sent: use the supervisor."""


class Channel:
    """One authenticated connection to a device process, used by one thread at a time."""

    def __init__(self, lane: Lane, kind: str, key: bytes, timeout: float) -> None:
        self.lane, self.kind = lane, kind
        if kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = lane.unix
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = lane.tcp
        try:
            self.sock.settimeout(min(timeout, CONNECT_TIMEOUT_S))
            self.sock.connect(address)
            pid, session = lanewire.client_handshake(self.sock, key)
            if pid != lane.pid:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "another process answers there now")
        except BaseException:
            self.sock.close()
            raise
        self.wire = lanewire.Wire(session if kind == "tcp" else None, server=False, max_bytes=MAX_REPLY_BYTES)

    def closed(self) -> bool:
        """True if the device process has closed this connection (checked before reusing it)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            return bool(readable) and self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (OSError, ValueError):
            return True

    def send(self, message: Request) -> None:
        lanewire.send_chunks(self.sock, self.wire.pack(message))

    def receive(self, timeout: float | None):
        self.sock.settimeout(timeout)
        return self.wire.recv(self.sock)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes a thread blocked reading it (close alone does not)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class Lanes:
    """The lanes of one LabClient: where each device serves, and each thread's connections."""

    def __init__(self, client, key: bytes, mode: str = "auto", published_only: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"lane must be one of {', '.join(MODES)}, got {mode!r}")
        self.client = client
        self.key = key
        self.mode = mode
        self.table: dict[str, Lane] = {}
        self.unreachable: dict[tuple, float] = {}   # (unit, pid, kind) -> when it could not be reached
        self.lock = threading.Lock()
        self.local = threading.local()
        self.read_published = False
        self.published_only = published_only   # never ask the supervisor: read the published lanes again

    def published(self, replace: bool = False) -> None:
        """Take in the lanes the supervisor publishes in the run folder (on its machine)."""
        self.read_published = True
        from . import runstate

        try:
            # Only when the lab recorded on this machine for the port is the one this client talks
            # to (a lab elsewhere may use the same port number, even the same key file).
            record = runstate.read(self.client.port)
            bind = record.bind if record is not None and record.bind != "0.0.0.0" else "127.0.0.1"
            if record is None or bind != self.client.address:
                return
            lanes = runstate.read_json(runstate.base_dir() / str(self.client.port) / runstate.LANES_FILE)["lanes"]
            table = {name: Lane(r["unit"], r["pid"], tuple(r["devices"]), r["unix"], tuple(r["tcp"]), r["machine"],
                                r.get("member", False))
                     for name, r in lanes.items()}
        except (LabError, OSError, ValueError, KeyError, TypeError):
            return  # none here (another machine's lab), or unreadable: the supervisor is asked
        with self.lock:
            for name, lane in table.items():
                if replace:
                    self.table[name] = lane
                else:
                    self.table.setdefault(name, lane)

    # -- where ------------------------------------------------------------------------------

    def lane_of(self, device: str, timeout: float, refresh: bool = False) -> Lane | None:
        """The device's lane, asked of the supervisor the first time (and after its process changed)."""
        if self.published_only and (refresh or device not in self.table):
            self.published(replace=True)
        elif not refresh and not self.read_published:
            self.published()
        with self.lock:
            lane = None if refresh and not self.published_only else self.table.get(device)
        if lane is None and not self.published_only:
            try:
                lanes = self.client._ask(GetLanes(device=device, request_id=os.urandom(16).hex()), timeout)
            except DeviceError:  # unknown, or not running: the supervisor's path says so in the request's words
                raise NotTaken() from None
            with self.lock:
                for lane_ in lanes.values():
                    for name in lane_.devices:
                        self.table[name] = lane_
                lane = self.table.get(device)
        return lane

    def kind_for(self, lane: Lane) -> str | None:
        """'unix' or 'tcp', as the mode and the lane allow; None if neither."""
        local = bool(lane.unix) and lane.machine == this_machine()
        if self.mode == "unix":
            return "unix" if local else None
        if self.mode == "tcp":
            return "tcp"
        return "unix" if local else "tcp"

    def forget(self, lane: Lane) -> None:
        with self.lock:
            for name in lane.devices:
                if self.table.get(name) == lane:
                    del self.table[name]

    # -- connections ------------------------------------------------------------------------

    def channels(self) -> dict:
        channels = getattr(self.local, "channels", None)
        if channels is None:
            channels = self.local.channels = {}
        return channels

    def reader(self) -> RingReader:
        reader = getattr(self.local, "reader", None)
        if reader is None:
            reader = self.local.reader = RingReader()
        return reader

    def channel(self, device: str, timeout: float) -> Channel:
        """This thread's open connection to the device's process for requests; NotTaken if there is no
        usable lane. A device on a member host is asked through the supervisor unless the lane was asked
        for by name, or this client cannot use the supervisor (a gateway's): the supervisor fails a
        request in flight there the moment the host is lost."""
        for attempt in range(2):
            lane = self.lane_of(device, timeout, refresh=attempt > 0)
            kind = self.kind_for(lane) if lane is not None else None
            if kind is None or (lane.member and self.mode == "auto" and not self.published_only):
                raise NotTaken()
            key = (lane.unit, lane.pid, kind)
            channels = self.channels()
            channel = channels.get(key)
            if channel is not None and not channel.closed():
                return channel
            if channel is not None:
                channels.pop(key).close()
            if time.monotonic() - self.unreachable.get(key, -UNREACHABLE_RETRY_S) < UNREACHABLE_RETRY_S:
                raise NotTaken()
            try:
                channel = channels[key] = Channel(lane, kind, self.key, timeout)
                return channel
            except (FileNotFoundError, ConnectionRefusedError):
                self.forget(lane)  # that process is gone: its device has a new one, or none yet
            except (OSError, lanewire.WireError):
                self.unreachable[key] = time.monotonic()  # a firewall, a route: use the supervisor
                raise NotTaken() from None
        raise NotTaken()

    def request(self, message: Request, timeout: float) -> Any:
        """Send a device request by lane and return its result; NotTaken if it could not be sent."""
        if self.mode == "off":
            raise NotTaken()
        device = message.device
        deadline = time.monotonic() + timeout
        channel = self.channel(device, timeout)
        channels = self.channels()
        key = (channel.lane.unit, channel.lane.pid, channel.kind)
        try:
            channel.send(message)
        except OSError:
            # Not all of it left, so the process cannot have read it whole: it was not carried out.
            channels.pop(key, None)
            channel.close()
            self.forget(channel.lane)
            raise NotTaken() from None
        except BaseException:   # Ctrl-C mid-send: half a message must never prefix the next one
            channels.pop(key, None)
            channel.close()
            raise
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                reply = channel.receive(remaining)
                if getattr(reply, "request_id", None) == message.request_id:
                    break
        except (socket.timeout, TimeoutError):
            channels.pop(key, None)
            channel.close()  # its late reply must never be read as another request's
            raise LabTimeout(f"no reply to {type(message).__name__} for {device} within {timeout:g} s") from None
        except (ConnectionError, OSError, lanewire.WireError) as exc:
            channels.pop(key, None)
            channel.close()
            self.forget(channel.lane)
            return self.why_ended(message, channel.lane.pid, exc)
        except BaseException:   # Ctrl-C mid-reply: the rest of it must never be read as the next reply
            channels.pop(key, None)
            channel.close()
            raise
        return self.unwrap(reply)

    def why_ended(self, message: Request, pid: int, exc: Exception):
        """The failure for a request whose connection dropped in flight, in the supervisor's words (how
        the process ended: killed, hung, crashed) when it can say; it is never sent again."""
        try:
            if self.published_only:
                raise LabError("no supervisor to ask")
            return self.client._ask(WhyEnded(device=message.device, request_id=os.urandom(16).hex(), pid=pid,
                                             message=type(message).__name__), WHY_TIMEOUT_S)
        except LabError as error:
            if isinstance(error, DeviceError) and error.error_type != "UnknownDevice":
                raise
        raise DeviceUnavailable(
            f"{message.device}: the connection to its process dropped while {type(message).__name__} was in "
            f"flight ({type(exc).__name__}: {exc}); the request was not re-sent and may or may not have taken "
            "effect", message.device, "ProcessEnded", "", "restarting")

    def unwrap(self, reply):
        """A reply as the supervisor path gives it: frames in shared memory copied into arrays of our own."""
        if isinstance(reply, Reply) and isinstance(reply.value, SharedFrame):
            ref = reply.value
            try:
                data = self.reader().read(ref)
            except FrameOverwritten as exc:
                raise LabError(f"{exc}; nothing was returned") from None
            return Reply(reply.request_id, Image(data, ref.frame, ref.timestamp))
        return reply

    def close(self) -> None:
        """Close this thread's connections (others close with their threads' clients)."""
        for channel in self.channels().values():
            channel.close()
        self.channels().clear()
        self.reader().close()


def subscribe(lanes: Lanes, device: str, timeout: float) -> Channel:
    """A connection of its own to the device's process, subscribed to its frames or changes."""
    for attempt in range(2):
        lane = lanes.lane_of(device, timeout, refresh=attempt > 0)
        kind = lanes.kind_for(lane) if lane is not None else None
        if kind is None:
            raise LabError(f"{device}: subscribing needs a lane to the device's process, and none is usable "
                           f"(lane mode {lanes.mode!r})")
        try:
            channel = Channel(lane, kind, lanes.key, timeout)
            break
        except (OSError, lanewire.WireError) as exc:
            lanes.forget(lane)   # that process is gone: its device has a new one, or none yet
            error = exc
    else:
        raise DeviceUnavailable(f"{device}: its process cannot be reached ({type(error).__name__}: {error}); "
                                "it may be restarting", device, "DeviceUnavailable", "", "restarting")
    try:
        channel.send(Subscribe(device=device, request_id=os.urandom(8).hex()))
        reply = channel.receive(timeout)
        if isinstance(reply, Failure):
            lanes.client._result(reply)   # raises the failure's error
    except (OSError, lanewire.WireError) as exc:
        channel.close()
        raise DeviceUnavailable(f"{device}: its process did not take the subscription ({type(exc).__name__}: "
                                f"{exc})", device, "DeviceUnavailable", "", "restarting") from None
    except BaseException:
        channel.close()
        raise
    return channel


def next_published(channel: Channel, device: str, timeout: float | None, what: str):
    """The next message of a subscription (a frame, a change): LabTimeout after `timeout`,
    DeviceUnavailable (its connection closed) once the device's process ends it or is gone."""
    try:
        message = channel.receive(timeout)
    except (socket.timeout, TimeoutError):
        raise LabTimeout(f"{device}: no {what} within {timeout:g} s") from None
    except (ConnectionError, OSError, lanewire.WireError) as exc:
        channel.close()
        raise DeviceUnavailable(f"{device}: the subscription ended: its process closed it ({type(exc).__name__}: "
                                f"{exc})", device, "ProcessEnded", "", "restarting") from None
    if isinstance(message, StreamEnd):
        channel.close()
        raise DeviceUnavailable(message.message, device, message.error_type, "", "stopped")
    return message


class Notices:
    """A device's changes as it reports them (valve moved or locked, setpoint, link lost, refused
    actuation), on a connection of their own; iterate for Notice messages. DeviceUnavailable when
    the device's process ends (subscribe again once it runs)."""

    def __init__(self, lanes: Lanes, device: str, timeout: float | None = None) -> None:
        self.device, self.timeout = device, timeout
        self.channel = subscribe(lanes, device, timeout or lanes.client.timeout)

    def __iter__(self):
        return self

    def __next__(self):
        return next_published(self.channel, self.device, self.timeout, "change")

    def close(self) -> None:
        """End the subscription."""
        self.channel.close()

    def __enter__(self) -> Notices:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Stream:
    """A camera's frames as it produces them, on a connection of their own.

    Iterate to get each frame as an Image; `image.lost` counts the frames this stream missed just
    before it (it fell behind), and `lost` all of them so far: no frame is ever dropped silently."""

    def __init__(self, lanes: Lanes, device: str, count: int | None, timeout: float) -> None:
        self.device, self.count, self.timeout = device, count, timeout
        self.received = 0           # frames yielded
        self.lost = 0               # frames the camera produced that this stream did not yield
        self.last_frame: int | None = None
        self.unreported = 0         # lost since the last frame yielded
        self.backlog: list[StreamFrame] = []
        self.newest: SharedFrame | None = None
        self.reader = RingReader()
        self.channel = subscribe(lanes, device, timeout)

    def __iter__(self):
        return self

    def __next__(self) -> Image:
        while self.count is None or self.received < self.count:
            item = self._next_frame()
            if self.last_frame is not None and item.frame > self.last_frame + 1:
                self._lose(item.frame - self.last_frame - 1)   # frames the device could not send us in time
            self.last_frame = item.frame
            image = item.image
            if isinstance(image, SharedFrame):
                if image.frame <= self.newest.frame - self.newest.slots:
                    self._lose(1)   # the ring has gone round since: no need to look
                    continue
                try:
                    image = Image(self.reader.read(image), image.frame, image.timestamp)
                except FrameOverwritten:
                    self._lose(1)
                    continue
            lost, self.unreported = self.unreported, 0
            self.received += 1
            return Image(image.data, image.frame, image.timestamp, lost)
        self.close()
        raise StopIteration

    def _lose(self, count: int) -> None:
        self.lost += count
        self.unreported += count

    def _next_frame(self) -> StreamFrame:
        if not self.backlog:
            self.backlog.append(self._receive())
            # Take in whatever else has arrived, so that a stream that fell behind knows the newest
            # frame and skips, unread, those its ring no longer holds.
            while select.select([self.channel.sock], [], [], 0)[0]:
                self.backlog.append(self._receive())
            for item in self.backlog:
                if isinstance(item.image, SharedFrame) and (self.newest is None or item.frame > self.newest.frame):
                    self.newest = item.image
        return self.backlog.pop(0)

    def _receive(self) -> StreamFrame:
        try:
            message = next_published(self.channel, self.device, self.timeout, "frame")
        except LabError:
            self.close()
            raise
        self.channel.send(FramesTaken(self.device))   # room for one more
        return message

    def close(self) -> None:
        """Stop receiving frames (the camera stops producing them once no one streams)."""
        self.channel.close()
        self.reader.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
