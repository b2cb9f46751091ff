//! `cargo bench`: the frame codec, the multiplexer in memory (two peers, no sockets), and an
//! end-to-end loopback tunnel against direct loopback in the same run.

use std::hint::black_box;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use tcp_forward::bench::Harness;
use tcp_forward::protocol::flow::Flow;
use tcp_forward::protocol::frame::{self, Frame, HEADER_LEN};

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

/// Two peers in memory: A sends `total` bytes spread over `streams` streams, in frames, as
/// credit allows; B decodes, "delivers" and returns credit. Bytes/s of the protocol layer.
fn mux_transfer(streams: usize, total: usize, window: u32) -> usize {
    let chunk = vec![0x42u8; PAYLOAD];
    let mut senders: Vec<Flow> = (0..streams).map(|_| Flow::new(window, window)).collect();
    let mut receivers: Vec<Flow> = (0..streams).map(|_| Flow::new(window, window)).collect();
    let mut to_b = Vec::with_capacity(1 << 20);
    let mut to_a = Vec::with_capacity(1 << 16);
    let mut sent = 0;
    let mut delivered = 0;
    while delivered < total {
        // A: round-robin over streams, one frame each per turn, while credit lasts.
        for (i, f) in senders.iter_mut().enumerate() {
            let n = f.send_credit().min(PAYLOAD).min(total - sent);
            if n == 0 {
                continue;
            }
            f.on_sent(n);
            sent += n;
            frame::encode(
                &Frame::Data {
                    id: i as u32 + 1,
                    payload: &chunk[..n],
                },
                &mut to_b,
            );
        }
        // B: decode everything, deliver, return credit.
        let mut at = 0;
        while let Ok(Some((f, n))) = frame::decode(&to_b[at..]) {
            at += n;
            if let Frame::Data { id, payload } = f {
                let r = &mut receivers[id as usize - 1];
                r.on_received(payload.len()).expect("within window");
                delivered += black_box(payload).len();
                if let Some(credit) = r.on_delivered(payload.len()) {
                    frame::encode(&Frame::Credit { id, bytes: credit }, &mut to_a);
                }
            }
        }
        to_b.clear();
        // A: take the credit back.
        let mut at = 0;
        while let Ok(Some((f, n))) = frame::decode(&to_a[at..]) {
            at += n;
            if let Frame::Credit { id, bytes } = f {
                senders[id as usize - 1]
                    .on_credit(bytes)
                    .expect("within window");
            }
        }
        to_a.clear();
    }
    delivered
}

fn mux(c: &mut Criterion) {
    let mut g = c.benchmark_group("mux in memory");
    let total = 32 << 20;
    g.throughput(Throughput::Bytes(total as u64));
    for streams in [1usize, 64] {
        g.bench_with_input(BenchmarkId::new("streams", streams), &streams, |b, &s| {
            b.iter(|| mux_transfer(s, total, 1 << 20))
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
