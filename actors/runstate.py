"""The run record of a lab on this machine: which processes it has, so that `down` and `up` can find
them even after a crash. One small JSON file per port, in a per-user runtime folder."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import attrs

from . import processes
from .errors import RunDirUnsafe


LANES_FILE = "lanes.json"   # in a lab's folder: where its devices' lanes are (see routing.publish_lanes)


def base_dir() -> Path:
    """Where run records and lab keys live: $LABCTL_RUN_DIR, else $XDG_RUNTIME_DIR/labctl, else a
    per-user temp folder; RunDirUnsafe unless it is this user's alone."""
    if os.environ.get("LABCTL_RUN_DIR"):
        path = Path(os.environ["LABCTL_RUN_DIR"])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "labctl"
    else:
        path = Path(tempfile.gettempdir()) / f"labctl-{os.getuid()}"
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """`path`, created mode 0700 if absent; RunDirUnsafe if it is a link, another user's, or writable by others.

    Anyone who could write here could plant a record (and have `down` kill what it names) or a link
    (and have `up` overwrite what it points to); anyone who could read here could take the lab key."""
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RunDirUnsafe(f"cannot create the run folder {path}: {exc.strerror or exc}; "
                           "set LABCTL_RUN_DIR to a folder of your own") from None
    info = os.lstat(path)
    advice = "remove it or set LABCTL_RUN_DIR to a private folder of your own (mkdir -m 700 DIR)"
    if not stat.S_ISDIR(info.st_mode):
        raise RunDirUnsafe(f"the run folder {path} is not a folder (a link or a file); {advice}")
    if info.st_uid != os.getuid():
        raise RunDirUnsafe(f"the run folder {path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
                           f"{advice}")
    if info.st_mode & 0o022:
        raise RunDirUnsafe(f"the run folder {path} can be written by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                           f"{advice}, or: chmod 700 {path}")
    return path


def lab_dir(port: int) -> Path:
    """A private folder for one running lab (emulator ports, sockets)."""
    path = base_dir() / str(port)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    return private_dir(path)


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
    session: int = 0          # the admin's session (the admin calls setsid): every local process of the lab
    bind: str = "127.0.0.1"   # the address the lab listens on: where this machine's clients reach it
    detached: bool = False
    keeper_started: int = 0   # start times (clock ticks since boot): a reused pid is not the same process
    admin_started: int = 0
    supervisor_started: int = 0
    stop_timeout_s: float = 1.0   # the longest any device may take to shut down

    @classmethod
    def of(cls, port: int, lab: str, config: str, log_dir: str, admin_pid: int, supervisor_pid: int = 0,
           detached: bool = False, stop_timeout_s: float = 1.0, bind: str = "127.0.0.1") -> LabRecord:
        """The record of a lab this process keeps: pids, with the start times and session that
        identify them later."""
        keeper = os.getpid()
        return cls(port=port, lab=lab, config=config, log_dir=log_dir, keeper_pid=keeper, admin_pid=admin_pid,
                   supervisor_pid=supervisor_pid, session=processes.session_of(admin_pid) or 0, bind=bind,
                   detached=detached,
                   keeper_started=processes.start_time(keeper) or 0,
                   admin_started=processes.start_time(admin_pid) or 0,
                   supervisor_started=(processes.start_time(supervisor_pid) or 0) if supervisor_pid else 0,
                   stop_timeout_s=stop_timeout_s)

    def supervisor_running(self) -> bool:
        """Whether the recorded supervisor still runs (the very process, not a reuse of its pid)."""
        return bool(self.supervisor_started) and _running(self.supervisor_pid, self.supervisor_started)

    def lab_processes(self) -> list[int]:
        """Live processes of this lab: members of the admin's own session, of this user.

        Thespian's admin starts a new session and its leader exits at once, so no live process ever
        has the session's number as its pid; and Linux never hands out a pid still used as a
        session id, so while any process of the lab lives no stranger can get that number or join
        that session. A live process with that pid therefore means the lab is gone and the number
        was reused: nothing of the lab is left then."""
        if not self.session or processes.is_alive(self.session):
            return []
        return [pid for pid in processes.session_members(self.session, uid=os.getuid()) if pid != os.getpid()]

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
    """Write a small JSON file atomically (a reader never sees half of it), mode 0600; a link planted
    at `path` is replaced, never followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL|O_NOFOLLOW, 0600
    try:
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike) -> dict:
    """A small JSON file's content, or {} when it is absent, unreadable or a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as file:
            data = json.loads(file.read())
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
    _path(port).unlink(missing_ok=True)
