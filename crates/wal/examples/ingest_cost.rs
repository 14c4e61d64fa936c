//! What WAL validation costs at ingest, per GiB, measured directly: real WAL segments (a
//! directory of 16 MiB segment files, e.g. an archive kept by `KEEP=1 benches/verify.sh`) are cut
//! into messages of the size the server sends (128 KiB, `MAX_SEND_SIZE`), each copied into a
//! receive buffer as the network read does, then either validated (`WalValidator::feed`) or not.
//! Both alternate, REPS times, in one run; CPU is this thread's own (schedstat), so other load on
//! the machine adds little. The validator's cost is the difference.
//!
//! `cargo run --release -p walsink-wal --example ingest_cost -- DIR [REPS] [MESSAGE_BYTES]`
use std::io::Read;

use walsink_wal::validate::{ValidatorConfig, WalValidator};
use walsink_wal::{Lsn, WalSegSize};

/// This thread's time on a CPU, in nanoseconds.
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: ingest_cost DIR [REPS] [MSG]"));
    let reps: usize = args.next().map_or(5, |a| a.parse().unwrap());
    let msg: usize = args.next().map_or(128 << 10, |a| a.parse().unwrap());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    let seg = WalSegSize::new(16 << 20).unwrap();
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&names[0][r], 16).unwrap();
    let first = (hex(8..16) << 32) + hex(16..24) * seg.bytes();
    // The WAL in memory (not in the CPU caches: it is much larger), as the server's socket
    // buffers hold it before the receiver reads it.
    let mut wal = Vec::new();
    for n in &names {
        std::fs::File::open(dir.join(n))
            .unwrap()
            .read_to_end(&mut wal)
            .unwrap();
    }
    let gib = wal.len() as f64 / f64::from(1u32 << 30);
    println!(
        "{} segments, {gib:.2} GiB, messages of {msg} bytes, {reps} repetitions",
        names.len()
    );
    let mut buf = vec![0u8; msg];
    let mut with = Vec::new();
    let mut without = Vec::new();
    for rep in 0..reps {
        for validate in [true, false] {
            let mut v = WalValidator::new(
                ValidatorConfig {
                    seg,
                    system_id: None,
                    format: None,
                },
                1,
                Lsn(first),
            );
            let t = cpu_ns();
            for m in wal.chunks(msg) {
                let b = &mut buf[..m.len()];
                b.copy_from_slice(m);
                if validate && v.feed(b).is_err() {
                    // The WAL after the end of what was written (a .partial's zeros).
                    break;
                }
                std::hint::black_box(&b);
            }
            let s = (cpu_ns() - t) as f64 / 1e9 / gib;
            if validate {
                with.push(s);
                println!(
                    "rep {rep}: with validation {s:.3} CPU-s/GiB ({} records)",
                    v.records()
                );
            } else {
                without.push(s);
                println!("rep {rep}: without        {s:.3} CPU-s/GiB");
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, wo) = (med(&mut with), med(&mut without));
    println!(
        "median: with {w:.3}, without {wo:.3} CPU-s/GiB: validation costs {:.3} CPU-s/GiB",
        w - wo
    );
}
