"""The run record of a lab on this machine: which processes it has, so that `down` and `up` can find
them even after a crash. One small JSON file per port, in a per-user runtime folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import attrs

from . import processes


def base_dir() -> Path:
    """Where run records live: $LABCTL_RUN_DIR, else $XDG_RUNTIME_DIR/labctl, else a per-user temp folder."""
    if os.environ.get("LABCTL_RUN_DIR"):
        path = Path(os.environ["LABCTL_RUN_DIR"])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "labctl"
    else:
        path = Path(tempfile.gettempdir()) / f"labctl-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def lab_dir(port: int) -> Path:
    """A private folder for one running lab (emulator ports, sockets)."""
    path = base_dir() / str(port)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@attrs.define
class LabRecord:
    """What `labctl up` started on this machine for one port."""

    port: int
    lab: str
    config: str
    log_dir: str
    keeper_pid: int
    admin_pid: int = 0
    supervisor_pid: int = 0
    session: int = 0          # the admin's session: every local process of the lab is in it
    admin_cmdline: str = ""
    detached: bool = False
    keeper_started: int = 0   # start times (clock ticks since boot): a reused pid is not the same process
    admin_started: int = 0
    supervisor_started: int = 0
    stop_timeout_s: float = 1.0   # the longest any device may take to shut down

    @classmethod
    def of(cls, port: int, lab: str, config: str, log_dir: str, admin_pid: int, supervisor_pid: int = 0,
           detached: bool = False, stop_timeout_s: float = 1.0) -> LabRecord:
        """The record of a lab this process keeps: pids, with the start times and session that
        identify them later."""
        keeper = os.getpid()
        return cls(port=port, lab=lab, config=config, log_dir=log_dir, keeper_pid=keeper, admin_pid=admin_pid,
                   supervisor_pid=supervisor_pid, session=processes.session_of(admin_pid) or 0,
                   admin_cmdline=processes.cmdline(admin_pid), detached=detached,
                   keeper_started=processes.start_time(keeper) or 0,
                   admin_started=processes.start_time(admin_pid) or 0,
                   supervisor_started=(processes.start_time(supervisor_pid) or 0) if supervisor_pid else 0,
                   stop_timeout_s=stop_timeout_s)

    def supervisor_running(self) -> bool:
        """Whether the recorded supervisor still runs (the very process, not a reuse of its pid)."""
        return bool(self.supervisor_started) and _running(self.supervisor_pid, self.supervisor_started)

    def lab_processes(self) -> list[int]:
        """Live processes of this lab's session (never a stranger that reused the session number)."""
        if not self.session:
            return []
        return [pid for pid in processes.session_members(self.session)
                if pid != os.getpid() and (not self.admin_cmdline or processes.cmdline(pid) == self.admin_cmdline)]

    def keeper_running(self) -> bool:
        """Whether the recorded keeper still runs (the very process, not a reuse of its pid)."""
        return _running(self.keeper_pid, self.keeper_started)

    def admin_running(self) -> bool:
        """Whether the recorded admin still runs (the very process, not a reuse of its pid)."""
        return _running(self.admin_pid, self.admin_started)

    def live(self) -> bool:
        """Whether this lab still runs here: its keeper or its admin."""
        return self.keeper_running() or self.admin_running()


def _running(pid: int, started: int) -> bool:
    return bool(pid) and processes.is_alive(pid) and (not started or processes.start_time(pid) == started)


def _path(port: int) -> Path:
    return base_dir() / f"lab-{port}.json"


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write a small JSON file atomically (a reader never sees half of it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict:
    """A small JSON file's content, or {} when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(record: LabRecord) -> None:
    """Save a lab's record atomically."""
    write_json(_path(record.port), attrs.asdict(record))


def read(port: int) -> LabRecord | None:
    """The record for a port, or None."""
    try:
        return LabRecord(**read_json(_path(port))) if _path(port).exists() else None
    except TypeError:
        return None


def remove(port: int) -> None:
    """Forget a port's record."""
    for path in (_path(port), _path(port).with_name(_path(port).name + ".tmp")):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
