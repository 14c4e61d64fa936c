//! [`TestPki`]: certificates for TLS tests, made by the `openssl` command (installed by
//! scripts/install-deps.sh) in a temp directory, and the server settings that use them.
//!
//! Every key is ECDSA P-256 (quick to make), every certificate X.509 v3 signed with SHA-256:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt` | the test CA (`CN=walsink-test-ca`) |
//! | `other-ca.crt` | an unrelated CA: trusting it instead of `ca.crt` is "the wrong CA" |
//! | `server.crt`, `server.key` | signed by the CA for `localhost` and `127.0.0.1` (SANs), valid 30 days |
//! | `expired.crt` | the same key and names, valid only in January 2020 |
//! | `revoked.crt` | the same key and names, revoked in `crl.pem` |
//! | `crl.pem` | the CA's revocation list (revokes `revoked.crt`), valid 30 days |
//! | `client.crt`, `client.key` | a client certificate for `CN=postgres`, signed by the CA |

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::pg::{PgClusterBuilder, bindir_for_major, default_bindir, tool_major};
use super::temp_base;

/// A throwaway PKI (see the module docs).
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    /// Makes every certificate; panics with openssl's output if a step fails.
    pub fn generate() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("wsk-pki")
            .tempdir_in(temp_base())
            .expect("create PKI temp dir");
        let pki = TestPki { dir };
        let d = pki.dir.path();
        fs::write(d.join("index.txt"), "").unwrap();
        fs::write(d.join("serial"), "1000\n").unwrap();
        // A crlnumber makes openssl write version 2 CRLs, the only ones webpki reads.
        fs::write(d.join("crlnumber"), "1000\n").unwrap();
        fs::write(
            d.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndir = {d}\ndatabase = {d}/index.txt\n\
                 new_certs_dir = {d}\nserial = {d}/serial\ncrlnumber = {d}/crlnumber\ncertificate = {d}/ca.crt\n\
                 private_key = {d}/ca.key\ndefault_md = sha256\ndefault_crl_days = 30\n\
                 policy = any\nunique_subject = no\ncopy_extensions = none\n[any]\ncommonName = supplied\n",
                d = d.display()
            ),
        )
        .unwrap();
        fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        for (name, cn) in [("ca", "walsink-test-ca"), ("other-ca", "walsink-other-ca")] {
            let key = format!("{name}.key");
            let crt = format!("{name}.crt");
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt, "-days", "30", "-subj", &subj]);
            args.extend(ca_ext);
            pki.openssl(&args);
        }
        for (name, cn) in [("server", "localhost"), ("client", "postgres")] {
            let mut args = vec!["req"];
            args.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subj = format!("/CN={cn}");
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            pki.openssl(&args);
        }
        pki.sign("server.csr", "server.crt", "server.ext", None);
        pki.sign("server.csr", "revoked.crt", "server.ext", None);
        pki.sign(
            "server.csr",
            "expired.crt",
            "server.ext",
            Some(("20200101000000Z", "20200131000000Z")),
        );
        pki.sign("client.csr", "client.crt", "client.ext", None);
        pki.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-revoke",
            "revoked.crt",
        ]);
        pki.openssl(&[
            "ca", "-batch", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem",
        ]);
        // Clients refuse keys others can read, as servers do.
        for key in ["server.key", "client.key"] {
            fs::set_permissions(
                d.join(key),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
        }
        pki
    }

    /// Signs `csr` with the CA (`openssl ca`, so dates can lie in the past).
    fn sign(&self, csr: &str, out: &str, ext: &str, dates: Option<(&str, &str)>) {
        let mut args = vec![
            "ca", "-batch", "-notext", "-config", "ca.cnf", "-in", csr, "-out", out, "-extfile",
            ext,
        ];
        match dates {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "30"]),
        }
        self.openssl(&args);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run openssl (scripts/install-deps.sh installs it): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file of the PKI, e.g. `pki.path("ca.crt")`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// `builder` on [`ssl_bindir`], with `ssl = on`, serving `cert` (`server.crt`, `expired.crt` or `revoked.crt`; the key
    /// is `server.key`), and asking clients for certificates signed by the CA (`ssl_ca_file`), which
    /// `cert` authentication in pg_hba.conf needs.
    pub fn ssl_server(&self, builder: PgClusterBuilder, cert: &str) -> PgClusterBuilder {
        builder
            .bindir(ssl_bindir())
            .data_file("server.crt", self.read(cert), 0o644)
            .data_file("server.key", self.read("server.key"), 0o600)
            .data_file("root.crt", self.read("ca.crt"), 0o644)
            .setting("ssl", "on")
            .setting("ssl_cert_file", "server.crt")
            .setting("ssl_key_file", "server.key")
            .setting("ssl_ca_file", "root.crt")
    }
}

/// Whether the PostgreSQL server in `bindir` was built with SSL: a build without it carries the
/// message it refuses `ssl = on` with.
pub fn has_ssl(bindir: &Path) -> bool {
    let needle = b"SSL is not supported by this build";
    fs::read(bindir.join("postgres"))
        .is_ok_and(|b| b.len() > needle.len() && !b.windows(needle.len()).any(|w| w == needle))
}

/// The servers for TLS tests: the default bindir (the major under test) if its build has SSL, else the
/// highest Debian `/usr/lib/postgresql/*/bin` that has (the PyPI build of 18 that CI's 18 pass uses has
/// none, so TLS is tested against 15 there as well). Panics if no build has SSL.
pub fn ssl_bindir() -> PathBuf {
    let default = default_bindir();
    if has_ssl(&default) {
        return default;
    }
    (13..=30)
        .rev()
        .filter_map(bindir_for_major)
        .find(|d| has_ssl(d))
        .unwrap_or_else(|| {
            panic!(
                "{} has no SSL support and no /usr/lib/postgresql/*/bin has (scripts/install-deps.sh installs one)",
                default.display()
            )
        })
}

/// A bindir of PostgreSQL 17 or later built with SSL, for direct TLS negotiation: the default one if it
/// qualifies, else `WALSINK_PG17_BINDIR`/`WALSINK_PG18_BINDIR` or Debian's, else
/// `$WALSINK_PG_ROOT/17/bin` or `18/bin` (default root `/opt/walsink-pg`, where
/// scripts/install-pg-majors.sh puts them; CI installs 17, whose build has SSL). `None` if there is none.
pub fn ssl_bindir_17_or_later() -> Option<PathBuf> {
    let root = std::env::var_os("WALSINK_PG_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/walsink-pg"));
    let mut candidates = vec![default_bindir()];
    candidates.extend((17..=30).rev().filter_map(bindir_for_major));
    candidates.extend([root.join("18/bin"), root.join("17/bin")]);
    candidates.into_iter().find(|d| {
        d.join("initdb").is_file()
            && tool_major(&d.join("postgres")).is_some_and(|m| m >= 17)
            && has_ssl(d)
    })
}
