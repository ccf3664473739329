"""Trust: only holders of the lab key talk to a lab; nothing a stranger sends can run code, stop a
device or kill a process. Attacks run as an unprivileged account (uid 65534) where the issue says
so, with real packets to every port of a real lab."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from labctl.actors import processes
from labctl.actors.errors import DeviceError
from labctl.actors.messages import GetLanes, GetValveState, OpenValve

pytestmark = pytest.mark.integration

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by every account (root's own Python may not be)

LAB = """
[devices.valves]
driver = "sim-valves"
conf = { valves = ["A", "B"] }
[devices.furnace]
driver = "sim-furnace"
"""

needs_nobody = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not Path(SYSTEM_PYTHON).exists(),
                                  reason="needs root, setpriv and a system Python (CI has all three)")


def listening_ports(pids: list[int]) -> dict[int, int]:
    """Listening TCP port -> pid, for the given processes."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    ports = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target in inodes:
                    ports[inodes[target]] = pid
        except OSError:
            continue
    return ports


def own_ports(lab) -> dict[int, int]:
    """Each lab process's own listening port -> its pid (a socket that several processes hold, such as
    the keeper's endpoint they inherited, is nobody's own)."""
    holders: dict[int, list[int]] = {}
    for pid in lab.leftovers():
        for port in listening_ports([pid]):
            holders.setdefault(port, []).append(pid)
    return {port: pids[0] for port, pids in holders.items() if len(pids) == 1}


def packet(payload: bytes) -> bytes:
    """Thespian's framing: a decimal length, '>', then the bytes."""
    return b"%d>" % len(payload) + payload


def lab_ports(lab) -> dict[int, int]:
    ports = listening_ports(lab.leftovers())
    assert lab.port in ports and len(ports) >= 4, ports  # admin, logger?, supervisor, two devices
    return ports


@pytest.fixture(scope="module")
def stranger_site():
    """A copy of labctl and its dependencies that uid 65534 can read and import."""
    base = Path(tempfile.mkdtemp(prefix="labctl-stranger-"))
    site = base / "site"
    site.mkdir()
    for name in ("thespian", "attr", "attrs", "click", "numpy", "serial", "psutil"):
        source = Path(importlib.util.find_spec(name).submodule_search_locations[0])
        shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
        if (source.parent / f"{name}.libs").is_dir():
            shutil.copytree(source.parent / f"{name}.libs", site / f"{name}.libs")
    root = Path(__file__).resolve().parents[2]
    (site / "labctl").mkdir()
    (site / "labctl" / "__init__.py").write_text("")
    for layer in ("actors", "config", "hardware", "bin"):
        shutil.copytree(root / layer, site / "labctl" / layer, ignore=shutil.ignore_patterns("__pycache__"))
    (base / "home").mkdir()
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    os.chown(base / "home", 65534, 65534)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def as_nobody(site: Path, argv: list[str], port: int, **env: str) -> subprocess.CompletedProcess:
    """Run a command as uid 65534, with labctl importable and its own (empty) run folder."""
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(site / "home"), "PYTHONPATH": str(site / "site"),
               "LABCTL_PORT": str(port), "LABCTL_RUN_DIR": str(site / "home" / "run"), **env}
    return subprocess.run([*NOBODY, SYSTEM_PYTHON, *argv], cwd=site / "home", env=environ, capture_output=True,
                          text=True, timeout=60)


@needs_nobody
def test_a_pickled_payload_from_a_stranger_runs_nowhere(lab, tmp_path):
    lab.write(LAB)
    assert lab.up().returncode == 0
    pids = lab.pids()
    ports = lab_ports(lab)
    marker = tmp_path / "pwned"
    attack = ("import os, pickle, socket, sys\n"
              "class Evil:\n"
              "    def __reduce__(self): return (os.system, ('touch ' + sys.argv[1] + '-' + str(os.getpid()),))\n"
              "payload = pickle.dumps(Evil())\n"
              "plain = pickle.dumps((None, 'x'))\n"
              "for port in map(int, sys.argv[2:]):\n"
              "    for data in (payload, plain):\n"
              "        with socket.create_connection(('127.0.0.1', port), timeout=2) as s:\n"
              "            s.sendall(b'%d>' % len(data) + data)\n"
              "            try: s.recv(100)\n"
              "            except OSError: pass\n")
    result = subprocess.run([*NOBODY, SYSTEM_PYTHON, "-c", attack, str(marker), *map(str, ports)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("pwned*"))          # nothing was unpickled anywhere
    status = lab.status()
    assert {d["name"]: d["pid"] for d in status["devices"]} == pids
    assert all(d["state"] == "running" and d["restarts"] == 0 for d in status["devices"])
    log = (lab.log_dir / "lab.log").read_text()
    assert "dropped a packet from 127.0.0.1:" in log   # logged with the peer's address


@needs_nobody
def test_a_stranger_without_the_key_is_refused_and_changes_nothing(lab, stranger_site):
    lab.write(LAB)
    assert lab.up().returncode == 0
    pids = lab.pids()
    sent = as_nobody(stranger_site, ["-m", "labctl.bin.cli", "send", "valves", "OpenValve", "A", "--json"], lab.port)
    assert sent.returncode == 1, sent.stderr
    assert f"not authorised for lab on port {lab.port}: no key" in sent.stderr
    assert json.loads(sent.stdout)["error"]["type"] == "NotAuthorised"
    # pointing at the owner's key file does not help: the run folder is the owner's alone
    stolen = as_nobody(stranger_site, ["-m", "labctl.bin.cli", "status"], lab.port,
                       LABCTL_KEY_FILE=str(lab.key_file))
    assert stolen.returncode == 1 and "not authorised" in stolen.stderr and "Permission denied" in stolen.stderr
    stop = as_nobody(stranger_site, ["-c", "import sys\nfrom labctl.actors.client import connect\n"
                                           "try:\n    connect(int(sys.argv[1])).stop()\n"
                                           "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
                                           "    sys.exit(1)\n", str(lab.port)], lab.port)
    assert stop.returncode == 1 and "NotAuthorised" in stop.stdout
    assert lab.labctl("send", "valves", "GetValveState", "A").stdout.strip() == "closed"
    status = lab.status()
    assert {d["name"]: d["pid"] for d in status["devices"]} == pids
    assert all(d["state"] == "running" for d in status["devices"])


def test_a_client_with_another_key_is_refused_clearly(lab, tmp_path):
    lab.write(LAB)
    assert lab.up().returncode == 0
    other = tmp_path / "other.key"
    other.write_text(os.urandom(32).hex())
    other.chmod(0o600)
    lab.env["LABCTL_KEY_FILE"] = str(other)
    began = time.monotonic()
    status = lab.labctl("status")
    assert time.monotonic() - began < 10  # an answer, never a hang
    assert status.returncode == 1 and "with this key" in status.stderr
    other.chmod(0o644)
    readable = lab.labctl("status")
    assert readable.returncode == 1 and "can be read by others" in readable.stderr
    del lab.env["LABCTL_KEY_FILE"]
    assert lab.labctl("status").returncode == 0  # the owner still gets in


def test_hostile_bytes_on_every_port_kill_nothing(lab, client_for):
    """Garbage, half packets left hanging, huge length headers, 10,000 random bytes, hundreds of
    connections at once and validly sealed but malformed envelopes, to every port of the lab."""
    lab.write(LAB)
    assert lab.up().returncode == 0
    pids = lab.pids()
    ports = lab_ports(lab)
    key = bytes.fromhex(lab.key_file.read_text().strip())
    import hmac

    def sealed(obj) -> bytes:
        data = pickle.dumps(obj)
        return packet(hmac.digest(key, data, "sha256") + data)

    rng = random.Random(9)
    attacks = [b"garbage\r\n", b"99999999999999999999>" + b"x" * 100, b"-5>abc", b">>>>", b"12>short",
               packet(os.urandom(64)), packet(pickle.dumps(("not", "sealed"))), os.urandom(10_000),
               sealed((None, "x")), sealed(("not an address", "x")), sealed(["a", "list"]), sealed(42),
               sealed("ACK+DATAERR"), sealed((None,)), b"1>" + os.urandom(1)]
    attacks += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) for _ in range(400)]
    hanging = []

    def connect(port: int) -> socket.socket | None:
        # The keeper's own endpoint, inherited by every process of the lab, is read only while the
        # keeper asks something: its backlog fills up and further connections time out. Harmless.
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            return None

    sent = 0
    for port in ports:
        for chunk in range(0, len(attacks), 50):  # 50 at a time: within every listener's backlog
            batch = []
            for _ in attacks[chunk:chunk + 50]:
                batch.append(connect(port))
                if batch[-1] is None:
                    break  # the keeper's endpoint (see connect)
            if None in batch:
                break
            for s, data in zip(batch, attacks[chunk:chunk + 50]):
                try:
                    s.sendall(data)
                    sent += 1
                except OSError:
                    pass
            time.sleep(0.1)  # let the receivers read what they were sent before the connections drop
            for s in batch:
                s.close()
        half = connect(port)
        if half is not None:
            half.sendall(b"1000>" + b"y" * 10)  # then silence
            hanging.append(half)
    client = client_for(lab, timeout=5)
    try:
        flood = []
        for port in (lab.port, *ports):
            for _ in range(100):
                s = connect(port)
                if s is None:
                    break
                flood.append(s)
        assert len(flood) >= 500 and sent >= 2000
        assert client.send("valves", GetValveState("A"), timeout=5) == "closed"
        began = time.monotonic()
        client.status(timeout=5)
        assert time.monotonic() - began < 1  # answered at once while 500+ connections hang open
        for s in flood:
            s.close()
    finally:
        for s in hanging:
            s.close()
    status = client.status(timeout=5)
    assert {d.name: d.pid for d in status.devices} == pids
    assert all(d.state == "running" and d.restarts == 0 for d in status.devices)
    assert set(listening_ports(lab.leftovers())) == set(ports)  # every process still serves its port
    assert client.send("valves", OpenValve("A")) == "open"


def test_a_stop_by_the_owner_can_always_be_undone(lab, client_for):
    lab.write(LAB)
    assert lab.up().returncode == 0
    client = client_for(lab)
    assert client.stop() == "stopped"
    assert all(d.state == "stopped" for d in client.status().devices)
    restarted = lab.labctl("restart", "valves", timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    assert lab.device("valves")["state"] == "running"
    assert lab.device("furnace")["state"] == "stopped"
    with pytest.raises(DeviceError, match="stopped"):
        client.send("furnace", GetValveState("A"))


def test_up_refuses_a_run_folder_others_can_write(lab):
    lab.write(LAB)
    run = lab.dir / "run"
    run.mkdir()
    run.chmod(0o777)
    up = lab.up()
    assert up.returncode == 1
    assert f"the run folder {run} can be written by others (mode 0777)" in up.stderr and "LABCTL_RUN_DIR" in up.stderr
    assert processes.port_is_free(lab.port) and not list(run.iterdir())
    run.chmod(0o700)
    assert lab.up().returncode == 0


def hung_up_on(port: int, data: bytes) -> bool:
    """Whether the receiver on `port` closes a connection that sent `data` (and nothing more) within
    a few seconds, rather than reading on."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(data)
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def test_a_packet_over_the_size_limit_is_cut_off_at_its_length_header(lab, client_for):
    """Nothing is read (or allocated) for a length the MAC has not vouched for, beyond the lab's
    limit; nor for a length header that never ends."""
    lab.write(LAB, max_packet_mb=1)
    assert lab.up().returncode == 0
    pids = lab.pids()
    # the devices' lanes speak their own protocol (tests/unit/test_lanewire.py): Thespian's ports here
    lanes = {lane.tcp[1] for lane in client_for(lab).request(GetLanes()).values()}
    assert len(lanes) == 2
    for port in (p for p, pid in own_ports(lab).items() if pid in pids.values() and p not in lanes):
        assert hung_up_on(port, b"%d>" % (64 << 20) + b"z" * 65536)  # over the limit
        assert hung_up_on(port, b"1" * 65536)                         # no end to the header
        assert not hung_up_on(port, b"%d>" % (512 << 10) + b"z" * 65536)  # within it: read on, waiting
    assert all(d["state"] == "running" for d in lab.status()["devices"]) and lab.pids() == pids
