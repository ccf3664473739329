"""Everything a device started ends with it, and every death has its true cause: processes a driver
starts, a segfault in a driver's C code, a device that outgrows its memory_max_mb. Real labs."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from labctl.actors import processes
from labctl.actors.errors import DeviceUnavailable
from labctl.actors.messages import Call

from ..conftest import free_port, wait_for_text

pytestmark = pytest.mark.integration


def spawner_lab(lab, **settings) -> object:
    """A lab of one Spawner device, `spawner`, whose constructor starts three children; returns its journal."""
    journal = lab.dir / "journal.txt"
    lab.write(f'[devices.spawner]\ndriver = "labtest_drivers:Spawner"\nconf = {{ journal = "{journal}" }}\n'
              + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    assert lab.up().returncode == 0
    return journal


def children_of(journal, pid: int) -> dict[str, int]:
    """{kind: pid} of the children that device process `pid` journaled (group, session, fork)."""
    wait_for_text(journal, f"open {pid}")
    lines = journal.read_text().splitlines()
    mine = lines[lines.index(f"open {pid}") + 1:][:3]
    children = {line.split()[2]: int(line.split()[1]) for line in mine}
    assert set(children) == {"group", "session", "fork"}, lines
    assert all(processes.is_alive(child) for child in children.values())
    return children


def new_pid(lab, name: str, old: int) -> int:
    status = lab.wait_for(lambda s: any(d["name"] == name and d["state"] == "running" and d["pid"] != old
                                        for d in s["devices"]), what=f"{name} running again")
    return next(d["pid"] for d in status["devices"] if d["name"] == name)


def events(lab) -> list[dict]:
    return [json.loads(line) for line in lab.labctl("events", "--json").stdout.splitlines()]


def test_children_of_a_driver_end_with_restart_and_with_down(lab):
    journal = spawner_lab(lab)
    pid = lab.pids()["spawner"]
    first = children_of(journal, pid)
    assert os.getpgid(pid) == pid  # the device leads a group of its own...
    assert os.getpgid(first["group"]) == pid and os.getpgid(first["fork"]) == pid  # ...which its children join
    assert os.getsid(first["session"]) == first["session"]
    assert lab.labctl("restart", "spawner").returncode == 0
    second = children_of(journal, new_pid(lab, "spawner", pid))
    assert processes.wait_gone(first.values(), 5.0) == set(), {k: processes.cmdline(p) for k, p in first.items()}
    assert lab.labctl("down").returncode == 0
    assert processes.wait_gone(second.values(), 5.0) == set(), {k: processes.cmdline(p) for k, p in second.items()}


def test_children_of_a_remote_driver_end_with_restart_and_with_down(lab):
    # On another host the supervisor can signal nothing: the device process ends its children itself.
    node_port = free_port()
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[hosts.pi]
address = "127.0.0.1"
port = {node_port}
[devices.spawner]
driver = "labtest_drivers:Spawner"
host = "pi"
conf = {{ journal = "{journal}" }}
""")
    assert lab.up().returncode == 1  # no node yet: the device waits for its host
    with lab.node("pi", node_port):
        pid = new_pid(lab, "spawner", 0)
        first = children_of(journal, pid)
        assert lab.labctl("restart", "spawner").returncode == 0
        second = children_of(journal, new_pid(lab, "spawner", pid))
        assert processes.wait_gone(first.values(), 5.0) == set(), {k: processes.cmdline(p) for k, p in first.items()}
        assert lab.labctl("down").returncode == 0
        assert processes.wait_gone(second.values(), 5.0) == set(), {k: processes.cmdline(p) for k, p in second.items()}


# The supervisor calls families.kill_group when a device process dies or is killed.
def test_children_of_a_driver_end_when_their_device_process_is_killed(lab):
    journal = spawner_lab(lab, backoff_s=0.01)
    pid = lab.pids()["spawner"]
    first = children_of(journal, pid)
    os.kill(pid, signal.SIGKILL)
    second_pid = new_pid(lab, "spawner", pid)
    assert processes.wait_gone(first.values(), 5.0) == set(), {k: processes.cmdline(p) for k, p in first.items()}
    # A hung call: the supervisor kills the process, and with it what its driver started.
    second = children_of(journal, second_pid)
    lab.labctl("send", "spawner", "Call", "hang", "--timeout", "1")
    new_pid(lab, "spawner", second_pid)
    assert processes.wait_gone(second.values(), 5.0) == set(), {k: processes.cmdline(p) for k, p in second.items()}


def test_a_segfault_in_a_call_is_reported_as_sigsegv_at_once_and_restarted(lab, client_for):
    lab.write('[devices.seg]\ndriver = "labtest_drivers:Segfaulter"\nbackoff_s = 0.01\n')
    assert lab.up().returncode == 0
    pid = lab.pids()["seg"]
    began = time.monotonic()
    with pytest.raises(DeviceUnavailable) as info:
        client_for(lab, timeout=10).send("seg", Call("crash"))
    assert time.monotonic() - began < 2.0  # not a hang, found by missed heartbeats after 3 s
    assert "killed by SIGSEGV" in info.value.text
    new_pid(lab, "seg", pid)
    seg = lab.device("seg")
    assert "killed by SIGSEGV" in seg["last_error"] and seg["restarts"] == 1
    assert not processes.is_alive(pid)


def test_a_segfaulting_constructor_is_reported_at_once(lab):
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.seg]
driver = "labtest_drivers:Segfaulter"
conf = {{ journal = "{journal}", in_constructor = true }}
init_timeout_s = 30
max_restarts = 0
[devices.valves]
driver = "sim-valves"
""")
    began = time.monotonic()
    assert lab.up().returncode == 1  # a device failed
    assert time.monotonic() - began < 10  # far from init_timeout_s: no spinning until the alarm
    seg = lab.device("seg")
    assert seg["state"] == "failed" and "killed by SIGSEGV" in seg["last_error"], seg
    crashed = [e for e in events(lab) if e["device"] == "seg" and e["kind"] == "crashed"]
    assert len(crashed) == 1 and crashed[0]["detail"]["cause"] == "killed by SIGSEGV"
    assert lab.device("valves")["state"] == "running"


def test_a_device_past_its_memory_limit_is_ended_and_restarted(lab, client_for):
    journal = lab.dir / "journal.txt"
    lab.write(f'[devices.hog]\ndriver = "labtest_drivers:Hog"\nconf = {{ journal = "{journal}" }}\n'
              'memory_max_mb = 160\nbackoff_s = 0.01\n')
    assert lab.up().returncode == 0
    client = client_for(lab, timeout=10)
    pid = lab.pids()["hog"]
    assert client.send("hog", Call("rss_mb")) < 120  # room to grow below the limit
    began = time.monotonic()
    try:
        assert client.send("hog", Call("grow", (200,))) == 200
    except DeviceUnavailable as exc:  # it may be measured while the call still fills its memory
        assert "memory limit exceeded" in exc.text
    second = new_pid(lab, "hog", pid)
    assert time.monotonic() - began < 5  # measured every 0.5 s
    hog = lab.device("hog")
    assert hog["restarts"] == 1 and "memory limit exceeded" in hog["last_error"], hog
    report = [e for e in events(lab) if e["kind"] == "memory_exceeded"]
    assert len(report) == 1 and report[0]["device"] == "hog", report
    assert report[0]["detail"]["limit_mb"] == 160 and report[0]["detail"]["rss_mb"] > 160
    assert report[0]["detail"]["pid"] == pid and not processes.is_alive(pid)
    # Its children's memory counts too, and they end with it.
    try:
        client_for(lab, timeout=10).send("hog", Call("grow_child", (200,)))
    except DeviceUnavailable as exc:  # measured before the call could answer
        assert "memory limit exceeded" in exc.text
    wait_for_text(journal, "child ")
    child = int(journal.read_text().split()[1])
    new_pid(lab, "hog", second)
    assert processes.wait_gone([child], 5.0) == set()
    assert [e["detail"]["pid"] for e in events(lab) if e["kind"] == "memory_exceeded"] == [pid, second]


def test_memory_max_mb_is_checked_when_the_lab_is_read(tmp_path):
    from labctl.config import ConfigError, load

    file = tmp_path / "lab.toml"
    base = '[lab]\nname = "m"\n[devices.valves]\ndriver = "sim-valves"\n'
    file.write_text(base + "memory_max_mb = 8\n")
    with pytest.raises(ConfigError) as info:
        load(file)
    assert "devices.valves.memory_max_mb: expected 0 (no limit) or an integer from 16 to 524288, got 8" in str(info.value)
    file.write_text(base + "memory_max_mb = 2048\n[supervision]\nmemory_max_mb = 0\n")
    lab = load(file)
    assert lab.device("valves").supervision.memory_max_mb == 2048 and lab.supervision.memory_max_mb == 0
