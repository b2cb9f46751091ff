#!/usr/bin/env python3
"""Record tcp-forward's wire protocol into tests/fixtures/wire_v2/, for tests/wire_compat.rs.

A real `tcp-forward server` and `tcp-forward client` talk through a logging proxy on
loopback while a scenario drives visitors (connections to the server's public ports) and
targets (listeners the client connects). Everything goes into one timeline, in the order
it happened: each frame as it passed the proxy (logged before it was forwarded), and each
action of a visitor or target (logged before the action; what one receives, after). A few
scenarios play one side of the tunnel from here instead of a tcp-forward process (an old
or a newer protocol version, a foreign protocol, a server without the token's proof).

Random and time-dependent fields are written as names: {server_nonce}, {client_nonce},
{proof} and {server_proof} (checked here against the tokens), {ping_s1}... (PONG names
the PING it echoes), {port1}... (target ports). Bulk payloads are written as slices of a
seeded pattern ("pattern SEED @OFFSET +LEN", the byte stream of tests/common's
`send_pattern`), checked here against what passed. The format is described in
tests/fixtures/wire_v2/README.md.

Usage: scripts/record-wire.py [--bin PATH] [--out DIR] [SCENARIO ...]
  --bin PATH   tcp-forward binary (default target/release/tcp-forward)
  --out DIR    where the .wire files go (default tests/fixtures/wire_v2)
  --list       print the scenario names
With no SCENARIO, every scenario is recorded.
"""

import argparse
import hashlib
import hmac
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

MAGIC = b"TCPFWD"
KINDS = {
    0x01: "CHALLENGE",
    0x02: "HELLO",
    0x03: "ACCEPT",
    0x04: "REFUSE",
    0x10: "OPEN",
    0x11: "OPEN_OK",
    0x12: "OPEN_FAIL",
    0x13: "DATA",
    0x14: "CREDIT",
    0x15: "FIN",
    0x16: "RESET",
    0x20: "PING",
    0x21: "PONG",
    0x22: "GOAWAY",
}
DATA, CREDIT, PING, PONG = 0x13, 0x14, 0x20, 0x21
WINDOW = 1 << 20
WAIT = 10.0  # bound of every wait, seconds
M64 = (1 << 64) - 1


class RecordError(Exception):
    pass


# ----------------------------------------------------------------------------------------
# Pattern bytes: the same stream as tests/common `pattern` / `send_pattern` (splitmix64).
# ----------------------------------------------------------------------------------------

_patterns = {}


def pattern(seed, n):
    have = _patterns.get(seed, b"")
    if len(have) < n:
        out = bytearray(have)
        state = (seed + (len(have) // 8) * 0x9E3779B97F4A7C15) & M64
        while len(out) < n:
            state = (state + 0x9E3779B97F4A7C15) & M64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            out += struct.pack("<Q", z ^ (z >> 31))
        have = bytes(out)
        _patterns[seed] = have
    return have[:n]


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------


def quote(b):
    out = ['"']
    for c in b:
        if c == 0x0A:
            out.append("\\n")
        elif c == 0x0D:
            out.append("\\r")
        elif c == 0x09:
            out.append("\\t")
        elif c in (0x22, 0x5C):
            out.append("\\" + chr(c))
        elif 0x20 <= c < 0x7F and c != 0x7B:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    out.append('"')
    return "".join(out)


def texty(b):
    return all(0x20 <= c < 0x7F or c in (0x09, 0x0A, 0x0D) for c in b)


def hexs(b):
    return b.hex()


class Line:
    """One timeline entry; `text` is final unless `render` fills it in at the end."""

    def __init__(self, text="", **meta):
        self.text = text
        self.meta = meta
        self.render = None


class Timeline:
    def __init__(self):
        self.lines = []
        self.cv = threading.Condition()

    def add(self, line):
        with self.cv:
            self.lines.append(line)
            self.cv.notify_all()
        return line

    def wait(self, pred, what, n=1, timeout=WAIT):
        """Wait until at least `n` lines satisfy `pred`."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while sum(1 for line in self.lines if pred(line)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RecordError("timed out waiting for " + what)
                self.cv.wait(left)

    def count(self, pred):
        with self.cv:
            return sum(1 for line in self.lines if pred(line))


# ----------------------------------------------------------------------------------------
# The proxy: logs every frame of both directions, then forwards the bytes.
# ----------------------------------------------------------------------------------------


class Parser:
    """Splits one direction's bytes into preamble, frames (or raw bytes) and logs them.
    A DATA frame is logged when its header is complete: its payload is already on its way,
    and a receiver may pass it on (and return credit) before the last byte arrives."""

    def __init__(self, session, direction):
        self.s = session
        self.dir = direction
        self.buf = bytearray()
        self.mode = "start"
        self.data = None  # the DATA line whose payload is still arriving

    def feed(self, chunk):
        self.buf += chunk
        while True:
            if self.data is not None:
                need = self.data.meta["length"] - len(self.data.meta["payload"])
                take = min(need, len(self.buf))
                if take == 0:
                    return
                self.data.meta["payload"] += self.buf[:take]
                del self.buf[:take]
                if take == need:
                    self.data = None
                continue
            if not self.buf:
                return
            if self.mode == "start":
                if self.buf[0] == MAGIC[0]:
                    head = bytes(self.buf[:6])
                    if len(self.buf) < 8 and MAGIC.startswith(head):
                        return
                    if head == MAGIC:
                        pre = bytes(self.buf[:8])
                        del self.buf[:8]
                        self.s.log_preamble(self.dir, pre)
                        self.mode = "frames"
                        continue
                    self.mode = "raw"
                elif self.buf[0] in KINDS:
                    self.mode = "frames"
                else:
                    self.mode = "raw"
                continue
            if self.mode == "raw":
                self.s.tl.add(Line(f"{self.dir} RAW | {quote(bytes(self.buf))}", dir=self.dir))
                self.buf.clear()
                return
            if len(self.buf) < 8:
                return
            kind, flags, length, sid = struct.unpack(">BBHI", self.buf[:8])
            hlen = 8
            if kind == DATA and flags == 1:
                if len(self.buf) < 12:
                    return
                length = struct.unpack(">I", self.buf[8:12])[0]
                hlen = 12
            if kind == DATA:
                header = bytes(self.buf[:hlen])
                del self.buf[:hlen]
                self.data = self.s.log_data(self.dir, header, sid, length)
                continue
            if len(self.buf) < hlen + length:
                return
            header = bytes(self.buf[:hlen])
            payload = bytes(self.buf[hlen : hlen + length])
            del self.buf[: hlen + length]
            self.s.log_frame(self.dir, kind, sid, header, payload)


class Proxy:
    """Accepts one connection on `port` (the tunnel) and relays it to `upstream`."""

    def __init__(self, session, upstream_port):
        self.s = session
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.done = {}
        self.threads = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        self.listener.settimeout(WAIT)
        try:
            down, _ = self.listener.accept()
        except OSError:
            return
        finally:
            # One tunnel per session: a client's reconnects are refused.
            self.listener.close()
        up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=WAIT)
        for sock in (down, up):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
        for src, dst, d in ((up, down, "s>c"), (down, up, "c>s")):
            t = threading.Thread(target=self.pump, args=(src, dst, d), daemon=True)
            t.start()
            self.threads.append(t)

    def pump(self, src, dst, direction):
        parser = Parser(self.s, direction)
        end = "EOF"
        while True:
            try:
                chunk = src.recv(1 << 18)
            except ConnectionResetError:
                end = "RST"
                break
            if not chunk:
                break
            parser.feed(chunk)
            try:
                dst.sendall(chunk)
            except OSError:
                pass
        self.s.tl.add(Line(f"{direction} {end}", dir=direction, end=end))
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait_closed(self):
        self.s.tl.wait(lambda l: l.meta.get("end") and l.meta["dir"] == "s>c", "s>c EOF")
        self.s.tl.wait(lambda l: l.meta.get("end") and l.meta["dir"] == "c>s", "c>s EOF")


# ----------------------------------------------------------------------------------------
# Visitors and targets
# ----------------------------------------------------------------------------------------


class Actor:
    def __init__(self, session, name, sock):
        self.s = session
        self.name = name
        self.sock = sock
        sock.settimeout(WAIT)
        self.sent = 0

    def log(self, text):
        self.s.tl.add(Line(f"{self.name} {text}", actor=self.name))

    def send(self, data):
        self.log("send " + quote(data))
        self.sock.sendall(data)

    def send_pattern(self, seed, n, offset=0):
        self.log(f"send pattern {seed} @{offset} +{n}")
        self.sock.sendall(pattern(seed, offset + n)[offset:])

    def _recv_exact(self, n):
        got = bytearray()
        while len(got) < n:
            chunk = self.sock.recv(min(1 << 18, n - len(got)))
            if not chunk:
                raise RecordError(f"{self.name}: EOF after {len(got)} of {n} bytes")
            got += chunk
        return bytes(got)

    def recv(self, expect):
        got = self._recv_exact(len(expect))
        if got != expect:
            raise RecordError(f"{self.name}: received {got!r}, expected {expect!r}")
        self.log("recv " + quote(got))

    def recv_pattern(self, seed, n, offset=0):
        got = self._recv_exact(n)
        if got != pattern(seed, offset + n)[offset:]:
            raise RecordError(f"{self.name}: pattern {seed} @{offset} +{n} differs")
        self.log(f"recv pattern {seed} @{offset} +{n}")

    def eof(self):
        chunk = self.sock.recv(1)
        if chunk:
            raise RecordError(f"{self.name}: expected EOF, got {chunk!r}")
        self.log("eof")

    def sees_reset(self):
        try:
            chunk = self.sock.recv(1)
        except ConnectionResetError:
            self.log("sees-reset")
            return
        raise RecordError(f"{self.name}: expected a reset, got {chunk!r}")

    def shutdown(self):
        self.log("shutdown")
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self):
        self.log("reset")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# ----------------------------------------------------------------------------------------
# A recording session
# ----------------------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Session:
    def __init__(self, name, doc, binary, workdir):
        self.name = name
        self.doc = doc
        self.bin = binary
        self.dir = workdir
        self.tl = Timeline()
        self.directives = []
        self.procs = {}
        self.logs = {}
        self.ports = {}  # port number -> placeholder name
        self.patterns = {}  # (direction, stream id) -> seed
        self.offsets = {}
        self.pings = {}  # (direction, value) -> name
        self.ping_count = {"s>c": 0, "c>s": 0}
        self.server_token = None
        self.client_token = None
        self.tag = "default"
        self.nonces = {}
        self.targets = {}
        self.public = {}
        self.visitors = 0
        self.keep = []
        self.sides = "both"
        self.credit = "exact"
        self.proxy = None

    # -- logging of frames ---------------------------------------------------------------

    def log_preamble(self, direction, pre):
        version = struct.unpack(">H", pre[6:8])[0]
        self.tl.add(
            Line(
                f'{direction} PREAMBLE | "TCPFWD" {hexs(pre[6:8])}  # version {version}',
                dir=direction,
                kind="PREAMBLE",
            )
        )

    def known(self, name, value):
        """Keep a recorded value: the replay checks that its proofs of the recorded nonces
        are the recorded proofs."""
        line = f"@recorded {name} {hexs(value)}"
        if line not in self.directives:
            self.directives.append(line)

    def header_text(self, header):
        h = header
        parts = [hexs(h[0:1]), hexs(h[1:2]), hexs(h[2:4]), hexs(h[4:8])]
        if len(h) == 12:
            parts.append(hexs(h[8:12]))
        return " ".join(parts)

    def port_text(self, b):
        text = quote(b)
        for port, name in self.ports.items():
            text = text.replace(f":{port}\"", f":{{{name}}}\"")
        return text

    def log_frame(self, direction, kind, sid, header, payload):
        name = KINDS[kind]
        body, note = self.render_payload(direction, kind, payload)
        text = f"{direction} {name:<9} {self.header_text(header)}"
        if body:
            text += " | " + body
        if note:
            text += "  # " + note
        self.tl.add(Line(text, dir=direction, kind=name, id=sid, payload=payload))

    def log_data(self, direction, header, sid, length):
        line = Line(dir=direction, kind="DATA", id=sid, length=length, payload=bytearray())
        line.render = lambda: self.render_data(line, header)
        return self.tl.add(line)

    def render_data(self, line, header):
        d, sid, payload = line.meta["dir"], line.meta["id"], bytes(line.meta["payload"])
        if len(payload) != line.meta["length"]:
            raise RecordError(f"{d} DATA on stream {sid}: payload cut short")
        key = (d, sid)
        off = self.offsets.get(key, 0)
        self.offsets[key] = off + len(payload)
        seed = self.patterns.get(key)
        if seed is not None:
            if payload != pattern(seed, off + len(payload))[off:]:
                raise RecordError(f"{d} DATA on stream {sid} at {off} is not pattern {seed}")
            body = f"pattern {seed} @{off} +{len(payload)}"
        elif len(payload) > 512:
            raise RecordError(f"{d} DATA of {len(payload)} bytes without a pattern")
        else:
            body = quote(payload) if texty(payload) else hexs(payload)
        return f"{d} DATA      {self.header_text(header)} | {body}"

    def render_payload(self, d, kind, p):
        name = KINDS[kind]
        if name == "CHALLENGE" and len(p) == 33:
            self.nonces["server"] = p[1:]
            flag = "token required" if p[0] & 1 else "no token required"
            return f"{hexs(p[:1])} {{server_nonce}}", flag
        if name == "HELLO":
            window = p[0:4]
            tl = p[4]
            tag = p[5 : 5 + tl]
            nonce = p[5 + tl : 37 + tl]
            self.nonces["client"] = nonce
            plen = p[37 + tl]
            proof = p[38 + tl :]
            body = f"{hexs(window)} {hexs(p[4:5])} {quote(tag)} {{client_nonce}} {hexs(p[37 + tl:38 + tl])}"
            note = f"window {int.from_bytes(window, 'big')}, tag {tag.decode()}"
            if plen == 32:
                want = None
                if self.client_token is not None:
                    want = hmac.new(
                        self.client_token.encode(),
                        b"tcp-forward/1 client" + self.nonces["server"] + tag,
                        hashlib.sha256,
                    ).digest()
                if proof != want:
                    raise RecordError("HELLO proof does not match the client's token")
                self.known("server_nonce", self.nonces["server"])
                self.known("client_nonce", nonce)
                self.known("proof", proof)
                body += " {proof}"
                note += ", proof"
            else:
                note += ", no proof"
            return body, note
        if name == "ACCEPT":
            w, ms, hb = struct.unpack(">III", p[:12])
            body = f"{hexs(p[0:4])} {hexs(p[4:8])} {hexs(p[8:12])} {hexs(p[12:13])}"
            note = f"window {w}, max streams {ms}, heartbeat {hb} ms"
            if p[12] == 32:
                want = hmac.new(
                    (self.server_token or "").encode(),
                    b"tcp-forward/1 server"
                    + self.nonces["client"]
                    + self.nonces["server"]
                    + self.tag.encode(),
                    hashlib.sha256,
                ).digest()
                if p[13:] != want:
                    raise RecordError("ACCEPT proof does not match the server's token")
                self.known("server_proof", p[13:])
                body += " {server_proof}"
                note += ", proof"
            else:
                note += ", no proof"
            return body, note
        if name in ("REFUSE", "OPEN_FAIL", "RESET", "GOAWAY"):
            return quote(p), None
        if name == "OPEN":
            return self.port_text(p), None
        if name in ("OPEN_OK", "FIN"):
            return "", None
        if name == "CREDIT":
            return hexs(p), str(int.from_bytes(p, "big"))
        if name == "PING":
            self.ping_count[d] += 1
            var = f"ping_{d[0]}{self.ping_count[d]}"
            self.pings[(d, p)] = var
            return "{" + var + "}", None
        if name == "PONG":
            other = "c>s" if d == "s>c" else "s>c"
            var = self.pings.get((other, p))
            if var is None:
                raise RecordError(f"{d} PONG echoes no PING")
            return "{" + var + "}", None
        raise RecordError(f"cannot render a {name} payload of {len(p)} bytes")

    # -- set-up ----------------------------------------------------------------------------

    def setup(
        self,
        maps=(),
        server_token=None,
        client_token=None,
        tag=None,
        heartbeat=None,
        credit="exact",
    ):
        """maps: list of "listening" / "refused" / "named" (localhost) targets, by index."""
        self.server_token = server_token
        self.client_token = client_token
        self.credit = credit
        if tag:
            self.tag = tag
        d = self.directives
        d.append(f"@sides {self.sides}")
        if self.tag != "default":
            d.append(f"@tag {self.tag}")
        if server_token:
            d.append(f"@server-token {server_token}")
        if client_token:
            d.append(f"@client-token {client_token}")
        if heartbeat:
            d.append(f"@heartbeat {heartbeat}")
        if credit != "exact":
            d.append(f"@credit {credit}")
        self.map_targets = []
        for i, how in enumerate(maps, start=1):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            self.ports[port] = f"port{i}"
            host = "localhost" if how == "named" else "127.0.0.1"
            if how == "refused":
                self.keep.append(sock)  # bound, never listening: connections are refused
            else:
                sock.listen(4)
                threading.Thread(target=self.accept_target, args=(i, sock), daemon=True).start()
            self.map_targets.append(f"{host}:{port}")
            kind = " refused" if how == "refused" else ""
            d.append(f'@map {i} "{host}:{{port{i}}}"{kind}')

    def accept_target(self, i, sock):
        sock.settimeout(WAIT)
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        sock.close()
        name = f"target{i}"
        self.tl.add(Line(f"{name} accept", actor=name))
        with self.tl.cv:
            self.targets[i] = Actor(self, name, conn)
            self.tl.cv.notify_all()

    def target(self, i):
        deadline = time.monotonic() + WAIT
        with self.tl.cv:
            while i not in self.targets:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RecordError(f"target{i} was not connected")
                self.tl.cv.wait(left)
            return self.targets[i]

    def spawn(self, role, args, env_token=None):
        env = {k: v for k, v in os.environ.items() if k not in ("TCP_FORWARD_TOKEN", "RUST_LOG")}
        if env_token:
            env["TCP_FORWARD_TOKEN"] = env_token
        log = open(os.path.join(self.dir, role + ".log"), "wb")
        self.logs[role] = log.name
        self.procs[role] = subprocess.Popen(
            [self.bin, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env
        )

    def wait_log(self, role, needle):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with open(self.logs[role], "rb") as f:
                if needle.encode() in f.read():
                    return
            time.sleep(0.02)
        raise RecordError(f"{role} never logged {needle!r}")

    def start_server(self):
        inner = free_port()
        cfg = [f"INNER_PORT={inner}", "BIND_ADDR=127.0.0.1", "OUTER_PORTS_FILE=port_mapper.cfg"]
        if self.server_token:
            cfg.append(f"TOKEN={self.server_token}")
        for line in self.directives:
            if line.startswith("@heartbeat "):
                cfg.append("HEARTBEAT=" + line.split()[1])
        mapper = ["[MAPPER]"]
        for i, target in enumerate(self.map_targets, start=1):
            self.public[i] = free_port()
            mapper.append(f"{self.public[i]}={target}")
        if self.tag != "default" and self.map_targets:
            mapper.append("[TAG]")
            mapper += [f"{self.public[i]}={self.tag}" for i in self.public]
        with open(os.path.join(self.dir, "port_mapper.cfg"), "w") as f:
            f.write("\n".join(mapper) + "\n")
        path = os.path.join(self.dir, "server.cfg")
        with open(path, "w") as f:
            f.write("[DEFAULT]\n" + "\n".join(cfg) + "\n")
        self.spawn("server", ["server", path])
        self.wait_log("server", "listening for clients on")
        for i in self.public:
            self.wait_log("server", f"public port {self.public[i]} ")
        return inner

    def start_client(self, port):
        args = ["client", "127.0.0.1", str(port)]
        if self.tag != "default":
            args += ["--tag", self.tag]
        self.spawn("client", args, env_token=self.client_token)

    def run(self):
        """Both sides real: server, proxy, client."""
        inner = self.start_server()
        self.proxy = Proxy(self, inner)
        self.start_client(self.proxy.port)

    def run_fake_client(self):
        """A real server; the proxy's far end is ours to play: returns the socket."""
        inner = self.start_server()
        self.proxy = Proxy(self, inner)
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=WAIT)
        return sock

    def run_fake_server(self):
        """A real client; the server is ours to play: returns the accepted socket."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(WAIT)
        self.proxy = Proxy(self, listener.getsockname()[1])
        self.start_client(self.proxy.port)
        sock, _ = listener.accept()
        listener.close()
        sock.settimeout(WAIT)
        return sock

    def visitor(self, mapping):
        self.visitors += 1
        name = f"visitor{self.visitors}"
        self.tl.add(Line(f"{name} connect {mapping}", actor=name))
        sock = socket.create_connection(("127.0.0.1", self.public[mapping]), timeout=WAIT)
        return Actor(self, name, sock)

    def pattern_of(self, direction, sid, seed):
        self.patterns[(direction, sid)] = seed

    def frame_seen(self, direction, kind, n=1):
        def pred(line):
            return line.meta.get("dir") == direction and line.meta.get("kind") == kind

        self.tl.wait(pred, f"{n} {direction} {kind}", n)

    def established(self):
        self.frame_seen("s>c", "ACCEPT")

    def client_up(self):
        """Wait until the client has taken the ACCEPT in (nothing on the wire says so)."""
        self.wait_log("client", "tunnel up")
        self.tl.add(Line("client tunnel-up", actor="client"))

    def signal(self, role):
        self.tl.add(Line(f"{role} SIGTERM", actor=role))
        self.procs[role].send_signal(signal.SIGTERM)
        self.procs[role].wait(WAIT)

    def server_goaway(self):
        """The usual end: SIGTERM to the server, which says GOAWAY; both ends close."""
        self.signal("server")
        self.proxy.wait_closed()

    def close(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def text(self, version):
        out = [f"# {self.name}: {self.doc}"]
        out.append(f"# Recorded with scripts/record-wire.py from {version}.")
        out += self.directives
        for line in self.tl.lines:
            out.append(line.render() if line.render else line.text)
        return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------

SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def join_all(*fns):
    errors = []

    def wrap(f):
        try:
            f()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(f,)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * WAIT)
    if errors:
        raise errors[0]


@scenario
def handshake_token(s):
    """Handshake with a token (TOKEN= in the server's cfg, TCP_FORWARD_TOKEN for the client)
    and a tag: both proofs; then SIGTERM to the server: GOAWAY."""
    s.setup(server_token="s3cret-token", client_token="s3cret-token", tag="office")
    s.run()
    s.established()
    s.server_goaway()


@scenario
def echo(s):
    """Handshake without a token; one stream with short DATA both ways; the visitor's FIN
    first, then the target's."""
    s.setup(maps=["listening"])
    s.run()
    s.established()
    v = s.visitor(1)
    t = s.target(1)
    v.send(b"hello\n")
    t.recv(b"hello\n")
    t.send(b"hello\n")
    v.recv(b"hello\n")
    v.send(b"\x00\x01\x02\xfe\xff binary\r\n")
    t.recv(b"\x00\x01\x02\xfe\xff binary\r\n")
    t.send(b"\x00\x01\x02\xfe\xff binary\r\n")
    v.recv(b"\x00\x01\x02\xfe\xff binary\r\n")
    v.shutdown()
    t.eof()
    t.shutdown()
    v.eof()
    s.server_goaway()


@scenario
def target_fin_first(s):
    """The target speaks first and half-closes; the visitor answers after EOF, then closes."""
    s.setup(maps=["listening"])
    s.run()
    s.established()
    v = s.visitor(1)
    t = s.target(1)
    t.send(b"220 ready\r\n")
    t.shutdown()
    v.recv(b"220 ready\r\n")
    v.eof()
    v.send(b"QUIT\r\n")
    t.recv(b"QUIT\r\n")
    v.shutdown()
    t.eof()
    s.server_goaway()


@scenario
def early_data(s):
    """A visitor's request and FIN leave right after OPEN, before OPEN_OK (the target is
    named, so the client resolves it first); the reply follows the connect."""
    s.setup(maps=["named"])
    s.run()
    s.established()
    v = s.visitor(1)
    v.send(b"GET / HTTP/1.0\r\n\r\n")
    v.shutdown()
    t = s.target(1)
    t.recv(b"GET / HTTP/1.0\r\n\r\n")
    t.eof()
    t.send(b"HTTP/1.0 200 OK\r\n\r\nhi")
    t.shutdown()
    v.recv(b"HTTP/1.0 200 OK\r\n\r\nhi")
    v.eof()
    s.server_goaway()
    kinds = [(l.meta.get("dir"), l.meta.get("kind")) for l in s.tl.lines]
    if kinds.index(("s>c", "DATA")) > kinds.index(("c>s", "OPEN_OK")):
        raise RecordError("the request did not leave before OPEN_OK: record again")


@scenario
def bulk(s):
    """2 MiB (and 17 bytes) up and 2 MiB down at once: long DATA frames, CREDIT frames
    (their amounts follow the chunking, so the replay checks the batching rule)."""
    s.setup(maps=["listening"], credit="batched")
    s.run()
    s.established()
    up, down = 2 * WINDOW + 17, 2 * WINDOW
    s.pattern_of("s>c", 1, 11)
    s.pattern_of("c>s", 1, 12)
    v = s.visitor(1)
    t = s.target(1)

    def upload():
        v.send_pattern(11, up)
        v.shutdown()

    def download():
        t.send_pattern(12, down)
        t.shutdown()

    def target_reads():
        t.recv_pattern(11, up)
        t.eof()

    def visitor_reads():
        v.recv_pattern(12, down)
        v.eof()

    join_all(upload, download, target_reads, visitor_reads)
    s.server_goaway()
    if s.tl.count(lambda l: l.meta.get("kind") == "DATA" and l.meta.get("length", 0) > 65535) == 0:
        raise RecordError("no long DATA frame: record again")


@scenario
def paced_credit(s):
    """1 MiB up, then 1 MiB down, 16 KiB at a time, each after the previous one arrived:
    every write is whole, so every CREDIT is exactly a quarter window."""
    s.setup(maps=["listening"])
    s.run()
    s.established()
    step, total = 16 * 1024, WINDOW
    s.pattern_of("s>c", 1, 21)
    s.pattern_of("c>s", 1, 22)
    v = s.visitor(1)
    t = s.target(1)
    for off in range(0, total, step):
        v.send_pattern(21, step, off)
        t.recv_pattern(21, step, off)
    for off in range(0, total, step):
        t.send_pattern(22, step, off)
        v.recv_pattern(22, step, off)
    v.shutdown()
    t.eof()
    t.shutdown()
    v.eof()
    s.server_goaway()
    credits = [l.meta["payload"] for l in s.tl.lines if l.meta.get("kind") == "CREDIT"]
    if credits != [struct.pack(">I", WINDOW // 4)] * 8:
        raise RecordError(f"credits {credits}: record again")


@scenario
def visitor_reset(s):
    """The visitor resets its connection (SO_LINGER 0): RESET to the client, which resets
    the target."""
    s.setup(maps=["listening"])
    s.run()
    s.established()
    v = s.visitor(1)
    t = s.target(1)
    v.send(b"abc")
    t.recv(b"abc")
    v.reset()
    t.sees_reset()
    s.server_goaway()


@scenario
def target_reset(s):
    """The target resets its connection: RESET to the server, which resets the visitor."""
    s.setup(maps=["listening"])
    s.run()
    s.established()
    v = s.visitor(1)
    t = s.target(1)
    v.send(b"abc")
    t.recv(b"abc")
    t.reset()
    v.sees_reset()
    s.server_goaway()


@scenario
def open_refused(s):
    """The target refuses the connection: OPEN_FAIL with the reason; the visitor is closed."""
    s.setup(maps=["refused"])
    s.run()
    s.established()
    v = s.visitor(1)
    v.eof()
    s.server_goaway()


@scenario
def two_streams(s):
    """Two visitors on two ports at once: stream ids 1 and 2, frames of both interleaved."""
    s.setup(maps=["listening", "listening"])
    s.run()
    s.established()
    v1 = s.visitor(1)
    t1 = s.target(1)
    v2 = s.visitor(2)
    t2 = s.target(2)
    v1.send(b"one\n")
    v2.send(b"two\n")
    t1.recv(b"one\n")
    t2.recv(b"two\n")
    t2.send(b"2\n")
    t1.send(b"1\n")
    v1.recv(b"1\n")
    v2.recv(b"2\n")
    t2.shutdown()
    v2.eof()
    v1.shutdown()
    t1.eof()
    v2.shutdown()
    t2.eof()
    t1.shutdown()
    v1.eof()
    s.server_goaway()


@scenario
def heartbeat(s):
    """HEARTBEAT=0.1: both ends PING every 100 ms and answer PONG with the PING's bytes."""
    s.setup(heartbeat="0.1")
    s.run()
    s.established()
    for d in ("s>c", "c>s"):
        s.frame_seen(d, "PING", 2)
        s.frame_seen(d, "PONG", 2)
    s.server_goaway()


@scenario
def client_goaway(s):
    """SIGTERM to the client: GOAWAY from the client."""
    s.setup(maps=["listening"])
    s.run()
    s.established()
    s.client_up()
    s.signal("client")
    s.proxy.wait_closed()


@scenario
def wrong_token(s):
    """A client with the wrong token is refused."""
    s.setup(server_token="s3cret-token", client_token="wr0ng-token")
    s.run()
    s.proxy.wait_closed()


@scenario
def missing_token(s):
    """A client without a token is refused by a server that requires one."""
    s.setup(server_token="s3cret-token")
    s.run()
    s.proxy.wait_closed()


def hang_up_after_peer(s, sock):
    """Read the stand-in side's socket to the real side's close, then close it too."""
    while sock.recv(4096):
        pass
    sock.shutdown(socket.SHUT_WR)
    s.proxy.wait_closed()
    sock.close()


@scenario
def old_version_client(s):
    """A client speaking version 1 is refused, naming both versions."""
    s.sides = "server"
    s.setup()
    sock = s.run_fake_client()
    s.frame_seen("s>c", "CHALLENGE")
    sock.sendall(MAGIC + struct.pack(">H", 1))
    s.frame_seen("s>c", "REFUSE")
    hang_up_after_peer(s, sock)


@scenario
def new_version_server(s):
    """A server speaking version 3: the client refuses it, naming both versions, before
    sending a preamble of its own."""
    s.sides = "client"
    s.setup()
    sock = s.run_fake_server()
    sock.sendall(MAGIC + struct.pack(">H", 3))
    s.frame_seen("c>s", "REFUSE")
    hang_up_after_peer(s, sock)


@scenario
def not_a_peer(s):
    """Bytes of another protocol on the tunnel port: the server closes without a word."""
    s.sides = "server"
    s.setup()
    sock = s.run_fake_client()
    s.frame_seen("s>c", "CHALLENGE")
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    hang_up_after_peer(s, sock)


@scenario
def unproven_server(s):
    """A server that accepts without proving the token: the client closes the tunnel."""
    s.sides = "client"
    s.setup(client_token="s3cret-token")
    sock = s.run_fake_server()
    nonce = os.urandom(32)
    challenge = b"\x01" + nonce
    sock.sendall(MAGIC + struct.pack(">H", 2) + struct.pack(">BBHI", 0x01, 0, len(challenge), 0) + challenge)
    s.frame_seen("c>s", "HELLO")
    accept = struct.pack(">IIIB", WINDOW, 4096, 10000, 0)
    sock.sendall(struct.pack(">BBHI", 0x03, 0, len(accept), 0) + accept)
    s.tl.wait(lambda l: l.meta.get("end") and l.meta["dir"] == "c>s", "c>s EOF")
    sock.shutdown(socket.SHUT_WR)
    s.proxy.wait_closed()
    sock.close()


# ----------------------------------------------------------------------------------------


def main():
    # Short thread switches: the proxy logs frames close to when they pass.
    sys.setswitchinterval(1e-4)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(root, "target/release/tcp-forward"))
    ap.add_argument("--out", default=os.path.join(root, "tests/fixtures/wire_v2"))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("scenarios", nargs="*")
    args = ap.parse_args()
    by_name = {f.__name__: f for f in SCENARIOS}
    if args.list:
        print("\n".join(by_name))
        return 0
    names = args.scenarios or list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print("unknown scenario(s): " + " ".join(unknown), file=sys.stderr)
        return 2
    version = subprocess.run([args.bin, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for name in names:
        fn = by_name[name]
        doc = " ".join(fn.__doc__.split())
        with tempfile.TemporaryDirectory(prefix="record-wire-") as tmp:
            s = Session(name, doc, args.bin, tmp)
            try:
                fn(s)
                text = s.text(version)
            except (RecordError, OSError) as e:
                failed += 1
                print(f"{name}: FAILED: {e}", file=sys.stderr)
                for role, path in s.logs.items():
                    with open(path, "rb") as f:
                        tail = f.read().decode(errors="replace").splitlines()[-10:]
                    print(f"--- {role} log:\n" + "\n".join(tail), file=sys.stderr)
                continue
            finally:
                s.close()
        path = os.path.join(args.out, name + ".wire")
        with open(path, "w") as f:
            f.write(text)
        print(f"{name}: {len(s.tl.lines)} lines -> {os.path.relpath(path, root)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
