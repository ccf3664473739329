"""`labctl emulate KIND`: serve an instrument emulator on a pseudo-terminal until interrupted."""

from __future__ import annotations

import os
import signal
from typing import Any

import click

from labctl.hardware.emulators import EMULATORS, emulator_options, make_emulator


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # Unwind like Ctrl-C, so that the clean-up in emulate() stops the emulator and removes its symlink.
    raise KeyboardInterrupt


@click.command("emulate")
@click.argument("kind", type=click.Choice(list(EMULATORS)))
@click.option("--link", type=click.Path(dir_okay=False), default=None,
              help="Path of the symlink to serve on (default: one in a new temporary folder).")
@click.option("--slow-s", type=click.FloatRange(min=0), default=None,
              help="How late a reply comes under the 'slow' fault, in seconds.")
@click.option("--gid", type=click.IntRange(0, 9), default=None, help="eurotherm: group id (0-9).")
@click.option("--uid", type=click.IntRange(0, 9), default=None, help="eurotherm: unit id (0-9).")
@click.option("--setpoint", type=float, default=None, help="eurotherm: setpoint at start, degrees C.")
@click.option("--ambient", type=float, default=None, help="eurotherm: temperature at start, degrees C.")
@click.option("--tau-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="eurotherm: time constant of the thermal model, in seconds.")
@click.option("--min-setpoint", type=float, default=None, help="eurotherm: lowest setpoint it accepts.")
@click.option("--max-setpoint", type=float, default=None, help="eurotherm: highest setpoint it accepts.")
@click.option("--n-pins", type=click.IntRange(min=1), default=None, help="arduino-valves: number of pins.")
@click.option("--valve-pin", "valve_pins", type=click.IntRange(min=0), multiple=True,
              help="arduino-valves: an output pin whose valve starts closed (repeatable; "
                   "default: 3 * channel + 4 for every channel).")
@click.option("--stuck", type=click.IntRange(min=0), multiple=True,
              help="arduino-valves: an output pin whose valve does not move (repeatable).")
@click.option("--open-offset", type=click.IntRange(min=1), default=None,
              help="arduino-valves: the open indicator is at output pin minus this.")
@click.option("--closed-offset", type=click.IntRange(min=1), default=None,
              help="arduino-valves: the closed indicator is at output pin minus this.")
def emulate(kind: str, **options: Any) -> None:
    """Serve a KIND instrument emulator on a pseudo-terminal until Ctrl-C or SIGTERM.

    The first line of output is the path to connect a driver to; it stays valid until the end.
    """
    options = {name: value for name, value in options.items() if value is not None and value != ()}
    flags = {param.name: param.opts[0] for param in click.get_current_context().command.params}
    known = emulator_options(kind)
    unknown = [flags[name] for name in options if name not in known]
    if unknown:
        raise click.UsageError(f"{', '.join(unknown)} does not apply to {kind}; it takes "
                               f"{', '.join(flags[name] for name in known if name in flags)}")
    try:
        emulator = make_emulator(kind, **options)
    except ValueError as exc:  # a value the emulator refuses, e.g. a stuck pin beyond --n-pins
        raise click.UsageError(str(exc)) from None
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        try:
            emulator.start()
        except (ValueError, OSError) as exc:  # e.g. --link names a file, or a folder that does not exist
            raise click.ClickException(f"cannot serve on {options.get('link', 'a temporary folder')}: {exc}")
        click.echo(emulator.port)
        click.get_text_stream("stdout").flush()
        click.echo(f"{kind} emulator serving on {emulator.port} (now {os.path.realpath(emulator.port)}); "
                   "set the driver's port to that path. Ctrl-C stops it.", err=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave the symlink behind.
        for signum in handlers:
            signal.signal(signum, signal.SIG_IGN)
        emulator.stop()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
