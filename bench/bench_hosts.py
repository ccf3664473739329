"""Several hosts, measured across Linux network namespaces (needs root and `ip`, and the test extras):
how long until a host whose link is pulled is declared lost, how long its devices take to run again
once the link is back, how long nodes that kept running take to rejoin a restarted leader, and a
request's round trip to a device on a member host against one on the leader.

    sudo python bench/bench_hosts.py [--rounds 5] [--beat 0.3] [--misses 3]

Prints medians (and the spread) over the rounds."""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the test harness's namespaces

from labctl.actors import labkey  # noqa: E402
from tests.integration.netlab import NetLab, netns_available  # noqa: E402

CLONE_NEWNET = 0x40000000


def enter(namespace: str) -> None:
    """Move this thread (the one that makes the client's sockets) into a network namespace."""
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


def spread(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    values = [v * scale for v in values]
    return (f"median {statistics.median(values):.3f} {unit} (min {min(values):.3f}, max {max(values):.3f}, "
            f"n={len(values)})")


def wait(predicate, timeout: float = 60.0, step: float = 0.01) -> float:
    """Wall-clock time at which `predicate()` first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(step)
    return time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--beat", type=float, default=0.3, help="[supervision] heartbeat_s")
    parser.add_argument("--misses", type=int, default=3, help="[supervision] heartbeat_misses")
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    why = netns_available()
    if why:
        sys.exit(f"bench_hosts: {why}")
    from labctl.actors.client import connect
    from labctl.actors.errors import LabError
    from labctl.actors.messages import GetValveState

    with tempfile.TemporaryDirectory() as tmp:
        net = NetLab(Path(tmp))
        os.environ.update(net.env)
        try:
            key = Path(tmp) / "lab.key"
            labkey.write_key_file(key, labkey.generate())
            net.write(net.hosts_toml() + f"""
[supervision]
heartbeat_s = {args.beat}
heartbeat_misses = {args.misses}
[devices.valves]
driver = "sim-valves"
host = "a"
[devices.local_valves]
driver = "sim-valves"
""", bind=net.address, key_file=str(key))
            for host in ("a", "b"):
                net.start_node(host, key_file=str(key))
            assert net.up().returncode == 0, "the lab did not come up"
            enter(net.namespaces["leader"])
            client = connect(net.port, address=net.address, key_file=key, lane="off")

            def state(name: str) -> str:
                try:
                    return next(d.state for d in client.status().devices if d.name == name)
                except LabError:   # still starting (its supervisor not ready yet)
                    return ""

            remote, local = [], []
            for _ in range(args.calls):
                began = time.perf_counter()
                client.send("valves", GetValveState("A"))
                remote.append(time.perf_counter() - began)
                began = time.perf_counter()
                client.send("local_valves", GetValveState("A"))
                local.append(time.perf_counter() - began)

            detect, back = [], []
            for _ in range(args.rounds):
                pulled = time.time()
                net.link("a", up=False)
                detect.append(wait(lambda: state("valves") == "lost") - pulled)
                time.sleep(args.beat * (args.misses + 3) + 3.0)   # past the old process's own watchdog
                plugged = time.time()
                net.link("a", up=True)
                back.append(wait(lambda: state("valves") == "running") - plugged)

            rejoin = []
            client.close()
            for _ in range(args.rounds):
                assert net.labctl("down").returncode == 0
                began = time.time()
                up = net.popen("up", net.config, "--detach")
                client = None
                while client is None:
                    try:
                        client = connect(net.port, address=net.address, key_file=key, lane="off", timeout=2.0)
                    except Exception:
                        time.sleep(0.02)
                rejoin.append(wait(lambda: state("valves") == "running") - began)
                up.wait(timeout=60)
                client.close()

            bound = args.beat * (args.misses + 1)
            print(f"hosts on network namespaces; heartbeat_s={args.beat:g}, heartbeat_misses={args.misses} "
                  f"(loss bound {bound:.2f} s)")
            print(f"  round trip, device on member host a:  {spread(remote, 'ms', 1000)}")
            print(f"  round trip, device on the leader:     {spread(local, 'ms', 1000)}")
            print(f"  link pulled -> host declared lost:    {spread(detect)}")
            print(f"  link back -> its device running:      {spread(back)}")
            print(f"  leader restarted -> remote running:   {spread(rejoin)}  (from `up` to the member's device running)")
        finally:
            problems = net.close()
            if problems:
                print("cleanup:", "; ".join(problems), file=sys.stderr)


if __name__ == "__main__":
    main()
