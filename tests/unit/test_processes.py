"""Process facts on psutil, and ending a device's whole family of processes: real processes, no lab."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labctl.actors import families, processes


def python(code: str, **kwargs) -> subprocess.Popen:
    """A Python child running `code` (labctl is installed); its stdout is a pipe."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            **kwargs)


@pytest.fixture
def children():
    """Processes a test starts: whatever is left is killed afterwards."""
    started: list[int] = []
    yield started
    processes.kill_all([pid for pid in started if processes.is_alive(pid)], timeout=2.0)


def test_start_time_is_the_kernels_tick_count_and_tells_processes_apart(children):
    first = subprocess.Popen(["sleep", "30"])
    children.append(first.pid)
    time.sleep(0.05)  # a few clock ticks (10 ms each), so that the second starts later
    second = subprocess.Popen(["sleep", "30"])
    children.append(second.pid)
    # Clock ticks since boot, as /proc says (and as run records written before psutil hold them):
    # a value that never changes when the wall clock is set.
    stat = Path(f"/proc/{first.pid}/stat").read_text()
    assert processes.start_time(first.pid) == int(stat[stat.rindex(")") + 2:].split()[19])
    assert processes.start_time(first.pid) == processes.start_time(first.pid)
    assert processes.start_time(second.pid) > processes.start_time(first.pid)
    first.kill()
    first.wait()
    assert processes.start_time(first.pid) is None
    assert processes.start_time(0) is None and processes.start_time(None) is None  # never this process


def test_facts_of_a_process_and_of_a_zombie(children):
    child = subprocess.Popen(["sleep", "30"])
    children.append(child.pid)
    assert processes.is_alive(child.pid) and processes.parent_of(child.pid) == os.getpid()
    deadline = time.monotonic() + 5
    while processes.cmdline(child.pid) != "sleep 30" and time.monotonic() < deadline:
        time.sleep(0.01)  # the kernel shows the new command line a moment after exec returns
    assert processes.cmdline(child.pid) == "sleep 30" and processes.session_of(child.pid) == os.getsid(0)
    child.kill()
    assert processes.wait_gone([child.pid], 5.0) == set()
    assert not processes.is_alive(child.pid)  # a zombie (not reaped yet) is dead
    assert processes.parent_of(child.pid) == os.getpid()  # ...yet still has its parent
    child.wait()
    assert processes.parent_of(child.pid) is None and processes.cmdline(child.pid) == ""
    assert not processes.is_alive(None) and processes.parent_of(None) is None


def test_session_members_with_uid(children):
    leader = python("""
        import subprocess, sys, time
        grandchild = subprocess.Popen(["sleep", "30"])
        print(grandchild.pid, flush=True)
        time.sleep(30)
    """, start_new_session=True)
    children.append(leader.pid)
    grandchild = int(leader.stdout.readline())
    children.append(grandchild)
    assert sorted(processes.session_members(leader.pid)) == sorted([leader.pid, grandchild])
    assert sorted(processes.session_members(leader.pid, uid=os.getuid())) == sorted([leader.pid, grandchild])
    assert processes.session_members(leader.pid, uid=os.getuid() + 1) == []
    os.kill(grandchild, signal.SIGKILL)
    assert processes.wait_gone([grandchild], 5.0) == set()
    assert processes.session_members(leader.pid) == [leader.pid]  # a zombie is no member


def test_wait_gone_returns_as_soon_as_a_process_exits(children):
    late = []
    for seconds in (0.25, 0.3, 0.35):  # exits at different phases of any polling period
        child = subprocess.Popen(["sleep", str(seconds)])
        children.append(child.pid)
        began = time.monotonic()
        assert processes.wait_gone([child.pid], 10.0) == set()
        late.append(time.monotonic() - began - seconds)
    assert min(late) > -0.05 and sum(late) < 0.12, late  # at its exit: not the timeout, not a slow poll
    other = subprocess.Popen(["sleep", "30"])
    children.append(other.pid)
    began = time.monotonic()
    assert processes.wait_gone([other.pid], 0.2) == {other.pid}
    assert 0.15 < time.monotonic() - began < 1.0


def test_kill_group_kills_the_group_and_a_new_session_grandchild(children):
    leader = python("""
        import multiprocessing, subprocess, time
        same = subprocess.Popen(["sleep", "30"])
        session = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], start_new_session=True,
                                   stdout=subprocess.PIPE, text=True)
        grandchild = session.stdout.readline().strip()
        forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        forked.start()
        print(same.pid, session.pid, forked.pid, grandchild, flush=True)
        time.sleep(30)
    """, process_group=0)
    children.append(leader.pid)
    family = [int(pid) for pid in leader.stdout.readline().split()]
    children.extend(family)
    assert os.getpgid(family[0]) == leader.pid and os.getpgid(family[1]) != leader.pid
    assert families.kill_group(leader.pid, timeout=3.0) == set()
    leader.wait(5)
    assert leader.returncode == -signal.SIGKILL
    assert processes.wait_gone(family, 3.0) == set()


def test_kill_group_after_the_leader_died_finds_group_members_and_recorded_descendants(children, tmp_path):
    leader = python(f"""
        import subprocess, time
        from labctl.actors.families import Family
        family = Family({str(tmp_path)!r})
        same = subprocess.Popen(["sleep", "30"])
        session = subprocess.Popen(["sleep", "30"], start_new_session=True)
        family.check()
        print(same.pid, session.pid, flush=True)
        time.sleep(30)
    """)
    children.append(leader.pid)
    same, session = map(int, leader.stdout.readline().split())
    children.extend([same, session])
    assert os.getpgid(leader.pid) == leader.pid  # Family made it lead a group of its own
    leader.kill()  # its children are orphans now: only their group, or the record, ties them to it
    leader.wait()
    assert families.kill_group(leader.pid, timeout=3.0) == set()
    assert processes.wait_gone([same], 3.0) == set()
    assert processes.is_alive(session)  # a new session leaves the group: found only in the record
    assert families.kill_group(leader.pid, tmp_path, timeout=3.0) == set()
    assert processes.wait_gone([session], 3.0) == set()
    assert list(tmp_path.iterdir()) == []  # the record is spent


def test_recorded_families_are_killed_after_their_devices_died(children, tmp_path):
    code = f"""
        import subprocess, time
        from labctl.actors.families import Family
        family = Family({str(tmp_path)!r})
        session = subprocess.Popen(["sleep", "30"], start_new_session=True)
        family.check()
        print(session.pid, flush=True)
        time.sleep(30)
    """
    devices = [python(code), python(code)]
    orphans = [int(device.stdout.readline()) for device in devices]
    children.extend([device.pid for device in devices] + orphans)
    for device in devices:
        device.kill()
        device.wait()
    assert all(processes.is_alive(pid) for pid in orphans)
    assert families.kill_recorded_families(tmp_path) == set()
    assert not any(processes.is_alive(pid) for pid in orphans) and list(tmp_path.iterdir()) == []


def test_kill_group_never_kills_its_caller_or_its_group():
    with pytest.raises(ValueError):
        families.kill_group(os.getpgrp())
    with pytest.raises(ValueError):
        families.kill_group(1)


def test_family_ends_everything_but_itself_and_measures_memory(children):
    host = python("""
        import subprocess, sys, time
        from labctl.actors import families, processes
        family = families.Family(None)
        alone = family.check()
        hog = subprocess.Popen([sys.executable, "-c", "import time; x = b'1' * (200 * 2**20); print(1, flush=True);"
                                " time.sleep(30)"], stdout=subprocess.PIPE, start_new_session=True)
        hog.stdout.readline()
        sleeper = subprocess.Popen(["sleep", "30"])
        print(round(alone), round(family.check()), hog.pid, sleeper.pid, flush=True)
        print(sorted(family.end(timeout=3.0)), processes.is_alive(hog.pid), processes.is_alive(sleeper.pid), flush=True)
        time.sleep(30)
    """)
    children.append(host.pid)
    alone, together, hog, sleeper = map(int, host.stdout.readline().split())
    children.extend([hog, sleeper])
    assert 5 < alone < 150 and together > alone + 190  # its own resident memory plus its children's
    assert host.stdout.readline().split() == ["[]", "False", "False"]
    assert processes.is_alive(host.pid)  # the host itself lives on


def test_fatal_signals_keep_their_default_action():
    # What Thespian does in every actor process, through the wrapper actorsystem.harden() installs.
    child = python("""
        import ctypes, signal
        from labctl.actors.processes import keep_fatal_signals_default
        for each in range(1, signal.NSIG):
            try:
                keep_fatal_signals_default(each, lambda *args: None)
            except (OSError, ValueError, RuntimeError):
                pass
        ctypes.string_at(0)
    """)
    assert child.wait(timeout=20) == -signal.SIGSEGV
    assert processes.exit_cause(child.returncode) == "killed by SIGSEGV"


def test_port_listeners_names_the_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert processes.port_listeners(port) == {os.getpid()}
        assert not processes.port_is_free(port)
    assert processes.port_listeners(port) == set()


def test_exit_causes():
    assert processes.exit_cause(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert processes.exit_cause(processes.MEMORY_LIMIT_EXIT).startswith("memory limit exceeded")
    assert processes.exit_cause(3) == "exited with code 3" and processes.exit_cause(0) == "exited normally"
