//! TLS negotiation as libpq does it, without I/O: the SSLRequest and the server's
//! one-byte answer, the order of attempts `sslmode` asks for, how the server's
//! certificate must be checked, and the `tls-server-end-point` channel-binding data
//! (RFC 5929) computed from the server's certificate.
//!
//! The driver (walsink's receiver crate) opens sockets, runs the rustls handshake and
//! reads certificate files; everything it decides on comes from here.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use crate::conninfo::{ConnConfig, SslMode, SslNegotiation};

/// The ALPN protocol PostgreSQL 17 and later require for direct TLS (and accept with an
/// SSLRequest).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why TLS could not be negotiated as the options require.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The server answered `N` to the SSLRequest, and `sslmode` requires TLS.
    #[error(
        "server does not support SSL, but SSL was required by sslmode={sslmode}; turn on ssl in the server's postgresql.conf (with ssl_cert_file and ssl_key_file), or use sslmode=prefer to allow an unencrypted connection"
    )]
    Refused {
        /// The mode in effect.
        sslmode: &'static str,
    },
    /// The answer to the SSLRequest was neither `S`, `N` nor an error.
    #[error(
        "received invalid response to SSL negotiation: byte 0x{0:02x}; the server is not PostgreSQL or something in between interferes"
    )]
    BadResponse(u8),
    /// The server's certificate could not be parsed far enough to find the hash for
    /// channel binding.
    #[error("could not compute the channel binding data from the server's certificate: {0}")]
    CertificateHash(&'static str),
}

/// Appends an SSLRequest to `out`.
pub fn encode_ssl_request(out: &mut BytesMut) {
    frontend::ssl_request(out);
}

/// The server's answer to an SSLRequest: one byte, read alone (nothing after it may be
/// read before the TLS handshake: CVE-2021-23222).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslResponse {
    /// `S`: start the TLS handshake.
    Accepted,
    /// `N`: the server does not do TLS.
    Refused,
    /// `E`: an ErrorResponse follows (e.g. too many connections); read it as a message
    /// whose tag byte was this one.
    Error,
}

impl SslResponse {
    /// Interprets the byte.
    pub fn from_byte(b: u8) -> Result<SslResponse, TlsError> {
        match b {
            b'S' => Ok(SslResponse::Accepted),
            b'N' => Ok(SslResponse::Refused),
            b'E' => Ok(SslResponse::Error),
            other => Err(TlsError::BadResponse(other)),
        }
    }
}

/// How one connection attempt starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The startup packet in plaintext.
    Plain,
    /// An SSLRequest, then TLS if the server accepts.
    SslRequest,
    /// The TLS handshake at once (`sslnegotiation=direct`, ALPN `postgresql`).
    Direct,
}

/// What `sslmode` and `sslnegotiation` ask of the connection attempts to one server.
///
/// * `disable`: plaintext only.
/// * `allow`: plaintext; if the server refuses that connection during startup (an
///   ErrorResponse, e.g. `pg_hba.conf` has only `hostssl` lines), a new one with TLS.
/// * `prefer` (the default): an SSLRequest; if the server answers `N`, plaintext on
///   the same connection. (libpq also retries in plaintext after a failed handshake or
///   a refusal over TLS; walsink does not: only the server's `N` lets it fall back.)
/// * `require`, `verify-ca`, `verify-full`: TLS or nothing.
///
/// Over Unix sockets TLS is never used, whatever the mode (as libpq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    mode: SslModeKind,
    direct: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SslModeKind {
    Disable,
    Allow,
    Prefer,
    Require(&'static str),
}

impl TlsPolicy {
    /// The policy of `cfg`.
    pub fn of(cfg: &ConnConfig) -> TlsPolicy {
        let mode = match cfg.sslmode {
            SslMode::Disable => SslModeKind::Disable,
            SslMode::Allow => SslModeKind::Allow,
            SslMode::Prefer => SslModeKind::Prefer,
            ref m => SslModeKind::Require(m.as_str()),
        };
        TlsPolicy {
            mode,
            direct: cfg.sslnegotiation == SslNegotiation::Direct,
        }
    }

    /// How the first connection to a server starts; `unix_socket`: over a Unix socket.
    pub fn first(&self, unix_socket: bool) -> Start {
        match self.mode {
            _ if unix_socket => Start::Plain,
            SslModeKind::Disable | SslModeKind::Allow => Start::Plain,
            _ if self.direct => Start::Direct,
            SslModeKind::Prefer | SslModeKind::Require(_) => Start::SslRequest,
        }
    }

    /// Whether the server's `N` lets the connection go on in plaintext; else the error.
    pub fn on_refusal(&self) -> Result<(), TlsError> {
        match self.mode {
            SslModeKind::Require(sslmode) => Err(TlsError::Refused { sslmode }),
            _ => Ok(()),
        }
    }

    /// How to retry after the server refused a plaintext connection during startup:
    /// `Some` for `allow` over TCP, `None` otherwise.
    pub fn retry_after_plain_refusal(&self, unix_socket: bool) -> Option<Start> {
        (self.mode == SslModeKind::Allow && !unix_socket).then_some(Start::SslRequest)
    }

    /// Whether the connection must be encrypted.
    pub fn required(&self) -> bool {
        matches!(self.mode, SslModeKind::Require(_))
    }
}

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// Not at all (the handshake's signatures still are): `require`, `prefer` and
    /// `allow` without a root certificate file.
    None,
    /// The chain up to a trusted root, validity dates, revocation: `verify-ca`, and the
    /// weaker modes when a root certificate file exists (libpq's behaviour).
    Chain,
    /// The chain and the host name (or IP address) against the certificate's subject
    /// alternative names: `verify-full`.
    ChainAndName,
}

impl ServerCheck {
    /// The check for `sslmode` when trusted roots are (`roots_exist`) or are not
    /// available; `None` when the mode needs roots that are missing (libpq: "root
    /// certificate file ... does not exist").
    pub fn of(sslmode: &SslMode, roots_exist: bool) -> Option<ServerCheck> {
        match (sslmode, roots_exist) {
            (SslMode::VerifyFull, true) => Some(ServerCheck::ChainAndName),
            (SslMode::VerifyCa, true) => Some(ServerCheck::Chain),
            (SslMode::VerifyFull | SslMode::VerifyCa, false) => None,
            (_, true) => Some(ServerCheck::Chain),
            (_, false) => Some(ServerCheck::None),
        }
    }
}

/// The `tls-server-end-point` channel-binding data of a server certificate (RFC 5929,
/// section 4.1): the certificate (DER) hashed with the hash of its signature algorithm,
/// SHA-256 when that is MD5 or SHA-1. As PostgreSQL's `be_tls_get_certificate_hash`.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, TlsError> {
    let hash = signature_hash(cert_der)?;
    Ok(match hash {
        Hash::Sha224 => Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

// OID arcs (DER content bytes) that the algorithms below extend by one last byte.

/// 1.2.840.113549.1.1 (PKCS #1): RSA signatures.
const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
/// 1.2.840.10045.4: ECDSA signatures.
const X962_SIGNATURES: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
/// 1.2.840.10045.4.3: ECDSA with SHA-2.
const ECDSA_WITH_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
/// 1.2.840.10040.4: DSA.
const X957: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04];
/// 2.16.840.1.101.3.4.3 (NIST): DSA with SHA-2.
const NIST_SIG_ALGS: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
/// 2.16.840.1.101.3.4.2 (NIST): the SHA-2 hashes.
const NIST_HASH_ALGS: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
/// 1.3.14.3.2 (OIW): SHA-1.
const OIW_SECSIG_ALGS: &[u8] = &[0x2b, 0x0e, 0x03, 0x02];

/// Signature algorithm OIDs (arc and last byte) and the hash channel binding uses.
const SIGNATURE_HASHES: &[(&[u8], u8, Hash)] = &[
    // md5WithRSAEncryption, sha1WithRSAEncryption: upgraded to SHA-256.
    (PKCS1, 0x04, Hash::Sha256),
    (PKCS1, 0x05, Hash::Sha256),
    // sha256/384/512/224WithRSAEncryption.
    (PKCS1, 0x0b, Hash::Sha256),
    (PKCS1, 0x0c, Hash::Sha384),
    (PKCS1, 0x0d, Hash::Sha512),
    (PKCS1, 0x0e, Hash::Sha224),
    // ecdsa-with-SHA1 (upgraded), ecdsa-with-SHA224/256/384/512.
    (X962_SIGNATURES, 0x01, Hash::Sha256),
    (ECDSA_WITH_SHA2, 0x01, Hash::Sha224),
    (ECDSA_WITH_SHA2, 0x02, Hash::Sha256),
    (ECDSA_WITH_SHA2, 0x03, Hash::Sha384),
    (ECDSA_WITH_SHA2, 0x04, Hash::Sha512),
    // dsa-with-sha1 (upgraded), dsa-with-sha224/256.
    (X957, 0x03, Hash::Sha256),
    (NIST_SIG_ALGS, 0x01, Hash::Sha224),
    (NIST_SIG_ALGS, 0x02, Hash::Sha256),
];

/// RSASSA-PSS (PKCS #1, last byte 10): the hash is in the parameters.
const RSASSA_PSS: u8 = 0x0a;

/// Hash algorithm OIDs (arc and last byte) in RSASSA-PSS parameters.
const DIGESTS: &[(&[u8], u8, Hash)] = &[
    // sha1 (upgraded).
    (OIW_SECSIG_ALGS, 0x1a, Hash::Sha256),
    (NIST_HASH_ALGS, 0x01, Hash::Sha256),
    (NIST_HASH_ALGS, 0x02, Hash::Sha384),
    (NIST_HASH_ALGS, 0x03, Hash::Sha512),
    (NIST_HASH_ALGS, 0x04, Hash::Sha224),
];

/// Whether `oid` is `arc` extended by `last`.
fn is_oid(oid: &[u8], arc: &[u8], last: u8) -> bool {
    oid.split_last() == Some((&last, arc))
}

/// The hash `table` gives `oid`.
fn hash_of(table: &[(&[u8], u8, Hash)], oid: &[u8]) -> Option<Hash> {
    table
        .iter()
        .find(|(arc, last, _)| is_oid(oid, arc, *last))
        .map(|&(_, _, h)| h)
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
/// `[0] EXPLICIT`, the hashAlgorithm of RSASSA-PSS parameters.
const CONTEXT_0: u8 = 0xa0;

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... }
fn signature_hash(cert: &[u8]) -> Result<Hash, TlsError> {
    let bad = TlsError::CertificateHash("the certificate is not valid DER");
    let (body, _) = tlv(cert, SEQUENCE).ok_or(bad.clone())?;
    let (_tbs, rest) = tlv(body, SEQUENCE).ok_or(bad.clone())?;
    let (alg, _) = tlv(rest, SEQUENCE).ok_or(bad.clone())?;
    let (oid, params) = tlv(alg, OID).ok_or(bad.clone())?;
    if let Some(h) = hash_of(SIGNATURE_HASHES, oid) {
        return Ok(h);
    }
    if is_oid(oid, PKCS1, RSASSA_PSS) {
        // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, ... }
        let (seq, _) = tlv(params, SEQUENCE).ok_or(bad.clone())?;
        let Some((explicit, _)) = tlv(seq, CONTEXT_0) else {
            return Ok(Hash::Sha256);
        };
        let (hash_alg, _) = tlv(explicit, SEQUENCE).ok_or(bad.clone())?;
        let (hash_oid, _) = tlv(hash_alg, OID).ok_or(bad)?;
        return hash_of(DIGESTS, hash_oid).ok_or(TlsError::CertificateHash(
            "the RSASSA-PSS signature uses an unknown hash",
        ));
    }
    Err(TlsError::CertificateHash(
        "its signature algorithm has no hash for tls-server-end-point (Ed25519 or Ed448, or unknown)",
    ))
}

/// The content of the DER element of type `tag` at the start of `der`, and what
/// follows it; `None` if it is not there or its length is malformed.
fn tlv(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::{ConnOptions, Env};

    fn policy(conninfo: &str) -> TlsPolicy {
        let env = Env {
            os_user: Some("u".into()),
            ..Env::default()
        };
        TlsPolicy::of(
            &ConnConfig::resolve(&ConnOptions::parse(conninfo).unwrap(), &env, "w").unwrap(),
        )
    }

    #[test]
    fn ssl_request_is_libpq_s() {
        let mut out = BytesMut::new();
        encode_ssl_request(&mut out);
        assert_eq!(&out[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        assert_eq!(SslResponse::from_byte(b'S'), Ok(SslResponse::Accepted));
        assert_eq!(SslResponse::from_byte(b'N'), Ok(SslResponse::Refused));
        assert_eq!(SslResponse::from_byte(b'E'), Ok(SslResponse::Error));
        assert_eq!(
            SslResponse::from_byte(b'H').unwrap_err().to_string(),
            "received invalid response to SSL negotiation: byte 0x48; the server is not PostgreSQL or something in between interferes"
        );
    }

    #[test]
    fn attempts_follow_sslmode() {
        for (conninfo, tcp, unix, refusal_ok, retry) in [
            ("sslmode=disable", Start::Plain, Start::Plain, true, None),
            (
                "sslmode=allow",
                Start::Plain,
                Start::Plain,
                true,
                Some(Start::SslRequest),
            ),
            ("", Start::SslRequest, Start::Plain, true, None),
            (
                "sslmode=prefer",
                Start::SslRequest,
                Start::Plain,
                true,
                None,
            ),
            (
                "sslmode=require",
                Start::SslRequest,
                Start::Plain,
                false,
                None,
            ),
            (
                "sslmode=verify-ca",
                Start::SslRequest,
                Start::Plain,
                false,
                None,
            ),
            (
                "sslmode=verify-full",
                Start::SslRequest,
                Start::Plain,
                false,
                None,
            ),
            (
                "sslmode=require sslnegotiation=direct",
                Start::Direct,
                Start::Plain,
                false,
                None,
            ),
        ] {
            let p = policy(conninfo);
            assert_eq!(p.first(false), tcp, "{conninfo}");
            assert_eq!(p.first(true), unix, "{conninfo}");
            assert_eq!(p.on_refusal().is_ok(), refusal_ok, "{conninfo}");
            assert_eq!(p.retry_after_plain_refusal(false), retry, "{conninfo}");
            assert_eq!(p.retry_after_plain_refusal(true), None, "{conninfo}");
            assert_eq!(p.required(), !refusal_ok, "{conninfo}");
        }
        assert_eq!(
            policy("sslmode=verify-full")
                .on_refusal()
                .unwrap_err()
                .to_string(),
            "server does not support SSL, but SSL was required by sslmode=verify-full; turn on ssl in the server's postgresql.conf (with ssl_cert_file and ssl_key_file), or use sslmode=prefer to allow an unencrypted connection"
        );
    }

    #[test]
    fn server_check_follows_libpq() {
        use ServerCheck as C;
        for (mode, roots, check) in [
            (SslMode::VerifyFull, true, Some(C::ChainAndName)),
            (SslMode::VerifyFull, false, None),
            (SslMode::VerifyCa, true, Some(C::Chain)),
            (SslMode::VerifyCa, false, None),
            // require (and prefer, allow) verify the chain when root.crt exists.
            (SslMode::Require, true, Some(C::Chain)),
            (SslMode::Require, false, Some(C::None)),
            (SslMode::Prefer, true, Some(C::Chain)),
            (SslMode::Prefer, false, Some(C::None)),
        ] {
            assert_eq!(ServerCheck::of(&mode, roots), check, "{mode:?} {roots}");
        }
    }

    /// A certificate skeleton with the given signature algorithm element.
    fn cert_with(alg: &[u8]) -> Vec<u8> {
        let tbs = [SEQUENCE, 3, 0x02, 0x01, 0x01];
        let sig = [0x03, 2, 0, 0xff];
        let mut body = tbs.to_vec();
        body.extend_from_slice(alg);
        body.extend_from_slice(&sig);
        // Long-form length, to cover it.
        let mut cert = vec![SEQUENCE, 0x81, u8::try_from(body.len()).unwrap()];
        cert.extend_from_slice(&body);
        cert
    }

    fn alg(oid: &[u8], params: &[u8]) -> Vec<u8> {
        let mut inner = vec![OID, u8::try_from(oid.len()).unwrap()];
        inner.extend_from_slice(oid);
        inner.extend_from_slice(params);
        let mut v = vec![SEQUENCE, u8::try_from(inner.len()).unwrap()];
        v.extend_from_slice(&inner);
        v
    }

    /// RSASSA-PSS parameters naming the hash algorithm `oid`.
    fn pss_params(oid: &[u8]) -> Vec<u8> {
        let hash_alg = alg(oid, &[]);
        let mut explicit = vec![CONTEXT_0, u8::try_from(hash_alg.len()).unwrap()];
        explicit.extend_from_slice(&hash_alg);
        let mut params = vec![SEQUENCE, u8::try_from(explicit.len()).unwrap()];
        params.extend_from_slice(&explicit);
        params
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        // Every signature algorithm OID (DER content, written out here rather than taken
        // from the tables) and the length of the hash channel binding uses with it.
        for (oid, len) in [
            (
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04][..],
                32,
            ), // md5WithRSA -> sha256
            (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], 32), // sha1WithRSA -> sha256
            (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], 32), // sha256WithRSA
            (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], 48), // sha384WithRSA
            (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], 64), // sha512WithRSA
            (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e], 28), // sha224WithRSA
            (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], 32), // ecdsa-with-SHA1 -> sha256
            (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01], 28), // ecdsa-with-SHA224
            (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], 32), // ecdsa-with-SHA256
            (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], 48), // ecdsa-with-SHA384
            (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04], 64), // ecdsa-with-SHA512
            (&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03], 32), // dsa-with-sha1 -> sha256
            (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x01], 28), // dsa-with-sha224
            (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02], 32), // dsa-with-sha256
        ] {
            let cert = cert_with(&alg(oid, &[0x05, 0x00]));
            let h = tls_server_end_point(&cert).unwrap();
            assert_eq!(h.len(), len, "{oid:x?}");
            if len == 32 {
                assert_eq!(h, Sha256::digest(&cert).to_vec());
            }
        }
        // RSASSA-PSS (1.2.840.113549.1.1.10) with each hash in its parameters, and with
        // the default (SHA-1, upgraded to SHA-256).
        let rsassa_pss = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
        for (digest, len) in [
            (&[0x2b, 0x0e, 0x03, 0x02, 0x1a][..], 32), // sha1 -> sha256
            (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01], 32), // sha256
            (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02], 48), // sha384
            (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03], 64), // sha512
            (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04], 28), // sha224
        ] {
            let cert = cert_with(&alg(&rsassa_pss, &pss_params(digest)));
            let h = tls_server_end_point(&cert).unwrap();
            assert_eq!(h.len(), len, "{digest:x?}");
            if len == 48 {
                assert_eq!(h, Sha384::digest(&cert).to_vec());
            }
        }
        let cert = cert_with(&alg(&rsassa_pss, &[SEQUENCE, 0]));
        assert_eq!(tls_server_end_point(&cert).unwrap().len(), 32);
        // An unknown hash in the parameters is refused.
        let md2 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x02];
        assert!(matches!(
            tls_server_end_point(&cert_with(&alg(&rsassa_pss, &pss_params(&md2)))),
            Err(TlsError::CertificateHash(m)) if m.contains("unknown hash")
        ));
        // Ed25519 has no hash; garbage is not a certificate.
        let ed25519 = cert_with(&alg(&[0x2b, 0x65, 0x70], &[]));
        assert!(matches!(
            tls_server_end_point(&ed25519),
            Err(TlsError::CertificateHash(m)) if m.contains("Ed25519")
        ));
        for garbage in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 5, 1],
        ] {
            assert!(tls_server_end_point(garbage).is_err(), "{garbage:x?}");
        }
    }
}
