"""Operating-system process plumbing: parent-death signals, reaping, waiting for exits, finding and
killing a lab's processes and whoever holds its port. Linux first; elsewhere the calls degrade to
polling or do nothing."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = None


def _prctl(option: int, value: int) -> bool:
    global _libc
    if not os.path.exists("/proc/self"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl(option, value, 0, 0, 0) == 0


def die_with_parent(expected_parent: int | None, sig: int = signal.SIGKILL) -> None:
    """Make this process receive `sig` when its parent dies; exit now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))
    # The parent may have died between fork and prctl; then nobody would ever signal us.
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (so they are reaped here, never left as zombies)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


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


def is_alive(pid: int | None) -> bool:
    """True when `pid` runs (a zombie is dead: it holds no port, no file, no device)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) not in ("Z", "X", None)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2:].split()


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    if fields is None:
        return "?" if not os.path.exists("/proc/self") else None
    return fields[0]


def parent_of(pid: int) -> int | None:
    """The parent pid of a process, or None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def session_of(pid: int) -> int | None:
    """The session id of a process, or None when it is gone."""
    try:
        return os.getsid(pid)
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (tells a reused pid from the original)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> str:
    """A process's command line, or '' when unreadable."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def session_members(sid: int, uid: int | None = None) -> list[int]:
    """Live (non-zombie) processes of a session (owned by `uid`, when given)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                try:
                    if uid is not None and entry.stat().st_uid != uid:
                        continue
                except OSError:
                    continue
                members.append(int(entry.name))
    return members


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until every pid has exited or `timeout` passes; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = {pid for pid in pids if is_alive(pid)}
    fds = {}
    try:
        for pid in alive:
            try:
                fds[os.pidfd_open(pid)] = pid
            except (OSError, AttributeError):
                pass
        while alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            watched = [fd for fd, pid in fds.items() if pid in alive]
            if watched and len(watched) == len(alive):
                select.select(watched, [], [], remaining)
            else:
                time.sleep(min(0.01, remaining))
            alive = {pid for pid in alive if is_alive(pid)}
    finally:
        for fd in fds:
            os.close(fd)
    return alive


def kill_all(pids: Iterable[int], timeout: float = 2.0) -> set[int]:
    """SIGKILL each process and wait for it to be gone; returns any that survived."""
    pids = set(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return wait_gone(pids, timeout)


def port_listeners(port: int) -> set[int]:
    """Pids of processes holding a listening TCP socket on `port` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return set()
    holders = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.readlink(fd) in inodes:
                        holders.add(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return holders


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
    """A process's end in words: 'killed by SIGKILL', 'exited with code 3'."""
    if exitcode is None:
        return "exited"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return "exited normally" if exitcode == 0 else f"exited with code {exitcode}"
