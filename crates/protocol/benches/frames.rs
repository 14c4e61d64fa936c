//! Frame decoding on the receive hot path: splitting CopyData frames off the read buffer
//! and parsing their XLogData headers, without copying the WAL bytes.
//!
//! `cargo bench -p walsink-protocol --bench frames`

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walsink_protocol::copy::{ReplicationMessage, parse_replication_message};
use walsink_protocol::frame::{BackendMessage, decode};

/// A read buffer holding `n` XLogData frames of `payload` WAL bytes each.
fn stream(n: usize, payload: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(n * (payload + 30));
    for i in 0..n {
        b.put_u8(b'd');
        b.put_u32((4 + 25 + payload) as u32);
        b.put_u8(b'w');
        b.put_u64((i * payload) as u64);
        b.put_u64(((i + 1) * payload) as u64);
        b.put_i64(0);
        b.put_bytes(0x5a, payload);
    }
    b
}

fn decode_all(mut buf: BytesMut) -> usize {
    let mut total = 0;
    while let Some(m) = decode(&mut buf).expect("valid frames") {
        let BackendMessage::CopyData(payload) = m else {
            unreachable!()
        };
        match parse_replication_message(payload).expect("valid XLogData") {
            ReplicationMessage::XLogData { data, .. } => total += data.len(),
            ReplicationMessage::Keepalive { .. } => {}
        }
    }
    total
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_xlogdata");
    for (label, n, payload) in [
        ("128KiB_frames", 64, 128 << 10),
        ("8KiB_frames", 1024, 8 << 10),
        ("200B_frames", 16384, 200),
    ] {
        let input = stream(n, payload);
        g.throughput(Throughput::Bytes((n * payload) as u64));
        g.bench_function(label, |b| {
            b.iter_batched(
                || input.clone(),
                |buf| black_box(decode_all(buf)),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
