"""The lane's wire and server: proofs of the key, MACs with counters, limits read from headers, peers
of another uid refused."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from labctl.actors import lanewire
from labctl.actors.lanes import LaneServer
from labctl.actors.messages import Image, Reply

KEY = os.urandom(32)


def pair(session: bytes | None = b"s" * 32, max_bytes: int = 1 << 26):
    return (lanewire.Wire(session, server=True, max_bytes=max_bytes),
            lanewire.Wire(session, server=False, max_bytes=max_bytes))


def roundtrip(sender: lanewire.Wire, receiver: lanewire.Wire, obj):
    a, b = socket.socketpair()
    b.settimeout(10)
    writer = threading.Thread(target=lanewire.send_chunks, args=(a, sender.pack(obj)))
    writer.start()   # a frame is more than the socket holds: written while it is read
    try:
        return receiver.recv(b)
    finally:
        writer.join(10)
        a.close()
        b.close()


@pytest.mark.parametrize("session", [b"s" * 32, None])
def test_a_frame_travels_out_of_band_and_arrives_whole(session):
    server, client = pair(session)
    data = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    chunks = pair(session)[0].pack(Reply("r1", Image(data, 7, 1.5)))
    assert any(memoryview(c).nbytes == data.nbytes for c in chunks)   # the array's bytes, not in the pickle
    reply = roundtrip(server, client, Reply("r1", Image(data, 7, 1.5)))
    assert reply.request_id == "r1" and reply.value.frame == 7 and (reply.value.data == data).all()


def test_a_changed_pickle_or_a_replayed_message_is_refused():
    server, client = pair()
    chunks = [bytes(memoryview(c)) for c in server.pack(Reply("r1", "open"))]
    a, b = socket.socketpair()
    a.sendall(b"".join(chunks))
    assert client.recv(b).value == "open"
    a.sendall(b"".join(chunks))                       # the same bytes again: the counter has moved on
    with pytest.raises(lanewire.WireError):
        client.recv(b)
    server2, client2 = pair()
    chunks = [bytearray(memoryview(c)) for c in server2.pack(Reply("r1", "open"))]
    chunks[2][-3] ^= 1                                # one bit of the pickle
    a.sendall(b"".join(chunks))
    with pytest.raises(lanewire.WireError):
        client2.recv(b)
    a.close()
    b.close()


def test_a_message_is_never_taken_for_one_in_the_other_direction():
    server, client = pair()
    chunks = b"".join(bytes(memoryview(c)) for c in client.pack(Reply("r1", "x")))
    a, b = socket.socketpair()
    a.sendall(chunks)
    with pytest.raises(lanewire.WireError):
        client.recv(b)   # reflected back to its sender: tagged for the other direction
    a.close()
    b.close()


def test_an_oversize_header_is_refused_before_its_body_is_read():
    _, client = pair(max_bytes=1000)
    a, b = socket.socketpair()
    a.sendall(lanewire.HEAD.pack(10**9, 0))            # and nothing more: recv must not wait for 1 GB
    with pytest.raises(lanewire.WireError):
        client.recv(b)
    reader = lanewire.Reader(lanewire.Wire(None, server=True, max_bytes=1000))
    with pytest.raises(lanewire.WireError):
        reader.feed(lanewire.HEAD.pack(1, 1) + lanewire.LENGTH.pack(10**9))
    a.close()
    b.close()


def test_the_reader_takes_messages_in_any_pieces():
    server, client = pair()
    stream = b"".join(bytes(memoryview(c)) for i in range(3) for c in client.pack(Reply(f"r{i}", i)))
    reader = lanewire.Reader(server)
    got = []
    for i in range(0, len(stream), 7):
        got.extend(reader.feed(stream[i:i + 7]))
    assert [(r.request_id, r.value) for r in got] == [("r0", 0), ("r1", 1), ("r2", 2)]


def test_the_handshake_proves_the_key_both_ways():
    a, b = socket.socketpair()
    nonce = os.urandom(lanewire.NONCE)
    a.sendall(lanewire.hello(nonce))
    b.settimeout(5)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("client", lanewire.client_handshake(b, KEY)))
    thread.start()
    answer, session = lanewire.check_proof(KEY, nonce, lanewire.recv_exactly(a, lanewire.PROOF.size))
    a.sendall(answer)
    thread.join(5)
    assert result["client"] == (os.getpid(), session)
    with pytest.raises(lanewire.WireError):
        lanewire.check_proof(os.urandom(32), nonce, lanewire.PROOF.pack(os.urandom(16), os.urandom(32)))
    a.close()
    b.close()


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists(),
                    reason="needs root, setpriv and a system Python (CI has all three)")
def test_a_local_process_of_another_uid_is_refused_even_if_it_reaches_the_socket():
    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o777)   # unlike a lab's run folder: let the other account reach the socket
    server = LaneServer(KEY, "unit", ("dev",), folder, "127.0.0.1", 1 << 20)
    try:
        os.chmod(server.unix_path, 0o666)
        code = ("import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(10); "
                f"s.connect({server.unix_path!r}); print(repr(s.recv(100)))")
        proc = subprocess.Popen([*NOBODY, "/usr/bin/python3", "-c", code], stdout=subprocess.PIPE, text=True)
        listener = next(fd for fd, (_, kind) in server.listeners.items() if kind == "unix")
        assert select.select([listener], [], [], 10)[0]
        server.ready([listener])
        assert server.conns == {}                      # refused: not the lab's user
        out, _ = proc.communicate(timeout=20)
        assert out.strip() == "b''"                    # closed without even a hello
        # This user is let in (and greeted).
        mine = socket.socket(socket.AF_UNIX)
        mine.connect(server.unix_path)
        server.ready([listener])
        assert len(server.conns) == 1 and mine.recv(4) == lanewire.MAGIC
        mine.close()
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)
