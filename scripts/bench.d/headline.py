#!/usr/bin/python3
"""Prints the packet-rate rows of a bench report on one line each, so that a
collapse of the relay's small-packet path shows in every CI log.

usage: headline.py REPORT.json
"""

import json
import sys


def median(cell):
    return None if not cell else cell["median"]


def show(x, unit):
    return "–" if x is None else f"{x:.3g} {unit}"


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        report = json.load(f)
    rows = {r["key"]: r for r in report["table"]}
    for key in ("p2p-udp64", "relay-udp64"):
        r = rows.get(key)
        if not r:
            continue
        parts = [f"{name} {show(median(r.get(col)), 'kpps')}" for col, name in
                 (("tasuki", "tasuki"), ("tasuki-base", "tasuki (base)"),
                  ("wireguard-go", "wireguard-go"), ("boringtun", "boringtun-cli"))
                 if r.get(col)]
        print(f"bench: {r['label']}: " + ", ".join(parts))
    p2p, relay = (median(rows.get(k, {}).get("tasuki")) for k in ("p2p-udp64", "relay-udp64"))
    if p2p and relay:
        print(f"bench: tasuki relay ÷ point to point, UDP 64 B: {relay / p2p:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
