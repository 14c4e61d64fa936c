//! CRC-32C per call and per byte, crc-fast (as walsink_wal::crc uses it) against the crc32c crate:
//! `cargo run --release -p walsink-wal --example crc_speed`.

/// This thread's time on a CPU, in nanoseconds (the machine is shared: wall time says little).
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn time(n: usize, mut f: impl FnMut() -> u32) -> f64 {
    let t = cpu_ns();
    let mut c = 0;
    for _ in 0..n {
        c ^= f();
    }
    std::hint::black_box(c);
    (cpu_ns() - t) as f64 / n as f64
}

fn main() {
    for size in [20usize, 64, 200, 1024, 8192, 128 << 10] {
        let data = vec![7u8; size];
        let n = ((256usize << 20) / size).max(1000);
        let append = time(n, || {
            walsink_wal::crc::crc_append(1, std::hint::black_box(&data))
        });
        let oneshot = time(n, || walsink_wal::crc::crc32c(std::hint::black_box(&data)));
        let other = time(n, || crc32c::crc32c_append(1, std::hint::black_box(&data)));
        println!(
            "{size:>7} B: append {append:.1} ns, one-shot {oneshot:.1} ns ({:.1} GiB/s); crc32c crate {other:.1} ns",
            size as f64 / oneshot
        );
    }
}
