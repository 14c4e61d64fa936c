//! TLS for one connection attempt: the rustls client configuration the options ask for,
//! built from the certificate files each time (as libpq reads them for every
//! connection), the handshake, and how its failures are reported.
//!
//! What is checked follows libpq (`fe-secure-openssl.c`), see
//! [`walsink_protocol::tls::ServerCheck`]: the root certificates come from
//! `sslrootcert` (a PEM file, or `system` for the platform's store), else
//! `~/.postgresql/root.crt` if it exists; `verify-ca` and `verify-full` fail without
//! them; `require`, `prefer` and `allow` check the chain when they exist and nothing
//! else when they do not. Revocation lists come from `sslcrl`, `sslcrldir`, else
//! `~/.postgresql/root.crl` if it exists. The client certificate comes from `sslcert`,
//! else `~/.postgresql/postgresql.crt`, if that file exists; its key from `sslkey`, else
//! `~/.postgresql/postgresql.key`, refused when group or others may read it.
//!
//! Differences from libpq: host names are checked against the certificate's subject
//! alternative names only (webpki ignores the common name); a named `sslcrl` or
//! `sslcrldir` that cannot be read is an error (libpq ignores it); an encrypted key is
//! refused (libpq asks for `sslpassword`).

use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use walsink_protocol::conninfo::{ConnConfig, Host, SslCertMode, SslMode, Target, TlsVersion};
use walsink_protocol::tls::{ALPN_POSTGRESQL, ServerCheck};

use crate::error::{ErrorKind, ReceiverError};

/// The largest certificate, key or CRL file walsink reads (a system bundle is ~200 KiB).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// A TLS error that needs a human: exit code of its own.
fn tls_error(message: impl Into<String>) -> ReceiverError {
    ReceiverError::new(ErrorKind::Tls, message)
}

/// Everything one handshake needs.
pub struct TlsSetup {
    /// The rustls configuration.
    pub config: Arc<ClientConfig>,
    /// The name the certificate is checked against (and sent as SNI when it is a DNS
    /// name and `sslsni` is on).
    pub server_name: ServerName<'static>,
    /// How the server's certificate is checked.
    pub check: ServerCheck,
    /// Where the roots came from, for messages.
    pub roots: String,
    /// `sslcertmode=require`: set when the server asked for a client certificate.
    pub cert_requested: Arc<AtomicBool>,
    /// Whether a client certificate is configured.
    pub has_client_cert: bool,
}

/// Where trusted roots come from.
enum Roots {
    System,
    File(PathBuf),
    /// Named (or the default) but missing: libpq then checks nothing, unless the mode
    /// needs roots.
    Missing(Option<PathBuf>),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the configuration for a handshake with `target`, reading the files the
/// options name. `direct`: for `sslnegotiation=direct` (ALPN is sent either way, as
/// libpq 17 does).
pub fn setup(cfg: &ConnConfig, target: &Target) -> Result<TlsSetup, ReceiverError> {
    let provider = provider();
    let roots = match cfg.sslrootcert.as_deref() {
        Some("system") => Roots::System,
        Some(path) => {
            let p = PathBuf::from(path);
            if p.exists() {
                Roots::File(p)
            } else {
                Roots::Missing(Some(p))
            }
        }
        None => match cfg.ssl_dir.as_ref().map(|d| d.join("root.crt")) {
            Some(p) if p.exists() => Roots::File(p),
            p => Roots::Missing(p),
        },
    };
    let check = ServerCheck::of(&cfg.sslmode, !matches!(roots, Roots::Missing(_)))
        .ok_or_else(|| missing_roots(&roots))?;
    let (store, roots_text) = match &roots {
        Roots::System => (
            system_roots()?,
            "the system's trusted roots (sslrootcert=system)".to_owned(),
        ),
        Roots::File(p) => (
            root_file(p)?,
            format!("root certificate file \"{}\"", p.display()),
        ),
        Roots::Missing(_) => (RootCertStore::empty(), String::new()),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        ServerCheck::None => Arc::new(PartialCheck {
            chain: None,
            provider: provider.clone(),
        }),
        ServerCheck::Chain | ServerCheck::ChainAndName => {
            let crls = crls(cfg)?;
            let mut builder =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone());
            if !crls.is_empty() {
                builder = builder.with_crls(crls).enforce_revocation_expiration();
            }
            let webpki = builder.build().map_err(|e| {
                tls_error(format!(
                    "could not use {roots_text} and the certificate revocation lists: {e}"
                ))
            })?;
            if check == ServerCheck::Chain {
                Arc::new(PartialCheck {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            } else {
                webpki
            }
        }
    };
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| {
        *v >= cfg.ssl_min_protocol_version && cfg.ssl_max_protocol_version.is_none_or(|m| *v <= m)
    })
    .map(|(_, p)| p)
    .collect();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_error(format!("could not set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cert_requested = Arc::new(AtomicBool::new(false));
    let client_key = client_certificate(cfg, &provider)?;
    let has_client_cert = client_key.is_some();
    let mut config = builder.with_client_cert_resolver(Arc::new(ClientCert {
        key: client_key,
        requested: cert_requested.clone(),
    }));
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    if let Some(path) = &cfg.sslkeylogfile {
        config.key_log = Arc::new(KeyLogFile::open(Path::new(path))?);
    }
    let (server_name, name_ok) = server_name(target);
    if check == ServerCheck::ChainAndName && !name_ok {
        return Err(tls_error(format!(
            "host name \"{}\" cannot be checked against the server's certificate: it is neither a DNS name nor an IP address; use the name the certificate was issued for",
            target.display_host()
        )));
    }
    // libpq sends SNI for host names, never for IP addresses (rustls neither).
    config.enable_sni = cfg.sslsni && name_ok;
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
        check,
        roots: roots_text,
        cert_requested,
        has_client_cert,
    })
}

/// The name to check: the host as given (libpq checks the host name even when
/// `hostaddr` says where to connect), else the address. The flag says whether it is
/// usable; if not, a placeholder is returned (the check then must not need it).
fn server_name(target: &Target) -> (ServerName<'static>, bool) {
    let text = match &target.host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(_) => String::new(),
    };
    match ServerName::try_from(text) {
        Ok(n) => (n, true),
        Err(_) => (
            ServerName::IpAddress(
                target
                    .hostaddr
                    .unwrap_or(IpAddr::from([127, 0, 0, 1]))
                    .into(),
            ),
            false,
        ),
    }
}

fn missing_roots(roots: &Roots) -> ReceiverError {
    let fix = "Either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.";
    tls_error(match roots {
        Roots::Missing(Some(p)) => {
            format!(
                "root certificate file \"{}\" does not exist\n{fix}",
                p.display()
            )
        }
        _ => format!("could not get home directory to locate root certificate file\n{fix}"),
    })
}

/// Reads a whole file of at most [`MAX_FILE_BYTES`]; `what` names it in errors.
fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, ReceiverError> {
    let file = fs::File::open(path)
        .map_err(|e| tls_error(format!("could not open {what} \"{}\": {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| tls_error(format!("could not read {what} \"{}\": {e}", path.display())))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(tls_error(format!(
            "{what} \"{}\" is larger than {} MiB; it is not one",
            path.display(),
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(bytes)
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ReceiverError> {
    let bytes = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("could not read {what} \"{}\": {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "could not read {what} \"{}\": no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn root_file(path: &Path) -> Result<RootCertStore, ReceiverError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, "root certificate file")? {
        store.add(cert).map_err(|e| {
            tls_error(format!(
                "could not use a certificate of root certificate file \"{}\": {e}",
                path.display()
            ))
        })?;
    }
    Ok(store)
}

fn system_roots() -> Result<RootCertStore, ReceiverError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(tls_error(format!(
            "sslrootcert=system found no trusted root certificates on this system{why}; install them (Debian: ca-certificates) or set SSL_CERT_FILE, or name a file in sslrootcert"
        )));
    }
    Ok(store)
}

/// The revocation lists: `sslcrl` and `sslcrldir` (every file in it, OpenSSL's hashed
/// `HASH.rN` names or not), else `~/.postgresql/root.crl` if it exists.
fn crls(cfg: &ConnConfig) -> Result<Vec<CertificateRevocationListDer<'static>>, ReceiverError> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(f) = &cfg.sslcrl {
        files.push(f.into());
    }
    if let Some(d) = &cfg.sslcrldir {
        let entries = fs::read_dir(d).map_err(|e| {
            tls_error(format!(
                "could not read certificate revocation list directory \"{d}\": {e}"
            ))
        })?;
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        files.extend(names);
    }
    if cfg.sslcrl.is_none() && cfg.sslcrldir.is_none() {
        match cfg.ssl_dir.as_ref().map(|d| d.join("root.crl")) {
            Some(p) if p.exists() => files.push(p),
            _ => return Ok(Vec::new()),
        }
    }
    let mut out = Vec::new();
    for f in files {
        let bytes = read_file(&f, "certificate revocation list file")?;
        let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                tls_error(format!(
                    "could not read certificate revocation list file \"{}\": {e}",
                    f.display()
                ))
            })?;
        if pem.is_empty() {
            // DER, as OpenSSL also reads.
            out.push(CertificateRevocationListDer::from(bytes));
        } else {
            out.extend(pem);
        }
    }
    Ok(out)
}

/// The client certificate and key, if one is configured and `sslcertmode` is not
/// `disable`. A certificate file that does not exist means none (libpq); its key must
/// exist, be a plain file, and not be readable by group or others.
fn client_certificate(
    cfg: &ConnConfig,
    provider: &CryptoProvider,
) -> Result<Option<Arc<CertifiedKey>>, ReceiverError> {
    if cfg.sslcertmode == SslCertMode::Disable {
        return Ok(None);
    }
    let cert_path = match (&cfg.sslcert, &cfg.ssl_dir) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(d)) => d.join("postgresql.crt"),
        (None, None) => return Ok(None),
    };
    if !cert_path.exists() {
        return Ok(None);
    }
    let chain = certificates(&cert_path, "certificate file")?;
    let key_path = match (&cfg.sslkey, &cfg.ssl_dir) {
        (Some(k), _) if k.contains(':') && !k.starts_with('/') => {
            return Err(tls_error(format!(
                "sslkey=\"{k}\" names an OpenSSL engine key, which walsink cannot use; name a PEM key file"
            )));
        }
        (Some(k), _) => PathBuf::from(k),
        (None, Some(d)) => d.join("postgresql.key"),
        (None, None) => PathBuf::from("postgresql.key"),
    };
    let meta = fs::metadata(&key_path).map_err(|_| {
        tls_error(format!(
            "certificate present, but not private key file \"{}\"",
            key_path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(tls_error(format!(
            "private key file \"{}\" is not a regular file",
            key_path.display()
        )));
    }
    if key_too_open(meta.uid(), meta.mode()) {
        return Err(tls_error(format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
            key_path.display()
        )));
    }
    let bytes = read_file(&key_path, "private key file")?;
    if bytes.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(tls_error(format!(
            "private key file \"{}\" is encrypted, and walsink cannot decrypt keys (sslpassword); store it decrypted, readable by its owner only (openssl pkey -in KEY -out PLAIN; chmod 600 PLAIN)",
            key_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        tls_error(format!(
            "could not load private key file \"{}\": {e}",
            key_path.display()
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        tls_error(format!(
            "could not use certificate file \"{}\" with private key file \"{}\": {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    Ok(Some(Arc::new(certified)))
}

/// `sslkeylogfile`: the session secrets appended to a file in the NSS key log format
/// (`LABEL CLIENT_RANDOM SECRET`, hexadecimal), which Wireshark reads, as libpq 18
/// writes it. The file is created readable by its owner only; one that cannot be opened
/// is an error, not ignored.
struct KeyLogFile {
    path: PathBuf,
    file: std::sync::Mutex<fs::File>,
}

impl KeyLogFile {
    fn open(path: &Path) -> Result<KeyLogFile, ReceiverError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                tls_error(format!(
                    "could not open SSL key logging file \"{}\" (sslkeylogfile): {e}",
                    path.display()
                ))
            })?;
        Ok(KeyLogFile {
            path: path.to_owned(),
            file: std::sync::Mutex::new(file),
        })
    }
}

impl std::fmt::Debug for KeyLogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyLogFile({})", self.path.display())
    }
}

impl rustls::KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        use std::fmt::Write as _;
        use std::io::Write as _;
        let mut line = format!("{label} ");
        for b in client_random {
            let _ = write!(line, "{b:02x}");
        }
        line.push(' ');
        for b in secret {
            let _ = write!(line, "{b:02x}");
        }
        line.push('\n');
        if let Ok(mut f) = self.file.lock()
            && let Err(e) = f.write_all(line.as_bytes())
        {
            tracing::warn!(
                "could not write to SSL key logging file \"{}\": {e}",
                self.path.display()
            );
        }
    }
}

/// libpq's test: a key must not be accessible to group or others at all, except that
/// one owned by root may be readable by its group (system-wide keys shared through a
/// group). Whoever can read a key this restricted owns it.
fn key_too_open(owner: u32, mode: u32) -> bool {
    let forbidden = if owner == 0 { 0o037 } else { 0o077 };
    mode & forbidden != 0
}

/// Sends the configured client certificate when the server asks, and notes that it did.
#[derive(Debug)]
struct ClientCert {
    key: Option<Arc<CertifiedKey>>,
    requested: Arc<AtomicBool>,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.requested.store(true, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        // Always consulted, so that a request is noticed (sslcertmode=require).
        true
    }
}

/// The server checks short of `verify-full`: none (`require`, and `prefer`, `allow`
/// without roots: any certificate) or, for `verify-ca`, everything webpki checks (chain,
/// dates, usage, revocation) but the name. Either way the handshake's signatures are
/// verified, so the peer holds the key of the certificate it sent (which channel binding
/// relies on).
#[derive(Debug)]
struct PartialCheck {
    /// `verify-ca`'s verifier, whose name check is ignored; `None`: no check.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PartialCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the name last, after everything else passed.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // As webpki's own verifier does, with the same provider's algorithms.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The error for a failed handshake (or a TLS failure on a later read): the server's
/// certificate refused, a TLS alert from the server (e.g. it refused the client
/// certificate), or the connection lost (transient).
pub fn handshake_error(e: std::io::Error, setup: Option<&TlsSetup>) -> ReceiverError {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return ReceiverError::network("SSL handshake failed", e);
    };
    let hint = match (tls, setup) {
        (rustls::Error::InvalidCertificate(c), Some(s)) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "; the server's certificate was not issued by a certificate authority in {} (sslrootcert names the file to trust)",
                s.roots
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "; the server's certificate has expired: renew it on the server".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "; connect with the host name the certificate was issued for, or fix the certificate's subject alternative names".to_owned()
            }
            CertificateError::Revoked => {
                "; the server's certificate is on the certificate revocation list (sslcrl)".to_owned()
            }
            _ => String::new(),
        },
        (rustls::Error::AlertReceived(_), _) => {
            "; the server refused the TLS connection (its log says why: a client certificate it does not trust, or no common protocol version)".to_owned()
        }
        _ => String::new(),
    };
    tls_error(format!("SSL error: {tls}{hint}"))
}

/// The summary logged once a connection is encrypted.
pub fn describe(conn: &rustls::ClientConnection, setup: &TlsSetup, mode: &SslMode) -> String {
    let version = conn
        .protocol_version()
        .map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    let checked = match setup.check {
        ServerCheck::None => "server certificate not checked".to_owned(),
        ServerCheck::Chain => format!("server certificate checked against {}", setup.roots),
        ServerCheck::ChainAndName => format!(
            "server certificate and host name checked against {}",
            setup.roots
        ),
    };
    format!(
        "SSL connection (protocol: {version}, cipher: {cipher}, sslmode={}; {checked})",
        mode.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_permissions_as_libpq() {
        let me = 1000;
        for (owner, mode, refused) in [
            (me, 0o100600, false),
            (me, 0o100400, false),
            (me, 0o100640, true),
            (me, 0o100604, true),
            (me, 0o100610, true),
            (0, 0o100640, false),
            (0, 0o100600, false),
            (0, 0o100660, true),
            (0, 0o100644, true),
            (0, 0o100650, true),
            (1001, 0o100644, true),
        ] {
            assert_eq!(key_too_open(owner, mode), refused, "{owner} {mode:o}");
        }
    }
}
