"""The lane's wire: how a client and a device process authenticate and frame messages on a lane.

A lane is a stream socket (Unix-domain on one machine, TCP between machines). On connecting, each
side proves it holds the lab key without sending it (a challenge-response over fresh nonces from
both sides); a TCP lane then MACs every message under a key of that connection's own, over a
counter per direction, so a message cannot be forged, replayed or reordered. A Unix lane needs no
MAC: the kernel carries its bytes, the socket lies in a private folder, and the peer's uid is checked.

A message is one pickle (protocol 5) and, from a device process, its out-of-band buffers (numpy
arrays' bytes), sent as they are: a frame is never copied into the pickle. On TCP the MAC covers
the header and the pickle but not those buffers' bytes: MACing an 8 MiB frame (1.4-2 GB/s here)
would halve the lane's speed (4 GB/s on loopback). A forged buffer can only change the values of
an array a device sent (pixels): the pickle, which alone says what is built and how, is always
verified before it is read, and a client's requests (their arguments included) are all in it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import socket
import struct

MAGIC = b"LCL1"
NONCE = 16
MAC = 32
HELLO = struct.Struct(f"!4s{NONCE}sI")        # magic, server nonce, server pid
PROOF = struct.Struct(f"!{NONCE}s{MAC}s")     # client nonce, client proof
HEAD = struct.Struct("!IH")                   # pickle length, number of buffers
LENGTH = struct.Struct("!Q")
MAX_BUFFERS = 16


class WireError(Exception):
    """A lane's peer broke the protocol (bad proof, bad MAC, oversize or malformed message)."""


def _proof(key: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.digest(key, MAGIC + role + first + second, "sha256")


def hello(server_nonce: bytes) -> bytes:
    """What a device process sends first on a new connection."""
    return HELLO.pack(MAGIC, server_nonce, os.getpid())


def check_proof(key: bytes, server_nonce: bytes, data: bytes) -> tuple[bytes, bytes]:
    """Verify a client's proof (PROOF.size bytes); return (the server's proof to send, session key)."""
    client_nonce, proof = PROOF.unpack(data)
    if not hmac.compare_digest(proof, _proof(key, b"client", server_nonce, client_nonce)):
        raise WireError("the client's proof does not check out under the lab key")
    return _proof(key, b"server", client_nonce, server_nonce), _proof(key, b"session", server_nonce, client_nonce)


def client_handshake(sock: socket.socket, key: bytes) -> tuple[int, bytes]:
    """Prove the key to a device process and check its proof; returns (its pid, the session key)."""
    magic, server_nonce, pid = HELLO.unpack(recv_exactly(sock, HELLO.size))
    if magic != MAGIC:
        raise WireError("the peer does not speak labctl's lane protocol")
    client_nonce = os.urandom(NONCE)
    sock.sendall(PROOF.pack(client_nonce, _proof(key, b"client", server_nonce, client_nonce)))
    answer = recv_exactly(sock, MAC)
    if not hmac.compare_digest(answer, _proof(key, b"server", client_nonce, server_nonce)):
        raise WireError("the device process's proof does not check out under the lab key")
    return pid, _proof(key, b"session", server_nonce, client_nonce)


class Wire:
    """One side of an authenticated connection: packs and checks its messages.

    `session` is the connection's MAC key (None on a Unix lane); `server` says which side this is,
    so that each direction has its own counter and a message cannot be reflected back."""

    def __init__(self, session: bytes | None, server: bool, max_bytes: int) -> None:
        self.session = session
        self.max_bytes = max_bytes
        self.out_tag, self.in_tag = (b"S", b"C") if server else (b"C", b"S")
        # Only the device's side sends buffers out of band (frames, outside the MAC: see above); what
        # a client sends, arrays in a request's arguments included, is all in the MACed pickle.
        self.out_of_band = server
        self.sent = self.received = 0

    def _mac(self, tag: bytes, count: int, head: bytes, data) -> bytes:
        mac = hashlib.blake2b(key=self.session, digest_size=MAC)
        mac.update(tag + LENGTH.pack(count))
        mac.update(head)
        mac.update(data)
        return mac.digest()

    def pack(self, obj) -> list:
        """The chunks to send for `obj`: header, MAC (TCP), pickle, then each out-of-band buffer."""
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append if self.out_of_band else None)
        raws = [b.raw() for b in buffers]
        head = HEAD.pack(len(data), len(raws)) + b"".join(LENGTH.pack(r.nbytes) for r in raws)
        chunks = [head]
        if self.session is not None:
            self.sent += 1
            chunks.append(self._mac(self.out_tag, self.sent, head, data))
        return [*chunks, data, *raws]

    def check_head(self, length: int, count: int) -> None:
        """Refuse a header announcing more than this side accepts, before anything is read for it."""
        if length > self.max_bytes or count > MAX_BUFFERS:
            raise WireError(f"a message of {length} bytes in {count} buffers is over the limit "
                            f"({self.max_bytes} bytes, {MAX_BUFFERS} buffers)")

    def unpack(self, head: bytes, mac: bytes, data, buffers: list):
        """The object a received message carries, after its MAC (TCP) checks out."""
        if self.session is not None:
            self.received += 1
            if not hmac.compare_digest(mac, self._mac(self.in_tag, self.received, head, data)):
                raise WireError("a message's MAC does not check out (forged, replayed or corrupted)")
        return pickle.loads(data, buffers=buffers)

    def recv(self, sock: socket.socket):
        """Read one message from a blocking socket; buffers are read straight into their own memory."""
        head = recv_exactly(sock, HEAD.size)
        length, count = HEAD.unpack(head)
        self.check_head(length, count)
        lengths = recv_exactly(sock, LENGTH.size * count)
        sizes = [LENGTH.unpack_from(lengths, i * LENGTH.size)[0] for i in range(count)]
        if sum(sizes) > self.max_bytes:
            raise WireError(f"buffers of {sum(sizes)} bytes are over the limit ({self.max_bytes} bytes)")
        mac = recv_exactly(sock, MAC) if self.session is not None else b""
        data = recv_exactly(sock, length)
        buffers = []
        for size in sizes:
            buffer = _uninitialised(size)
            recv_into_exactly(sock, memoryview(buffer))
            buffers.append(buffer)
        return self.unpack(head + lengths, mac, data, buffers)


class Reader:
    """Parses messages from bytes as they arrive on a non-blocking socket (the device process's side)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list:
        """Add received bytes; return every message now complete (WireError if one is bad)."""
        self.buffer += data
        messages = []
        while True:
            message = self._one()
            if message is _INCOMPLETE:
                return messages
            messages.append(message)

    def _one(self):
        buf, wire = self.buffer, self.wire
        if len(buf) < HEAD.size:
            return _INCOMPLETE
        length, count = HEAD.unpack_from(buf)
        wire.check_head(length, count)
        at = HEAD.size + LENGTH.size * count
        if len(buf) < at:
            return _INCOMPLETE
        sizes = [LENGTH.unpack_from(buf, HEAD.size + i * LENGTH.size)[0] for i in range(count)]
        if sum(sizes) > wire.max_bytes:
            raise WireError(f"buffers of {sum(sizes)} bytes are over the limit ({wire.max_bytes} bytes)")
        mac_size = MAC if wire.session is not None else 0
        end = at + mac_size + length + sum(sizes)
        if len(buf) < end:
            return _INCOMPLETE
        view = memoryview(buf)
        head, mac = bytes(view[:at]), bytes(view[at:at + mac_size])
        data = bytes(view[at + mac_size:at + mac_size + length])
        buffers, start = [], at + mac_size + length
        for size in sizes:
            buffers.append(bytearray(view[start:start + size]))
            start += size
        view.release()
        del buf[:end]
        return wire.unpack(head, mac, data, buffers)


_INCOMPLETE = object()


def _uninitialised(size: int):
    """Memory to receive `size` bytes into: a large buffer is not zeroed first (a frame's 8 MiB
    would be written twice), and the array unpickled from it keeps it as its own."""
    if size < 1 << 16:
        return bytearray(size)
    import numpy

    return numpy.empty(size, numpy.uint8)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from a blocking socket; ConnectionError if the peer closes first."""
    buffer = bytearray(size)
    recv_into_exactly(sock, memoryview(buffer))
    return bytes(buffer)


def recv_into_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill `view` from a blocking socket; ConnectionError if the peer closes first."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the connection was closed")
        got += n


def send_chunks(sock: socket.socket, chunks: list) -> None:
    """Send every chunk on a blocking socket with as few system calls as the kernel allows."""
    views = [memoryview(c).cast("B") for c in chunks]
    while views:
        sent = sock.sendmsg(views[:512])
        while sent and views:
            if sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0
