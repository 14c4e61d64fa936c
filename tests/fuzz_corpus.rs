//! The fuzz corpora replayed as ordinary tests, on stable Rust and without libFuzzer.
//!
//! Every file in `fuzz/corpus/<target>/` (seeds and inputs the fuzzer found) and in
//! `fuzz/regressions/<target>/` (inputs that once crashed a target, minimized) goes
//! through the very function the libFuzzer binary calls (`fuzz/src/lib.rs`, included
//! below), so a crash found once stays fixed. `seed_corpus_is_committed` also keeps the
//! seeds in step with the generator at the end of this file:
//! `WALSINK_WRITE_FUZZ_SEEDS=1 cargo test -p walsink --test fuzz_corpus seed_corpus`
//! rewrites them.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .canonicalize()
        .expect("fuzz/ directory")
}

fn body(target: &str) -> targets::Body {
    targets::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"))
        .1
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("read corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs `inputs` through `target`'s body; returns those that panic.
fn panicking(target: &str, inputs: &[PathBuf]) -> Vec<String> {
    let f = body(target);
    let mut failed = Vec::new();
    for path in inputs {
        let data = std::fs::read(path).expect("read corpus file");
        if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    failed
}

/// Runs every corpus and regression input of `target`; fails naming each input that
/// panics. The seed corpus must not be empty.
fn replay(target: &str) {
    let corpus = files_in(&fuzz_dir().join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ has no inputs: run the seed generator (see the top of this file)"
    );
    let mut inputs = corpus;
    inputs.extend(files_in(&fuzz_dir().join("regressions").join(target)));
    let failed = panicking(target, &inputs);
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs panic:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { replay(stringify!($name)); })*
        /// The list above covers every target.
        const REPLAYED: &[&str] = &[$(stringify!($name)),*];
    };
}

replay_tests!(
    backend_frames,
    replication_message,
    conninfo,
    history_file,
    startup,
    query_collector,
    meta,
    session,
    wal_validate,
);

/// Every `[[bin]]` in fuzz/Cargo.toml is a target here and is replayed, and every corpus
/// or regression directory belongs to a target: none is silently skipped.
#[test]
fn every_target_is_replayed() {
    let names: BTreeSet<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, REPLAYED.iter().copied().collect());
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let bins: BTreeSet<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
        .map(|n| n.trim_matches('"'))
        .collect();
    assert_eq!(
        bins, names,
        "fuzz/Cargo.toml [[bin]]s vs. fuzz/src/lib.rs TARGETS"
    );
    for kind in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(fuzz_dir().join(kind)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.starts_with('.') {
                continue;
            }
            assert!(
                names.contains(name.as_str()),
                "fuzz/{kind}/{name} has no target"
            );
        }
    }
}

/// The generated seeds are committed, byte for byte (or written, with
/// `WALSINK_WRITE_FUZZ_SEEDS=1`).
#[test]
fn seed_corpus_is_committed() {
    let write = std::env::var_os("WALSINK_WRITE_FUZZ_SEEDS").is_some();
    let mut missing = Vec::new();
    for (target, name, data) in seeds::all() {
        assert!(
            REPLAYED.contains(&target),
            "seed for unknown target {target}"
        );
        let dir = fuzz_dir().join("corpus").join(target);
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &data).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&data[..]) {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "seeds missing or different (regenerate them, see the top of this file):\n{}",
        missing.join("\n")
    );
}

/// Realistic inputs for each target, built from the protocol's and the files' formats
/// with the values a PostgreSQL 15 server and a walsink archive really produce.
mod seeds {
    type Seed = (&'static str, &'static str, Vec<u8>);

    /// One backend message: type byte, length, body.
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(((body.len() + 4) as u32).to_be_bytes());
        v.extend(body);
        v
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn auth(code: u32, data: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend(data);
        msg(b'R', &b)
    }

    fn param(name: &str, value: &str) -> Vec<u8> {
        msg(b'S', format!("{name}\0{value}\0").as_bytes())
    }

    fn ready(status: u8) -> Vec<u8> {
        msg(b'Z', &[status])
    }

    fn backend_key() -> Vec<u8> {
        let mut b = 48_213u32.to_be_bytes().to_vec();
        b.extend(0x5f3a_91c2u32.to_be_bytes());
        msg(b'K', &b)
    }

    /// `E` or `N` with the fields PostgreSQL 15 sends.
    fn fields(tag: u8, severity: &str, code: &str, message: &str, extra: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (f, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            b.push(f);
            b.extend(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        msg(tag, &b)
    }

    /// The parameters a PostgreSQL 15 server reports after authentication.
    fn pg15_params() -> Vec<u8> {
        cat(&[
            param("application_name", "walsink"),
            param("client_encoding", "UTF8"),
            param("DateStyle", "ISO, MDY"),
            param("default_transaction_read_only", "off"),
            param("in_hot_standby", "off"),
            param("integer_datetimes", "on"),
            param("IntervalStyle", "postgres"),
            param("is_superuser", "on"),
            param("server_encoding", "UTF8"),
            param("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
            param("session_authorization", "postgres"),
            param("standard_conforming_strings", "on"),
            param("TimeZone", "Etc/UTC"),
        ])
    }

    fn after_auth() -> Vec<u8> {
        cat(&[auth(0, b""), pg15_params(), backend_key(), ready(b'I')])
    }

    /// `T`: text columns with the given type OIDs.
    fn row_description(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut b = (cols.len() as i16).to_be_bytes().to_vec();
        for (name, oid) in cols {
            b.extend(name.as_bytes());
            b.push(0);
            b.extend(0u32.to_be_bytes()); // table
            b.extend(0i16.to_be_bytes()); // column number
            b.extend(oid.to_be_bytes());
            let size: i16 = match oid {
                23 => 4,
                20 => 8,
                _ => -1,
            };
            b.extend(size.to_be_bytes());
            b.extend((-1i32).to_be_bytes()); // modifier
            b.extend(0i16.to_be_bytes()); // text format
        }
        msg(b'T', &b)
    }

    fn data_row(vals: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (vals.len() as i16).to_be_bytes().to_vec();
        for v in vals {
            match v {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(*v);
                }
            }
        }
        msg(b'D', &b)
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', format!("{tag}\0").as_bytes())
    }

    const TEXT: u32 = 25;
    const INT4: u32 = 23;
    const INT8: u32 = 20;

    fn identify_system() -> Vec<u8> {
        cat(&[
            row_description(&[
                ("systemid", TEXT),
                ("timeline", INT4),
                ("xlogpos", TEXT),
                ("dbname", TEXT),
            ]),
            data_row(&[
                Some(b"7443521795436298753"),
                Some(b"1"),
                Some(b"0/3000148"),
                None,
            ]),
            complete("IDENTIFY_SYSTEM"),
            ready(b'I'),
        ])
    }

    fn show(name: &str, value: &str) -> Vec<u8> {
        cat(&[
            row_description(&[(name, TEXT)]),
            data_row(&[Some(value.as_bytes())]),
            complete("SHOW"),
            ready(b'I'),
        ])
    }

    fn read_slot(vals: &[Option<&[u8]>]) -> Vec<u8> {
        cat(&[
            row_description(&[
                ("slot_type", TEXT),
                ("restart_lsn", TEXT),
                ("restart_tli", INT8),
            ]),
            data_row(vals),
            complete("READ_REPLICATION_SLOT"),
            ready(b'I'),
        ])
    }

    const HISTORY_2: &[u8] = b"1\t0/3000158\tno recovery target specified\n";
    const HISTORY_4: &[u8] = b"1\t0/3000158\tno recovery target specified\n\n\
        2\t0/5000028\tat restore point \"before_upgrade\"\n\
        3\t1/A0000000\tafter transaction 1234\n";

    fn timeline_history(name: &str, content: &[u8]) -> Vec<u8> {
        cat(&[
            row_description(&[("filename", TEXT), ("content", 17)]),
            data_row(&[Some(name.as_bytes()), Some(content)]),
            complete("TIMELINE_HISTORY"),
            ready(b'I'),
        ])
    }

    /// The result set ending a historic timeline, after CopyDone.
    fn next_timeline(tli: &str, start: &str) -> Vec<u8> {
        cat(&[
            row_description(&[("next_tli", INT8), ("next_tli_startpos", TEXT)]),
            data_row(&[Some(tli.as_bytes()), Some(start.as_bytes())]),
            complete("SELECT"),
            complete("START_STREAMING"),
            ready(b'I'),
        ])
    }

    fn server_error(code: &str, message: &str) -> Vec<u8> {
        cat(&[
            fields(
                b'E',
                "ERROR",
                code,
                message,
                &[
                    (b'F', "slot.c"),
                    (b'L', "471"),
                    (b'R', "ReplicationSlotAcquire"),
                ],
            ),
            ready(b'I'),
        ])
    }

    /// CopyData with an XLogData payload.
    fn xlogdata(start: u64, end: u64, data: &[u8]) -> Vec<u8> {
        let mut b = vec![b'w'];
        b.extend(start.to_be_bytes());
        b.extend(end.to_be_bytes());
        b.extend(787_654_321_000_000i64.to_be_bytes());
        b.extend(data);
        b
    }

    fn keepalive(end: u64, reply: bool) -> Vec<u8> {
        let mut b = vec![b'k'];
        b.extend(end.to_be_bytes());
        b.extend(787_654_321_000_000i64.to_be_bytes());
        b.push(reply as u8);
        b
    }

    /// The start of a WAL segment: a PostgreSQL 15 long page header and a record header.
    fn wal_page() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(0xD110u16.to_le_bytes()); // XLOG_PAGE_MAGIC of 15
        b.extend(0x0006u16.to_le_bytes()); // XLP_LONG_HEADER | XLP_BKP_REMOVABLE
        b.extend(1u32.to_le_bytes()); // timeline
        b.extend(0x300_0000u64.to_le_bytes()); // page address
        b.extend(0u32.to_le_bytes()); // rem_len
        b.extend([0; 4]);
        b.extend(7_443_521_795_436_298_753u64.to_le_bytes()); // system identifier
        b.extend((16u32 << 20).to_le_bytes()); // segment size
        b.extend(8192u32.to_le_bytes()); // block size
        b.extend(114u32.to_le_bytes()); // record: total length
        b.extend(735u32.to_le_bytes()); // xid
        b.extend(0x2FF_FF28u64.to_le_bytes()); // prev
        b.extend([0x10, 0x00, 0, 0]); // info, rmid, padding
        b.extend(0x1d2c_3b4au32.to_le_bytes()); // crc
        b.extend([0u8; 32]);
        b
    }

    fn copy_data(payload: &[u8]) -> Vec<u8> {
        msg(b'd', payload)
    }

    fn copy_both() -> Vec<u8> {
        msg(b'W', &[0, 0, 0])
    }

    fn sasl_mechanisms(mechs: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for m in mechs {
            b.extend(m.as_bytes());
            b.push(0);
        }
        b.push(0);
        auth(10, &b)
    }

    /// A SCRAM exchange as PostgreSQL 15 runs it. The fuzz body inserts the client's
    /// nonce after `r=`; the server signature cannot match that random nonce, so the
    /// client refuses the final message, as it must.
    fn scram(iterations: u32) -> Vec<u8> {
        cat(&[
            sasl_mechanisms(&["SCRAM-SHA-256"]),
            auth(
                11,
                format!("r=Hq1cnv7J0mS1mtrFYk4Zp0Vd,s=QSXCR+Q6sek8bf92,i={iterations}").as_bytes(),
            ),
            auth(12, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            after_auth(),
        ])
    }

    /// `session` target script: bytes from the server, in chunks of at most 255.
    fn feed(bytes: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for chunk in bytes.chunks(255) {
            v.push(0);
            v.push(chunk.len() as u8);
            v.extend(chunk);
        }
        v
    }

    const WRITTEN: u8 = 1;
    const FLUSHED: u8 = 2;
    const CLOSE: u8 = 4;
    const WRITER_CLOSED: u8 = 5;
    const LOST: u8 = 6;
    const PAUSE: u8 = 7;

    fn wait(secs: u8) -> Vec<u8> {
        vec![3, secs]
    }

    /// `session` scripts: flags, then operations (see `fuzz/src/lib.rs`).
    fn session_scripts() -> Vec<(&'static str, Vec<u8>)> {
        const ENDPOS: u8 = 1;
        const STATUS: u8 = 2;
        const TIMEOUT: u8 = 4;
        const REPORT: u8 = 8;
        const CONFIRMED: u8 = 16;
        let start = super::targets::SESSION_START;
        let wal = |at: u64, n: usize| {
            copy_data(&xlogdata(
                at,
                at + n as u64,
                &wal_page()[..n.min(72)]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(n)
                    .collect::<Vec<u8>>(),
            ))
        };
        let ack = cat(&[msg(b'c', b""), complete("START_STREAMING"), ready(b'I')]);
        vec![
            (
                "stream-and-stop",
                cat(&[
                    vec![STATUS | TIMEOUT | REPORT | CONFIRMED],
                    feed(&cat(&[
                        copy_both(),
                        wal(start, 200),
                        copy_data(&keepalive(start + 200, true)),
                    ])),
                    vec![WRITTEN, FLUSHED],
                    wait(11),
                    feed(&wal(start + 200, 100)),
                    vec![CLOSE, WRITER_CLOSED],
                    feed(&ack),
                ]),
            ),
            (
                "endpos",
                cat(&[
                    vec![ENDPOS | STATUS | REPORT],
                    feed(&cat(&[copy_both(), wal(start, 200), wal(start + 200, 200)])),
                    vec![WRITER_CLOSED],
                    feed(&ack),
                ]),
            ),
            (
                "end-of-timeline",
                cat(&[
                    vec![REPORT],
                    feed(&cat(&[copy_both(), wal(start, 160)])),
                    vec![FLUSHED],
                    feed(&cat(&[msg(b'c', b""), next_timeline("2", "0/30000A0")])),
                ]),
            ),
            (
                "timeline-ends-at-start",
                cat(&[vec![0], feed(&next_timeline("2", "0/3000000"))]),
            ),
            (
                "receive-timeout",
                cat(&[
                    vec![TIMEOUT | STATUS],
                    feed(&copy_both()),
                    wait(35),
                    wait(30),
                    wait(40),
                ]),
            ),
            (
                "paused-writer",
                cat(&[
                    vec![TIMEOUT | REPORT],
                    feed(&copy_both()),
                    vec![PAUSE],
                    feed(&wal(start, 120)),
                    wait(120),
                    vec![PAUSE, FLUSHED],
                ]),
            ),
            (
                "slot-missing",
                cat(&[
                    vec![0],
                    feed(&server_error(
                        "42704",
                        "replication slot \"walsink\" does not exist",
                    )),
                ]),
            ),
            (
                "wrong-start",
                cat(&[vec![0], feed(&cat(&[copy_both(), wal(start + 8, 64)]))]),
            ),
            (
                "cut-after-copy-done",
                cat(&[
                    vec![REPORT],
                    feed(&copy_both()),
                    vec![CLOSE, WRITER_CLOSED, LOST],
                ]),
            ),
        ]
    }

    pub fn all() -> Vec<Seed> {
        let startup_streams: Vec<(&str, Vec<u8>)> = vec![
            ("trust", after_auth()),
            ("password", cat(&[auth(3, b""), after_auth()])),
            (
                "md5",
                cat(&[auth(5, &[0x8e, 0x21, 0x4f, 0x07]), after_auth()]),
            ),
            ("scram", scram(4096)),
            ("scram-fast", scram(1)),
            (
                "scram-plus-only",
                cat(&[sasl_mechanisms(&["SCRAM-SHA-256-PLUS"]), after_auth()]),
            ),
            (
                "sasl-continue-unasked",
                cat(&[auth(11, b"r=x,s=QSXCR+Q6sek8bf92,i=1"), after_auth()]),
            ),
            ("gssapi", auth(7, b"")),
            ("sspi", auth(9, b"")),
            (
                "bad-password",
                cat(&[
                    auth(5, &[1, 2, 3, 4]),
                    fields(
                        b'E',
                        "FATAL",
                        "28P01",
                        "password authentication failed for user \"alice\"",
                        &[],
                    ),
                ]),
            ),
            (
                "no-hba-entry",
                fields(
                    b'E',
                    "FATAL",
                    "28000",
                    "no pg_hba.conf entry for replication connection from host \"10.0.0.7\", user \"alice\", no encryption",
                    &[],
                ),
            ),
            (
                "too-many",
                fields(
                    b'E',
                    "FATAL",
                    "53300",
                    "sorry, too many clients already",
                    &[],
                ),
            ),
            (
                "protocol-version",
                cat(&[msg(b'v', &[0, 0, 0, 0, 0, 0, 0, 0]), after_auth()]),
            ),
            (
                "notice",
                cat(&[
                    auth(0, b""),
                    fields(b'N', "WARNING", "01000", "line one\nline two", &[]),
                    pg15_params(),
                    ready(b'I'),
                ]),
            ),
            ("ready-before-auth", ready(b'I')),
        ];
        let query_streams: Vec<(&str, Vec<u8>)> = vec![
            ("identify-system", identify_system()),
            ("show-segment-16mb", show("wal_segment_size", "16MB")),
            ("show-segment-1gb", show("wal_segment_size", "1GB")),
            ("show-read-only", show("transaction_read_only", "off")),
            (
                "read-slot-physical",
                read_slot(&[Some(b"physical"), Some(b"0/1000028"), Some(b"1")]),
            ),
            (
                "read-slot-unreserved",
                read_slot(&[Some(b"physical"), None, None]),
            ),
            ("read-slot-missing", read_slot(&[None, None, None])),
            (
                "read-slot-logical",
                read_slot(&[Some(b"logical"), Some(b"0/1000028"), Some(b"1")]),
            ),
            (
                "timeline-history",
                timeline_history("00000002.history", HISTORY_2),
            ),
            (
                "timeline-history-4",
                timeline_history("00000004.history", HISTORY_4),
            ),
            ("next-timeline", next_timeline("2", "0/30000A0")),
            (
                "create-slot",
                cat(&[
                    row_description(&[
                        ("slot_name", TEXT),
                        ("consistent_point", TEXT),
                        ("snapshot_name", TEXT),
                        ("output_plugin", TEXT),
                    ]),
                    data_row(&[Some(b"walsink"), Some(b"0/1000028"), None, None]),
                    complete("CREATE_REPLICATION_SLOT"),
                    ready(b'I'),
                ]),
            ),
            (
                "slot-missing",
                server_error("42704", "replication slot \"walsink\" does not exist"),
            ),
            (
                "slot-active",
                server_error(
                    "55006",
                    "replication slot \"walsink\" is active for PID 48213",
                ),
            ),
            ("empty-query", cat(&[msg(b'I', b""), ready(b'I')])),
            (
                "identify-then-show",
                cat(&[identify_system(), show("wal_segment_size", "16MB")]),
            ),
        ];
        let copy_stream = cat(&[
            copy_both(),
            copy_data(&xlogdata(0x300_0000, 0x300_0148, &wal_page())),
            copy_data(&keepalive(0x300_0148, false)),
            copy_data(&keepalive(0x300_0148, true)),
            msg(b'c', b""),
            next_timeline("2", "0/30000A0"),
        ]);
        let mut v: Vec<Seed> = Vec::new();
        for (name, s) in session_scripts() {
            v.push(("session", name, s));
        }
        for (name, s) in &startup_streams {
            v.push(("startup", name, s.clone()));
        }
        for (name, s) in &query_streams {
            v.push(("query_collector", name, s.clone()));
        }
        for (name, s) in [
            ("startup-trust", after_auth()),
            ("startup-scram", scram(4096)),
            ("identify-system", identify_system()),
            (
                "timeline-history",
                timeline_history("00000002.history", HISTORY_2),
            ),
            ("copy-both", copy_stream),
            (
                "error",
                server_error("42704", "replication slot \"walsink\" does not exist"),
            ),
            (
                "notice",
                fields(
                    b'N',
                    "NOTICE",
                    "00000",
                    "database system is shut down",
                    &[(b'D', "detail"), (b'H', "hint")],
                ),
            ),
        ] {
            v.push(("backend_frames", name, s));
        }
        for (name, s) in [
            (
                "xlogdata-page",
                xlogdata(0x300_0000, 0x300_0148, &wal_page()),
            ),
            ("xlogdata-empty", xlogdata(0x300_0148, 0x300_0148, b"")),
            (
                "xlogdata-high",
                xlogdata(0xFFFF_FFFF_FF00_0000, 0xFFFF_FFFF_FF00_0100, &[0xAA; 64]),
            ),
            ("keepalive", keepalive(0x300_0148, false)),
            ("keepalive-reply", keepalive(0x300_0148, true)),
            ("unknown", b"x\0\0\0\0".to_vec()),
        ] {
            v.push(("replication_message", name, s));
        }
        for (name, s) in [
            (
                "keywords",
                "host=localhost port=5432 user=postgres dbname=replication application_name=walsink",
            ),
            (
                "socket",
                "host=/var/run/postgresql port=5432 user=postgres connect_timeout=5",
            ),
            (
                "quoted",
                "host='db one' password='it\\'s a \\\\ secret' options='-c wal_sender_timeout=0'",
            ),
            (
                "uri",
                "postgresql://alice:s%40cret@db1:5433,db2/replication?application_name=walsink&connect_timeout=10",
            ),
            (
                "uri-ipv6",
                "postgres://[::1]:5432,[fe80::1%25eth0]/?target_session_attrs=read-write&sslmode=disable",
            ),
            (
                "uri-socket",
                "postgresql://%2Fvar%2Frun%2Fpostgresql/db?user=postgres",
            ),
            (
                "multi-host",
                "host=h1,h2,h3 port=5432,5433, hostaddr=10.0.0.1,,10.0.0.3 load_balance_hosts=disable",
            ),
            (
                "security",
                "host=db channel_binding=require require_auth=scram-sha-256 gssencmode=disable sslmode=prefer",
            ),
            (
                "security-negated",
                "host=/tmp require_auth=!password,!md5 requirepeer=postgres gssencmode=require",
            ),
            ("service", "service=primary passfile=/nonexistent/.pgpass"),
            (
                "pgpass",
                "localhost:5432:replication:postgres:secret\n*:*:*:*:fallback\n# comment\nh\\:x:*:*:postgres:p\\\\w\\:d\n",
            ),
        ] {
            v.push(("conninfo", name, s.as_bytes().to_vec()));
        }
        for (name, s) in [
            ("one-switch", HISTORY_2),
            ("three-switches", HISTORY_4),
            ("comments", b"# written by hand\n\n1\t0/3000158\tno recovery target specified\n   \n2\t0/3000158\tswitch at the same point\n" as &[u8]),
            ("spaces", b"1 0/3000158 reason with spaces\n2   FFFFFFFF/FFFFFFFF\n" as &[u8]),
            ("empty", b"" as &[u8]),
        ] {
            v.push(("history_file", name, s.to_vec()));
        }
        const HEAD: &str = "# walsink archive metadata: this directory holds WAL of this database system only.\n\
            system_identifier = 7443521795436298753\n";
        for (name, s) in [
            ("plain", format!("{HEAD}wal_segment_size = 16777216\n")),
            ("1mb", format!("{HEAD}wal_segment_size = 1048576\n")),
            ("1gb", format!("{HEAD}wal_segment_size = 1073741824\n")),
            (
                "gaps",
                format!(
                    "{HEAD}wal_segment_size = 16777216\n\
                     # WAL missing from this archive, accepted with --allow-gap:\n\
                     # gap = <from LSN> <to LSN> <unix time accepted> <reason>\n\
                     gap = 0/3000000 0/5000000 1700000000 requested WAL segment 000000010000000000000003 has already been removed\n\
                     gap = 1/123 1/2000000 1700000060\n"
                ),
            ),
            ("hand-edited", "\n  wal_segment_size=1048576\nfuture_key = x\nsystem_identifier =  5 \ngap =  0/1000000   0/2000000 17  some  reason \n".to_owned()),
        ] {
            v.push(("meta", name, s.into_bytes()));
        }
        v.extend(wal_validate());
        v
    }

    /// Made-up valid WAL of system 7 from 0/300000 on timeline 2 (`fuzz_validate`'s
    /// layout: size byte, flags byte, WAL), whole and damaged.
    fn wal_validate() -> Vec<Seed> {
        use walsink_wal::synth::{PG18, SynthParams, SynthWal};
        use walsink_wal::{Lsn, WalSegSize};
        let p = SynthParams {
            seg: WalSegSize::new(1 << 20).unwrap(),
            format: PG18,
            system_id: 7,
            tli: 2,
        };
        let mut small = SynthWal::new(p, Lsn(3 << 20));
        small.fill(Lsn((3 << 20) + 20_000), &[0, 10, 100, 3000, 8150]);
        let mut long = SynthWal::new(p, Lsn(3 << 20));
        long.record(10, 0, &[5u8; 30_000]);
        long.fill(Lsn((3 << 20) + 33_000), &[60]);
        let seed = |size: u8, flags: u8, wal: &[u8]| [&[size, flags][..], wal].concat();
        let mut bad = small.bytes().to_vec();
        bad[5000] ^= 1;
        vec![
            ("wal_validate", "small-records", seed(23, 1, small.bytes())),
            (
                "wal_validate",
                "long-record-learned",
                seed(200, 0, long.bytes()),
            ),
            ("wal_validate", "bad-crc-whole", seed(255, 1, &bad)),
        ]
    }
}
