use std::time::Instant;
fn main() {
    for size in [20usize, 64, 1024, 8192, 128 << 10] {
        let data = vec![7u8; size];
        let n = (1usize << 30) / size;
        let t = Instant::now();
        let mut c = 0;
        for _ in 0..n {
            c = walsink_wal::crc::crc_append(c, &data);
        }
        let s = t.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let mut c2 = 0;
        for _ in 0..n {
            c2 = crc32c::crc32c_append(c2, &data);
        }
        let s2 = t2.elapsed().as_secs_f64();
        assert_eq!(c, c2);
        println!(
            "{size:>7} B: crc-fast {:.1} ns/call {:.2} GiB/s; crc32c {:.1} ns/call {:.2} GiB/s",
            s * 1e9 / n as f64,
            (n * size) as f64 / s / (1u64 << 30) as f64,
            s2 * 1e9 / n as f64,
            (n * size) as f64 / s2 / (1u64 << 30) as f64
        );
    }
}
