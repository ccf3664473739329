"""Restart policy as pure functions: OTP's restart types and strategies, intensity, back-off."""

from __future__ import annotations

from collections import deque


def should_restart(restart: str, normal_exit: bool) -> bool:
    """OTP's restart types: permanent always, transient only after an abnormal end, temporary never."""
    if restart == "permanent":
        return True
    if restart == "transient":
        return not normal_exit
    if restart == "temporary":
        return False
    raise ValueError(f"unknown restart type {restart!r}")


def restart_set(trigger: str, strategy: str, members: list[str]) -> list[str]:
    """The units to restart when `trigger` ends, within its supervision group `members` (in order)."""
    if strategy == "one_for_one" or trigger not in members:
        return [trigger]
    if strategy == "one_for_all":
        return list(members)
    if strategy == "rest_for_one":
        return members[members.index(trigger):]
    raise ValueError(f"unknown strategy {strategy!r}")


def backoff_delay(consecutive: int, base: float, cap: float) -> float:
    """Delay before the next restart after `consecutive` quick restarts: base, 2*base, ... up to cap."""
    return min(cap, base * (2 ** max(0, consecutive)))


class Intensity:
    """Restart intensity: at most `max_restarts` restarts within any `within_s` window."""

    def __init__(self, max_restarts: int, within_s: float) -> None:
        self.max_restarts = max_restarts
        self.within_s = within_s
        self.times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at `now` if it is within the limit; False means: give up."""
        while self.times and now - self.times[0] > self.within_s:
            self.times.popleft()
        if len(self.times) >= self.max_restarts:
            return False
        self.times.append(now)
        return True

    def reset(self) -> None:
        """Forget past restarts (a restart by hand clears the slate)."""
        self.times.clear()
