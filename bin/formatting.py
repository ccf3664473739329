"""Turning lab replies into text for people and JSON for programs."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from labctl.actors.messages import Image, LabStatus


def jsonable(value: Any) -> Any:
    """A reply value as plain JSON types (an image becomes its summary, not its pixels)."""
    # A numpy value can only have come if numpy is loaded already: never import it just to look.
    np = sys.modules.get("numpy")
    if isinstance(value, Image):
        return {"image": value.summary()}
    if np is not None and isinstance(value, np.ndarray):
        return {"array": {"shape": list(value.shape), "dtype": value.dtype.name}}
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def human(value: Any) -> str:
    """A reply value as one readable line (or a few, for tables of values)."""
    if isinstance(value, Image):
        s = value.summary()
        return (f"image {'x'.join(map(str, s['shape']))} {s['dtype']} frame {s['frame']} "
                f"(min {s['min']}, max {s['max']}, mean {s['mean']:.1f})")
    if isinstance(value, dict):
        return json.dumps(jsonable(value), indent=2)
    if isinstance(value, (list, tuple)):
        return json.dumps(jsonable(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def duration(seconds: float | None) -> str:
    """12.3s, 4m05s, 2h03m."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table with columns padded to fit."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def status_table(status: LabStatus) -> str:
    """`labctl status` for people."""
    rows = []
    for d in status.devices:
        state = d.state + (" (degraded)" if d.degraded else "")
        error = (d.last_error or "").splitlines()[0][:80] if d.last_error else None
        rows.append([d.name, d.driver, d.host, d.pid, state, d.restarts, duration(d.uptime_s), error])
    head = f"lab {status.lab} on port {status.port}"
    text = head + "\n" + table(["NAME", "DRIVER", "HOST", "PID", "STATE", "RESTARTS", "UPTIME", "LAST ERROR"], rows)
    if status.hosts:
        now = time.time()
        hosts = [[h.name, h.address, h.state, f"{duration(max(0.0, now - h.since))} ago", h.reason]
                 for h in status.hosts]
        text += "\n\n" + table(["HOST", "ADDRESS", "STATE", "SINCE", "WHY"], hosts)
    return text
