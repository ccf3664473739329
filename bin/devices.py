"""`labctl send` and `labctl restart`: acting on a running lab's devices."""

from __future__ import annotations

import difflib
import json
import time
from typing import TYPE_CHECKING, Any

import attrs
import click

from labctl.actors.errors import DeviceError, LabError, UnknownDevice
from labctl.actors.messages import DEVICE_MESSAGES, Call

from . import formatting
from .options import SETTLED, fail, lab_options, open_client, resolve_port

if TYPE_CHECKING:
    from labctl.actors.client import LabClient


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("device")
@click.argument("message")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@lab_options
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the reply.")
def send(device: str, message: str, args: tuple[str, ...], port: int | None, config_file: str | None,
         as_json: bool, timeout: float) -> None:
    """Send MESSAGE to DEVICE and print the reply, e.g.

    \b
      labctl send valves OpenValve A
      labctl send furnace SetSetpoint 500
      labctl send stage MoveTo x 1200
      labctl send furnace Call get_output
      labctl send valves Call describe_valves

    ARGS are converted to the message's field types. For Call, the first argument is the method
    and the others are Python literals or plain strings; name=value passes a keyword argument.
    """
    from labctl.actors.client import connect  # imported here, so that `labctl send --help` needs no client

    port = resolve_port(port, config_file)

    def failed(error_type: str, text: str) -> None:
        if as_json:
            click.echo(json.dumps({"ok": False, "device": device, "message": message,
                                   "error": {"type": error_type, "message": text}}))
        fail(text)

    try:
        # Not attached yet: a device whose lane is published in the run folder is reached without the
        # actor runtime (labctl send then starts and answers in about a tenth of a second).
        client = connect(port, timeout=timeout, attach=False)
    except LabError as exc:
        failed(type(exc).__name__, str(exc))
    with client:
        cls = DEVICE_MESSAGES.get(message)
        if cls is None:
            failed("UnknownMessage", unknown_message_text(client, device, message))
        try:
            request = build_message(cls, args)
        except ValueError as exc:
            failed("BadArgument", str(exc))
        began = time.monotonic()
        try:
            value = client.send(device, request, timeout=timeout)
        except DeviceError as exc:
            failed(exc.error_type or type(exc).__name__,
                   f"{device}: {exc.error_type}: {exc.text}" if exc.error_type else str(exc))
        except LabError as exc:
            failed(type(exc).__name__, str(exc))
    if as_json:
        click.echo(json.dumps({"ok": True, "device": device, "message": message,
                               "value": formatting.jsonable(value),
                               "elapsed_ms": round((time.monotonic() - began) * 1000, 3)}))
    else:
        click.echo(formatting.human(value))


def unknown_message_text(client: LabClient, device: str, message: str) -> str:
    """The error for an unknown message name: what the device accepts, and a guess."""
    try:
        accepted = client.describe(device).accepts()
    except UnknownDevice as exc:
        return exc.text
    except LabError:
        accepted = sorted(DEVICE_MESSAGES)
    close = difflib.get_close_matches(message, accepted, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown message {message!r}{hint}; {device} accepts: {', '.join(accepted)}"


def build_message(cls, args: tuple[str, ...]):
    """The message `cls` built from command-line strings, each converted to its field's type."""
    if cls is Call:
        if not args:
            raise ValueError("Call needs a method name: labctl send DEVICE Call METHOD [ARGS...] [NAME=VALUE...]")
        positional, keywords = [], {}
        for arg in args[1:]:
            key, sep, value = arg.partition("=")
            if sep and key.isidentifier():
                keywords[key] = literal(value)
            else:
                positional.append(literal(arg))
        return Call(args[0], tuple(positional), keywords)
    fields = [f for f in attrs.fields(cls) if f.name not in ("device", "request_id")]
    usage = f"usage: labctl send DEVICE {cls.__name__}" + "".join(f" {f.name.upper()}" for f in fields)
    if len(args) != len(fields):
        kinds = ", ".join(f"{f.name}: {f.type}" for f in fields) or "no arguments"
        raise ValueError(f"{cls.__name__} takes {len(fields)} argument{'s' if len(fields) != 1 else ''} "
                         f"({kinds}), got {len(args)}; {usage}")
    values = [convert(arg, f.type, f"{cls.__name__}: {f.name}") for arg, f in zip(args, fields)]
    return cls(*values)


def convert(text: str, kind: Any, what: str) -> Any:
    """A command-line string as `kind` (float, int, bool or str)."""
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind == "float":
            return float(text)
        if kind == "int":
            return int(text)
    except ValueError:
        raise ValueError(f"{what} must be {'a number' if kind == 'float' else 'an integer'}, got {text!r}") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{what} must be true or false, got {text!r}")
    return text


def literal(text: str) -> Any:
    """A Python literal if `text` is one (500, 1.5, [1, 2], True), else the text itself."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@click.command()
@click.argument("device")
@lab_options
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for it to run again.")
def restart(device: str, port: int | None, config_file: str | None, timeout: float) -> None:
    """Restart DEVICE's process by hand; clears a failed state (a shared group restarts as one)."""
    port = resolve_port(port, config_file)
    with open_client(port) as client:
        try:
            client.restart(device)
            deadline, since = time.monotonic() + timeout, client.events().last_seq
            while True:
                entry = next(d for d in client.status().devices if d.name == device)
                if entry.state in SETTLED or time.monotonic() > deadline:
                    break
                since = client.events(since, wait_s=0.5).last_seq
        except LabError as exc:
            fail(str(exc))
    if entry.state != "running":
        fail(f"{device} is {entry.state} after restarting: {entry.last_error or 'no error recorded'}")
    click.echo(f"{device} running (pid {entry.pid})")
