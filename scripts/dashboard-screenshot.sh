#!/usr/bin/env bash
# Capture docs/dashboard.png: the admin dashboard of a real server and two clients, with
# traffic flowing, at 1280x800.
#
#   cargo build --release && scripts/dashboard-screenshot.sh [-o FILE] [-w SECONDS]
#
#   -o, --output FILE   where to write the PNG (default docs/dashboard.png)
#   -w, --wait SECONDS  how long the page runs before the capture, so that its sparklines
#                       have points (default 20)
#   env TCP_FORWARD_BIN the binary (default target/release/tcp-forward)
#   env CHROMIUM        the browser (default chromium or chromium-browser on PATH)
#
# Everything listens on 127.0.0.1 on ports picked by the OS: an echo target and an HTTP
# target (python3), a server (TLS with its self-signed certificate, a tunnel token, and
# ADMIN_ADDR), a client with tag "default" and one with tag "office" (both pinning the
# server's certificate), three mappings (echo and HTTP served by "default", echo by
# "office"), and a traffic generator that keeps streams open and varies its rate. The page
# is opened in headless Chromium, driven over the DevTools Protocol, so that it polls in
# real time before the capture. Needs python3 and chromium; installs nothing. Every
# process started is stopped on exit, and the temporary folder removed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$REPO/docs/dashboard.png
WAIT=20
while [[ $# -gt 0 ]]; do
    case $1 in
    -o | --output) OUT=$2; shift 2 ;;
    -w | --wait) WAIT=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $WAIT =~ ^[0-9]+$ ]] || { echo "--wait takes whole seconds" >&2; exit 2; }

BIN=${TCP_FORWARD_BIN:-$REPO/target/release/tcp-forward}
[[ -x $BIN ]] || { echo "$BIN not found: cargo build --release first" >&2; exit 2; }
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[[ -n $CHROMIUM ]] || { echo "chromium not found" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }

TMP=$(mktemp -d /tmp/dashboard-screenshot.XXXXXX)
declare -a PIDS=() # process groups started (each is its own group's leader)

stop_all() { # TERM every group, wait up to 5 s, then KILL what is left
    local pid i alive
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "${PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
                alive=1
            fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then stop_all; fi
    if ((rc != 0)); then
        for f in "$TMP"/*.log; do
            [[ -s $f ]] && { echo "---- $(basename "$f") ----" >&2; tail -n 15 "$f" >&2; }
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name cmd... : start in a process group of its own, log to $TMP/name.log
    local name=$1
    shift
    setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    PIDS+=($!)
}

wait_log() { # name text seconds : wait for a line of the log containing text
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q -- "$2" "$TMP/$1.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1: no \"$2\" within $3 s" >&2
    return 1
}

cat >"$TMP/tool.py" <<'EOF'
"""Helpers: free ports, an echo target, a traffic generator, and a DevTools screenshot."""
import base64, json, math, os, socket, struct, sys, threading, time, urllib.request


def ports(n):
    socks = [socket.socket() for _ in range(int(n))]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks))


def echo(port):
    srv = socket.create_server(("127.0.0.1", int(port)))

    def serve(c):
        with c:
            while data := c.recv(65536):
                c.sendall(data)

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def traffic(seconds, echo_a, http, echo_b):
    """Echo streams held open with rates that rise and fall, and HTTP fetches."""
    end = time.time() + float(seconds)

    def stream(port, base, period, pause):
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
                while time.time() < end:
                    n = max(1, int(base * (1.1 + math.sin(time.time() / period))))
                    s.sendall(b"x" * n)
                    got = 0
                    while got < n:
                        d = s.recv(65536)
                        if not d:
                            return
                        got += len(d)
                    time.sleep(pause)
        except OSError as e:
            print("stream to", port, ":", e, file=sys.stderr)

    def fetches(port):
        while time.time() < end:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/blob.bin", timeout=10).read()
            except OSError as e:
                print("fetch from", port, ":", e, file=sys.stderr)
            time.sleep(0.3 + 0.5 * math.sin(time.time() / 4) ** 2)

    jobs = [(stream, (echo_a, 400_000, 6, 0.2)), (stream, (echo_a, 20_000, 3, 0.5)),
            (stream, (echo_b, 150_000, 9, 0.25)), (fetches, (http,))]
    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.time()) + 15)


class DevTools:
    """Just enough of a WebSocket client (RFC 6455) for a few DevTools commands."""

    def __init__(self, url):
        hostport, path = url.removeprefix("ws://").split("/", 1)
        host, port = hostport.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit("DevTools refused the upgrade: %r" % head[:80])
        self.next_id = 0

    def more(self):
        d = self.s.recv(1 << 16)
        if not d:
            raise SystemExit("DevTools closed the connection")
        self.buf += d

    def take(self, n):
        while len(self.buf) < n:
            self.more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, op, data):
        n = len(data)
        head = bytes([0x80 | op]) + (bytes([0x80 | n]) if n < 126 else
                                     bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                     bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def message(self):
        data = b""
        while True:
            b0, b1 = self.take(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.take(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.take(8))[0]
            mask = self.take(4) if b1 & 0x80 else None
            payload = self.take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            op = b0 & 0x0F
            if op == 0x9:
                self.send(0xA, payload)
            elif op == 0x8:
                raise SystemExit("DevTools closed the session")
            elif op in (0x0, 0x1, 0x2):
                data += payload
                if b0 & 0x80:
                    return data

    def call(self, method, **params):
        self.next_id += 1
        self.send(0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            m = json.loads(self.message())
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise SystemExit(f"{method}: {m['error']}")
                return m.get("result", {})


def shot(devtools, url, out, wait, width, height):
    page = None
    for _ in range(50):
        with urllib.request.urlopen(f"http://{devtools}/json/list", timeout=10) as r:
            page = next((t for t in json.load(r) if t.get("type") == "page"), None)
        if page:
            break
        time.sleep(0.1)
    if not page:
        raise SystemExit("no page target in the browser")
    dt = DevTools(page["webSocketDebuggerUrl"])
    dt.call("Emulation.setDeviceMetricsOverride", width=int(width), height=int(height),
            deviceScaleFactor=1, mobile=False)
    dt.call("Page.navigate", url=url)
    time.sleep(float(wait))
    data = dt.call("Page.captureScreenshot", format="png")["data"]
    with open(out, "wb") as f:
        f.write(base64.b64decode(data))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
EOF
tool() { python3 "$TMP/tool.py" "$@"; }

read -r INNER ADMIN ECHO HTTP P_ECHO P_HTTP P_OFFICE < <(tool ports 7)

# Targets.
mkdir "$TMP/www"
head -c 300000 /dev/urandom >"$TMP/www/blob.bin"
start echo python3 "$TMP/tool.py" echo "$ECHO"
start http python3 -m http.server --bind 127.0.0.1 --directory "$TMP/www" "$HTTP"

# Server and clients.
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$TMP/forward_server.cfg" <<EOF
[DEFAULT]
INNER_PORT=$INNER
BIND_ADDR=127.0.0.1
ADMIN_ADDR=127.0.0.1:$ADMIN
TOKEN=$TOKEN
LOG_LEVEL=INFO
EOF
cat >"$TMP/port_mapper.cfg" <<EOF
[MAPPER]
$P_ECHO=127.0.0.1:$ECHO
$P_HTTP=127.0.0.1:$HTTP
$P_OFFICE=127.0.0.1:$ECHO
[TAG]
$P_OFFICE=office
EOF
start server "$BIN" server "$TMP/forward_server.cfg"
wait_log server "public port $P_OFFICE " 10
FINGERPRINT=$(grep -o 'fingerprint [0-9A-Fa-f:]*' "$TMP/server.log" | head -n 1 | cut -d' ' -f2)
[[ -n $FINGERPRINT ]] || { echo "the server logged no certificate fingerprint" >&2; exit 1; }
for tag in default office; do
    start "client-$tag" env TCP_FORWARD_TOKEN="$TOKEN" "$BIN" client 127.0.0.1 "$INNER" --tag "$tag" --fingerprint "$FINGERPRINT"
    wait_log "client-$tag" "tunnel up" 10
done
for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN") 2>/dev/null && break
    sleep 0.1
done
((i < 100)) || { echo "the admin API on 127.0.0.1:$ADMIN takes no connection" >&2; exit 1; }

# Traffic for the whole capture, then the page.
start traffic python3 "$TMP/tool.py" traffic $((WAIT + 10)) "$P_ECHO" "$P_HTTP" "$P_OFFICE"
start chromium "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --remote-debugging-port=0 --user-data-dir="$TMP/profile" --no-first-run \
    --no-default-browser-check --disable-background-networking --window-size=1280,800 about:blank
wait_log chromium "DevTools listening on ws://" 30
DEVTOOLS=$(grep -o 'ws://[^/]*' "$TMP/chromium.log" | head -n 1 | cut -c6-)

mkdir -p "$(dirname "$OUT")"
echo "capturing http://127.0.0.1:$ADMIN/ after $WAIT s ..." >&2
tool shot "$DEVTOOLS" "http://127.0.0.1:$ADMIN/" "$OUT" "$WAIT" 1280 800
echo "wrote $OUT" >&2
