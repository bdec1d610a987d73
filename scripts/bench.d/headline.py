#!/usr/bin/python3
"""Prints the packet-rate rows of a bench report on one line each, so that a
collapse of the relay's small-packet path shows in every CI log, and tasuki's
spoke ↔ spoke direct TCP row and time to the direct path.

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
        if parts:  # not measured in this run (--only)
            print(f"bench: {r['label']}: " + ", ".join(parts))
    p2p, relay = (median(rows.get(k, {}).get("tasuki")) for k in ("p2p-udp64", "relay-udp64"))
    if p2p and relay:
        print(f"bench: tasuki relay ÷ point to point, UDP 64 B: {relay / p2p:.2f}")
    d = rows.get("direct-tcp1") or {}
    direct = median(d.get("tasuki"))
    if direct:
        vs = [f"{direct / p:.2f}× {name}" for name, p in
              (("its point to point", median(d.get("tasuki_p2p"))),
               ("the better peer direct", None if not d.get("tasuki_vs_best_peer") else direct / d["tasuki_vs_best_peer"]))
              if p]
        print(f"bench: tasuki spoke ↔ spoke direct, TCP 1 stream: {direct:.3g} Gbit/s" + (f" ({', '.join(vs)})" if vs else ""))
    up = median(report.get("direct", {}).get("upgrade_ms", {}).get("tasuki"))
    if up is not None:
        print(f"bench: tasuki time from first packet to direct path: {up:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
