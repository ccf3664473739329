"""The direct lane from clients to device processes: every guarantee of the supervisor's path holds
on it (one reply per request, never re-sent, a failure when the process dies), only key holders of
this user get in, frames come through shared memory without being changed under their holder, and
streams count every frame they miss."""

from __future__ import annotations

import glob
import os
import socket
import threading
import time

import pytest

from labctl.actors import lanewire
from labctl.actors.errors import DeviceUnavailable, LabTimeout
from labctl.actors.framering import SHM_DIR, segment_prefix
from labctl.actors.messages import Acquire, Call, GetLanes, GetPosition, GetStatus, MoveTo, SetExposure

from ..conftest import kill, wait_for_text

pytestmark = pytest.mark.integration

LAB = """
[devices.slow]
driver = "labtest_drivers:Sleeper"
conf = {{ journal = "{journal}" }}
[devices.stage]
driver = "sim-stage"
conf = {{ axes = {{ x = [0, 100000], y = [0, 100000] }} }}
[devices.camera]
driver = "sim-camera"
conf = {{ shape = [256, 256], dtype = "uint16", exposure = 0.002 }}
"""


@pytest.fixture
def lanes_lab(lab):
    """A lab of a slow device, a stage and a small camera, up."""
    journal = lab.dir / "naps.txt"
    lab.write(LAB.format(journal=journal))
    result = lab.up()
    assert result.returncode == 0, result.stderr
    lab.journal = journal
    return lab


def segments(lab) -> list[str]:
    return glob.glob(os.path.join(SHM_DIR, glob.escape(segment_prefix(lab.port)) + "*"))


@pytest.mark.parametrize("mode", ["unix", "tcp"])
def test_a_request_in_flight_when_its_process_is_killed_fails_fast_and_is_never_resent(lanes_lab, client_for, mode):
    lab = lanes_lab
    client = client_for(lab, lane=mode)
    assert client.send("slow", Call("ping")) == "pong"   # the lane is open
    pid = lab.device("slow")["pid"]
    outcome = {}

    def call():
        began = time.monotonic()
        try:
            client.send("slow", Call("nap", (20.0,)), timeout=60)
        except Exception as exc:  # collected and checked below
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - began

    thread = threading.Thread(target=call)
    thread.start()
    wait_for_text(lab.journal, "nap 20.0")
    kill(pid)
    thread.join(timeout=60)
    assert isinstance(outcome.get("error"), DeviceUnavailable), outcome
    assert "slow ended (killed by SIGKILL) while handling Call; the request was not re-sent" in str(outcome["error"])
    assert outcome["took"] < 10, outcome        # the connection dropped: no waiting out the 60 s timeout
    lab.wait_for(lambda s: any(d["name"] == "slow" and d["state"] == "running" and d["pid"] != pid
                               for d in s["devices"]), what="slow restarted")
    # The next request reaches the new process over a new lane; the nap was never run again.
    assert client.send("slow", Call("ping")) == "pong"
    assert lab.journal.read_text().count("nap 20.0") == 1


def test_a_late_reply_is_never_taken_for_the_next_request(lanes_lab, client_for):
    client = client_for(lanes_lab, lane="unix")
    with pytest.raises(LabTimeout):
        client.send("slow", Call("nap", (1.0,)), timeout=0.3)
    # The ping runs after the nap (one call at a time), so the nap's late reply has been sent by
    # then, to the old connection, which was dropped: the ping gets its own reply.
    assert client.send("slow", Call("ping"), timeout=10) == "pong"
    assert lanes_lab.journal.read_text().count("nap 1.0") == 1


def test_the_supervisor_counts_what_is_answered_on_the_lane(lanes_lab, client_for):
    client = client_for(lanes_lab, lane="unix")
    for i in range(25):
        client.send("stage", MoveTo("x", float(i)))
    with pytest.raises(Exception):
        client.send("stage", MoveTo("x", -5.0))   # out of range: a failure, counted as one
    lanes_lab.wait_for(lambda s: any(d["name"] == "stage" and d["requests"] >= 26 and d["failed_requests"] >= 1
                                     for d in s["devices"]), timeout=10, what="the lane's requests counted")


def test_the_lane_can_be_turned_off_and_the_supervisor_carries_requests(lanes_lab, client_for):
    client = client_for(lanes_lab, lane="off")
    assert client.send("stage", MoveTo("x", 5.0)) == 5.0
    assert client.send("stage", GetPosition()) == {"x": 5.0, "y": 50000.0}
    assert client._lanes.table == {}   # never asked where the lanes are


def raw_lane(lane, kind: str) -> socket.socket:
    """A bare connection to a device's lane, the hello read."""
    sock = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(lane.unix if kind == "unix" else lane.tcp)
    assert lanewire.recv_exactly(sock, lanewire.HELLO.size)[:4] == lanewire.MAGIC
    return sock


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_client_without_the_key_is_refused_on_the_lane(lanes_lab, client_for, kind):
    client = client_for(lanes_lab)
    lane = client.request(GetLanes(device="stage"))["stage"]
    sock = raw_lane(lane, kind)
    try:
        # A proof made with another key: the device process closes the connection without a word.
        lanewire.client_handshake(sock, os.urandom(32))
        raise AssertionError("the handshake with a wrong key succeeded")
    except (lanewire.WireError, ConnectionError):
        pass
    finally:
        sock.close()
    # Junk instead of a proof: closed too, and the device still serves its clients.
    sock = raw_lane(lane, kind)
    sock.sendall(b"\x00" * 200)
    assert sock.recv(100) == b""
    sock.close()
    assert client.send("stage", MoveTo("x", 1.0)) == 1.0


def test_a_stranger_that_says_nothing_is_dropped(lanes_lab, client_for):
    client = client_for(lanes_lab)
    lane = client.request(GetLanes(device="stage"))["stage"]
    sock = raw_lane(lane, "tcp")
    sock.settimeout(30)
    began = time.monotonic()
    assert sock.recv(100) == b""       # no proof of the key within a few seconds: closed
    assert time.monotonic() - began < 20
    sock.close()


def test_frames_come_through_shared_memory_and_are_never_changed_under_their_holder(lanes_lab, client_for):
    lab = lanes_lab
    client = client_for(lab, lane="unix")
    first = client.send("camera", Acquire())
    held = first.data.copy()
    assert first.data[0, 0] == first.frame        # the camera writes the frame number in the first row
    assert segments(lab), "no ring in shared memory"
    later = [client.send("camera", Acquire()) for _ in range(20)]   # the ring (8 slots) goes round twice
    assert [image.frame for image in later] == list(range(first.frame + 1, first.frame + 21))
    assert all(image.data[0, 0] == image.frame for image in later)
    assert (first.data == held).all()


def test_a_killed_client_and_a_killed_camera_leave_no_shared_memory_behind(lanes_lab, client_for):
    lab = lanes_lab
    code = ("import os, signal, sys\n"
            "from labctl.actors.client import connect\nfrom labctl.actors.messages import Acquire\n"
            f"lab = connect({lab.port}, lane='unix')\n"
            "for _ in range(3): lab.send('camera', Acquire())\n"
            "for image in lab.camera.stream(3): pass\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = lab.popen_python(code)
    assert proc.wait(timeout=60) == -9
    camera_pid = lab.device("camera")["pid"]
    assert [s for s in segments(lab) if f".{camera_pid}." in s], "the camera made no ring"
    kill(camera_pid)   # a killed camera cannot remove its own ring: the supervisor does
    lab.wait_for(lambda s: any(d["name"] == "camera" and d["state"] == "running" and d["pid"] != camera_pid
                               for d in s["devices"]), what="camera restarted")
    assert not [s for s in segments(lab) if f".{camera_pid}." in s]
    client = client_for(lab, lane="unix")
    client.send("camera", Acquire())
    assert segments(lab)
    assert lab.labctl("down").returncode == 0
    assert segments(lab) == []


@pytest.mark.parametrize("mode", ["unix", "tcp"])
def test_a_slow_stream_consumer_is_told_exactly_how_many_frames_it_lost(lanes_lab, client_for, mode):
    client = client_for(lanes_lab, lane=mode)
    client.send("camera", SetExposure(0.001))
    stream = client.camera.stream(12)
    images = []
    for image in stream:
        images.append(image)
        time.sleep(0.05)   # the camera makes a frame every few ms: this consumer falls far behind
    assert len(images) == 12
    for before, after in zip(images, images[1:]):
        assert after.lost == after.frame - before.frame - 1
    assert all(image.data[0, 0] == image.frame % 65536 for image in images)   # the numbers are the camera's
    # Every frame the camera made from the first one this stream got to its last is yielded or counted.
    assert stream.lost == sum(image.lost for image in images) > 0
    assert images[-1].frame - images[0].frame + 1 == len(images) + sum(image.lost for image in images[1:])


def test_several_clients_stream_one_camera_at_once(lanes_lab, client_for):
    local, remote = client_for(lanes_lab, lane="unix"), client_for(lanes_lab, lane="tcp")
    results, errors = {}, []

    def consume(name, client):
        try:
            results[name] = [(image.frame, image.lost, int(image.data[0, 0])) for image in client.camera.stream(30)]
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(name, c)) for name, c in (("unix", local), ("tcp", remote))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for name, frames in results.items():
        assert len(frames) == 30, name
        numbers = [f for f, _, _ in frames]
        assert numbers == sorted(numbers) and len(set(numbers)) == 30, name
        assert all(pixel == frame for frame, _, pixel in frames), name
    assert set(f for f, _, _ in results["unix"]) & set(f for f, _, _ in results["tcp"])   # the same frames
    # Once no one streams, the camera stops producing frames.
    made = client_for(lanes_lab).send("camera", GetStatus())["frames"]
    time.sleep(0.3)
    assert client_for(lanes_lab).send("camera", GetStatus())["frames"] == made


def test_labctl_send_reaches_a_published_lane_without_the_actor_runtime(lanes_lab):
    lab = lanes_lab
    code = ("import sys\nfrom labctl.bin.cli import cli\n"
            "try:\n    cli(['send', 'stage', 'MoveTo', 'x', '7', '--json'], prog_name='labctl')\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "print('thespian loaded:', any(m.split('.')[0] == 'thespian' for m in sys.modules), file=sys.stderr)\n"
            "sys.exit(code)\n")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], cwd=lab.dir, env=lab.env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"value": 7.0' in result.stdout
    assert "thespian loaded: False" in result.stderr
    # Without the published table (a client elsewhere), the supervisor is asked, and that works too.
    (lab.dir / "run" / str(lab.port) / "lanes.json").unlink()
    result = subprocess.run([sys.executable, "-c", code], cwd=lab.dir, env=lab.env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "thespian loaded: True" in result.stderr, result.stderr


def test_each_request_on_the_lane_gets_exactly_one_reply(lanes_lab, client_for):
    from labctl.actors import labkey

    client = client_for(lanes_lab)
    lane = client.request(GetLanes(device="stage"))["stage"]
    # A whole connection of our own: 20 requests sent at once, then every message read until quiet.
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(lane.unix)
    lanewire.client_handshake(sock, labkey.for_lab(lanes_lab.port, lanes_lab.key_file))
    wire = lanewire.Wire(None, server=False, max_bytes=1 << 20)
    ids = [f"r{i}" for i in range(20)]
    for i, rid in enumerate(ids):
        lanewire.send_chunks(sock, wire.pack(MoveTo("x", float(i), device="stage", request_id=rid)))
    replies = [wire.recv(sock) for _ in ids]
    sock.settimeout(0.5)
    with pytest.raises((TimeoutError, socket.timeout)):
        wire.recv(sock)                      # nothing more: no reply was sent twice
    sock.close()
    assert [r.request_id for r in replies] == ids and [r.value for r in replies] == [float(i) for i in range(20)]


def test_a_client_that_stops_reading_stalls_nobody_else(lanes_lab, client_for):
    from labctl.actors import labkey

    client = client_for(lanes_lab, lane="unix")
    lane = client.request(GetLanes(device="camera"))["camera"]
    # A client that asks for 64 frames (8 MiB of replies) and never reads one.
    greedy = socket.create_connection(lane.tcp, timeout=10)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _, session = lanewire.client_handshake(greedy, labkey.for_lab(lanes_lab.port, lanes_lab.key_file))
    wire = lanewire.Wire(session, server=False, max_bytes=1 << 20)
    for i in range(64):
        lanewire.send_chunks(greedy, wire.pack(Acquire(device="camera", request_id=f"g{i}")))
    try:
        began = time.monotonic()
        for _ in range(20):   # the same device process goes on answering everyone else
            assert client.send("camera", GetStatus(), timeout=5)["shape"] == [256, 256]
        assert time.monotonic() - began < 10
    finally:
        greedy.close()
