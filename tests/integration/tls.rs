//! TLS against real PostgreSQL servers with `ssl = on` and certificates made by the test
//! ([`TestPki`]): what each `sslmode` checks, client certificates, channel binding, direct
//! negotiation (PostgreSQL 17 and later), the server name indication (`sslsni`) in the
//! ClientHello, and the exit code (19) of every TLS refusal.
//!
//! Every walsink runs with `HOME` set to an empty directory of the test's own, so that a
//! `~/.postgresql/root.crt` of whoever runs the tests cannot change what is checked.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::harness::fake::{FakeServer, FakeSession, error_response, frame};
use crate::harness::tls::{TestPki, ssl_bindir_17_or_later};
use crate::harness::walsink::RunOutcome;
use crate::harness::{
    HostAuth, PgCluster, WAIT, Walsink, WalsinkProcess, archive, archive_dir, create_slot,
    format_lsn, generate_past, parse_lsn, temp_base, wait_for,
};

/// walsink's exit code for TLS failures.
const EXIT_TLS: i32 = 19;

/// An empty home directory for walsink (no `~/.postgresql`).
fn home() -> TempDir {
    tempfile::Builder::new()
        .prefix("wsk-home")
        .tempdir_in(temp_base())
        .expect("create home dir")
}

/// `walsink receive -n -w -d CONNINFO -D DIR EXTRA...` with `HOME` set.
fn receive(conninfo: &str, dir: &Path, home: &Path, extra: &[&str]) -> Command {
    let mut cmd = Walsink::cmd(["receive", "-n", "-w", "-d", conninfo, "-D"]);
    cmd.arg(dir).args(extra).env("HOME", home);
    cmd
}

/// Connects, authenticates and stops at once (`-E 0/1`: nothing to stream).
fn connect_only(conninfo: &str, home: &Path) -> RunOutcome {
    connect_env(conninfo, home, &[])
}

/// [`connect_only`] with environment variables.
fn connect_env(conninfo: &str, home: &Path, vars: &[(&str, &str)]) -> RunOutcome {
    let dir = archive_dir();
    let mut cmd = receive(conninfo, dir.path(), home, &["-E", "0/1"]);
    cmd.envs(vars.iter().copied());
    let out = RunOutcome::of(cmd, WAIT);
    assert!(
        fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .all(|e| e.file_name() == ".walsink.lock"),
        "a connection that stops at once writes nothing"
    );
    out
}

/// `host=HOST port=PORT user=postgres` plus `rest`.
fn conninfo(pg: &PgCluster, host: &str, rest: &str) -> String {
    format!("host={host} port={} user=postgres {rest}", pg.port())
}

/// How many walsenders of walsink's run over TLS (`pg_stat_ssl`), and how many over
/// plaintext.
fn walsenders_by_ssl(pg: &PgCluster) -> (String, String) {
    let rows = pg.sql(
        "SELECT count(*) FILTER (WHERE s.ssl)::text, count(*) FILTER (WHERE NOT s.ssl)::text \
         FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
         WHERE r.application_name = 'walsink'",
    );
    (
        rows[0][0].clone().unwrap_or_default(),
        rows[0][1].clone().unwrap_or_default(),
    )
}

/// With `sslmode=verify-full` (the host name and the IP address both in the certificate),
/// walsink streams over TLS, as `pg_stat_ssl` shows for its walsender, and the archive is
/// byte-identical to the server's `pg_wal`.
#[test]
fn verify_full_streams_a_byte_identical_archive_over_tls() {
    let pki = TestPki::generate();
    let pg = pki.ssl_server(PgCluster::builder(), "server.crt").start();
    let home = home();
    let ca = pki.path("ca.crt");
    for host in ["localhost", "127.0.0.1"] {
        let dir = archive_dir();
        let slot = if host == "localhost" {
            "w_name"
        } else {
            "w_ip"
        };
        create_slot(&pg, slot);
        let seg = pg.wal_segsize_bytes();
        let end = (parse_lsn(&pg.current_lsn()) / seg + 3) * seg;
        let ci = conninfo(
            &pg,
            host,
            &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        );
        let mut w = WalsinkProcess::spawn_command(receive(
            &ci,
            dir.path(),
            home.path(),
            &["-S", slot, "-E", &format_lsn(end)],
        ));
        assert!(
            wait_for(|| walsenders_by_ssl(&pg) == ("1".into(), "0".into()), WAIT),
            "{host}: no walsender of walsink over TLS: {:?}\n{}",
            walsenders_by_ssl(&pg),
            w.stderr_text()
        );
        generate_past(&pg, end);
        let status = w.wait_timeout(WAIT);
        assert_eq!(status.code(), Some(0), "{host}: {}", w.stderr_text());
        let n = archive::assert_completed_identical(dir.path(), &pg.pg_wal_dir());
        assert!(n >= 2, "{host}: only {n} segments compared");
    }
}

/// A certificate the options do not trust is refused with exit 19 and a message naming
/// the problem: signed by another CA, issued for another host name, expired, revoked (with
/// `sslcrl`); so is `verify-full` without any root certificate file. The weaker modes
/// accept what they do not check, as libpq's do.
#[test]
fn untrusted_server_certificates_are_refused_with_exit_19() {
    let pki = TestPki::generate();
    let home = home();
    let ca = pki.path("ca.crt").display().to_string();
    let other = pki.path("other-ca.crt").display().to_string();
    let crl = pki.path("crl.pem").display().to_string();

    let good = pki.ssl_server(PgCluster::builder(), "server.crt").start();
    let wrong_ca = format!("sslmode=verify-full sslrootcert={other}");
    let refused = [
        (
            conninfo(&good, "localhost", &wrong_ca),
            "was not issued by a certificate authority in root certificate file",
        ),
        (
            conninfo(
                &good,
                "localhost",
                &format!("sslmode=verify-ca sslrootcert={other}"),
            ),
            "UnknownIssuer",
        ),
        (
            conninfo(
                &good,
                "wrong.example",
                &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
            ),
            "not valid for name",
        ),
        (
            conninfo(&good, "localhost", "sslmode=verify-full"),
            &format!(
                "root certificate file \"{}/.postgresql/root.crt\" does not exist",
                home.path().display()
            ),
        ),
    ];
    for (ci, needle) in &refused {
        connect_only(ci, home.path()).expect(ci, EXIT_TLS, &[needle]);
    }
    // verify-ca does not check the name; require checks nothing without a root file.
    for ci in [
        conninfo(
            &good,
            "wrong.example",
            &format!("hostaddr=127.0.0.1 sslmode=verify-ca sslrootcert={ca}"),
        ),
        conninfo(
            &good,
            "localhost",
            &format!("sslmode=require sslrootcert={}/none", home.path().display()),
        ),
    ] {
        connect_only(&ci, home.path()).expect(&ci, 0, &[]);
    }
    drop(good);

    let expired = pki.ssl_server(PgCluster::builder(), "expired.crt").start();
    connect_only(
        &conninfo(
            &expired,
            "localhost",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        home.path(),
    )
    .expect("expired", EXIT_TLS, &["SSL error", "expired", "renew it"]);
    connect_only(
        &conninfo(&expired, "localhost", "sslmode=require"),
        home.path(),
    )
    .expect("expired, require", 0, &[]);
    // require with ~/.postgresql/root.crt present checks the chain, as libpq does.
    let pgdir = home.path().join(".postgresql");
    fs::create_dir(&pgdir).unwrap();
    fs::copy(pki.path("ca.crt"), pgdir.join("root.crt")).unwrap();
    connect_only(
        &conninfo(&expired, "localhost", "sslmode=require"),
        home.path(),
    )
    .expect("expired, require with root.crt", EXIT_TLS, &["expired"]);
    fs::remove_dir_all(&pgdir).unwrap();
    drop(expired);

    let revoked = pki.ssl_server(PgCluster::builder(), "revoked.crt").start();
    let verify = format!("sslmode=verify-full sslrootcert={ca}");
    connect_only(&conninfo(&revoked, "localhost", &verify), home.path()).expect(
        "revoked, no CRL",
        0,
        &[],
    );
    connect_only(
        &conninfo(&revoked, "localhost", &format!("{verify} sslcrl={crl}")),
        home.path(),
    )
    .expect(
        "revoked",
        EXIT_TLS,
        &["SSL error", "Revoked", "revocation list (sslcrl)"],
    );
    connect_env(
        &conninfo(&revoked, "localhost", &verify),
        home.path(),
        &[("PGSSLCRL", crl.as_str())],
    )
    .expect("revoked, PGSSLCRL", EXIT_TLS, &["Revoked"]);
}

/// `prefer` (the default) against a server with `ssl = on` really encrypts: the walsender
/// shows up in `pg_stat_ssl` with `ssl = true`; `sslmode=disable` does not.
#[test]
fn prefer_uses_tls_when_the_server_has_it() {
    let pki = TestPki::generate();
    let pg = pki.ssl_server(PgCluster::builder(), "server.crt").start();
    let home = home();
    for (extra, expected) in [
        ("", ("1", "0")),
        ("sslmode=prefer", ("1", "0")),
        ("sslmode=disable", ("0", "1")),
    ] {
        let dir = archive_dir();
        let mut w = WalsinkProcess::spawn_command(receive(
            &conninfo(&pg, "127.0.0.1", extra),
            dir.path(),
            home.path(),
            &[],
        ));
        let want = (expected.0.to_owned(), expected.1.to_owned());
        assert!(
            wait_for(|| walsenders_by_ssl(&pg) == want, WAIT),
            "{extra:?}: walsenders (tls, plain) = {:?}, expected {want:?}\n{}",
            walsenders_by_ssl(&pg),
            w.stderr_text()
        );
        let status = w.interrupt_and_wait(WAIT);
        assert_eq!(status.code(), Some(0), "{}", w.stderr_text());
        assert!(wait_for(
            || walsenders_by_ssl(&pg) == ("0".into(), "0".into()),
            WAIT
        ));
    }
}

/// `sslkeylogfile` appends the session secrets in the NSS key log format (TLS 1.3 labels), to a file
/// created with mode 0600; one that cannot be created is refused (exit 19).
#[test]
fn sslkeylogfile_logs_session_secrets() {
    let pki = TestPki::generate();
    let pg = pki.ssl_server(PgCluster::builder(), "server.crt").start();
    let home = home();
    let log = home.path().join("keys.log");
    connect_only(
        &conninfo(
            &pg,
            "localhost",
            &format!("sslmode=require sslkeylogfile={}", log.display()),
        ),
        home.path(),
    )
    .expect("sslkeylogfile", 0, &[]);
    let text = fs::read_to_string(&log).unwrap();
    for label in [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET ",
        "CLIENT_TRAFFIC_SECRET_0 ",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} in {text}"));
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[1].len(), 64, "{line}");
        assert!(
            fields[1..]
                .iter()
                .all(|f| f.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
    assert_eq!(
        fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    connect_only(
        &conninfo(
            &pg,
            "localhost",
            "sslmode=require sslkeylogfile=/nonexistent/keys.log",
        ),
        home.path(),
    )
    .expect(
        "unopenable",
        EXIT_TLS,
        &["could not open SSL key logging file \"/nonexistent/keys.log\""],
    );
}

/// `require` and stronger against a server without TLS fail with exit 19 and say why;
/// `prefer` connects in plaintext.
#[test]
fn require_against_a_server_without_tls_fails() {
    let pg = PgCluster::start_default();
    let home = home();
    for rest in [
        "sslmode=require",
        "sslmode=verify-ca",
        "sslrootcert=system",
        "sslmode=require sslnegotiation=postgres",
    ] {
        let ci = conninfo(&pg, "127.0.0.1", rest);
        connect_only(&ci, home.path()).expect(
            &ci,
            EXIT_TLS,
            &["server does not support SSL, but SSL was required"],
        );
    }
    connect_env(
        &conninfo(&pg, "127.0.0.1", ""),
        home.path(),
        &[("PGSSLMODE", "require")],
    )
    .expect("PGSSLMODE=require", EXIT_TLS, &["SSL was required"]);
    connect_only(&conninfo(&pg, "127.0.0.1", "sslmode=prefer"), home.path()).expect(
        "prefer",
        0,
        &[],
    );
}

/// `hostssl ... cert` authentication with a client certificate (named, or the defaults in
/// `~/.postgresql`); a key others can read is refused like libpq does (exit 19); without a
/// certificate the server refuses (exit 11). `sslmode=allow` first tries plaintext, which
/// such a server refuses, then TLS.
#[test]
fn client_certificate_authentication() {
    let pki = TestPki::generate();
    let pg = pki
        .ssl_server(PgCluster::builder(), "server.crt")
        .hba(
            "hostssl all          all   127.0.0.1/32  cert\n\
             hostssl replication  all   127.0.0.1/32  cert\n",
        )
        .start();
    let home = home();
    let ca = pki.path("ca.crt").display().to_string();
    let cert = pki.path("client.crt").display().to_string();
    let key = pki.path("client.key").display().to_string();
    let with_cert = format!("sslrootcert={ca} sslcert={cert} sslkey={key}");
    for rest in [
        format!("sslmode=verify-full {with_cert}"),
        format!("sslmode=allow {with_cert}"),
        format!("sslmode=require sslcertmode=require {with_cert}"),
    ] {
        connect_only(&conninfo(&pg, "localhost", &rest), home.path()).expect(&rest, 0, &[]);
    }
    // The defaults in ~/.postgresql.
    let pgdir = home.path().join(".postgresql");
    fs::create_dir(&pgdir).unwrap();
    for (from, to) in [
        ("ca.crt", "root.crt"),
        ("client.crt", "postgresql.crt"),
        ("client.key", "postgresql.key"),
    ] {
        fs::copy(pki.path(from), pgdir.join(to)).unwrap();
    }
    fs::set_permissions(
        pgdir.join("postgresql.key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    connect_only(
        &conninfo(&pg, "localhost", "sslmode=verify-full"),
        home.path(),
    )
    .expect("defaults", 0, &[]);
    // A key others can read (0640 would do as well unless root owns it, as when CI runs as root).
    fs::set_permissions(
        pgdir.join("postgresql.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    connect_only(&conninfo(&pg, "localhost", "sslmode=verify-full"), home.path()).expect(
        "key 0644",
        EXIT_TLS,
        &[&format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less",
            pgdir.join("postgresql.key").display()
        )],
    );
    fs::remove_dir_all(&pgdir).unwrap();
    // No certificate (none configured, or sslcertmode=disable): the server refuses.
    for rest in [
        format!("sslmode=verify-full sslrootcert={ca}"),
        format!("sslmode=verify-full sslcertmode=disable {with_cert}"),
    ] {
        connect_only(&conninfo(&pg, "localhost", &rest), home.path()).expect(&rest, 11, &[]);
    }
}

/// `channel_binding=require` with SCRAM over TLS authenticates with SCRAM-SHA-256-PLUS
/// bound to the server's certificate; the server checks the binding, so a wrong hash would
/// fail authentication. Without TLS it is refused before anything is sent.
#[test]
fn channel_binding_require_with_scram_over_tls() {
    let pki = TestPki::generate();
    let pg = pki
        .ssl_server(PgCluster::builder(), "server.crt")
        .host_auth(HostAuth::ScramSha256("s3cret".into()))
        .start();
    let home = home();
    let ca = pki.path("ca.crt").display().to_string();
    for rest in [
        format!("sslmode=verify-full sslrootcert={ca} channel_binding=require"),
        "sslmode=require channel_binding=require".to_owned(),
        "channel_binding=require".to_owned(),
        "channel_binding=disable".to_owned(),
    ] {
        connect_env(
            &conninfo(&pg, "localhost", &rest),
            home.path(),
            &[("PGPASSWORD", "s3cret")],
        )
        .expect(&rest, 0, &[]);
    }
    // A wrong password over a bound channel is still a wrong password.
    connect_env(
        &conninfo(&pg, "localhost", "sslmode=require channel_binding=require"),
        home.path(),
        &[("PGPASSWORD", "wrong")],
    )
    .expect("wrong password", 10, &["password authentication failed"]);
    // Without TLS: refused as a usage error, or at the server's request.
    connect_env(
        &conninfo(&pg, "localhost", "sslmode=disable channel_binding=require"),
        home.path(),
        &[("PGPASSWORD", "s3cret")],
    )
    .expect("disable", 2, &["channel_binding=require needs TLS"]);
}

/// `sslnegotiation=direct` (PostgreSQL 17 and later): TLS from the first byte, with ALPN
/// `postgresql`, against a 17+ server with SSL ([`ssl_bindir_17_or_later`]: when the major
/// under test is older, 17 from scripts/install-pg-majors.sh, which .ci/run installs).
#[test]
fn direct_tls_negotiation_on_17_and_later() {
    let pki = TestPki::generate();
    let home = home();
    let Some(bindir) = ssl_bindir_17_or_later() else {
        panic!(
            "no PostgreSQL 17 or later with SSL for direct TLS negotiation: run scripts/install-pg-majors.sh 17 (.ci/run does)"
        );
    };
    let pg = pki
        .ssl_server(PgCluster::builder(), "server.crt")
        .bindir(bindir)
        .start();
    assert!(pg.major_version() >= 17);
    connect_only(
        &conninfo(&pg, "localhost", "sslnegotiation=direct"),
        home.path(),
    )
    .expect(
        "direct with prefer",
        2,
        &["weak sslmode \"prefer\" may not be used with sslnegotiation=direct"],
    );
    let ca = pki.path("ca.crt").display().to_string();
    let dir = archive_dir();
    let mut w = WalsinkProcess::spawn_command(receive(
        &conninfo(
            &pg,
            "localhost",
            &format!("sslmode=verify-full sslnegotiation=direct sslrootcert={ca}"),
        ),
        dir.path(),
        home.path(),
        &[],
    ));
    assert!(
        wait_for(|| walsenders_by_ssl(&pg) == ("1".into(), "0".into()), WAIT),
        "no walsender over direct TLS: {:?}\n{}",
        walsenders_by_ssl(&pg),
        w.stderr_text()
    );
    assert_eq!(
        w.interrupt_and_wait(WAIT).code(),
        Some(0),
        "{}",
        w.stderr_text()
    );
    connect_env(
        &conninfo(&pg, "localhost", "sslmode=require"),
        home.path(),
        &[("PGSSLNEGOTIATION", "direct")],
    )
    .expect("PGSSLNEGOTIATION=direct", 0, &[]);
    // A server older than 17 does not speak TLS first: walsink fails, without falling back.
    let old = pki.ssl_server(PgCluster::builder(), "server.crt").start();
    if old.major_version() < 17 {
        connect_only(
            &conninfo(&old, "localhost", "sslmode=require sslnegotiation=direct"),
            home.path(),
        )
        .expect(
            "direct to an old server",
            3,
            &["the server must be PostgreSQL 17 or later"],
        );
    }
}

/// What a server (or a man in the middle) may answer to the SSL request besides `S` and a handshake:
/// plaintext injected right after the `S` is never read as the server's messages (CVE-2021-23222: walsink
/// reads the one byte, then hands the socket to TLS, which refuses it); an ErrorResponse (`E`, e.g. too
/// many connections) is the server's error (transient: exit 3 with `-n`); any other byte ends the attempt
/// as a protocol violation (exit 1).
#[test]
fn answers_to_the_ssl_request_other_than_a_handshake() {
    let mut injected = b"S".to_vec();
    // AuthenticationOk, ReadyForQuery: what an attacker would like walsink to believe.
    injected.extend(frame(b'R', &0i32.to_be_bytes()));
    injected.extend(frame(b'Z', b"I"));
    // The `E` is the ErrorResponse's own tag.
    let refused = error_response("53300", "sorry, too many clients already");
    let session = || FakeSession::new(7_300_000_000_000_000_019, 1, 0x300_0000);
    let home = home();
    for (answer, mode, codes, needle) in [
        (injected.clone(), "require", &[EXIT_TLS, 3][..], "SSL"),
        (injected, "prefer", &[EXIT_TLS, 3][..], "SSL"),
        (
            refused,
            "prefer",
            &[3][..],
            "sorry, too many clients already",
        ),
        (
            b"X".to_vec(),
            "prefer",
            &[1][..],
            "received invalid response to SSL negotiation: byte 0x58",
        ),
    ] {
        let fake = FakeServer::start(vec![session().ssl_answer(&answer)]);
        let ci = format!("{} sslmode={mode}", fake.conninfo());
        let out = connect_only(&ci, home.path());
        assert!(
            out.code.is_some_and(|c| codes.contains(&c)),
            "{answer:?} {mode}: exit {:?}, expected one of {codes:?}\n{}",
            out.code,
            out.stderr
        );
        assert!(
            out.stderr.contains(needle),
            "{answer:?} {mode}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("end position"), "{}", out.stderr);
    }
}

/// `sslrootcert=system`: the platform's trusted roots, which do not include the test's CA (exit 19), and
/// `verify-full` by default; with `SSL_CERT_FILE` naming the CA (as OpenSSL, rustls-native-certs honours
/// it) the same connection is trusted, and a wrong host name is then refused, as in libpq's own tests.
#[test]
fn system_roots() {
    let pki = TestPki::generate();
    let pg = pki.ssl_server(PgCluster::builder(), "server.crt").start();
    let home = home();
    let ca = pki.path("ca.crt").display().to_string();
    connect_only(
        &conninfo(&pg, "localhost", "sslrootcert=system"),
        home.path(),
    )
    .expect(
        "system roots",
        EXIT_TLS,
        &[
            "UnknownIssuer",
            "the system's trusted roots (sslrootcert=system)",
        ],
    );
    connect_env(
        &conninfo(&pg, "localhost", "sslrootcert=system"),
        home.path(),
        &[("SSL_CERT_FILE", ca.as_str())],
    )
    .expect("SSL_CERT_FILE", 0, &[]);
    connect_env(
        &conninfo(
            &pg,
            "wrong.example",
            "hostaddr=127.0.0.1 sslrootcert=system",
        ),
        home.path(),
        &[("SSL_CERT_FILE", ca.as_str())],
    )
    .expect(
        "SSL_CERT_FILE, wrong name",
        EXIT_TLS,
        &["not valid for name"],
    );
}

/// The server name indication a client's TLS handshake carried, read by a listener that plays a
/// server only as far as the ClientHello (a real server cannot show what it got): it answers the
/// SSLRequest with `S` (or, with `sslnegotiation=direct`, reads the handshake at once), parses the
/// ClientHello with rustls' [`Acceptor`](rustls::server::Acceptor), and closes.
struct HelloRecorder {
    port: u16,
    hello: std::thread::JoinHandle<(Option<String>, Vec<Vec<u8>>)>,
}

impl HelloRecorder {
    fn start() -> HelloRecorder {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hello = std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + WAIT;
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the client never connected"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut first = [0u8; 1];
            s.peek(&mut first).unwrap();
            if first[0] != 0x16 {
                // Not a TLS record: the SSLRequest (length 8, code 80877103).
                let mut req = [0u8; 8];
                s.read_exact(&mut req).unwrap();
                assert_eq!(
                    req,
                    [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
                    "not an SSLRequest"
                );
                s.write_all(b"S").unwrap();
            }
            let mut acceptor = rustls::server::Acceptor::default();
            loop {
                let n = acceptor.read_tls(&mut s).expect("reading the ClientHello");
                assert!(n > 0, "the client closed before its ClientHello was whole");
                match acceptor.accept() {
                    Ok(Some(accepted)) => {
                        let hello = accepted.client_hello();
                        return (
                            hello.server_name().map(str::to_owned),
                            hello
                                .alpn()
                                .map(|a| a.map(<[u8]>::to_vec).collect())
                                .unwrap_or_default(),
                        );
                    }
                    Ok(None) => {}
                    Err((e, _)) => panic!("not a ClientHello: {e}"),
                }
            }
        });
        HelloRecorder { port, hello }
    }

    /// The SNI and ALPN protocols of the ClientHello.
    fn hello(self) -> (Option<String>, Vec<Vec<u8>>) {
        self.hello.join().expect("the ClientHello listener failed")
    }
}

/// `sslsni` as libpq applies it (fe-secure-openssl.c): the host name goes into the ClientHello's
/// server_name with `sslsni=1` (the default), never with `sslsni=0` or `PGSSLSNI=0`, and never for
/// a host that is an IP address (IPv4 or IPv6, or any host of only digits and dots); with
/// `hostaddr` the name is `host`'s, not the address connected to. The same with
/// `sslnegotiation=direct`, whose ClientHello also names the `postgresql` ALPN protocol.
#[test]
fn server_name_indication_follows_sslsni_and_the_host() {
    let home = home();
    // (conninfo's hosts, environment, the server name expected in the ClientHello)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        ("host=localhost", &[], Some("localhost")),
        ("host=localhost sslsni=1", &[], Some("localhost")),
        ("host=localhost sslsni=0", &[], None),
        ("host=localhost", &[("PGSSLSNI", "0")], None),
        (
            "host=db1.example.com hostaddr=127.0.0.1",
            &[],
            Some("db1.example.com"),
        ),
        (
            "host=db1.example.com hostaddr=127.0.0.1 sslsni=0",
            &[],
            None,
        ),
        ("host=127.0.0.1", &[], None),
        ("hostaddr=127.0.0.1", &[], None),
        ("host=10.1.2.3 hostaddr=127.0.0.1", &[], None),
        ("host=::1 hostaddr=127.0.0.1", &[], None),
        ("host=1.2.3 hostaddr=127.0.0.1", &[], None),
        (
            "host=localhost sslnegotiation=direct",
            &[],
            Some("localhost"),
        ),
        ("host=localhost sslnegotiation=direct sslsni=0", &[], None),
    ];
    for (hosts, vars, expected) in cases {
        let server = HelloRecorder::start();
        let ci = format!("{hosts} port={} user=postgres sslmode=require", server.port);
        let out = connect_env(&ci, home.path(), vars);
        let (sni, alpn) = server.hello();
        assert_eq!(
            sni.as_deref(),
            *expected,
            "{ci} {vars:?}: server name in the ClientHello\n{}",
            out.stderr
        );
        assert_eq!(alpn, [b"postgresql".to_vec()], "{ci}: ALPN");
        assert_ne!(out.code, Some(0), "{ci}: the handshake cannot succeed");
    }
}
