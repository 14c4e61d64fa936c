//! The segment writer without the disk's flush cost: 16 MiB segments written in 128 KiB
//! messages (the walsender's largest) with `SyncMode::NoSync`, into a directory on
//! /dev/shm when there is one. Measures the writer's own overhead: positions, segment
//! opening from prepared files, completion renames.
//!
//! `cargo bench -p walsink-archive --bench writer`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walsink_archive::{Archive, SyncMode};
use walsink_wal::{Lsn, TimelineId, WalSegSize};

const SEGMENTS: u64 = 4;

fn bench(c: &mut Criterion) {
    let seg = WalSegSize::DEFAULT;
    let chunk = vec![0x5au8; 128 << 10];
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let mut g = c.benchmark_group("segment_writer");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SEGMENTS * seg.bytes()));
    g.bench_function("nosync_4x16MiB_in_128KiB_writes", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(base).expect("temp dir"),
            |dir| {
                let mut archive = Archive::open(dir.path(), SyncMode::NoSync).expect("open");
                archive.check_identity(1, seg).expect("pin");
                let mut w = archive.segment_writer(seg).expect("writer");
                let tli = TimelineId::ONE;
                let mut pos = Lsn(seg.bytes());
                w.reset_position(tli, pos);
                for _ in 0..(SEGMENTS * seg.bytes() / chunk.len() as u64) {
                    w.write(tli, pos, &chunk).expect("write");
                    pos = Lsn(pos.0 + chunk.len() as u64);
                }
                black_box(w.flush().expect("flush"));
                drop(w);
                dir
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
