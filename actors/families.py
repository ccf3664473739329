"""A device process's family: the process group it leads, which what its driver starts joins, and
the record of its descendants (those that left the group too), so that all of them end with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path

import psutil

from .processes import _signal, _started, is_alive, start_time, wait_gone


def has_children() -> bool:
    """Whether this process has a child (running or exited): one system call, no scan of /proc."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # WNOWAIT: reaps nothing
        return True
    except ChildProcessError:
        return False
    except (AttributeError, OSError):
        return True  # cannot tell: look


def _family(pgid: int | None, roots: Iterable[int]) -> set[int]:
    """Live members of group `pgid` (if any), and the live `roots` with all their descendants."""
    found = set()
    if pgid is not None:
        for pid in psutil.pids():  # a group's members: one system call each, no file read
            try:
                if os.getpgid(pid) == pgid and is_alive(pid):
                    found.add(pid)
            except OSError:
                pass
    for root in roots:
        try:
            found |= {root, *(child.pid for child in psutil.Process(root).children(recursive=True))}
        except psutil.Error:
            pass  # gone
    return found


def _end_family(pgid: int | None, roots: Iterable[int], timeout: float) -> set[int]:
    """Freeze group `pgid`, the `roots` and their descendants (SIGSTOP: none forks any more), look
    again for what forked meanwhile, then SIGKILL them all, never this process. Returns those alive
    after `timeout`."""
    roots, me, targets = list(roots), os.getpid(), set()
    for _ in range(3):
        new = _family(pgid, roots) - targets - {me}
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        targets |= new
    if pgid is not None and pgid != os.getpgrp():  # this process's own group: each member was signalled
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _signal(targets, signal.SIGKILL)
    return wait_gone(targets, timeout)


def family_record(record_dir: str | os.PathLike, pid: int) -> Path:
    """Where device process `pid` keeps the list of its descendants (see Family)."""
    return Path(record_dir) / f"family-{pid}.json"


def kill_group(pgid_or_pid: int, record_dir: str | os.PathLike | None = None, timeout: float = 0.0,
               leader_started: int | None = None) -> set[int]:
    """SIGKILL a device process's whole group (its id is the device's pid, see Family), every
    descendant of the device and of the group's members (also those that started a new session or
    group, which a group kill misses), and, with `record_dir`, the descendants the device recorded
    there while it lived (found after its death only so). Never this process or its own group.

    Waits up to `timeout` for them to be gone (0: not at all; a supervisor must not block) and
    returns the pids still alive then."""
    if pgid_or_pid <= 1 or pgid_or_pid == os.getpgrp():
        raise ValueError(f"kill_group({pgid_or_pid}) would kill its caller's own group or every process")
    roots = []
    if record_dir is not None:
        record = family_record(record_dir, pgid_or_pid)
        try:  # only the very processes recorded, not a reuse of their pids
            roots = [int(pid) for pid, started in json.loads(record.read_text()).items()
                     if start_time(int(pid)) == started]
        except (OSError, ValueError, AttributeError):
            pass
        record.unlink(missing_ok=True)
    if leader_started is not None and start_time(pgid_or_pid) not in (None, leader_started):
        # The device is gone and its pid already belongs to another process (which may lead a group
        # of its own): only what the device recorded is its family.
        return _end_family(None, roots, timeout) if roots else set()
    try:
        os.killpg(pgid_or_pid, 0)
    except (ProcessLookupError, PermissionError):
        if not roots:
            return set()  # no such group and nothing recorded (a device that ended its family itself)
    with contextlib.suppress(OSError):
        if os.getpgid(pgid_or_pid) == pgid_or_pid:
            roots.append(pgid_or_pid)  # the device itself leads it, alive: all its descendants
    return _end_family(pgid_or_pid, roots, timeout)


def kill_recorded_families(record_dir: str | os.PathLike, timeout: float = 2.0) -> set[int]:
    """kill_group for every device process with a family record in `record_dir`: for whoever cleans
    up after a supervisor or admin died (its device processes died with it; their children did not)."""
    left = set()
    for record in Path(record_dir).glob("family-*.json"):
        try:
            left |= kill_group(int(record.stem.removeprefix("family-")), record_dir, timeout)
        except ValueError:
            record.unlink(missing_ok=True)
    return left


class Family:
    """What a device process started: it leads its own process group, which the processes it starts
    join (a driver's `subprocess.Popen`, `multiprocessing`), and keeps the pids and start times of all
    its descendants on file, so that kill_group finds those that left the group even after this
    process died. `check` measures their memory with its own; `end` kills them all but it."""

    def __init__(self, record_dir: str | os.PathLike | None) -> None:
        try:
            os.setpgid(0, 0)  # lead a new process group
        except OSError:
            pass
        self.pgid = os.getpgrp() if os.getpgrp() == os.getpid() else None  # else never kill its group
        self.record = family_record(record_dir, os.getpid()) if record_dir else None
        self.recorded: dict[int, int] = {}

    def check(self) -> float:
        """Record the descendants if they changed; returns the resident memory in MB (MiB) of this
        process and its descendants. Costs a scan of /proc only while it has children."""
        me = psutil.Process()
        procs = me.children(recursive=True) if has_children() else []
        used = me.memory_info().rss
        now = {}
        for proc in procs:
            try:
                used += proc.memory_info().rss
                now[proc.pid] = _started(proc)
            except psutil.Error:
                continue
        if now != self.recorded and self.record is not None:
            try:
                if now:
                    self.record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    part = self.record.with_suffix(".part")
                    part.write_text(json.dumps(now))
                    part.replace(self.record)  # a reader never sees half of it
                else:
                    self.record.unlink(missing_ok=True)
                self.recorded = now
            except OSError:
                pass  # no record (a host without the lab's run folder): tried again next time
        return used / 2**20

    def end(self, timeout: float = 1.0) -> set[int]:
        """Kill every other member of this process's group and every descendant (a new session's
        too); returns those alive after `timeout`."""
        left = _end_family(self.pgid, [os.getpid()] if has_children() else [], timeout)
        if self.record is not None:
            self.record.unlink(missing_ok=True)
        self.recorded = {}
        return left


# -- ports ----------------------------------------------------------------------------------------
