"""`labctl import-microscope`: a python-microscope device-server config written as a lab file."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path
from typing import Any

import click

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class NotTomlable(ValueError):
    """A conf value a lab file cannot hold (a constructed object, say)."""


def toml_value(value: Any) -> str:
    """A value as TOML: strings, numbers, booleans, lists (and tuples) and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value) if isinstance(value, int) or value == value else "nan"
    if isinstance(value, str):
        return json.dumps(value)   # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise NotTomlable(f"{type(value).__qualname__} {value!r:.60}")


def toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.match(key) else json.dumps(key)


def lab_file(devices: list[dict], source: str, lab_name: str) -> tuple[str, list[str]]:
    """The lab file for a device server's DEVICES, and what could not be carried over."""
    lines = [f"# Written by `labctl import-microscope {source}`: its devices, each served to Pyro clients at",
             "# the URI the device server gave it. Check it with `labctl check`, run it with `labctl up`.",
             "[lab]", f"name = {json.dumps(lab_name)}", ""]
    problems: list[str] = []
    names: dict[str, int] = {}
    for entry in devices:
        cls, host, port = entry["cls"], entry["host"], entry["port"]
        target = f"{cls.__module__}:{cls.__qualname__}"
        object_id = cls.__name__
        names[object_id] = names.get(object_id, 0) + 1
        name = object_id if names[object_id] == 1 else f"{object_id}_{names[object_id]}"
        try:
            conf = toml_value({k: v for k, v in entry.get("conf", {}).items() if k != "index"})
        except NotTomlable as exc:
            problems.append(f"{name}: its conf holds {exc}, which a lab file cannot; write it by hand "
                            "(a controller's devices: conf.devices = {NAME = {driver, conf}})")
            continue
        lines.append(f"[devices.{toml_key(name)}]")
        lines.append(f"driver = {json.dumps('microscope:' + target)}" if isinstance(cls, type)
                     else f"factory = {json.dumps(target)}")
        if conf != "{  }":
            lines.append(f"conf = {conf}")
        if entry.get("uid") is not None:
            lines.append(f"uid = {json.dumps(str(entry['uid']))}")
        pyro = {"port": port, "name": object_id} if isinstance(cls, type) else {"port": port}
        if host not in LOOPBACK:
            pyro["host"] = host
        lines.append(f"pyro = {toml_value(pyro)}")
        if host not in LOOPBACK:
            lines.append("# served on a network address: labctl check wants pyro.hmac_key_file (or pyro.insecure = "
                         "true, if anyone who reaches the port may run code in the device's process)")
        lines.append("")
    return "\n".join(lines) + "\n", problems


@click.command("import-microscope")
@click.argument("config_file", metavar="CONFIG.py", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the lab file here [default: stdout].")
@click.option("--name", "lab_name", default="microscope", show_default=True, help="The lab's name.")
def import_microscope(config_file: str, output: str | None, lab_name: str) -> None:
    """Write a lab file equivalent to a python-microscope device-server config (CONFIG.py).

    CONFIG.py is run, as `device-server` runs it, for its DEVICES list. Each device becomes a
    [devices.NAME] table running the same class with the same conf, served to Pyro clients at
    the same URI (PYRO:Class@host:port). Floating devices keep their uid (add `units` to their
    conf: how many are connected). A conf that a lab file cannot hold (constructed devices, for
    a controller) is reported, and that device left out.
    """
    try:
        devices = runpy.run_path(config_file)["DEVICES"]
    except KeyError:
        raise click.ClickException(f"{config_file} defines no DEVICES list") from None
    except Exception as exc:
        raise click.ClickException(f"running {config_file} failed: {type(exc).__name__}: {exc}") from None
    counts: dict[type, int] = {}
    for entry in devices:
        if entry.get("uid") is not None:
            counts[entry["cls"]] = counts.get(entry["cls"], 0) + 1
    for entry in devices:   # a floating unit is probed among as many units as the server config lists
        if entry.get("uid") is not None:
            entry["conf"] = {**entry.get("conf", {}), "units": counts[entry["cls"]]}
    text, problems = lab_file(list(devices), Path(config_file).name, lab_name)
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}: {len(devices) - len(problems)} devices", err=True)
    else:
        click.echo(text, nl=False)
    for problem in problems:
        click.echo(f"left out: {problem}", err=True)
    sys.exit(1 if problems else 0)
