"""Valve lock states kept across restarts of a device and of the lab (as Pychron keeps them): the
supervisor notes each lock and unlock, and hands a valve controller's locks to every new process
of it. Kept in the lab's log folder, which outlives the lab, as `valve-locks.json`."""

from __future__ import annotations

import logging
from pathlib import Path

from . import runstate

log = logging.getLogger("labctl.supervisor")

FILE = "valve-locks.json"


class ValveLocks:
    """{device: {valve: locked}}, saved at every change."""

    def __init__(self, log_dir: str) -> None:
        self.path = Path(log_dir) / FILE
        data = runstate.read_json(self.path)
        self.locks: dict[str, dict[str, bool]] = {
            str(device): {str(v): bool(locked) for v, locked in valves.items()}
            for device, valves in data.items() if isinstance(valves, dict)}

    def of(self, device: str) -> dict[str, bool]:
        """The kept lock states of one valve controller ({} if none)."""
        return dict(self.locks.get(device, {}))

    def note(self, device: str, valve: str, locked: bool) -> None:
        """A valve was locked or unlocked: keep it."""
        self.locks.setdefault(device, {})[valve] = bool(locked)
        try:
            runstate.write_json(self.path, self.locks)
        except OSError as exc:
            log.warning("could not keep the valve locks in %s: %s", self.path, exc)
