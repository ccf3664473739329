"""Restart policy as pure functions: OTP's restart types and strategies, intensity, back-off, and
`decide`, which puts them together for a unit whose process ended. No actor, no clock: the
supervisor passes `now`, so every rule is unit-tested in milliseconds."""

from __future__ import annotations

import attrs

from labctl.config.schema import Supervision


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
    """Delay before the next try after `consecutive` quick ones: base, 2*base, 4*base ... up to cap."""
    return min(cap, base * (2 ** max(0, consecutive)))


def within_intensity(times: tuple[float, ...], now: float, max_restarts: int,
                     within_s: float) -> tuple[bool, tuple[float, ...]]:
    """(allowed, restart times after this one): at most `max_restarts` restarts within any `within_s`."""
    recent = tuple(t for t in times if now - t <= within_s)
    if len(recent) >= max_restarts:
        return False, recent
    return True, recent + (now,)


@attrs.frozen
class Member:
    """What a decision reads of one unit of the ended unit's supervision group."""

    name: str
    state: str


@attrs.frozen
class Ended:
    """A unit's process that ended on its own (not asked to by the supervisor)."""

    unit: str
    normal: bool      # exit code 0, no construction failure, not killed by the supervisor
    cause: str        # in words: "killed by SIGKILL", "hung: ...", "ValueError: ..."
    ran_s: float      # how long it had been running


@attrs.frozen
class Decision:
    """What follows an end: settle the unit, give up on its targets, or restart them after `delay`."""

    consecutive: int                      # the unit's quick restarts in a row, after this decision
    restart_times: tuple[float, ...]      # its intensity window, after this decision
    settle: str | None = None             # "stopped" or "failed": its restart type says no restart
    fail: tuple[str, ...] = ()            # intensity exceeded: these units are failed
    restart: tuple[str, ...] = ()         # these units restart (those with a process are ended first)
    delay: float = 0.0
    reason: str = ""


def decide(ended: Ended, sup: Supervision, consecutive: int, restart_times: tuple[float, ...],
           group: list[Member], now: float) -> Decision:
    """Apply OTP's rules to a unit that ended on its own: restart type, then intensity, then strategy
    and back-off. A unit that had run `stable_s` starts its back-off afresh."""
    if ended.ran_s >= sup.stable_s:
        consecutive = 0
    what = "exited normally" if ended.normal else ended.cause
    if not should_restart(sup.restart, ended.normal):
        return Decision(consecutive, restart_times, settle="stopped" if ended.normal else "failed",
                        reason=f"{sup.restart} device: not restarted after it {what}")
    targets = restart_set(ended.unit, sup.strategy, [m.name for m in group] or [ended.unit])
    allowed, times = within_intensity(restart_times, now, sup.max_restarts, sup.within_s)
    if not allowed:
        plural = "s" if sup.max_restarts != 1 else ""
        return Decision(consecutive, times, fail=tuple(targets),
                        reason=f"{what} (gave up: more than {sup.max_restarts} restart{plural} within "
                               f"{sup.within_s:g} s)")
    resting = {m.name for m in group if m.state in ("failed", "stopped")}  # stay so until restarted by hand
    return Decision(consecutive, times, restart=tuple(t for t in targets if t == ended.unit or t not in resting),
                    delay=backoff_delay(consecutive, sup.backoff_s, sup.backoff_max_s))
