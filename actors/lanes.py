"""A device process's own lane: the sockets on which clients reach it directly, without the supervisor.

The device host actor watches the listening and connected sockets with ThespianWatch and reads
them on its own thread, so the actor's state is touched by that thread alone. A reply is sent at
once without blocking; what does not fit in the socket is finished by a writer thread of that
connection, which touches nothing but the bytes it was handed. A connection that sends nonsense, a
bad proof or MAC, or more than it may, is closed; so is one that has not proved the key within
HANDSHAKE_S.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import struct
import threading
import time

from . import lanewire
from .messages import Lane

log = logging.getLogger("labctl.lanes")

HANDSHAKE_S = 5.0            # to prove the key, from connecting
MAX_CONNECTIONS = 256        # per device process
MAX_IN_FLIGHT = 64           # requests read from one connection and not yet answered
SEND_TIMEOUT_S = 30.0        # a client that reads nothing for this long is dropped
MAX_BACKLOG_BYTES = 256 << 20
UNIX_PATH_MAX = 107


def machine_id() -> str:
    """What tells this machine (this boot of it) from others: a Unix lane is usable only on the same one."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return f"{socket.gethostname()}/{file.read().strip()}"
    except OSError:
        return socket.gethostname()


class Outbox:
    """A connection's writer thread: finishes sends the actor thread could not complete without waiting."""

    def __init__(self, sock: socket.socket, on_error) -> None:
        self.sock = sock
        self.on_error = on_error
        self.queue: collections.deque = collections.deque()
        self.backlog = 0            # bytes queued or being sent
        self.messages = 0           # messages queued or being sent
        self.lock = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="labctl-lane-writer", daemon=True)
        self.thread.start()

    def put(self, chunks: list, size: int) -> None:
        with self.lock:
            self.queue.append((chunks, size))
            self.backlog += size
            self.messages += 1
            self.lock.notify()

    def busy(self) -> bool:
        with self.lock:
            return self.messages > 0

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.queue.clear()
            self.lock.notify()

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self.closed:
                    self.lock.wait()
                if self.closed:
                    return
                chunks, size = self.queue[0]
            try:
                lanewire.send_chunks(self.sock, chunks)
            except OSError as exc:
                self.on_error(exc)
                return
            with self.lock:
                if self.queue:
                    self.queue.popleft()
                self.backlog -= size
                self.messages -= 1


class Conn:
    """One client's connection to this device process."""

    def __init__(self, sock: socket.socket, kind: str, key: bytes, max_bytes: int) -> None:
        self.sock = sock
        self.kind = kind                      # "unix" or "tcp"
        self.key = key
        self.max_bytes = max_bytes
        self.nonce = os.urandom(lanewire.NONCE)
        self.proof = bytearray()
        self.reader: lanewire.Reader | None = None   # once the client has proved the key
        self.wire: lanewire.Wire | None = None
        self.opened = time.monotonic()
        self.outbox: Outbox | None = None
        self.broken: str = ""                 # why it must be closed, set by the writer thread too
        self.in_flight = 0
        self.streams: dict[str, int] = {}     # cameras whose frames it is sent -> frames not yet taken in
        self.notices: set[str] = set()        # devices whose changes it is sent
        self.fd = sock.fileno()
        self.uid = -1
        self.peer = self._peer()

    def _peer(self) -> str:
        try:
            if self.kind == "unix":
                pid, self.uid, _ = struct.unpack("3i", self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                            12))
                return f"pid {pid} (uid {self.uid})"
            return "%s:%d" % self.sock.getpeername()[:2]
        except OSError:
            return "a peer"

    def receive(self) -> list:
        """Read what is there; the messages now complete (WireError, ConnectionError when it must close)."""
        data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        if not data:
            raise ConnectionError("closed by the client")
        if self.reader is not None:
            return self.reader.feed(data)
        self.proof += data
        if len(self.proof) < lanewire.PROOF.size:
            return []
        answer, session = lanewire.check_proof(self.key, self.nonce, bytes(self.proof[:lanewire.PROOF.size]))
        self.wire = lanewire.Wire(session if self.kind == "tcp" else None, server=True, max_bytes=self.max_bytes)
        self.reader = lanewire.Reader(self.wire)
        self.sock.sendall(answer)  # 32 bytes on a fresh connection: never blocks
        return self.reader.feed(bytes(self.proof[lanewire.PROOF.size:]))

    def send(self, message, droppable: bool = False) -> bool:
        """Send a message without waiting; False if it was dropped (droppable, and the client is behind)."""
        if self.broken or self.wire is None:
            return False
        if self.outbox is not None and self.outbox.busy():
            if droppable:
                return False
            if self.outbox.backlog > MAX_BACKLOG_BYTES:
                self.broken = f"it reads nothing: {self.outbox.backlog} bytes wait to be sent"
                return False
            chunks = self.wire.pack(message)
            self.outbox.put(chunks, sum(memoryview(c).nbytes for c in chunks))
            return True
        chunks = self.wire.pack(message)
        try:
            sent = self.sock.sendmsg(chunks, [], socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.broken = f"send failed: {exc}"
            return False
        rest = _after(chunks, sent)
        if rest:  # started, so it must be finished, whatever `droppable` says
            if self.outbox is None:
                # The writer waits on a socket object of its own: a timeout set on this one would make
                # the actor's own sends wait for room first, MSG_DONTWAIT or not.
                writer = self.sock.dup()
                writer.settimeout(SEND_TIMEOUT_S)
                self.outbox = Outbox(writer, self._write_failed)
            self.outbox.put(rest, sum(memoryview(c).nbytes for c in rest))
        return True

    def _write_failed(self, exc: OSError) -> None:
        self.broken = f"send failed: {exc}"
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the actor: the socket reads as closed
        except OSError:
            pass

    def close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
            try:
                self.outbox.sock.close()
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass


def _after(chunks: list, sent: int) -> list:
    """What is left of `chunks` once `sent` bytes have gone."""
    rest = []
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if sent >= view.nbytes:
            sent -= view.nbytes
            continue
        rest.append(view[sent:])
        sent = 0
    return rest


def remove_leftovers(folder: str, port: int, pid: int) -> None:
    """Remove what a killed device process leaves behind: its lane's socket file and its frame rings."""
    from .framering import remove_segments

    try:
        os.unlink(os.path.join(folder, f"lane-{pid}.sock"))
    except FileNotFoundError:
        pass
    remove_segments(port, pid)


class LaneServer:
    """The listening sockets of one device process and its clients' connections."""

    def __init__(self, key: bytes, unit: str, devices: tuple[str, ...], socket_dir: str, bind: str,
                 max_bytes: int) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self.conns: dict[int, Conn] = {}
        self.listeners: dict[int, tuple[socket.socket, str]] = {}
        self.unix_path = ""
        path = os.path.join(socket_dir, f"lane-{os.getpid()}.sock")
        if socket_dir and len(path.encode()) <= UNIX_PATH_MAX:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.bind(path)  # the folder is private (0700); the peer's uid is checked as well
            os.chmod(path, 0o600)
            self._listen(unix, "unix")
            self.unix_path = path
        else:
            log.warning("no Unix lane: the socket path %s is too long; clients use TCP", path)
        tcp = socket.create_server((bind, 0), backlog=128)
        self._listen(tcp, "tcp")
        self.lane = Lane(unit, os.getpid(), devices, self.unix_path, (bind, tcp.getsockname()[1]), machine_id())

    def _listen(self, sock: socket.socket, kind: str) -> None:
        sock.listen(128)
        sock.setblocking(False)
        self.listeners[sock.fileno()] = (sock, kind)

    def fds(self) -> list[int]:
        """Every socket to watch."""
        return [*self.listeners, *(fd for fd, conn in self.conns.items() if conn.in_flight < MAX_IN_FLIGHT)]

    def ready(self, fds) -> list[tuple[Conn, object]]:
        """Accept and read what the watched sockets have; every message received, with its connection."""
        received = []
        for fd in fds:
            if fd in self.listeners:
                try:
                    self._accept(*self.listeners[fd])
                except OSError as exc:  # out of descriptors, a peer gone already: the others still count
                    log.warning("could not accept a lane connection: %s", exc)
                continue
            conn = self.conns.get(fd)
            if conn is None:
                continue
            try:
                received.extend((conn, message) for message in conn.receive())
            except (ConnectionError, OSError) as exc:
                self.drop(conn, "" if isinstance(exc, ConnectionError) else str(exc))
            except lanewire.WireError as exc:
                self.drop(conn, str(exc), warn=True)
            except Exception as exc:  # an unpicklable message, say: the client broke the protocol
                self.drop(conn, f"unreadable message ({type(exc).__name__}: {exc})", warn=True)
        return received

    def _accept(self, listener: socket.socket, kind: str) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        conn = Conn(sock, kind, self.key, self.max_bytes)
        if kind == "unix" and conn.uid != os.getuid():
            log.warning("refused a lane connection from %s: not this lab's user (uid %d)", conn.peer, os.getuid())
            conn.close()
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            log.warning("refused a lane connection from %s: %d are open already", conn.peer, MAX_CONNECTIONS)
            conn.close()
            return
        try:
            if kind == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.send(lanewire.hello(conn.nonce), socket.MSG_DONTWAIT)   # 28 bytes on a fresh socket
        except OSError:
            conn.close()
            raise
        self.conns[conn.fd] = conn

    def drop(self, conn: Conn, why: str = "", warn: bool = False) -> None:
        """Close a connection (its subscriptions end with it)."""
        if self.conns.pop(conn.fd, None) is None:
            return
        if warn:
            log.warning("closed the lane connection from %s: %s", conn.peer, why)
        elif why:
            log.info("closed the lane connection from %s: %s", conn.peer, why)
        conn.close()

    def sweep(self) -> None:
        """Close connections that never proved the key in time, or whose writer failed."""
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.reader is None and now - conn.opened > HANDSHAKE_S:
                self.drop(conn, f"no proof of the lab key within {HANDSHAKE_S:g} s", warn=True)
            elif conn.broken:
                self.drop(conn, conn.broken, warn=True)

    def close(self) -> None:
        """Close every socket and remove the Unix socket's file."""
        for conn in list(self.conns.values()):
            conn.close()
        self.conns.clear()
        for sock, _ in self.listeners.values():
            sock.close()
        self.listeners.clear()
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
