#!/usr/bin/python3
"""Turns scripts/bench's raw runs into the report.

Reads the raw run records (one JSON object a line, written by scripts/bench,
each naming an iperf3 JSON file or a ping output), computes medians with min
and max, prints a Markdown table on stdout and writes OUT.md, OUT.json (every
raw run, parsed, and the summaries) and OUT.png (the throughput rows).
Exits 1 when a setup that was run carried no traffic in some test.
"""

import argparse
import json
import re
import statistics
import sys

SETUPS = ["plain", "wireguard-go", "boringtun-t1", "boringtun-default", "tasuki", "tasuki-base"]
BT = ["boringtun-t1", "boringtun-default"]
BT_LABEL = {"boringtun-t1": "t1", "boringtun-default": "t4"}
# (key, path, test, metric, label, unit, higher is better)
ROWS = [
    ("p2p-tcp1", "p2p", "tcp1", "gbps", "point to point, TCP 1 stream", "Gbit/s", True),
    ("p2p-tcp4", "p2p", "tcp4", "gbps", "point to point, TCP 4 streams", "Gbit/s", True),
    ("p2p-udp64", "p2p", "udp64", "kpps", "point to point, UDP 64 B received", "kpps", True),
    ("p2p-ping", "p2p", "ping", "rtt_ms", "point to point, ping RTT", "ms", False),
    ("relay-tcp1", "relay", "tcp1", "gbps", "relay, TCP 1 stream", "Gbit/s", True),
    ("relay-tcp4", "relay", "tcp4", "gbps", "relay, TCP 4 streams", "Gbit/s", True),
    ("relay-udp64", "relay", "udp64", "kpps", "relay, UDP 64 B received", "kpps", True),
    ("relay-ping", "relay", "ping", "rtt_ms", "relay, ping RTT", "ms", False),
    ("direct-tcp1", "direct", "tcp1", "gbps", "spoke ↔ spoke direct, TCP 1 stream", "Gbit/s", True),
    ("direct-tcp4", "direct", "tcp4", "gbps", "spoke ↔ spoke direct, TCP 4 streams", "Gbit/s", True),
    ("direct-ping", "direct", "ping", "rtt_ms", "spoke ↔ spoke direct, ping RTT", "ms", False),
    ("p2p-cpu", "p2p", "tcp1", "cpu_s_per_gb", "hub CPU per GB, point to point (TCP 1)", "s/GB", False),
    ("relay-cpu", "relay", "tcp1", "cpu_s_per_gb", "hub CPU per GB, relay (TCP 1)", "s/GB", False),
]
TRAFFIC_ROWS = [r for r in ROWS if r[3] != "cpu_s_per_gb"]
DIRECT_ROWS = [r for r in ROWS if r[1] == "direct"]
# More packets than this relayed by the hub while tasuki's direct rows ran
# means some of them were measured on the relay.
RELAYED_DURING_DIRECT = 100
# The same for the peers: bytes the hub's tunnel received from spoke-a.
HUB_BYTES_DURING_DIRECT = 1_000_000


def parse_iperf(rec):
    """Adds the figures of one iperf3 run to its record."""
    try:
        with open(rec["file"]) as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        rec["error"] = f"unreadable iperf3 output: {e}"
        return
    if "error" in j:
        rec["error"] = j["error"]
    end = j.get("end", {})
    recv = end.get("sum_received")
    sent = end.get("sum_sent")
    if not recv or not sent:
        rec.setdefault("error", "no end summary")
        return
    if rec["test"] == "udp64":
        received = recv["packets"] - recv["lost_packets"]
        secs = recv["seconds"] or 1
        rec["packets_sent"] = sent["packets"]
        rec["packets_received"] = received
        rec["kpps"] = received / secs / 1e3
        rec["kpps_sent"] = sent["packets"] / (sent["seconds"] or 1) / 1e3
        rec["lost_percent"] = recv.get("lost_percent")
    else:
        rec["gbps"] = recv["bits_per_second"] / 1e9
        rec["bytes_received"] = recv["bytes"]
        rec["retransmits"] = sent.get("retransmits")
        # Bytes moved while the hub's CPU time was sampled, omitted warm-up
        # included (the sender's intervals cover the whole run).
        total = sum(i["sum"]["bytes"] for i in j.get("intervals", []))
        rec["bytes_total"] = total
        # One-second intervals (after warm-up) in which nothing was sent: stalls.
        rec["stalled_intervals"] = sum(
            1 for i in j.get("intervals", []) if not i["sum"].get("omitted") and i["sum"]["bytes"] == 0
        )
        ticks = rec.get("hub_cpu_ticks")
        if ticks is not None and total > 0:
            rec["hub_cpu_s"] = ticks / rec["clk_tck"]
            rec["cpu_s_per_gb"] = rec["hub_cpu_s"] / (total / 1e9)


def parse_ping(rec):
    """Adds the average RTT of one ping run to its record."""
    try:
        with open(rec["file"]) as f:
            text = f.read()
    except OSError as e:
        rec["error"] = str(e)
        return
    m = re.search(r"(\d+) received", text)
    rec["received"] = int(m.group(1)) if m else 0
    m = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/", text)
    if m and rec["received"] > 0:
        rec["rtt_ms"] = float(m.group(1))
        rec["rtt_max_ms"] = float(m.group(2))
    else:
        rec["error"] = "no reply"


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def fmt(x, digits=3):
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def cell(s):
    if s is None:
        return "–"
    if s["n"] == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def ratio(a, b):
    if a is None or b is None or not b["median"]:
        return None
    return a["median"] / b["median"]


def rfmt(r):
    return "–" if r is None else f"{r:.2f}×"


def off_on(records, test):
    """A tasuki test measured off and on in back-to-back pairs (`ab_pairs`
    in scripts/bench): the medians, and each "on" against the "off" next to
    it in time (same run and pair), so slow drifts of the machine's speed
    cancel out of those ratios."""
    out = {}
    for mode in ("off", "on"):
        runs = [
            r for r in records
            if r.get("kind") == "iperf3" and r["setup"] == "tasuki" and r["test"] == f"{test}-{mode}"
        ]
        if runs:
            out[mode] = stats([r.get("gbps") for r in runs])
            out[f"rotations_{mode}"] = [r.get("rotations") for r in runs]
            out[f"stalls_{mode}"] = [r.get("stalled_intervals") for r in runs]
    if out.get("on") and out.get("off"):
        out["ratio"] = out["on"]["median"] / out["off"]["median"] if out["off"]["median"] else None
    paired = {}
    for r in records:
        if r.get("kind") == "iperf3" and r["setup"] == "tasuki" and r["test"] in (f"{test}-on", f"{test}-off"):
            paired.setdefault((r["run"], r.get("pair")), {})[r["test"]] = r.get("gbps")
    pair_ratios = stats(
        [
            p[f"{test}-on"] / p[f"{test}-off"]
            for p in paired.values()
            if p.get(f"{test}-on") is not None and p.get(f"{test}-off")
        ]
    )
    if pair_ratios:
        out["pair_ratios"] = pair_ratios
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--out", required=True, help="path without extension")
    ap.add_argument("--elapsed", type=int, default=0)
    args = ap.parse_args()
    with open(args.meta) as f:
        meta = json.load(f)
    meta["elapsed_s"] = args.elapsed
    records = []
    with open(args.raw) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    print(f"(skipping a damaged raw line: {line})", file=sys.stderr)
    rotations = {}
    for rec in records:
        if rec.get("kind") == "iperf3":
            if rec.get("rc", 1) != 0:
                rec["error"] = f"iperf3 exit status {rec.get('rc')}"
            parse_iperf(rec)
        elif rec.get("kind") == "ping":
            parse_ping(rec)
        elif rec.get("kind") == "rotations":
            rotations[(rec["test"], rec["run"], rec.get("pair"))] = rec["count"]
    for rec in records:
        if rec.get("kind") == "iperf3" and rec["test"].startswith("rotation-"):
            rec["rotations"] = rotations.get((rec["test"], rec["run"], rec.get("pair")))

    ran = {r["setup"] for r in records if r.get("kind") == "setup"}
    failed_setups = [f"{r['setup']} (run {r.get('run')})" for r in records if r.get("kind") == "setup-failed"]
    background = stats(
        [r.get("background_cpu_percent") for r in records if str(r.get("kind", "")).startswith("setup")]
    )
    meta["background_cpu_percent"] = background

    def series(setup, path, test, metric):
        return [
            r.get(metric)
            for r in records
            if r.get("kind") in ("iperf3", "ping")
            and r["setup"] == setup
            and r["path"] == path
            and r["test"] == test
        ]

    summary = {}
    for setup in SETUPS:
        if setup not in ran:
            continue
        summary[setup] = {}
        for key, path, test, metric, *_ in ROWS:
            summary[setup][key] = stats(series(setup, path, test, metric))

    # boringtun-cli: per row, the better of its two configurations.
    best_bt = {}
    for key, *_, higher in ROWS:
        cands = [(s, summary[s][key]) for s in BT if s in summary and summary[s][key]]
        if cands:
            pick = (max if higher else min)(cands, key=lambda c: c[1]["median"])
            best_bt[key] = {"config": pick[0], **pick[1]}

    def get(setup, key):
        if setup == "boringtun":
            return best_bt.get(key)
        return summary.get(setup, {}).get(key)

    table = []
    for key, path, test, metric, label, unit, higher in ROWS:
        row = {
            "key": key,
            "label": label,
            "unit": unit,
            "higher_is_better": higher,
            "plain": get("plain", key),
            "wireguard-go": get("wireguard-go", key),
            "boringtun": get("boringtun", key),
            "tasuki": get("tasuki", key),
            "tasuki-base": get("tasuki-base", key),
        }
        row["tasuki_vs_wireguard_go"] = ratio(row["tasuki"], row["wireguard-go"])
        row["tasuki_vs_boringtun"] = ratio(row["tasuki"], row["boringtun"])
        row["tasuki_vs_base"] = ratio(row["tasuki"], row["tasuki-base"])
        # The better peer in this row (higher throughput, lower RTT or CPU).
        peers = [p for p in (row["wireguard-go"], row["boringtun"]) if p]
        best = (max if higher else min)(peers, key=lambda p: p["median"]) if peers else None
        row["tasuki_vs_best_peer"] = ratio(row["tasuki"], best)
        if path == "direct":
            # tasuki's own point-to-point figure of the same test.
            row["tasuki_p2p"] = get("tasuki", f"p2p-{key.split('-', 1)[1]}")
            row["tasuki_vs_p2p"] = ratio(row["tasuki"], row["tasuki_p2p"])
        table.append(row)

    # Direct mode: time from the first packet to the direct path, the checks
    # around tasuki's direct runs, and why a setup has no direct rows.
    direct = {"upgrade_ms": {}, "checks": {}, "failed": [], "unsupported": []}
    for setup in SETUPS:
        ups = [r for r in records if r.get("kind") == "direct-upgrade" and r["setup"] == setup]
        if ups:
            direct["upgrade_ms"][setup] = stats([r.get("ms") for r in ups])
        checks = [r for r in records if r.get("kind") == "direct-check" and r["setup"] == setup]
        if checks:
            direct["checks"][setup] = checks
    for r in records:
        if r.get("kind") == "direct-failed":
            direct["failed"].append(f"{r['setup']}: no direct path (run {r.get('run')}: {r.get('reason')})")
        elif r.get("kind") == "direct-unsupported" and r["setup"] not in direct["unsupported"]:
            direct["unsupported"].append(r["setup"])

    # tasuki alone: rotation, the access policy, memory.
    rot = off_on(records, "rotation")
    acc = off_on(records, "access")
    memory = [r for r in records if r.get("kind") == "memory"]
    for m in memory:
        m["rss"] = stats([v for v in m.get("rss_kib", []) if v is not None])
        bt = m.get("benchtool")
        m["enrol_seconds"] = round(bt["seconds"], 1) if isinstance(bt, dict) else 0

    # Failures: a setup that ran and carried no traffic in some test.
    failures = [f"{s}: did not come up" for s in failed_setups]
    for setup in summary:
        tried = {r["path"] for r in records if r.get("kind") in ("iperf3", "ping") and r["setup"] == setup}
        for key, path, test, metric, label, *_ in TRAFFIC_ROWS:
            if path not in tried:
                continue  # not measured in this run (--only, or no direct path)
            s = summary[setup][key]
            if s is None or s["max"] <= 0:
                failures.append(f"{setup}: no traffic in {label}")
    failures += direct["failed"]
    for setup, checks in direct["checks"].items():
        for c in checks:
            if c.get("path_after") != "direct" or (c.get("relayed") or 0) > RELAYED_DURING_DIRECT:
                failures.append(
                    f"{setup}: direct rows partly relayed (run {c.get('run')}: the hub relayed "
                    f"{c.get('relayed')} packets during them, path afterwards {c.get('path_after')})"
                )
            elif (c.get("hub_rx_bytes") or 0) > HUB_BYTES_DURING_DIRECT:
                failures.append(
                    f"{setup}: direct rows partly through the hub (run {c.get('run')}: its tunnel "
                    f"received {c['hub_rx_bytes']:,} bytes from spoke-a during them)"
                )
    for mode in ("off", "on"):
        if mode in rot and (rot[mode] is None or rot[mode]["max"] <= 0):
            failures.append(f"tasuki: no traffic with rotation {mode}")
        if mode in acc and (acc[mode] is None or acc[mode]["max"] <= 0):
            failures.append(f"tasuki: no traffic with the access policy {'enforced' if mode == 'on' else 'open'}")
    if "memory" in meta.get("parts", "") and not any(m["spokes"] >= 1 for m in memory):
        failures.append("memory: no spoke enrolled")
    groups = group_rows(records)
    if "groups" in meta.get("parts", "") and groups.get("delivered") is None:
        failures.append("groups: no group multicast delivered")
    tree = tree_rows(records)
    if "tree" in meta.get("parts", "") and not (tree.get("tcp1") and tree["tcp1"]["max"] > 0):
        failures.append("tree: no traffic across the branches")

    md = render(meta, table, summary, rot, acc, memory, records, failures, direct, groups)
    print(md)
    with open(args.out + ".md", "w") as f:
        f.write(md + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump(
            {
                "meta": meta,
                "table": table,
                "setups": summary,
                "rotation": rot,
                "access": acc,
                "direct": direct,
                "memory": memory,
                "groups": groups,
                "tree": tree,
                "failures": failures,
                "runs": records,
            },
            f,
            indent=1,
        )
    try:
        plot(meta, table, args.out + ".png")
    except Exception as e:  # the report stands without the picture
        print(f"(no plot: {e})", file=sys.stderr)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def group_rows(records):
    """Keyed groups: key messages per rotation, multicast delivered per second."""
    out = {}
    keys = [r["result"] for r in records if r.get("kind") == "group-keys" and isinstance(r.get("result"), dict)]
    if keys:
        out["keys"] = keys[-1]
    runs = [r for r in records if r.get("kind") == "group-multicast"]
    if runs:
        rates, shares, dups = [], [], 0
        for r in runs:
            got = r.get("received") or []
            distinct = sum(c[0] for c in got)
            dups += sum(c[1] for c in got)
            secs = r.get("seconds") or 1
            rates.append(distinct / secs / 1000)
            offered = (r.get("offered_pps") or 1) * secs * (r.get("members") or 1)
            shares.append(distinct / offered)
        if any(rates):
            out["delivered"] = stats(rates)
        out["share"] = stats(shares)
        out["duplicates"] = dups
        out["members"] = runs[0].get("members")
        out["offered_pps"] = runs[0].get("offered_pps")
    return out


def render_groups(L, groups, relay):
    k = groups.get("keys")
    if k:
        g, p = k["group"], k["pairs"]
        n = k["members"]
        L.append(
            f"| key messages per rotation, {n} members keyed as one group (epoch deliveries + switches) "
            f"| {g['deliveries']:,} + {g['switches']:,} |"
        )
        L.append(
            f"| the same {n} members with a pair epoch per member pair ({p['pairs']:,} pairs) "
            f"| {p['deliveries']:,} + {p['switches']:,} |"
        )
        total_p = p["deliveries"] + p["switches"]
        if total_p:
            L.append(f"| group ÷ pair epochs | {(g['deliveries'] + g['switches']) / total_p:.3f}× |")
    if "share" in groups:
        m, o = groups.get("members"), groups.get("offered_pps")
        L.append(
            f"| group multicast delivered to {m} members, 64 B, one sender at {o:,}/s "
            f"(kpps, all members together) | {cell(groups.get('delivered'))} |"
        )
        L.append(f"| share of the offered copies delivered ({o:,}/s × {m}) | {cell(groups.get('share'))} |")
        L.append(f"| datagrams a member got twice | {groups.get('duplicates', 0)} |")
        if relay and groups.get("delivered") and relay["median"]:
            L.append(
                "| multicast delivered ÷ tasuki's relayed UDP 64 B (one receiver) in this run | "
                f"{groups['delivered']['median'] / relay['median']:.2f}× |"
            )


# The hub tree's rows: (test, metric, the single-hub relay row beside it, label, unit).
TREE_ROWS = [
    ("tcp1", "gbps", "relay-tcp1", "TCP 1 stream", "Gbit/s"),
    ("tcp4", "gbps", "relay-tcp4", "TCP 4 streams", "Gbit/s"),
    ("udp64", "kpps", "relay-udp64", "UDP 64 B received", "kpps"),
    ("ping", "rtt_ms", "relay-ping", "ping RTT", "ms"),
]


def tree_rows(records):
    """The relay across a hub tree's branches, per test ({} when not run)."""
    if not any(r.get("kind") == "tree" for r in records):
        return {}
    return {
        test: stats(
            [
                r.get(metric)
                for r in records
                if r.get("kind") in ("iperf3", "ping")
                and r.get("setup") == "tasuki-tree"
                and r.get("path") == "branches"
                and r.get("test") == test
            ]
        )
        for test, metric, *_ in TREE_ROWS
    }


def render_tree(L, tree, summary):
    relay = summary.get("tasuki") or {}
    L += [
        "",
        "### Hub tree: the relay across branches",
        "",
        "spoke-a → child hub A → root hub → child hub B → spoke-b, decrypted, checked and",
        "re-encrypted at each hub (the child hubs carry it through their uplinks' TUNs);",
        "beside it tasuki's single-hub relay (spoke-a → hub → spoke-b) of the same run.",
        "",
        "| test | across branches | single-hub relay | across ÷ single |",
        "|---|---|---|---|",
    ]
    for test, _, key, label, unit in TREE_ROWS:
        a, b = tree.get(test), relay.get(key)
        L.append(f"| {label} ({unit}) | {cell(a)} | {cell(b)} | {rfmt(ratio(a, b))} |")


def render(meta, table, summary, rot, acc, memory, records, failures, direct, groups):
    L = []
    L.append(f"# tasuki benchmark, {meta['timestamp']}")
    L.append("")
    mode = "quick (smoke run, not for comparison)" if meta["quick"] else "full"
    L.append(
        f"Machine: {meta['nproc']} CPUs, {meta['cpu']}, Linux {meta['kernel']}. "
        f"Run: {mode}; median of {meta['runs']} run(s), (min–max); iperf3 -t {meta['duration_s']}"
        f" (TCP with -O {meta['omit_s']}); {meta['elapsed_s']} s of measuring."
    )
    L.append("")
    L.append(
        f"Versions: tasuki {meta['tasuki']}; {meta['wireguard_go']}; {meta['wireguard_tools']}; "
        f"{meta['boringtun_cli']}; {meta['iperf3']}; {meta['rustc']}."
    )
    L.append("")
    base = meta.get("tasuki_base") or ""
    args = meta.get("args")
    L.append(
        "Command: `sudo scripts/bench"
        + (f" {args}" if args else (" --quick" if meta["quick"] else "") + (f" --compare {base}" if base else ""))
        + "`"
    )
    bg = meta.get("background_cpu_percent")
    if bg:
        L.append("")
        L.append(
            f"Background CPU use (other work on the machine, sampled for 0.5 s before each setup came up): "
            f"median {bg['median']:.0f} % of all CPUs (min {bg['min']:.0f} %, max {bg['max']:.0f} %)."
        )
        if bg["max"] > 10:
            L.append("")
            L.append(
                "**Warning: the machine was busy with other work during this run; the figures are "
                "less comparable than on an idle machine.**"
            )
    if summary:
        render_main(L, table, summary)
    render_direct(L, table, direct)
    if "tasuki-base" in summary:
        render_compare(L, table, meta, direct)
    if rot or acc or memory or groups:
        L.append("")
        L.append("## tasuki alone")
        L.append("")
        L.append("| test | result |")
        L.append("|---|---|")
    if rot:
        n_on = [c for c in rot.get("rotations_on", []) if c is not None]
        n_off = [c for c in rot.get("rotations_off", []) if c is not None]
        L.append(f"| TCP 1 stream point to point, no rotation (Gbit/s) | {cell(rot.get('off'))} |")
        L.append(
            f"| TCP 1 stream point to point, keys rotating every 1 s (Gbit/s) | {cell(rot.get('on'))}"
            + (f"; rotations per run: {', '.join(map(str, n_on))}" if n_on else "")
            + " |"
        )
        stalls = [c for m in ("off", "on") for c in rot.get(f"stalls_{m}", []) if c]
        if stalls:
            L.append(
                "| 1-s intervals with nothing sent (stalls), per run | "
                f"no rotation: {', '.join(map(str, rot.get('stalls_off', [])))}; "
                f"rotating: {', '.join(map(str, rot.get('stalls_on', [])))} |"
            )
        pr = rot.get("pair_ratios")
        if pr:
            L.append(
                f"| rotating ÷ not rotating, back-to-back pairs | {pr['median']:.3f} "
                f"({pr['min']:.3f}–{pr['max']:.3f}, {pr['n']} pairs) |"
            )
        if rot.get("ratio") is not None:
            L.append(f"| rotating median ÷ not rotating median | {rot['ratio']:.3f} |")
        if n_off and any(n_off):
            L.append(f"| (rotations during the no-rotation runs) | {', '.join(map(str, n_off))} |")
    if acc:
        L.append(f"| TCP 1 stream relayed, access policy open (Gbit/s) | {cell(acc.get('off'))} |")
        L.append(f"| TCP 1 stream relayed, access policy enforced, 20 rules (Gbit/s) | {cell(acc.get('on'))} |")
        pr = acc.get("pair_ratios")
        if pr:
            L.append(
                f"| enforced ÷ open, back-to-back pairs | {pr['median']:.3f} "
                f"({pr['min']:.3f}–{pr['max']:.3f}, {pr['n']} pairs) |"
            )
    if groups:
        relay = (summary.get("tasuki") or {}).get("relay-udp64")
        render_groups(L, groups, relay)
    tree = tree_rows(records)
    if tree:
        render_tree(L, tree, summary)
    if memory:
        target = meta.get("spokes_target", 10000)
        shown = {}
        for m in memory:
            shown[m["spokes"]] = m
        def spokes(n):
            return f"{n:,} enrolled spoke" + ("" if n == 1 else "s")

        for want in (1, 100, target):
            if meta["quick"] and want > 100:
                L.append(f"| hub RSS with {spokes(want)} | skipped (--quick) |")
                continue
            m = shown.get(want)
            if m is None and want == target:
                # The largest count reached within the budget.
                big = [x for x in memory if x["spokes"] > 100]
                if big:
                    m = max(big, key=lambda x: x["spokes"])
                    L.append(
                        f"| hub RSS with {spokes(want)} | not reached: {m['spokes']:,} enrolled "
                        f"within the {meta['memory_budget_s']} s budget; RSS then {mib(m['rss'])} MiB |"
                    )
                    continue
            if m is None:
                L.append(f"| hub RSS with {spokes(want)} | – |")
            else:
                L.append(f"| hub RSS with {spokes(want)} (MiB) | {mib(m['rss'])} |")
        pts = [m for m in memory if m["rss"] and m["spokes"] >= 1]
        if len(pts) >= 2:
            lo = min(pts, key=lambda m: m["spokes"])
            hi = max(pts, key=lambda m: m["spokes"])
            if hi["spokes"] > lo["spokes"]:
                per = (hi["rss"]["median"] - lo["rss"]["median"]) / (hi["spokes"] - lo["spokes"])
                L.append(f"| hub RSS per added spoke ({lo['spokes']:,} → {hi['spokes']:,}) | {per:.1f} KiB |")
        stages = [
            f"{m['spokes']:,}: {mib(m['rss'])} MiB ({m['enrol_seconds']} s)" for m in memory if m["rss"]
        ]
        L.append("")
        L.append(
            "Memory: VmRSS of a separate hub whose spokes enrol over the real Noise enrolment "
            "(`tasuki-benchtool enrol`: invitation from the admin socket, handshake, welcome, first key, "
            "receipt) and never attach; three samples of one hub per count. Spokes enrolled: RSS "
            "(time to enrol that stage): " + "; ".join(stages) + ". An absent spoke's link holds "
            "its keys only; a spoke with a WireGuard session adds one boringtun tunnel (about "
            "11 KB; two while its key rotates), dropped 3 minutes after its last session ends."
        )
    # Notes: MTU and UDP receive-buffer errors per setup.
    notes = []
    for setup in SETUPS:
        setup_recs = [r for r in records if r.get("setup") == setup]
        mtu = next((r.get("mtu") for r in setup_recs if r.get("kind") == "setup"), None)
        if not setup_recs:
            continue
        errs = {}
        for r in setup_recs:
            if r.get("kind") == "iperf3":
                errs[r["test"]] = errs.get(r["test"], 0) + (r.get("udp_rcvbuf_errors") or 0)
        errs = {k: v for k, v in errs.items() if v}
        err_text = ", ".join(f"{k} {v:,}" for k, v in errs.items()) if errs else "none"
        mtu_text = f"tunnel MTU {mtu}; " if mtu is not None else ""
        stalls = sum(r.get("stalled_intervals") or 0 for r in setup_recs if r.get("kind") == "iperf3")
        stall_text = f"; 1-s intervals without TCP traffic (stalls): {stalls}" if stalls else ""
        notes.append(f"- {setup}: {mtu_text}UdpRcvbufErrors during runs: {err_text}{stall_text}")
    if notes:
        L.append("")
        L.append(
            "Notes: UDP rows send 64-byte datagrams as fast as iperf3 can (-b 0) and count what the "
            "server received; one iperf3 receiver thread bounds the plain veth figure. "
            "Hub CPU per GB: utime+stime of the hub process (/proc/PID/stat) around each TCP 1-stream "
            "run, divided by the bytes the run moved (warm-up included). UDP receive-buffer errors "
            "(Udp RcvbufErrors) summed over the three namespaces, per test:"
        )
        L.extend(notes)
    if failures:
        L.append("")
        L.append("**Failures:** " + "; ".join(failures))
    return "\n".join(L)


def render_main(L, table, summary):
    """The side-by-side table (and boringtun-cli's two configurations)."""
    L.append("")
    L.append(
        "| test | plain veth | wireguard-go | boringtun-cli | tasuki | tasuki ÷ wireguard-go | tasuki ÷ boringtun-cli |"
    )
    L.append("|---|---|---|---|---|---|---|")
    for row in table:
        bt = row["boringtun"]
        bt_cell = cell(bt) + (f" {BT_LABEL[bt['config']]}" if bt else "")
        label = f"{row['label']} ({row['unit']}{'' if row['higher_is_better'] else ', lower is better'})"
        plain = "n/a" if row["key"].endswith("-cpu") or row["key"].startswith("direct-") else cell(row["plain"])
        L.append(
            f"| {label} | {plain} | {cell(row['wireguard-go'])} | {bt_cell} | {cell(row['tasuki'])} "
            f"| {rfmt(row['tasuki_vs_wireguard_go'])} | {rfmt(row['tasuki_vs_boringtun'])} |"
        )
    L.append("")
    L.append(
        "boringtun-cli: the better of `--threads 1` (t1) and its default of 4 threads (t4) in each row; "
        "both are in the next table. Ratios above 1 favour tasuki in throughput rows, below 1 in RTT and CPU rows."
    )
    if any(s in summary for s in BT):
        L.append("")
        L.append("| test | boringtun-cli --threads 1 | boringtun-cli default (4 threads) |")
        L.append("|---|---|---|")
        for key, path, test, metric, label, unit, _ in ROWS:
            a = summary.get("boringtun-t1", {}).get(key)
            b = summary.get("boringtun-default", {}).get(key)
            L.append(f"| {label} ({unit}) | {cell(a)} | {cell(b)} |")


def render_direct(L, table, direct):
    """Spoke ↔ spoke direct: tasuki's direct mode against the peers as a
    direct spoke pair and against tasuki's own point-to-point row."""
    rows = [r for r in table if r["key"].startswith("direct-")]
    ups = direct["upgrade_ms"].get("tasuki")
    if not any(r[c] for r in rows for c in ("wireguard-go", "boringtun", "tasuki")) and not ups:
        return
    L.append("")
    L.append("## spoke ↔ spoke direct")
    L.append("")
    L.append(
        "| test | wireguard-go | boringtun-cli | tasuki direct | tasuki point to point "
        "| tasuki ÷ better peer | tasuki direct ÷ tasuki point to point |"
    )
    L.append("|---|---|---|---|---|---|---|")
    for row in rows:
        bt = row["boringtun"]
        bt_cell = cell(bt) + (f" {BT_LABEL[bt['config']]}" if bt else "")
        label = f"{row['label']} ({row['unit']}{'' if row['higher_is_better'] else ', lower is better'})"
        L.append(
            f"| {label} | {cell(row['wireguard-go'])} | {bt_cell} | {cell(row['tasuki'])} "
            f"| {cell(row.get('tasuki_p2p'))} | {rfmt(row['tasuki_vs_best_peer'])} | {rfmt(row.get('tasuki_vs_p2p'))} |"
        )
    L.append(f"| time from first packet to direct path (ms, median of runs) | n/a | n/a | {cell(ups)} | | | |")
    L.append("")
    L.append(
        "Direct: spoke-a → spoke-b over one WireGuard session between the two spokes; the hub's "
        "namespace only routes the datagrams. wireguard-go and boringtun-cli: each spoke gets a peer "
        "entry for the other (its /32 wins over the hub's /24). tasuki: `tasuki-hub key policy set "
        "--direct auto`, measured once spoke-a's `tasuki-spoke status --json` says `direct`. Time to "
        "direct: from the first ping after direct mode is turned on (a ping every 0.1 s) until that "
        "status, polled every 50 ms, says `direct`. Goal (issue 14): tasuki direct at least 3× the "
        "better peer and within 10 % of tasuki's point-to-point row."
    )
    through = []
    for setup, checks in direct["checks"].items():
        if any("relayed" in c for c in checks):
            through.append(f"{setup} {', '.join(str(c.get('relayed')) for c in checks)} packets relayed")
        else:
            got = ", ".join(f"{c.get('hub_rx_bytes') or 0:,}" for c in checks)
            through.append(f"{setup} {got} bytes into the hub's tunnel")
    if through:
        L.append("")
        L.append("Through the hub during the direct rows, per run (should be about nothing): " + "; ".join(through) + ".")
    for setup in direct["unsupported"]:
        L.append("")
        L.append(f"{setup}: no direct mode in that revision (`key policy set --direct` refused); no direct rows.")


def render_compare(L, table, meta, direct):
    """This tree's tasuki beside the revision of `--compare`, same run."""
    L.append("")
    L.append(f"## tasuki {meta['tasuki']} beside {meta['tasuki_base']} (--compare), same run")
    L.append("")
    L.append(f"| test | tasuki {meta['tasuki_base']} | tasuki {meta['tasuki']} | new ÷ old |")
    L.append("|---|---|---|---|")
    no_direct = "tasuki-base" in direct["unsupported"]
    for row in table:
        if not row["tasuki-base"] and not row["tasuki"]:
            continue
        label = f"{row['label']} ({row['unit']}{'' if row['higher_is_better'] else ', lower is better'})"
        base = cell(row["tasuki-base"])
        if no_direct and row["key"].startswith("direct-"):
            base = "n/a (no direct mode)"
        L.append(f"| {label} | {base} | {cell(row['tasuki'])} | {rfmt(row['tasuki_vs_base'])} |")
    new, old = direct["upgrade_ms"].get("tasuki"), direct["upgrade_ms"].get("tasuki-base")
    if new or old:
        L.append(
            f"| time from first packet to direct path (ms, lower is better) "
            f"| {'n/a (no direct mode)' if no_direct else cell(old)} | {cell(new)} | {rfmt(ratio(new, old))} |"
        )


def mib(s):
    if not s:
        return "–"
    med, lo, hi = (f"{s[k] / 1024:.1f}" for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} ({lo}–{hi})"


def plot(meta, table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cols = [("plain", "plain veth"), ("wireguard-go", "wireguard-go"),
            ("boringtun", "boringtun-cli"), ("tasuki", "tasuki")]
    colours = ["#999999", "#88ccee", "#ddcc77", "#cc3311"]
    panels = [
        ("TCP throughput (Gbit/s, log scale)",
         ["p2p-tcp1", "p2p-tcp4", "relay-tcp1", "relay-tcp4", "direct-tcp1", "direct-tcp4"]),
        ("UDP 64 B packets received (kpps, log scale)", ["p2p-udp64", "relay-udp64"]),
    ]
    rows = {r["key"]: r for r in table}
    if not any(rows[k][c] for _, keys in panels for k in keys for c, _ in cols):
        return
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [3, 1]})
    for ax, (title, keys) in zip(axes, panels):
        width = 0.8 / len(cols)
        for ci, ((col, name), colour) in enumerate(zip(cols, colours)):
            xs, ys, lo, hi = [], [], [], []
            for ki, key in enumerate(keys):
                s = rows[key][col]
                if not s:
                    continue
                xs.append(ki + (ci - (len(cols) - 1) / 2) * width)
                ys.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            if xs:
                ax.bar(xs, ys, width, label=name, color=colour, yerr=[lo, hi], capsize=2)
                for x, y in zip(xs, ys):
                    ax.annotate(fmt(y), (x, y), ha="center", va="bottom", fontsize=7,
                                xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([rows[k]["label"].replace(", ", "\n") for k in keys], fontsize=8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v)))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"tasuki {meta['tasuki']} vs peers, {meta['nproc']} CPUs, {meta['cpu']}, {meta['timestamp']}"
        + (" (quick)" if meta["quick"] else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    sys.exit(main())
