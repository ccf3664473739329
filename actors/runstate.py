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

    def lab_processes(self) -> list[int]:
        """Live processes of this lab's session (never a stranger that reused the session number)."""
        if not self.session:
            return []
        return [pid for pid in processes.session_members(self.session)
                if pid != os.getpid() and (not self.admin_cmdline or processes.cmdline(pid) == self.admin_cmdline)]

    def keeper_alive(self) -> bool:
        """Whether the recorded keeper process runs."""
        return processes.is_alive(self.keeper_pid)

    def admin_alive(self) -> bool:
        """Whether the recorded admin process runs."""
        return processes.is_alive(self.admin_pid)


def _path(port: int) -> Path:
    return base_dir() / f"lab-{port}.json"


def write(record: LabRecord) -> None:
    """Save a lab's record atomically."""
    path = _path(record.port)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(attrs.asdict(record), indent=1))
    os.replace(tmp, path)


def read(port: int) -> LabRecord | None:
    """The record for a port, or None."""
    try:
        data = json.loads(_path(port).read_text())
        return LabRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def remove(port: int) -> None:
    """Forget a port's record."""
    for path in (_path(port), _path(port).with_suffix(".tmp")):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
