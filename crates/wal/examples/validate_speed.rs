//! Throughput of the WAL validator over made-up WAL: `cargo run --release -p walsink-wal --example validate_speed`.
use std::time::Instant;

use walsink_wal::synth::{PG18, SynthParams, SynthWal};
use walsink_wal::validate::{ValidatorConfig, WalValidator};
use walsink_wal::{Lsn, WalSegSize};

/// This thread's time on a CPU, in nanoseconds (the machine is shared: wall time says little).
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn main() {
    let seg = WalSegSize::new(16 << 20).unwrap();
    let p = SynthParams {
        seg,
        format: PG18,
        system_id: 1,
        tli: 1,
    };
    let only: Option<usize> = std::env::var("VALIDATE_SPEED_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    for sizes in [
        &[40usize, 60, 120][..],
        &[100, 300, 2000][..],
        &[8000, 8200][..],
        &[1 << 20][..],
    ] {
        if only.is_some_and(|o| o != sizes[0]) {
            continue;
        }
        let mut w = SynthWal::new(p, Lsn(seg.bytes()));
        w.fill(Lsn(seg.bytes() * 5 - 100_000), sizes);
        let data = w.bytes();
        // VALIDATE_SPEED_REPS=50 for profiling (perf record).
        let reps: usize = std::env::var("VALIDATE_SPEED_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let t = Instant::now();
        let c0 = cpu_ns();
        for _ in 0..reps {
            let mut v = WalValidator::new(
                ValidatorConfig {
                    seg,
                    system_id: Some(1),
                    format: Some(PG18),
                },
                1,
                Lsn(seg.bytes()),
            );
            for c in data.chunks(128 << 10) {
                v.feed(c).unwrap();
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu = (cpu_ns() - c0) as f64 / 1e9;
        let gib = (data.len() * reps) as f64 / (1u64 << 30) as f64;
        println!(
            "record payloads {sizes:?}: {:.2} GiB/s of CPU time ({:.3} CPU-s/GiB; wall {:.2} GiB/s)",
            gib / cpu,
            cpu / gib,
            gib / secs
        );
    }
}
