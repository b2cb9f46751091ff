#!/usr/bin/env bash
# Compare tcp-forward with other TCP tunnels on loopback.
#
# Peers: direct (no tunnel), socat (one relay hop), relay-chain (two chained blocking
# relays, examples/reference_relay.rs: the tunnel's shape without multiplexing), rathole,
# rathole-tls (its TLS transport), bore, ssh -R, tcp-forward (TLS, its default) and
# tcp-forward-plain (TLS=off, --tls off).
# Tests through each: iperf3 single stream (both directions), iperf3 -P 8, wrk against
# nginx serving a ~600 byte file, redis-benchmark GET/SET; plus resident memory and CPU
# seconds per GB of each tunnel's processes. Through the peers that carry UDP (direct,
# rathole, rathole-tls, tcp-forward, tcp-forward-plain), `tcp-forward bench --udp-peer`:
# 64 B UDP round trips on one flow and the highest rate of 1,200 B datagrams under 1 % loss,
# then 64 B TCP round trips on one connection alone and beside a 500 Mbit/s UDP flood through
# the same peer. Each measurement is repeated R times (rounds
# run every peer in turn, so slow drift of machine load hits all peers alike) and the
# median is reported with its ratio to direct loopback measured in the same run.
#
# Nothing is installed: a missing tool is reported and the peer or test is skipped.
# Everything listens on 127.0.0.1 on ports picked by the OS (bore's control port 7835
# is fixed by bore itself). Every process started is killed on exit.
set -euo pipefail

START_SECONDS_ENV=$SECONDS # non-zero only when SECONDS=N was given in the environment

usage() {
    cat <<'EOF'
Usage: scripts/compare-peers.sh [options]

  -t, --seconds N     duration of each iperf3 / wrk run (default 5; env DURATION or SECONDS)
  -r, --repeats N     rounds; the median is reported (default 3; env R or REPEATS)
  -p, --peers LIST    comma list out of: direct, socat, relay-chain, rathole, rathole-tls,
                      bore, ssh, tcp-forward, tcp-forward-plain (default all; direct is
                      always measured, ratios need it). tcp-forward runs with TLS (its
                      default, the server's certificate self-signed at start-up),
                      tcp-forward-plain with TLS=off / --tls off; rathole-tls uses
                      rathole's TLS transport with a CA and certificate made by openssl
                      at run time (PKCS#12 for the server, trusted_root for the client)
      --bin PATH      tcp-forward binary (default target/release/tcp-forward; env TCP_FORWARD_BIN)
      --no-redis      skip redis-benchmark
      --no-udp        skip the UDP tests
      --udp-only      run the UDP tests only (direct, rathole, rathole-tls, tcp-forward,
                      tcp-forward-plain carry UDP; the other peers are skipped)
  env SOCAT_BACKLOG   listen backlog for socat (default 1024; empty = socat's default of 5)
  env RELAY_MODE      relay-chain mode: copy (default) or splice
      --json FILE     also write results as JSON
  -o, --output FILE   also write the Markdown report to FILE
  -h, --help          this text

The report (Markdown) goes to stdout, progress to stderr.
Peer binaries are looked up in PATH, then /opt/peers/bin and ~/.cargo/bin.
EOF
}

DURATION=${DURATION:-}
if [[ -z $DURATION && $START_SECONDS_ENV -gt 0 ]]; then
    DURATION=$START_SECONDS_ENV
fi
DURATION=${DURATION:-5}
REPEATS=${R:-${REPEATS:-3}}
PEERS=direct,socat,relay-chain,rathole,rathole-tls,bore,ssh,tcp-forward,tcp-forward-plain
WITH_REDIS=1
WITH_UDP=1
WITH_TCP=1
JSON_OUT=
MD_OUT=
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TF_BIN=${TCP_FORWARD_BIN:-$REPO/target/release/tcp-forward}
REF_BIN=$REPO/target/release/examples/reference_relay
RELAY_MODE=${RELAY_MODE:-copy} # relay-chain: copy (256 KiB buffer) or splice (through a pipe)
TOKEN="peer-bench-token"
# socat's own listen backlog is 5: 50 wrk connections then overflow the accept queue and
# SYN retransmits put ~1 s into the p99. 1024 matches the other peers; empty = socat default.
SOCAT_BACKLOG=${SOCAT_BACKLOG-1024}

while [[ $# -gt 0 ]]; do
    case $1 in
    -t | --seconds) DURATION=${2:?missing value for $1}; shift 2 ;;
    -r | --repeats) REPEATS=${2:?missing value for $1}; shift 2 ;;
    -p | --peers) PEERS=${2:?missing value for $1}; shift 2 ;;
    --bin) TF_BIN=${2:?missing value for $1}; shift 2 ;;
    --no-redis) WITH_REDIS=0; shift ;;
    --no-udp) WITH_UDP=0; shift ;;
    --udp-only) WITH_TCP=0; shift ;;
    --json) JSON_OUT=${2:?missing value for $1}; shift 2 ;;
    -o | --output) MD_OUT=${2:?missing value for $1}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]]; then
    echo "seconds must be an integer in 1..600, got '$DURATION'" >&2
    exit 2
fi
if ! [[ $REPEATS =~ ^[0-9]+$ && $REPEATS -ge 1 && $REPEATS -le 50 ]]; then
    echo "repeats must be an integer in 1..50, got '$REPEATS'" >&2
    exit 2
fi

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

declare -A NEEDED_PKG=([python3]=python3 [iperf3]=iperf3 [timeout]=coreutils [setsid]=util-linux)
NEEDED=(python3 timeout setsid)
((!WITH_TCP)) || NEEDED+=(iperf3)
for tool in "${NEEDED[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "required tool missing: $tool (Debian: apt-get install ${NEEDED_PKG[$tool]})" >&2
        exit 2
    fi
done

find_bin() { # name -> path on stdout, or nothing
    local name=$1 c
    if c=$(command -v "$name" 2>/dev/null); then echo "$c"; return 0; fi
    for c in /opt/peers/bin/$name "$HOME/.cargo/bin/$name" /usr/sbin/$name; do
        if [[ -x $c ]]; then echo "$c"; return 0; fi
    done
    return 1
}

TMP=$(mktemp -d /tmp/compare-peers.XXXXXX)
TOOL=$REPO/scripts/peers_tool.py
RESULTS=$TMP/results.tsv
: >"$RESULTS"
declare -a ALL_PIDS=()  # every process group started (pid == pgid thanks to setsid)
declare -a PEER_PIDS=() # processes of the tunnel currently under test

stop_pids() { # pid... : TERM the process groups, wait up to 5 s, then KILL
    local pid i alive
    for pid in "$@"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
                alive=1
            fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "$@"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#ALL_PIDS[@]})); then
        stop_pids "${ALL_PIDS[@]}"
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { # logfile cmd... : start in its own process group; sets LAST_PID
    local logf=$1
    shift
    setsid "$@" </dev/null >"$logf" 2>&1 &
    LAST_PID=$!
    ALL_PIDS+=("$LAST_PID")
}

forget_pids() { # drop pids from ALL_PIDS once they were stopped
    local keep=() p q drop
    for p in "${ALL_PIDS[@]}"; do
        drop=0
        for q in "$@"; do [[ $p == "$q" ]] && drop=1; done
        ((drop)) || keep+=("$p")
    done
    ALL_PIDS=("${keep[@]}")
}

wait_listening() { # timeout_s port... : wait until every port listens
    local deadline=$((SECONDS + $1))
    shift
    until python3 "$TOOL" listening "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

wait_udp_bound() { # timeout_s port... : wait until every UDP port is bound
    local deadline=$((SECONDS + $1))
    shift
    until python3 "$TOOL" udp-bound "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

wait_log() { # timeout_s file substring
    local deadline=$((SECONDS + $1))
    until grep -qF -- "$3" "$2" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

record() { printf 'val\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
meta() { printf 'meta\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
declare -A SKIPPED=()
skip() { # peer reason
    SKIPPED[$1]=$2
    printf 'skip\t%s\t%s\n' "$1" "$2" >>"$RESULTS"
    log "skip $1: $2"
}

ports() { python3 "$TOOL" ports "$1"; }

logtail() { # file... : last lines of each log, on one line, for a skip reason
    local f
    for f in "$@"; do
        printf '[%s: %s] ' "${f##*/}" "$(tail -n 3 "$f" 2>/dev/null | cut -c1-200 | tr '\n' ' ')"
    done
}

# ---------------------------------------------------------------- backends

WITH_HTTP=$WITH_TCP
((WITH_TCP)) || WITH_REDIS=0
NGINX=$(find_bin nginx || true)
WRK=$(find_bin wrk || true)
if ((WITH_HTTP)); then
    [[ -n $NGINX ]] || { WITH_HTTP=0; skip "test:http" "nginx not found (apt-get install nginx)"; }
    [[ -n $WRK ]] || { WITH_HTTP=0; skip "test:http" "wrk not found (apt-get install wrk)"; }
fi
if ((WITH_REDIS)); then
    REDIS_SERVER=$(find_bin redis-server || true)
    REDIS_BENCH=$(find_bin redis-benchmark || true)
    [[ -n $REDIS_SERVER ]] || { WITH_REDIS=0; skip "test:redis" "redis-server not found (apt-get install redis-server)"; }
    [[ -n $REDIS_BENCH ]] || { WITH_REDIS=0; skip "test:redis" "redis-benchmark not found (apt-get install redis-tools)"; }
fi
CURL=$(find_bin curl || true)

# TCP_ECHO_PORT: the TCP echo `tcp-forward bench --udp-peer --tcp-echo-peer` serves while
# it times round trips beside its UDP flood.
read -r IPERF_PORT HTTP_PORT REDIS_PORT TCP_ECHO_PORT < <(ports 4)
udp_ports() { python3 "$TOOL" udp-ports "$1"; }
# The UDP echo and sink of `tcp-forward bench --udp-peer`, bound by it for each measurement.
read -r UDP_ECHO_PORT UDP_SINK_PORT < <(udp_ports 2)
if ((!WITH_TCP && !WITH_UDP)); then
    echo "--udp-only and --no-udp leave nothing to measure" >&2
    exit 2
fi

start_iperf_server() {
    start_bg "$TMP/iperf3-server.log" iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
    IPERF_PID=$LAST_PID
    wait_listening 10 "$IPERF_PORT" || { log "iperf3 server did not start"; cat "$TMP/iperf3-server.log" >&2; exit 1; }
}
restart_iperf_server() {
    stop_pids "$IPERF_PID"
    forget_pids "$IPERF_PID"
    start_iperf_server
}
((!WITH_TCP)) || start_iperf_server

if ((WITH_HTTP)); then
    mkdir -p "$TMP/www" "$TMP/nginx-tmp"
    python3 -c 'import sys; sys.stdout.write(("<p>tcp-forward peer comparison payload</p>\n" * 14)[:600])' >"$TMP/www/small.html"
    cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/html;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx-tmp/body;
    proxy_temp_path $TMP/nginx-tmp/proxy;
    fastcgi_temp_path $TMP/nginx-tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
    scgi_temp_path $TMP/nginx-tmp/scgi;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        root $TMP/www;
    }
}
EOF
    start_bg "$TMP/nginx.log" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf"
    wait_listening 10 "$HTTP_PORT" || { log "nginx did not start"; cat "$TMP/nginx.log" "$TMP/nginx-error.log" >&2 || true; exit 1; }
fi

if ((WITH_REDIS)); then
    start_bg "$TMP/redis.log" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --protected-mode no --daemonize no --dir "$TMP"
    wait_listening 10 "$REDIS_PORT" || { log "redis-server did not start"; cat "$TMP/redis.log" >&2; exit 1; }
fi

# ---------------------------------------------------------------- peers
# Each setup_<peer> starts the tunnel for the three targets, sets PUB_IPERF, PUB_HTTP,
# PUB_REDIS and PEER_PIDS, waits until it is ready, and returns non-zero (with SETUP_ERR)
# on failure. A peer that carries UDP also sets PUB_UDP_ECHO, PUB_UDP_SINK and PUB_TCP_ECHO
# (the main loop empties them before each setup). The peer's processes are stopped by teardown_peer.

# The peers that carry UDP: the others are skipped with --udp-only.
UDP_PEERS=" direct rathole rathole-tls tcp-forward tcp-forward-plain "

setup_direct() {
    PUB_IPERF=$IPERF_PORT PUB_HTTP=$HTTP_PORT PUB_REDIS=$REDIS_PORT
    PUB_UDP_ECHO=$UDP_ECHO_PORT PUB_UDP_SINK=$UDP_SINK_PORT PUB_TCP_ECHO=$TCP_ECHO_PORT
    PEER_PIDS=()
}

setup_socat() {
    local bin
    bin=$(find_bin socat) || { SETUP_ERR="socat not found (apt-get install socat)"; return 1; }
    read -r PUB_IPERF PUB_HTTP PUB_REDIS < <(ports 3)
    PEER_PIDS=()
    local pair pub target
    for pair in "$PUB_IPERF:$IPERF_PORT" "$PUB_HTTP:$HTTP_PORT" "$PUB_REDIS:$REDIS_PORT"; do
        pub=${pair%%:*} target=${pair##*:}
        start_bg "$TMP/socat-$pub.log" "$bin" "TCP-LISTEN:$pub,fork,reuseaddr,bind=127.0.0.1${SOCAT_BACKLOG:+,backlog=$SOCAT_BACKLOG}" "TCP:127.0.0.1:$target"
        PEER_PIDS+=("$LAST_PID")
    done
    wait_listening 10 "$PUB_IPERF" "$PUB_HTTP" "$PUB_REDIS" || { SETUP_ERR="socat did not listen"; return 1; }
}

setup_relay_chain() {
    [[ -x $REF_BIN ]] || { SETUP_ERR="$REF_BIN missing (cargo build --release --example reference_relay)"; return 1; }
    local hops
    read -r PUB_IPERF PUB_HTTP PUB_REDIS < <(ports 3)
    read -r -a hops < <(ports 3)
    PEER_PIDS=()
    local pub hop target i=0
    for pub in "$PUB_IPERF" "$PUB_HTTP" "$PUB_REDIS"; do
        target=$(( i == 0 ? IPERF_PORT : (i == 1 ? HTTP_PORT : REDIS_PORT) ))
        hop=${hops[$i]}
        start_bg "$TMP/relay-$hop.log" "$REF_BIN" "$hop" "$target" "$RELAY_MODE"
        PEER_PIDS+=("$LAST_PID")
        start_bg "$TMP/relay-$pub.log" "$REF_BIN" "$pub" "$hop" "$RELAY_MODE"
        PEER_PIDS+=("$LAST_PID")
        i=$((i + 1))
    done
    wait_listening 10 "$PUB_IPERF" "$PUB_HTTP" "$PUB_REDIS" "${hops[@]}" || { SETUP_ERR="reference relays did not listen: $(logtail "$TMP"/relay-*.log)"; return 1; }
}

# rathole's TLS transport: a CA and a server certificate for "localhost", made once per run,
# the server's key and chain in a PKCS#12 archive (rathole 0.5 built with native-tls, which
# is OpenSSL here) and the CA as the client's trusted_root.
RATHOLE_TLS_PASS=peer-bench-pkcs12
make_rathole_identity() { # dir
    local d=$1 openssl
    [[ -s $d/identity.pfx && -s $d/ca.pem ]] && return 0
    openssl=$(find_bin openssl) || { SETUP_ERR="openssl not found (apt-get install openssl)"; return 1; }
    mkdir -p "$d"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$d/leaf.ext"
    if ! {
        "$openssl" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=compare-peers test CA" -keyout "$d/ca.key" -out "$d/ca.pem" &&
            "$openssl" req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" &&
            "$openssl" x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
                -CAcreateserial -days 2 -extfile "$d/leaf.ext" -out "$d/server.crt" &&
            "$openssl" pkcs12 -export -out "$d/identity.pfx" -inkey "$d/server.key" \
                -in "$d/server.crt" -certfile "$d/ca.pem" -passout "pass:$RATHOLE_TLS_PASS"
    } >"$d/openssl.log" 2>&1; then
        SETUP_ERR="openssl could not make rathole's certificate: $(logtail "$d/openssl.log")"
        return 1
    fi
}

setup_rathole_with() { # plain|tls
    local mode=$1 bin ctrl d id server_transport="" client_transport=""
    bin=$(find_bin rathole) || { SETUP_ERR="rathole not found (cargo install --root /opt/peers rathole)"; return 1; }
    read -r ctrl PUB_IPERF PUB_HTTP PUB_REDIS PUB_TCP_ECHO < <(ports 5)
    read -r PUB_UDP_ECHO PUB_UDP_SINK < <(udp_ports 2)
    d=$TMP/rathole-$mode
    mkdir -p "$d"
    if [[ $mode == tls ]]; then
        id=$TMP/rathole-identity
        make_rathole_identity "$id" || return 1
        server_transport=$(printf '%s\n' "[server.transport]" 'type = "tls"' "[server.transport.tls]" \
            "pkcs12 = \"$id/identity.pfx\"" "pkcs12_password = \"$RATHOLE_TLS_PASS\"")
        client_transport=$(printf '%s\n' "[client.transport]" 'type = "tls"' "[client.transport.tls]" \
            "trusted_root = \"$id/ca.pem\"" 'hostname = "localhost"')
    fi
    cat >"$d/server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$ctrl"
default_token = "$TOKEN"

$server_transport

[server.services.iperf]
bind_addr = "127.0.0.1:$PUB_IPERF"

[server.services.http]
bind_addr = "127.0.0.1:$PUB_HTTP"

[server.services.redis]
bind_addr = "127.0.0.1:$PUB_REDIS"

[server.services.tcpecho]
bind_addr = "127.0.0.1:$PUB_TCP_ECHO"

[server.services.udpecho]
type = "udp"
bind_addr = "127.0.0.1:$PUB_UDP_ECHO"

[server.services.udpsink]
type = "udp"
bind_addr = "127.0.0.1:$PUB_UDP_SINK"
EOF
    cat >"$d/client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$ctrl"
default_token = "$TOKEN"

$client_transport

[client.services.iperf]
local_addr = "127.0.0.1:$IPERF_PORT"

[client.services.http]
local_addr = "127.0.0.1:$HTTP_PORT"

[client.services.redis]
local_addr = "127.0.0.1:$REDIS_PORT"

[client.services.tcpecho]
local_addr = "127.0.0.1:$TCP_ECHO_PORT"

[client.services.udpecho]
type = "udp"
local_addr = "127.0.0.1:$UDP_ECHO_PORT"

[client.services.udpsink]
type = "udp"
local_addr = "127.0.0.1:$UDP_SINK_PORT"
EOF
    PEER_PIDS=()
    start_bg "$d/server.log" env RUST_LOG=warn "$bin" --server "$d/server.toml"
    PEER_PIDS+=("$LAST_PID")
    wait_listening 10 "$ctrl" || { SETUP_ERR="rathole server did not listen: $(logtail "$d/server.log")"; return 1; }
    start_bg "$d/client.log" env RUST_LOG=warn "$bin" --client "$d/client.toml"
    PEER_PIDS+=("$LAST_PID")
    wait_listening 15 "$PUB_IPERF" "$PUB_HTTP" "$PUB_REDIS" "$PUB_TCP_ECHO" ||
        { SETUP_ERR="rathole services did not listen: $(logtail "$d/server.log" "$d/client.log")"; return 1; }
    wait_udp_bound 15 "$PUB_UDP_ECHO" "$PUB_UDP_SINK" ||
        { SETUP_ERR="rathole UDP services not bound: $(logtail "$d/server.log" "$d/client.log")"; return 1; }
}

setup_rathole() { setup_rathole_with plain; }
setup_rathole_tls() { setup_rathole_with tls; }

setup_bore() {
    local bin pair pub target
    bin=$(find_bin bore) || { SETUP_ERR="bore not found (cargo install --root /opt/peers bore-cli)"; return 1; }
    if python3 "$TOOL" listening 7835; then
        SETUP_ERR="bore's fixed control port 7835 is already in use"
        return 1
    fi
    read -r PUB_IPERF PUB_HTTP PUB_REDIS < <(ports 3)
    PEER_PIDS=()
    start_bg "$TMP/bore-server.log" "$bin" server --bind-addr 127.0.0.1 --bind-tunnels 127.0.0.1 --secret "$TOKEN"
    PEER_PIDS+=("$LAST_PID")
    wait_listening 10 7835 || { SETUP_ERR="bore server did not listen on 7835: $(logtail "$TMP/bore-server.log")"; return 1; }
    for pair in "$PUB_IPERF:$IPERF_PORT" "$PUB_HTTP:$HTTP_PORT" "$PUB_REDIS:$REDIS_PORT"; do
        pub=${pair%%:*} target=${pair##*:}
        start_bg "$TMP/bore-local-$pub.log" "$bin" local "$target" --local-host 127.0.0.1 \
            --to 127.0.0.1 --port "$pub" --secret "$TOKEN"
        PEER_PIDS+=("$LAST_PID")
    done
    wait_listening 15 "$PUB_IPERF" "$PUB_HTTP" "$PUB_REDIS" ||
        { SETUP_ERR="bore tunnels did not listen: $(logtail "$TMP/bore-server.log")"; return 1; }
}

setup_ssh() {
    local sshd ssh keygen sshport d user
    sshd=$(find_bin sshd) || { SETUP_ERR="sshd not found (apt-get install openssh-server)"; return 1; }
    ssh=$(find_bin ssh) || { SETUP_ERR="ssh not found (apt-get install openssh-client)"; return 1; }
    keygen=$(find_bin ssh-keygen) || { SETUP_ERR="ssh-keygen not found (apt-get install openssh-client)"; return 1; }
    if [[ ! -d /run/sshd ]]; then
        if [[ $(id -u) -eq 0 ]]; then
            mkdir -m 0755 /run/sshd # privilege separation directory sshd insists on
        else
            SETUP_ERR="sshd needs /run/sshd (privilege separation directory) and we are not root"
            return 1
        fi
    fi
    read -r sshport PUB_IPERF PUB_HTTP PUB_REDIS < <(ports 4)
    d=$TMP/ssh
    rm -rf "$d"
    mkdir -m 0700 "$d"
    "$keygen" -q -t ed25519 -N '' -f "$d/host_key"
    "$keygen" -q -t ed25519 -N '' -f "$d/user_key"
    cp "$d/user_key.pub" "$d/authorized_keys"
    user=$(id -un)
    cat >"$d/sshd_config" <<EOF
Port $sshport
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowUsers $user
LogLevel ERROR
EOF
    PEER_PIDS=()
    start_bg "$d/sshd.log" "$sshd" -D -e -f "$d/sshd_config"
    PEER_PIDS+=("$LAST_PID")
    wait_listening 10 "$sshport" || { SETUP_ERR="sshd did not listen: $(logtail "$d/sshd.log")"; return 1; }
    start_bg "$d/ssh.log" "$ssh" -F /dev/null -N -p "$sshport" -i "$d/user_key" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o IdentitiesOnly=yes -o ExitOnForwardFailure=yes -o LogLevel=ERROR -o ConnectTimeout=10 \
        -R "127.0.0.1:$PUB_IPERF:127.0.0.1:$IPERF_PORT" \
        -R "127.0.0.1:$PUB_HTTP:127.0.0.1:$HTTP_PORT" \
        -R "127.0.0.1:$PUB_REDIS:127.0.0.1:$REDIS_PORT" \
        "$user@127.0.0.1"
    PEER_PIDS+=("$LAST_PID")
    wait_listening 15 "$PUB_IPERF" "$PUB_HTTP" "$PUB_REDIS" ||
        { SETUP_ERR="ssh -R forwards did not listen: $(logtail "$d/ssh.log" "$d/sshd.log")"; return 1; }
}

setup_tcp_forward_with() { # on|off: the server's TLS key and the client's --tls
    local tls=$1 inner d
    if [[ ! -x $TF_BIN ]]; then
        SETUP_ERR="$TF_BIN not found (cargo build --release)"
        return 1
    fi
    read -r inner PUB_IPERF PUB_HTTP PUB_REDIS PUB_TCP_ECHO < <(ports 5)
    read -r PUB_UDP_ECHO PUB_UDP_SINK < <(udp_ports 2)
    d=$TMP/tcp-forward-tls-$tls
    mkdir -p "$d"
    # With TLS on and neither TLS_CERT nor TLS_KEY, the server makes a self-signed certificate
    # at start-up; the client, given neither --ca nor --fingerprint, relies on the token's
    # proof, which is bound to the TLS session.
    cat >"$d/server.cfg" <<EOF
[DEFAULT]
INNER_PORT=$inner
OUTER_PORTS_FILE=port_mapper.cfg
LOG_LEVEL=INFO
TOKEN=$TOKEN
BIND_ADDR=127.0.0.1
TLS=$tls
EOF
    cat >"$d/port_mapper.cfg" <<EOF
[MAPPER]
$PUB_IPERF=127.0.0.1:$IPERF_PORT
$PUB_HTTP=127.0.0.1:$HTTP_PORT
$PUB_REDIS=127.0.0.1:$REDIS_PORT
$PUB_TCP_ECHO=127.0.0.1:$TCP_ECHO_PORT
[UDP]
$PUB_UDP_ECHO=127.0.0.1:$UDP_ECHO_PORT
$PUB_UDP_SINK=127.0.0.1:$UDP_SINK_PORT
EOF
    PEER_PIDS=()
    start_bg "$d/server.log" "$TF_BIN" server "$d/server.cfg"
    PEER_PIDS+=("$LAST_PID")
    wait_listening 10 "$inner" || { SETUP_ERR="tcp-forward server did not listen: $(logtail "$d/server.log")"; return 1; }
    start_bg "$d/client.log" "$TF_BIN" client 127.0.0.1 "$inner" --token "$TOKEN" --tls "$tls"
    PEER_PIDS+=("$LAST_PID")
    wait_log 15 "$d/server.log" "tunnel attached" ||
        { SETUP_ERR="no 'tunnel attached' from tcp-forward server: $(logtail "$d/server.log" "$d/client.log")"; return 1; }
    wait_listening 10 "$PUB_IPERF" "$PUB_HTTP" "$PUB_REDIS" "$PUB_TCP_ECHO" || { SETUP_ERR="tcp-forward public ports not listening"; return 1; }
    wait_udp_bound 10 "$PUB_UDP_ECHO" "$PUB_UDP_SINK" || { SETUP_ERR="tcp-forward public UDP ports not bound"; return 1; }
}

setup_tcp_forward() { setup_tcp_forward_with on; }
setup_tcp_forward_plain() { setup_tcp_forward_with off; }

teardown_peer() {
    if ((${#PEER_PIDS[@]})); then
        stop_pids "${PEER_PIDS[@]}"
        forget_pids "${PEER_PIDS[@]}"
    fi
    PEER_PIDS=()
}

check_path() { # end-to-end check through the tunnel before measuring
    if ((WITH_HTTP)) && [[ -n $CURL ]]; then
        local body
        body=$(timeout 10 "$CURL" -sS --max-time 5 "http://127.0.0.1:$PUB_HTTP/small.html" 2>&1) || {
            SETUP_ERR="HTTP GET through the tunnel failed: $body"
            return 1
        }
        [[ ${#body} -ge 500 ]] || { SETUP_ERR="HTTP GET through the tunnel returned ${#body} bytes"; return 1; }
    fi
}

# ---------------------------------------------------------------- measurements

run_iperf() { # name out_json extra-args... ; sets IPERF_RESULT="bps bytes"
    local name=$1 out=$2
    shift 2
    IPERF_RESULT=
    if timeout -k 5 $((DURATION + 30)) iperf3 -c 127.0.0.1 -p "$PUB_IPERF" -t "$DURATION" \
        --connect-timeout 5000 -J "$@" >"$out" 2>&1 &&
        IPERF_RESULT=$(python3 "$TOOL" iperf "$out"); then
        return 0
    fi
    log "  iperf3 $name failed: $(head -c 300 "$out" | tr '\n' ' ')"
    restart_iperf_server
    return 1
}

measure_peer() { # peer round
    local peer=$1 round=$2 rss
    # Idle memory is a column of the TCP table.
    if ((WITH_TCP && ${#PEER_PIDS[@]})); then
        sleep 1
        rss=$(python3 "$TOOL" rss "${PEER_PIDS[@]}")
        record "$peer" rss_idle_kb "$round" "$rss"
    fi
    if ((WITH_TCP)); then
        measure_tcp "$peer" "$round"
    fi
    if ((WITH_UDP)) && [[ -n $PUB_UDP_ECHO ]]; then
        measure_udp "$peer" "$round"
    fi
}

# UDP through the peer: `tcp-forward bench --udp-peer` serves the echo and the sink on
# UDP_ECHO_PORT and UDP_SINK_PORT for the run, times 1-flow round trips through PUB_UDP_ECHO
# for DURATION, then searches the rate under 1 % loss through PUB_UDP_SINK (steps of a
# quarter of DURATION, at most 1 s, 9 at most). With PUB_TCP_ECHO it then serves a TCP echo
# on TCP_ECHO_PORT and times 64 B round trips through PUB_TCP_ECHO for DURATION alone and
# DURATION beside its 500 Mbit/s flood through PUB_UDP_SINK (the `udp-flood` workload).
measure_udp() { # peer round
    local peer=$1 round=$2 line rr p50 p99 lost mbit per_s limited fixed_mbit fixed_loss
    local alone beside alone_p99 beside_p99 flood_loss tcp_args=()
    if [[ ! -x $TF_BIN ]]; then
        log "  UDP through $peer skipped: $TF_BIN not found (cargo build --release)"
        return 0
    fi
    [[ -z $PUB_TCP_ECHO ]] || tcp_args=(--tcp-echo-peer "$TCP_ECHO_PORT,$PUB_TCP_ECHO")
    if ! line=$(timeout -k 5 $((3 * DURATION + 30)) "$TF_BIN" bench --seconds "$DURATION" \
        --udp-peer "$UDP_ECHO_PORT,$UDP_SINK_PORT,$PUB_UDP_ECHO,$PUB_UDP_SINK" "${tcp_args[@]}" \
        2>"$TMP/udp-peer.log"); then
        log "  UDP through $peer failed: $(tail -n 3 "$TMP/udp-peer.log" | tr '\n' ' ')"
        return 0
    fi
    read -r rr p50 p99 lost mbit per_s limited fixed_mbit fixed_loss alone beside alone_p99 beside_p99 flood_loss <<<"$line"
    record "$peer" udp_rr_per_s "$round" "$rr"
    [[ $p50 == - ]] || record "$peer" udp_rr_p50_us "$round" "$p50"
    [[ $p99 == - ]] || record "$peer" udp_rr_p99_us "$round" "$p99"
    record "$peer" udp_rr_lost "$round" "$lost"
    [[ $mbit == - ]] || record "$peer" udp_max_mbit "$round" "$mbit"
    [[ $per_s == - ]] || record "$peer" udp_max_per_s "$round" "$per_s"
    record "$peer" udp_fixed_sent_mbit "$round" "$fixed_mbit"
    record "$peer" udp_fixed_loss_pct "$round" "$fixed_loss"
    local ceiling=
    [[ $limited != 1 ]] || ceiling=" (the sender's ceiling)"
    log "  $peer UDP: $rr round trips/s (p50 $p50 µs, p99 $p99 µs, $lost lost); under 1 % loss $mbit Mbit/s$ceiling; at 2,000 asked sent $fixed_mbit Mbit/s, lost $fixed_loss %; $(grep -m1 '^steps:' "$TMP/udp-peer.log" || true)"
    if [[ ${flood_loss:--} == - ]]; then
        [[ -z ${flood_loss:-} ]] ||
            log "  $peer TCP round trips beside the flood failed: $(grep -m1 'beside the flood' "$TMP/udp-peer.log" || true)"
    else
        record "$peer" flood_rr_alone_per_s "$round" "$alone"
        record "$peer" flood_rr_beside_per_s "$round" "$beside"
        if awk -v a="$alone" 'BEGIN{exit !(a > 0)}'; then
            record "$peer" flood_rr_ratio "$round" "$(awk -v a="$alone" -v b="$beside" 'BEGIN{printf "%.4f", b/a}')"
        fi
        [[ $alone_p99 == - ]] || record "$peer" flood_rr_alone_p99_us "$round" "$alone_p99"
        [[ $beside_p99 == - ]] || record "$peer" flood_rr_beside_p99_us "$round" "$beside_p99"
        record "$peer" flood_loss_pct "$round" "$flood_loss"
        log "  $peer TCP round trips: $alone/s alone (p99 $alone_p99 µs), $beside/s beside a 500 Mbit/s UDP flood (p99 $beside_p99 µs, the flood lost $flood_loss %)"
    fi
}

measure_tcp() { # peer round
    local peer=$1 round=$2 r bps bytes cpu0 cpu1 rss peak pid i

    # single stream, client -> server, with CPU accounting
    if ((${#PEER_PIDS[@]})); then
        cpu0=$(python3 "$TOOL" cpu "${PEER_PIDS[@]}")
    fi
    if run_iperf fwd "$TMP/iperf-fwd.json"; then
        read -r bps bytes <<<"$IPERF_RESULT"
        record "$peer" fwd_bps "$round" "$bps"
        if ((${#PEER_PIDS[@]})); then
            cpu1=$(python3 "$TOOL" cpu "${PEER_PIDS[@]}")
            record "$peer" cpu_s_per_gb "$round" "$(python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) / (int(sys.argv[3]) / 1e9):.4f}')" "$cpu0" "$cpu1" "$bytes")"
        fi
        log "  $peer 1 stream: $(awk -v b="$bps" 'BEGIN{printf "%.2f Gbit/s", b/1e9}')"
    fi

    # single stream, reverse
    if run_iperf rev "$TMP/iperf-rev.json" -R; then
        read -r bps bytes <<<"$IPERF_RESULT"
        record "$peer" rev_bps "$round" "$bps"
        log "  $peer -R: $(awk -v b="$bps" 'BEGIN{printf "%.2f Gbit/s", b/1e9}')"
    fi

    # 8 streams, with RSS sampling
    timeout -k 5 $((DURATION + 30)) iperf3 -c 127.0.0.1 -p "$PUB_IPERF" -t "$DURATION" -P 8 \
        --connect-timeout 5000 -J >"$TMP/iperf-p8.json" 2>&1 &
    pid=$!
    peak=0
    for ((i = 0; i < (DURATION + 35) * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        if ((${#PEER_PIDS[@]})); then
            rss=$(python3 "$TOOL" rss "${PEER_PIDS[@]}")
            if ((rss > peak)); then peak=$rss; fi
        fi
        sleep 0.25
    done
    if wait "$pid" && r=$(python3 "$TOOL" iperf "$TMP/iperf-p8.json"); then
        read -r bps bytes <<<"$r"
        record "$peer" p8_bps "$round" "$bps"
        if ((${#PEER_PIDS[@]})); then
            record "$peer" rss_p8_kb "$round" "$peak"
        fi
        log "  $peer -P 8: $(awk -v b="$bps" 'BEGIN{printf "%.2f Gbit/s", b/1e9}')${PEER_PIDS[0]:+, peak RSS ${peak} kB}"
    else
        log "  iperf3 -P 8 failed: $(head -c 300 "$TMP/iperf-p8.json" | tr '\n' ' ')"
        restart_iperf_server
    fi

    if ((WITH_HTTP)); then
        local rps p99 errs
        if timeout -k 5 $((DURATION + 30)) "$WRK" -t2 -c50 -d"${DURATION}s" --timeout 5s --latency \
            "http://127.0.0.1:$PUB_HTTP/small.html" >"$TMP/wrk.txt" 2>&1 &&
            r=$(python3 "$TOOL" wrk "$TMP/wrk.txt"); then
            read -r rps p99 errs <<<"$r"
            record "$peer" http_rps "$round" "$rps"
            record "$peer" http_p99_ms "$round" "$p99"
            log "  $peer wrk: $rps req/s, p99 $p99 ms, errors $errs"
            ((errs == 0)) || log "  warning: wrk reported $errs errors through $peer"
        else
            log "  wrk failed: $(head -c 300 "$TMP/wrk.txt" | tr '\n' ' ')"
        fi
    fi

    if ((WITH_REDIS)); then
        local set get
        if timeout -k 5 180 "$REDIS_BENCH" -h 127.0.0.1 -p "$PUB_REDIS" -q -n 100000 -c 50 -t get,set \
            >"$TMP/redis.txt" 2>&1 && r=$(python3 "$TOOL" redis "$TMP/redis.txt"); then
            read -r set get <<<"$r"
            record "$peer" redis_set_rps "$round" "$set"
            record "$peer" redis_get_rps "$round" "$get"
            log "  $peer redis: SET $set/s GET $get/s"
        else
            log "  redis-benchmark failed: $(tr '\r' '\n' <"$TMP/redis.txt" | tail -n 3 | tr '\n' ' ')"
        fi
    fi
}

# ---------------------------------------------------------------- versions and metadata

version_of() { # peer -> one line
    local b
    case $1 in
    direct) echo "kernel $(uname -r)" ;;
    relay-chain) [[ -x $REF_BIN ]] && echo "two chained examples/reference_relay (blocking, 2 threads per connection, mode $RELAY_MODE)" ;;
    socat) b=$(find_bin socat) && "$b" -V 2>/dev/null | awk -v bl="${SOCAT_BACKLOG:-default}" '/socat version/{print "socat " $3 ", TCP-LISTEN:p,fork,reuseaddr,backlog=" bl; exit}' ;;
    rathole) b=$(find_bin rathole) && "$b" --version 2>/dev/null | awk '/Build Version:/{print "rathole " $3; exit}' ;;
    rathole-tls) b=$(find_bin rathole) && "$b" --version 2>/dev/null | awk '/Build Version:/{print "rathole " $3 ", TLS transport (native-tls), EC P-256 certificate from a CA made at run time"; exit}' ;;
    bore) b=$(find_bin bore) && "$b" --version 2>/dev/null | head -n 1 ;;
    ssh) b=$(find_bin ssh) && "$b" -V 2>&1 | head -n 1 ;;
    tcp-forward | tcp-forward-plain)
        b=$([[ $1 == tcp-forward ]] && echo "TLS on" || echo "TLS off")
        [[ -x $TF_BIN ]] && echo "$({ "$TF_BIN" --version 2>/dev/null || echo tcp-forward; } | head -n 1), $b, binary ${TF_ORIG:-$TF_BIN} built $(date -u -r "${TF_ORIG:-$TF_BIN}" +%Y-%m-%dT%H:%M:%SZ)" ;;
    esac
}

# Work on a copy of the tcp-forward binary: a rebuild during the run must not swap it.
if [[ -x $TF_BIN ]]; then
    TF_ORIG=$TF_BIN
    TF_BIN=$TMP/tcp-forward-bin
    cp "$TF_ORIG" "$TF_BIN"
    meta tcp_forward_binary "$TF_ORIG ($(date -u -r "$TF_ORIG" +%Y-%m-%dT%H:%M:%SZ))"
fi

IFS=, read -r -a PEER_LIST <<<"$PEERS"
SELECTED=(direct)
for p in "${PEER_LIST[@]}"; do
    case $p in
    direct) ;;
    socat | relay-chain | rathole | rathole-tls | bore | ssh | tcp-forward | tcp-forward-plain) SELECTED+=("$p") ;;
    *) echo "unknown peer: $p" >&2; exit 2 ;;
    esac
done

meta seconds "$DURATION"
meta repeats "$REPEATS"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta cpus "$(nproc)"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
{
    echo "# Peer comparison"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(uname -sr), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- iperf3/wrk runs of ${DURATION} s, ${REPEATS} rounds (every peer once per round), median reported"
    ((!WITH_TCP)) || echo "- tools: $(iperf3 --version | head -n 1)${WRK:+, $($WRK -v 2>&1 | head -n 1 | cut -d' ' -f1-2)}${NGINX:+, $($NGINX -v 2>&1)}${REDIS_SERVER:+, $($REDIS_SERVER --version | cut -d' ' -f1-3)}"
    for p in "${SELECTED[@]}"; do
        v=$(version_of "$p" || true)
        echo "- $p: ${v:-not available}"
        meta "version_$p" "${v:-}"
    done
    echo
} >"$TMP/header.md"

# ---------------------------------------------------------------- main loop

for ((round = 1; round <= REPEATS; round++)); do
    for peer in "${SELECTED[@]}"; do
        [[ -n ${SKIPPED[$peer]:-} ]] && continue
        if ((!WITH_TCP)) && [[ $UDP_PEERS != *" $peer "* ]]; then
            ((round > 1)) || skip "$peer" "carries no UDP (--udp-only)"
            continue
        fi
        log "round $round/$REPEATS: $peer"
        fn=setup_${peer//-/_}
        # Two attempts: a port picked free can be taken by another program before the peer
        # binds it.
        ok=
        for attempt in 1 2; do
            SETUP_ERR=
            PUB_UDP_ECHO= PUB_UDP_SINK= PUB_TCP_ECHO=
            if $fn && check_path; then ok=1; break; fi
            log "  $peer setup attempt $attempt failed: ${SETUP_ERR:-setup failed}"
            teardown_peer
        done
        if [[ -z $ok ]]; then
            skip "$peer" "${SETUP_ERR:-setup failed} (round $round)"
            continue
        fi
        measure_peer "$peer" "$round"
        teardown_peer
    done
done
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

python3 "$TOOL" report "$RESULTS" "$TMP/table.md" ${JSON_OUT:+"$JSON_OUT"}
{
    cat "$TMP/header.md"
    cat "$TMP/table.md"
    echo
    echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$TMP/report.md"
cat "$TMP/report.md"
[[ -z $MD_OUT ]] || cp "$TMP/report.md" "$MD_OUT"
