"""Pump a sample down through the turbo pump, then hand it over to the ion pump.

    labctl up config/demo.toml --detach
    labctl run examples/pump_down.py --dry-run        # what it would send, sending nothing
    labctl run examples/pump_down.py -- 30            # pump for 30 s (default 10)

Valves are named by their descriptions in the lab file, so the script reads like the line does.
"""

seconds = float(argv[0]) if argv else 10.0

info("isolating the getter")
close("getter inlet")
close("turbo to ion pump")
open("bone to turbo")
wait_until(lambda: is_open("bone to turbo"), timeout=10, poll=0.1)

info(f"pumping on the turbo for {seconds:g} s")
sleep(seconds)

close("bone to turbo")
open("turbo to ion pump")
info("on the ion pump")
