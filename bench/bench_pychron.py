"""The Pychron gateway measured as Pychron's clients use it: a new TCP connection per command.

    python bench/bench_pychron.py [--calls 5000] [--seconds 3]

Starts a lab (six simulated valves, a furnace, the gateway) on free loopback ports, measures, and
stops it. Prints p50/p99/p99.9 of `GetValveStates` (answered from what the gateway keeps),
commands per second with 4 client processes, and the `Open`/`Close` round trip (through the valve
controller's process), next to the issue's reference (Pychron's own protocol classes on Twisted).
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAB = """
[lab]
name = "benchpychron"
port = {port}
log_dir = "{dir}/logs"
[devices.valves]
driver = "sim-valves"
[devices.furnace]
driver = "sim-furnace"
[devices.pychron]
driver = "pychron-gateway"
conf = {{ port = {gateway}, valves = ["valves"], furnace = "furnace" }}
"""


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ask(port: int, command: str) -> str:
    """One command, as Pychron's EthernetCommunicator sends it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command.encode() + b"\r")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply.decode()


def percentiles(times: list[float]) -> str:
    """p50/p99/p99.9 in ms."""
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1e3  # noqa: E731
    return f"p50 {pick(0.5):.3f} ms  p99 {pick(0.99):.3f} ms  p99.9 {pick(0.999):.3f} ms"


def hammer(port: int, seconds: float, counts) -> None:
    """Send GetValveStates as fast as one client can for `seconds`; add the count."""
    end, done = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        ask(port, "GetValveStates")
        done += 1
    with counts.get_lock():
        counts.value += done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="labctl-bench-pychron-"))
    port, gateway = free_port(), free_port()
    (folder / "lab.toml").write_text(LAB.format(port=port, gateway=gateway, dir=folder))
    labctl = [sys.executable, "-m", "labctl.bin.cli"]
    subprocess.run([*labctl, "up", str(folder / "lab.toml"), "--detach"], check=True, capture_output=True)
    try:
        while not ask(gateway, "GetValveStates").startswith("A0"):
            time.sleep(0.05)
        for _ in range(200):
            ask(gateway, "GetValveStates")   # warm up
        times = []
        for _ in range(args.calls):
            began = time.perf_counter()
            ask(gateway, "GetValveStates")
            times.append(time.perf_counter() - began)
        print(f"GetValveStates, new connection each ({args.calls}): {percentiles(times)}")
        print("  reference (Pychron on Twisted): p50 0.21 ms, p99 0.6 ms, p99.9 11-13 ms; "
              "goal p50 <= 0.21 ms, p99.9 < 2 ms")
        counts = multiprocessing.Value("l", 0)
        clients = [multiprocessing.Process(target=hammer, args=(gateway, args.seconds, counts)) for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        print(f"4 concurrent clients: {counts.value / args.seconds:.0f} commands/s "
              "(reference ~5,000/s, one core saturated; goal >= 10,000/s)")
        times = []
        for i in range(args.calls // 5):
            began = time.perf_counter()
            reply = ask(gateway, f"{'Open' if i % 2 == 0 else 'Close'} F")
            times.append(time.perf_counter() - began)
            assert reply == "OK", reply
        print(f"Open/Close F through the valve controller ({len(times)}): {percentiles(times)}  (goal p50 < 1 ms)")
    finally:
        subprocess.run([*labctl, "down", "--port", str(port)], capture_output=True)


if __name__ == "__main__":
    main()
