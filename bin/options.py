"""What the `labctl` commands share: which lab to talk to (--port/--config), connecting to it, and how
they fail."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from labctl.actors.errors import LabError

if TYPE_CHECKING:
    from labctl.actors.client import LabClient

SETTLED = ("running", "failed", "stopped")  # a device's states that last until something happens to it


def lab_options(command):
    """--port / --config / --address: which lab to talk to, and where it listens."""
    command = click.option("--address", expose_value=False, is_eager=True, callback=_use_address,
                           help="Address the lab listens on [default: --config's [lab].bind, else $LABCTL_ADDRESS, "
                                "else the one `labctl up` recorded here, else 127.0.0.1].")(command)
    command = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                           help="Lab file whose [lab].port (and bind) to use.")(command)
    command = click.option("--port", type=click.IntRange(1, 65535),
                           help="Admin port of the lab [default: --config's port, else $LABCTL_PORT, else 1900].")(command)
    return command


_address_given = False


def _use_address(ctx, param, value) -> None:
    # Every client of this command finds it there (labctl.actors.client.default_address).
    global _address_given
    if value:
        os.environ["LABCTL_ADDRESS"] = value
        _address_given = True


def resolve_port(port: int | None, config_file: str | None) -> int:
    """--port, else --config's [lab].port, else $LABCTL_PORT, else 1900 (and --config's bind, unless
    --address or $LABCTL_ADDRESS says where the lab listens)."""
    if config_file and not _address_given:
        bind = lab_bind(config_file)
        if bind and bind != "0.0.0.0":   # as $LABCTL_PORT yields to --config's port, so does the address
            os.environ["LABCTL_ADDRESS"] = bind
    if port is not None:
        return port
    if config_file:
        return lab_port(config_file)
    from labctl.actors.client import default_port  # the client is imported only by commands that use it

    try:
        return default_port()
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


def lab_bind(path: str) -> str:
    """A lab file's [lab].bind ('' if it has none or cannot be read: lab_port says why)."""
    import tomllib

    try:
        with open(path, "rb") as file:
            bind = tomllib.load(file).get("lab", {}).get("bind", "")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return ""
    return bind if isinstance(bind, str) else ""


def lab_port(path: str) -> int:
    """A lab file's [lab].port (default 1900), read without importing its drivers; exit 1 if unreadable."""
    import tomllib

    from labctl.config.schema import DEFAULT_PORT

    try:
        with open(path, "rb") as file:
            port = tomllib.load(file).get("lab", {}).get("port", DEFAULT_PORT)
    except (OSError, tomllib.TOMLDecodeError, AttributeError) as exc:
        fail(f"{path}: cannot read [lab].port: {exc}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        fail(f"{path}: lab.port: expected a port number, got {port!r}")
    return port


def open_client(port: int, timeout: float = 10.0) -> LabClient:
    """A client for the lab on `port`, or a clear error and exit 1."""
    from labctl.actors.client import connect

    try:
        return connect(port, timeout=timeout)
    except LabError as exc:  # not running, not authorised (no key), an unsafe run folder
        raise click.ClickException(str(exc)) from None


def fail(message: str) -> None:
    """Print `error: message` on stderr and exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)
