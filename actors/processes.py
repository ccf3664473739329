"""Operating-system process plumbing: parent-death signals, fatal signals, process groups, reaping,
waiting for exits, finding and killing a lab's or a device's processes and whoever holds a port.

Process facts come from psutil; what psutil has no call for (prctl, pidfds, sessions, groups) from
`os`. Linux first; elsewhere the calls degrade to polling or do nothing."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

# psutil is imported by the functions that use it: a client (`labctl status`, `labctl send`) imports
# this module for port_answers alone, and need not load psutil to start.
if TYPE_CHECKING:
    import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Signals whose default action must stay: a Python handler for SIGSEGV returns to the faulting
# instruction, and the process spins at 100% CPU instead of dying "killed by SIGSEGV".
FATAL_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT})
# A device process's own exit code when it ended itself past its memory_max_mb.
MEMORY_LIMIT_EXIT = 86


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0


def die_with_parent(expected_parent: int | None, sig: int = signal.SIGKILL) -> None:
    """Make this process receive `sig` when its parent dies; exit now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))
    # The parent may have died between fork and prctl; then nobody would ever signal us.
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (so they are reaped here, never left as zombies)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def keep_fatal_signals_default(signum: int, handler):
    """signal.signal, except that FATAL_SIGNALS keep their default action (death, named in the exit status)."""
    return signal.signal(signum, signal.SIG_DFL if signum in FATAL_SIGNALS else handler)


def reap_children() -> list[tuple[int, int]]:
    """Collect every exited child without blocking; returns (pid, wait status) pairs."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def _process(pid: int | None) -> psutil.Process | None:
    import psutil

    try:
        return psutil.Process(pid) if pid and pid > 0 else None  # Process(None) would be this process
    except psutil.Error:
        return None


def _dead_states() -> tuple[str, str]:
    import psutil

    return (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def is_alive(pid: int | None) -> bool:
    """True when `pid` runs (a zombie is dead: it holds no port, no file, no device)."""
    import psutil

    try:
        return (proc := _process(pid)) is not None and proc.status() not in _dead_states()
    except psutil.AccessDenied:
        return True
    except psutil.Error:
        return False


def is_stopped(pid: int | None) -> bool:
    """True when `pid` is stopped (SIGSTOP, a debugger): alive, but it will not run until continued."""
    import psutil

    try:
        return (proc := _process(pid)) is not None and proc.status() in (psutil.STATUS_STOPPED,
                                                                         psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


def parent_of(pid: int) -> int | None:
    """The parent pid of a process, or None when it is gone."""
    import psutil

    try:
        return (proc := _process(pid)) and proc.ppid()
    except psutil.Error:
        return None


def session_of(pid: int) -> int | None:
    """The session id of a process, or None when it is gone."""
    try:
        return os.getsid(pid)
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """When a process started, in clock ticks since boot: with its pid it identifies the very process
    (a reused pid starts later), and unlike psutil's wall-clock create_time it never changes when the
    system clock is set, so it can be stored and compared by another process later."""
    import psutil

    try:
        return (proc := _process(pid)) and _started(proc)
    except psutil.Error:
        return None


def _started(proc: psutil.Process) -> int:
    import psutil

    return round((proc.create_time() - psutil.boot_time()) * _TICKS)


def cmdline(pid: int) -> str:
    """A process's command line, or '' when unreadable."""
    import psutil

    try:
        return " ".join(proc.cmdline()).strip() if (proc := _process(pid)) else ""
    except psutil.Error:
        return ""


def session_members(sid: int, uid: int | None = None) -> list[int]:
    """Live (non-zombie) processes of a session (whose real uid is `uid`, when given)."""
    import psutil

    members = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) != sid or (proc := psutil.Process(pid)).status() in _dead_states():
                continue
            if uid is None or proc.uids().real == uid:
                members.append(pid)
        except (OSError, psutil.Error):
            continue
    return members


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until every pid has exited or `timeout` passes; returns those still alive. Event-driven
    where pidfds exist (one is readable once its process has exited), polling elsewhere."""
    deadline = time.monotonic() + timeout
    alive = {pid for pid in pids if is_alive(pid)}
    fds = {}
    try:
        for pid in alive:
            try:
                fds[pid] = os.pidfd_open(pid)
            except (OSError, AttributeError):
                pass  # gone already (seen below), or no pidfds here
        while alive and (remaining := deadline - time.monotonic()) > 0:
            if alive <= fds.keys():
                select.select([fds[pid] for pid in alive], [], [], remaining)
            else:
                time.sleep(min(0.01, remaining))
            alive = {pid for pid in alive if is_alive(pid)}
    finally:
        for fd in fds.values():
            os.close(fd)
    return alive


def kill_all(pids: Iterable[int], timeout: float = 2.0) -> set[int]:
    """SIGKILL each process and wait for it to be gone; returns any that survived."""
    pids = set(pids)
    _signal(pids, signal.SIGKILL)
    return wait_gone(pids, timeout)


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# -- a device's process group and descendants ---------------------------------------------------

def port_listeners(port: int) -> set[int]:
    """Pids of processes (of this user, unless root) holding a listening TCP socket on `port` (any address)."""
    import psutil

    try:
        connections = psutil.net_connections("tcp")
    except psutil.AccessDenied:
        return set()
    return {c.pid for c in connections
            if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (we could bind it ourselves)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return True
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    finally:
        probe.close()


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_free(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """Wait until host:port can be bound; False if it is still held after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if port_is_free(port, host):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def exit_cause(exitcode: int | None) -> str:
    """A process's end in words: 'killed by SIGKILL', 'exited with code 3', and for a device process
    that ended itself past its memory_max_mb, 'memory limit exceeded'."""
    if exitcode is None:
        return "exited"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    if exitcode == MEMORY_LIMIT_EXIT:
        return f"memory limit exceeded (exit code {exitcode})"
    return "exited normally" if exitcode == 0 else f"exited with code {exitcode}"
