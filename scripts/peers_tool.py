#!/usr/bin/env python3
"""Helpers for compare-peers.sh: free ports, /proc accounting, output parsing, report.

Sub-commands (all print to stdout, exit non-zero on failure):
  ports N                  N distinct free TCP ports on 127.0.0.1
  udp-ports N              N distinct free UDP ports on 127.0.0.1
  listening PORT...        exit 0 when every PORT has a listening TCP socket
  udp-bound PORT...        exit 0 when every PORT has a bound UDP socket
  rss PID...               resident memory (kB) of the PIDs and all their descendants
  cpu PID...               CPU seconds (utime+stime+cutime+cstime) of the PIDs and descendants
  iperf FILE               "<bits_per_second> <bytes>" from an iperf3 -J result
  wrk FILE                 "<requests_per_s> <p99_ms> <errors>" from wrk --latency output
  redis FILE               "<set_rps> <get_rps>" from redis-benchmark -q output
  report TSV MD_OUT [JSON] render the results table (Markdown) and optional JSON
"""

import json
import os
import re
import socket
import statistics
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cmd_ports(n, kind=socket.SOCK_STREAM):
    socks = []
    try:
        for _ in range(int(n)):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def listening_ports(proto="tcp", state="0A"):
    """Local ports of the sockets of `proto` in `state` (0A: TCP listening, 07: UDP bound)."""
    ports = set()
    for name in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            with open(name) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == state:
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def cmd_listening(ports, proto="tcp", state="0A"):
    have = listening_ports(proto, state)
    return 0 if all(int(p) in have for p in ports) else 1


def read_stat(pid):
    """Return (ppid, utime+stime+cutime+cstime ticks) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    # rest[0] = state, rest[1] = ppid, utime = field 14 -> rest[11]
    try:
        ppid = int(rest[1])
        ticks = sum(int(x) for x in rest[11:15])
    except (IndexError, ValueError):
        return None
    return ppid, ticks


def process_tree(roots):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = read_stat(entry)
        if st is None:
            continue
        children.setdefault(st[0], []).append(int(entry))
    seen = []
    todo = [int(r) for r in roots]
    while todo:
        pid = todo.pop()
        if pid in seen or not os.path.exists(f"/proc/{pid}"):
            continue
        seen.append(pid)
        todo.extend(children.get(pid, []))
    return seen


def cmd_rss(roots):
    total = 0
    for pid in process_tree(roots):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    print(total)


def cmd_cpu(roots):
    ticks = 0
    for pid in process_tree(roots):
        st = read_stat(pid)
        if st is not None:
            ticks += st[1]
    print(f"{ticks / CLK_TCK:.2f}")


def cmd_iperf(path):
    with open(path) as f:
        doc = json.load(f)
    if doc.get("error"):
        print(doc["error"], file=sys.stderr)
        return 1
    rcv = doc["end"]["sum_received"]
    print(f"{rcv['bits_per_second']:.0f} {rcv['bytes']}")
    return 0


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    value = float(m.group(1))
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def cmd_wrk(path):
    with open(path) as f:
        text = f.read()
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    p99 = re.search(r"^\s*99(?:\.000)?%\s+(\S+)", text, re.M)
    if not rps or not p99:
        print("cannot parse wrk output", file=sys.stderr)
        return 1
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    print(f"{float(rps.group(1)):.0f} {to_ms(p99.group(1)):.3f} {errors}")
    return 0


def cmd_redis(path):
    with open(path, errors="replace") as f:
        text = f.read().replace("\r", "\n")
    found = {}
    for name, value in re.findall(r"^(SET|GET): ([0-9.]+) requests per second", text, re.M):
        found[name] = float(value)
    if "SET" not in found or "GET" not in found:
        print("cannot parse redis-benchmark output", file=sys.stderr)
        return 1
    print(f"{found['SET']:.0f} {found['GET']:.0f}")
    return 0


# metric key, column title, scale, decimals, ratio kind ("up" = bigger is better, "down", None)
COLUMNS = [
    ("fwd_bps", "iperf3 1 stream Gbit/s", 1e-9, 2, "up"),
    ("rev_bps", "iperf3 -R Gbit/s", 1e-9, 2, "up"),
    ("p8_bps", "iperf3 -P 8 Gbit/s", 1e-9, 2, "up"),
    ("http_rps", "HTTP req/s", 1, 0, "up"),
    ("http_p99_ms", "HTTP p99 ms", 1, 2, "down"),
    ("redis_set_rps", "redis SET/s", 1, 0, "up"),
    ("redis_get_rps", "redis GET/s", 1, 0, "up"),
    ("rss_idle_kb", "RSS idle MiB", 1 / 1024, 1, None),
    ("rss_p8_kb", "RSS -P 8 MiB", 1 / 1024, 1, None),
    ("cpu_s_per_gb", "CPU s/GB", 1, 2, None),
]

# The UDP table: tcp-forward bench --udp-peer through each peer that carries UDP.
UDP_COLUMNS = [
    ("udp_rr_per_s", "UDP 64 B round trips/s, 1 flow", 1, 0, "up"),
    ("udp_rr_p50_us", "p50 µs", 1, 1, "down"),
    ("udp_rr_p99_us", "p99 µs", 1, 1, "down"),
    ("udp_rr_lost", "lost", 1, 0, None),
    ("udp_max_mbit", "1,200 B under 1 % loss, Mbit/s", 1, 0, "up"),
    ("udp_max_per_s", "datagrams/s", 1, 0, "up"),
    ("udp_fixed_sent_mbit", "2,000 Mbit/s asked: sent Mbit/s", 1, 0, None),
    ("udp_fixed_loss_pct", "lost %", 1, 2, None),
]

# The flood table: TCP round trips through each peer alone and beside its UDP flood.
FLOOD_COLUMNS = [
    ("flood_rr_alone_per_s", "TCP 64 B round trips/s, alone", 1, 0, "up"),
    ("flood_rr_alone_p99_us", "p99 µs", 1, 1, "down"),
    ("flood_rr_beside_per_s", "beside a 500 Mbit/s UDP flood", 1, 0, "up"),
    ("flood_rr_beside_p99_us", "p99 µs", 1, 1, "down"),
    ("flood_rr_ratio", "beside / alone", 1, 2, None),
    ("flood_loss_pct", "flood lost %", 1, 2, None),
]


def cmd_report(tsv, md_out, json_out=None):
    meta, skips, order = {}, {}, []
    values = {}
    with open(tsv) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "meta" and len(parts) >= 3:
                meta[parts[1]] = parts[2]
            elif parts[0] == "skip" and len(parts) >= 3:
                skips[parts[1]] = parts[2]
                if parts[1] not in order:
                    order.append(parts[1])
            elif parts[0] == "val" and len(parts) >= 5:
                peer, metric, _round, value = parts[1:5]
                if peer not in order:
                    order.append(peer)
                values.setdefault(peer, {}).setdefault(metric, []).append(float(value))
    medians = {
        peer: {m: statistics.median(v) for m, v in metrics.items()} for peer, metrics in values.items()
    }
    base = medians.get("direct", {})

    def cell(peer, key, scale, decimals, kind):
        med = medians.get(peer, {}).get(key)
        if med is None:
            return "–"
        text = f"{med * scale:,.{decimals}f}"
        ref = base.get(key)
        if kind and peer != "direct" and ref:
            text += f" ({med / ref:.2f}×)"
        return text

    def table(columns):
        lines = ["| peer | " + " | ".join(c[1] for c in columns) + " |"]
        lines.append("|---|" + "---:|" * len(columns))
        for peer in order:
            if peer in skips and peer not in values:
                continue
            if not any(c[0] in values.get(peer, {}) for c in columns):
                continue
            lines.append(f"| {peer} | " + " | ".join(cell(peer, *c[0:1], *c[2:]) for c in columns) + " |")
        return lines

    out = ["## Results (median of %s rounds)" % meta.get("repeats", "?"), ""]
    tcp = table(COLUMNS)
    if len(tcp) > 2:
        out.extend(tcp)
        out.append("")
        out.append(
            "Ratios in parentheses are to `direct` measured in the same run (for p99 a ratio above 1 is worse). "
            "RSS is the sum of VmRSS over the tunnel's processes and their children; "
            "CPU s/GB is utime+stime of those processes per 10^9 bytes of a single-stream iperf3 run."
        )
    def section(title, columns, note):
        rows = table(columns)
        if len(rows) > 2:
            out.extend(["", f"### {title}", ""] + rows + ["", note])

    section(
        "UDP",
        UDP_COLUMNS,
        "`tcp-forward bench --udp-peer` through each peer that carries UDP: 64 B requests on one flow "
        "(a request unanswered in 200 ms is lost and sent again), then 1,200 B datagrams from a paced "
        "sender, the highest rate that lost under 1 % (doubling from 500 Mbit/s, then bisecting) and "
        "the loss at 2,000 Mbit/s asked. Ratios are to `direct` in the same run.",
    )
    section(
        "TCP beside a UDP flood",
        FLOOD_COLUMNS,
        "`tcp-forward bench --udp-peer --tcp-echo-peer` through each peer that carries UDP: 64 B round "
        "trips on one TCP connection, alone and then beside a paced 500 Mbit/s flood of 1,200 B "
        "datagrams through the same peer (the bench's `udp-flood` workload). For `direct` the flood "
        "and the round trips go straight to their services (on a VM, a flood that keeps the vCPUs "
        "busy can make those round trips faster than alone: see docs/BENCHMARKS.md).",
    )
    if skips:
        out.append("")
        out.append("## Skipped or failed")
        out.append("")
        for peer, reason in skips.items():
            out.append(f"- **{peer}**: {reason}")
    out.append("")
    out.append("## Raw values per round")
    out.append("")
    for peer in order:
        if peer not in values:
            continue
        for key, title, scale, decimals, _kind in COLUMNS + UDP_COLUMNS + FLOOD_COLUMNS:
            vals = values[peer].get(key)
            if vals:
                shown = ", ".join(f"{v * scale:.{decimals}f}" for v in vals)
                out.append(f"- {peer} / {title}: {shown}")
    with open(md_out, "w") as f:
        f.write("\n".join(out) + "\n")
    if json_out:
        doc = {
            "meta": meta,
            "skipped": skips,
            "peers": {
                peer: {
                    m: {
                        "median": medians[peer][m],
                        "values": v,
                        "ratio_to_direct": (medians[peer][m] / base[m]) if base.get(m) else None,
                    }
                    for m, v in metrics.items()
                }
                for peer, metrics in values.items()
            },
        }
        with open(json_out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "ports":
        cmd_ports(args[0])
        return 0
    if cmd == "udp-ports":
        cmd_ports(args[0], socket.SOCK_DGRAM)
        return 0
    if cmd == "listening":
        return cmd_listening(args)
    if cmd == "udp-bound":
        return cmd_listening(args, "udp", "07")
    if cmd == "rss":
        cmd_rss(args)
        return 0
    if cmd == "cpu":
        cmd_cpu(args)
        return 0
    if cmd == "iperf":
        return cmd_iperf(args[0])
    if cmd == "wrk":
        return cmd_wrk(args[0])
    if cmd == "redis":
        return cmd_redis(args[0])
    if cmd == "report":
        return cmd_report(*args[:3])
    print(f"unknown sub-command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        print(f"peers_tool: {exc}", file=sys.stderr)
        sys.exit(1)
