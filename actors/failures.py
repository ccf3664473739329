"""Every failure the supervisor answers a request with, built in one place, so that each says the
same thing the same way: what happened, to which device, and whether the request was carried out."""

from __future__ import annotations

from .messages import Failure, Request

NOT_CARRIED_OUT = "it was not carried out"


def lab_error(request: Request, exc: Exception) -> Failure:
    """labctl itself failed handling a request."""
    return Failure(request.request_id, "lab_error", type(exc).__name__,
                   f"the supervisor could not handle {type(request).__name__}: {exc}", request.device)


def not_ready(request: Request) -> Failure:
    """The lab answers but its supervisor has not been handed the lab yet."""
    return Failure(request.request_id, "not_ready", "LabNotReady",
                   "the lab on this port is still starting; try again in a moment", request.device)


def unknown_request(request: Request) -> Failure:
    """A request the supervisor has no handler for."""
    return Failure(request.request_id, "unknown_message", "UnknownMessage",
                   f"the supervisor does not handle {type(request).__name__}", request.device)


def unknown_device(request: Request, names) -> Failure:
    """A request to a name no device has; lists the names there are."""
    return Failure(request.request_id, "unknown_device", "UnknownDevice",
                   f"no device {request.device!r}; devices: {', '.join(names)}", request.device)


def unavailable(request_id: str, device: str, state: str, last_error: str | None, what: str) -> Failure:
    """A request to a device that is not running: answered at once, never sent."""
    state = str(state)
    if state == "failed":
        text = f"{device} has failed: {last_error}; {what} was not sent"
    elif state == "stopped":
        text = f"{device} is stopped; {what} was not sent"
    elif state == "lost":
        text = f"{device} is lost, {last_error}; {what} was not sent"
    else:
        text = f"{device} is {state}; {what} was not sent, try again when it is running"
    return Failure(request_id, state, "DeviceUnavailable", text, device)


def composite(request_id: str, name: str, parts) -> Failure:
    """A request addressed to a factory's own name instead of one of its parts."""
    return Failure(request_id, "unknown_device", "UnknownDevice",
                   f"{name} is a composite device; address its parts: {', '.join(parts) or 'none'}", name)


def not_started(request_id: str, device: str, message: str, why: str) -> Failure:
    """A request a device process queued but never started (it hung, or is stopping)."""
    return Failure(request_id, "restarting", "DeviceUnavailable",
                   f"{device}: {message} was not started ({why}); {NOT_CARRIED_OUT}", device)


def ended_in_flight(request_id: str, device: str, message: str, cause: str, state: str) -> Failure:
    """A request whose device process ended while handling it: never re-sent."""
    kind = str(state) if state in ("restarting", "failed", "stopped") else "restarting"
    return Failure(request_id, kind, "DeviceUnavailable",
                   f"{device} ended ({cause}) while handling {message}; the request was not re-sent "
                   "and may or may not have taken effect", device)


def lab_stopping(request: Request) -> Failure:
    """A restart asked for while the lab stops its devices."""
    return Failure(request.request_id, "stopping", "LabStopping",
                   f"the lab is stopping; {request.device} was not restarted", request.device)
