#!/usr/bin/env bash
# A/B two tcp-forward builds with iperf3 through the tunnel, alternating them in each round
# so that drifting machine load hits both alike; direct loopback runs first in every round.
#
#   scripts/ab-throughput.sh BIN_A BIN_B [ROUNDS] [-- iperf3 client args, e.g. -R or -P 8]
#   TLS=off scripts/ab-throughput.sh ...    the plain tunnel (default: TLS, the roles' default)
#
# Prints one line per run: round, what, Gbit/s (receiver side).
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,7p' "$0"; exit 2; }
A=$1 B=$2
shift 2
ROUNDS=3
if [[ $# -gt 0 && $1 != -- ]]; then ROUNDS=$1; shift; fi
[[ ${1:-} == -- ]] && shift
command -v iperf3 >/dev/null || { echo "iperf3 not found (apt-get install iperf3)" >&2; exit 2; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

target=$(port)
iperf3 -s -B 127.0.0.1 -p "$target" >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.3

gbps() { # port [iperf3 args] -> receiver Gbit/s of a 3 s run
    local p=$1
    shift
    iperf3 -c 127.0.0.1 -p "$p" -t 3 -J "$@" 2>/dev/null |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

run_tunnel() { # bin -> Gbit/s through a fresh server+client pair
    local bin=$1 inner pub sp cp out
    inner=$(port) pub=$(port)
    printf '[DEFAULT]\nINNER_PORT=%s\nBIND_ADDR=127.0.0.1\nLOG_LEVEL=WARN\nTLS=%s\n' "$inner" "${TLS:-on}" >"$TMP/s.cfg"
    printf '[MAPPER]\n%s=127.0.0.1:%s\n' "$pub" "$target" >"$TMP/port_mapper.cfg"
    "$bin" server "$TMP/s.cfg" 2>"$TMP/server.log" & sp=$!
    "$bin" client 127.0.0.1 "$inner" --tls "${TLS:-on}" 2>"$TMP/client.log" & cp=$!
    for _ in $(seq 50); do grep -q "no TOKEN" "$TMP/server.log" 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    out=$(gbps "$pub" "${IPERF_ARGS[@]}")
    kill "$sp" "$cp"; wait "$sp" "$cp" 2>/dev/null || true
    echo "$out"
}

IPERF_ARGS=("$@")
for ((r = 1; r <= ROUNDS; r++)); do
    echo "$r direct $(gbps "$target" "${IPERF_ARGS[@]}")"
    echo "$r A $(run_tunnel "$A")"
    echo "$r B $(run_tunnel "$B")"
done
