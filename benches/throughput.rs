//! `cargo bench`: the frame codec, the tunnel engine in memory (two sessions, no sockets),
//! and an end-to-end loopback tunnel against direct loopback in the same run.

use std::hint::black_box;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use tcp_forward::bench::Harness;
use tcp_forward::protocol::frame::{self, Frame, HEADER_LEN};
use tcp_forward::protocol::session::{
    ClientParams, Event, Input, STREAM_WINDOW, ServerParams, Session, Transmit,
};

const PAYLOAD: usize = 65_535;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let payload = vec![0x5a; PAYLOAD];
    let frames = 64;
    g.throughput(Throughput::Bytes((frames * PAYLOAD) as u64));
    let mut wire = Vec::with_capacity(frames * (PAYLOAD + HEADER_LEN));
    g.bench_function("encode 64 KiB DATA", |b| {
        b.iter(|| {
            wire.clear();
            for id in 0..frames as u32 {
                frame::encode(
                    &Frame::Data {
                        id: id + 1,
                        payload: &payload,
                    },
                    &mut wire,
                );
            }
            black_box(wire.len())
        })
    });
    g.bench_function("decode 64 KiB DATA", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut bytes = 0;
            while let Ok(Some((f, n))) = frame::decode(&wire[at..]) {
                if let Frame::Data { payload, .. } = f {
                    bytes += payload.len();
                }
                at += n;
            }
            black_box(bytes)
        })
    });
    // Small control frames: what a busy tunnel decodes between data.
    let mut small = Vec::new();
    for id in 1..=1024u32 {
        frame::encode(&Frame::Credit { id, bytes: 262_144 }, &mut small);
    }
    g.throughput(Throughput::Elements(1024));
    g.bench_function("decode CREDIT frames", |b| {
        b.iter(|| {
            let mut at = 0;
            while let Ok(Some((_, n))) = frame::decode(&small[at..]) {
                at += n;
            }
            black_box(at)
        })
    });
    g.finish();
}

/// Move everything `from` has queued into `to`'s inbox.
fn transmit(from: &mut Session<u32>, to: &mut Vec<u8>) {
    while let Transmit::Bytes(b) = from.poll_transmit() {
        let n = b.len();
        to.extend_from_slice(b);
        from.transmitted(n);
    }
}

/// Decode `inbox` into `s`: accept and connect opened streams, deliver data at once (its
/// credit goes back), and return the payload bytes seen.
fn receive(s: &mut Session<u32>, inbox: &mut Vec<u8>, now: Instant) -> usize {
    let mut at = 0;
    let mut bytes = 0;
    loop {
        let (used, input) = s.handle_rx(&inbox[at..], now);
        at += used;
        match input {
            Input::NeedMore => break,
            Input::Data { id, parts, .. } => {
                let n = black_box(parts).total();
                bytes += n;
                s.delivered(id, n);
            }
            Input::Event(Event::Open { id, .. }) => {
                s.accept_open(id, id, false)
                    .expect("within the stream limit");
                s.stream_connected(id);
            }
            Input::Event(_) => {}
        }
    }
    inbox.drain(..at);
    assert!(s.close_reason().is_none(), "the sessions stay up");
    bytes
}

/// Two real engines in memory, no sockets: the server's session sends `total` bytes spread
/// over `streams` streams, filling its output queue in place as a relay's read would, as
/// credit and room allow; the client's session decodes, "delivers" and returns credit.
fn mux_transfer(streams: usize, total: usize) -> usize {
    let now = Instant::now();
    let sp = Arc::new(ServerParams {
        token: Some(b"bench".to_vec()),
        require_tls: false,
        max_streams: streams,
        heartbeat: Duration::from_secs(10),
        window: STREAM_WINDOW,
    });
    let cp = Arc::new(ClientParams {
        token: Some(b"bench".to_vec()),
        tag: "default".into(),
        window: STREAM_WINDOW,
    });
    let mut server: Session<u32> = Session::server(sp, [1; 32], now);
    let mut client: Session<u32> = Session::client(cp, [2; 32], now);
    let (mut to_client, mut to_server) = (Vec::with_capacity(1 << 21), Vec::new());
    for _ in 0..3 {
        transmit(&mut server, &mut to_client);
        receive(&mut client, &mut to_client, now);
        transmit(&mut client, &mut to_server);
        receive(&mut server, &mut to_server, now);
    }
    assert!(server.is_established() && client.is_established());
    let ids: Vec<u32> = (1..=streams as u32)
        .map(|h| server.open_stream(h, "127.0.0.1:9", None).expect("open"))
        .collect();
    let chunk = vec![0x42u8; PAYLOAD];
    let (mut sent, mut delivered) = (0, 0);
    while delivered < total {
        // The server: round-robin over streams, one frame each per turn, while credit and
        // room last.
        for &id in &ids {
            let want = PAYLOAD.min(total - sent);
            if want == 0 {
                break;
            }
            if let Some(mut room) = server.data_room(id, want) {
                let n = room.len();
                room.buf().copy_from_slice(&chunk[..n]);
                room.commit(n);
                sent += n;
            }
        }
        transmit(&mut server, &mut to_client);
        delivered += receive(&mut client, &mut to_client, now);
        transmit(&mut client, &mut to_server);
        receive(&mut server, &mut to_server, now);
    }
    delivered
}

fn mux(c: &mut Criterion) {
    let mut g = c.benchmark_group("mux in memory");
    let total = 32 << 20;
    g.throughput(Throughput::Bytes(total as u64));
    for streams in [1usize, 64] {
        g.bench_with_input(BenchmarkId::new("streams", streams), &streams, |b, &s| {
            b.iter(|| mux_transfer(s, total))
        });
    }
    g.finish();
}

/// Write `bytes` to `addr` (a sink) on one connection and wait for the sink's count.
fn upload(addr: std::net::SocketAddr, bytes: usize, buf: &[u8]) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        s.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    // The sink closes after reading everything: wait for that, so the bytes really arrived.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
}

fn end_to_end(c: &mut Criterion) {
    let exe = Path::new(env!("CARGO_BIN_EXE_tcp-forward"));
    let harness = match Harness::start(exe) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("SKIP end-to-end bench: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("loopback upload 64 MiB");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let bytes = 64 << 20;
    let buf = vec![0x17u8; 256 * 1024];
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("direct", |b| {
        b.iter(|| upload(harness.sink(false), bytes, &buf))
    });
    g.bench_function("tunnel", |b| {
        b.iter(|| upload(harness.sink(true), bytes, &buf))
    });
    g.finish();
}

criterion_group!(benches, codec, mux, end_to_end);
criterion_main!(benches);
