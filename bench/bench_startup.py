"""Benchmark: start-up of large labs. Prints figures; asserts nothing.

    python bench/bench_startup.py [--sizes 100 200 400] [--settle 60] [--port 23960]

For each size: `labctl up --detach` of N simulated devices until every device runs, then, after
`--settle` seconds, how many restarts happened and whether any device is not running. Start-up is
paced (starting.MAX_STARTING processes construct at once), so its time should grow about
linearly with N, with no restart storm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_lab import lab_file


def run(size: int, port: int, settle: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-startup-{size}-"))
    env = {**os.environ, "LABCTL_RUN_DIR": str(folder / "run")}
    config = lab_file(folder, port, size - 1)
    cli = [sys.executable, "-m", "labctl.bin.cli"]
    began = time.monotonic()
    up = subprocess.run([*cli, "up", str(config), "--detach"], env=env, capture_output=True, text=True)
    took = time.monotonic() - began
    try:
        time.sleep(settle)  # what is measured is what happens while the lab just runs
        status = json.loads(subprocess.run([*cli, "status", "--json", "--port", str(port)], env=env,
                                           capture_output=True, text=True).stdout)
        return {"devices": size, "up_s": round(took, 2), "up_exit": up.returncode,
                "restarts": sum(d["restarts"] for d in status["devices"]),
                "not_running": sum(d["state"] != "running" for d in status["devices"])}
    finally:
        subprocess.run([*cli, "down", "--port", str(port)], env=env, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=23960)
    args = parser.parse_args()
    print(f"{'devices':>8} {'up s':>7} {'up exit':>8} {'restarts':>9} {'not running':>12}   (after {args.settle:g} s)")
    for size in args.sizes:
        r = run(size, args.port, args.settle)
        print(f"{r['devices']:>8} {r['up_s']:>7} {r['up_exit']:>8} {r['restarts']:>9} {r['not_running']:>12}",
              flush=True)


if __name__ == "__main__":
    main()
