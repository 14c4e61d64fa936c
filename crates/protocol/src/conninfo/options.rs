//! Options with a fixed set of values, and what walsink refuses to do.

use std::str::FromStr;

use super::error::ConnInfoError;
use super::resolve::ConnConfig;

impl ConnConfig {
    /// The first option that asks for something walsink cannot do, as an error naming
    /// it and what to do instead; `None` if walsink can honour them all.
    ///
    /// Refused rather than ignored: `gssencmode=require` (walsink has no GSSAPI),
    /// `sslpassword` (walsink reads no encrypted keys), `sslcompression=1` (no TLS
    /// library compresses any more), `ssl_min_protocol_version` or
    /// `ssl_max_protocol_version` below TLSv1.2 (walsink speaks TLS 1.2 and 1.3 only).
    pub fn unsupported(&self) -> Option<ConnInfoError> {
        if self.gssencmode == GssEncMode::Require {
            return Some(ConnInfoError::Unsupported {
                option: "gssencmode",
                value: "require".to_owned(),
                why: "requires GSSAPI encryption, which walsink does not support",
                fix: "use gssencmode=disable or gssencmode=prefer (walsink then connects without GSSAPI encryption), and sslmode=verify-full for an encrypted connection",
            });
        }
        if self.sslpassword.is_some() {
            return Some(ConnInfoError::Unsupported {
                option: "sslpassword",
                value: super::REDACTED.to_owned(),
                why: "gives the pass phrase of an encrypted client key, which walsink cannot decrypt",
                fix: "remove sslpassword and store the key decrypted, readable by its owner only (openssl pkey -in client.key -out client.plain.key; chmod 600 client.plain.key)",
            });
        }
        if self.sslcompression {
            return Some(ConnInfoError::Unsupported {
                option: "sslcompression",
                value: "1".to_owned(),
                why: "asks for TLS compression, which walsink does not support (it leaks secrets, CRIME)",
                fix: "remove sslcompression or set it to 0",
            });
        }
        for (option, version) in [
            (
                "ssl_min_protocol_version",
                Some(self.ssl_min_protocol_version),
            ),
            ("ssl_max_protocol_version", self.ssl_max_protocol_version),
        ] {
            if let Some(v) = version.filter(|&v| v < TlsVersion::V1_2) {
                return Some(ConnInfoError::Unsupported {
                    option,
                    value: v.as_str().to_owned(),
                    why: "names a TLS version before 1.2, which walsink does not speak",
                    fix: "use TLSv1.2 or TLSv1.3, or leave it unset",
                });
            }
        }
        None
    }
}

/// `target_session_attrs`: which kind of server is acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// `any`: every server.
    Any,
    /// `read-write`: a server that accepts writes.
    ReadWrite,
    /// `read-only`: a server that does not accept writes.
    ReadOnly,
    /// `primary`: a server not in recovery.
    Primary,
    /// `standby`: a server in recovery.
    Standby,
    /// `prefer-standby`: a standby if any, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            _ => {
                return Err(ConnInfoError::InvalidTargetSessionAttrs {
                    value: s.to_owned(),
                });
            }
        })
    }
}

/// `sslmode`: whether and how to use TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// `disable`: never.
    Disable,
    /// `allow`: try without, then with.
    Allow,
    /// `prefer`: try with, then without (the default).
    Prefer,
    /// `require`: always, without certificate checks.
    Require,
    /// `verify-ca`: always, checking the certificate chain.
    VerifyCa,
    /// `verify-full`: always, checking the chain and the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(ConnInfoError::InvalidSslMode {
                    value: s.to_owned(),
                });
            }
        })
    }
}

/// `channel_binding`: whether SCRAM must bind the authentication to the TLS channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBinding {
    /// `disable`: never use channel binding.
    Disable,
    /// `prefer`: use it when the server offers it (over TLS). The default.
    Prefer,
    /// `require`: refuse any authentication but SCRAM-SHA-256-PLUS, which needs TLS.
    Require,
}

impl ChannelBinding {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
        }
    }
}

impl FromStr for ChannelBinding {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            _ => {
                return Err(ConnInfoError::InvalidChannelBinding {
                    value: s.to_owned(),
                });
            }
        })
    }
}

/// `gssencmode`: whether to encrypt the connection with GSSAPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GssEncMode {
    /// `disable`: never.
    Disable,
    /// `prefer`: when available (walsink has no GSSAPI, so never). The default.
    Prefer,
    /// `require`: always; walsink cannot, and refuses.
    Require,
}

impl GssEncMode {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
        }
    }
}

impl FromStr for GssEncMode {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            _ => {
                return Err(ConnInfoError::InvalidGssEncMode {
                    value: s.to_owned(),
                });
            }
        })
    }
}

/// An authentication request a server can make, as `require_auth` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// `password`: AuthenticationCleartextPassword.
    Password,
    /// `md5`: AuthenticationMD5Password.
    Md5,
    /// `gss`: AuthenticationGSS (and its continuation).
    Gss,
    /// `sspi`: AuthenticationSSPI (and its continuation).
    Sspi,
    /// `scram-sha-256`: AuthenticationSASL and its continuation and final messages.
    ScramSha256,
}

impl AuthMethod {
    const ALL: [AuthMethod; 5] = [
        AuthMethod::Password,
        AuthMethod::Md5,
        AuthMethod::Gss,
        AuthMethod::Sspi,
        AuthMethod::ScramSha256,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The `require_auth` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

/// `require_auth` (PostgreSQL 16's syntax): which authentication requests the client
/// answers, and whether the server may let it in without any.
///
/// A comma-separated list of `password`, `md5`, `gss`, `sspi`, `scram-sha-256` and
/// `none` allows exactly those (`none`: a server that authenticates nobody, `trust`);
/// a list of `!`-negated methods allows everything else. Mixing negated and plain
/// methods, naming one twice or an unknown method is an error, as in libpq's
/// `connectOptions2`. Unset means no requirement at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireAuth {
    /// The setting as given, for messages.
    text: String,
    /// Bit set of allowed [`AuthMethod`]s.
    allowed: u8,
    /// Whether the server must complete an authentication exchange (`none` not allowed).
    auth_required: bool,
}

impl RequireAuth {
    /// The setting as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the client may answer a request for `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.allowed & method.bit() != 0
    }

    /// Whether a server may let the client in without a completed authentication
    /// exchange (`none` allowed).
    pub fn allows_none(&self) -> bool {
        !self.auth_required
    }
}

impl FromStr for RequireAuth {
    type Err = ConnInfoError;

    /// Parse as libpq 16 does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = AuthMethod::ALL.iter().fold(0, |m, a| m | a.bit());
        let mut allowed = 0u8;
        let mut auth_required = true;
        let mut negated = false;
        for (i, part) in s.split(',').enumerate() {
            let method = match part.strip_prefix('!') {
                Some(rest) => {
                    if i == 0 {
                        // A negated list starts from everything and takes away.
                        negated = true;
                        auth_required = false;
                        allowed = all;
                    } else if !negated {
                        return Err(ConnInfoError::RequireAuthMixed {
                            method: part.to_owned(),
                            negated: true,
                        });
                    }
                    rest
                }
                None if negated => {
                    return Err(ConnInfoError::RequireAuthMixed {
                        method: part.to_owned(),
                        negated: false,
                    });
                }
                None => part,
            };
            let duplicate = || ConnInfoError::RequireAuthDuplicate {
                method: part.to_owned(),
            };
            if method == "none" {
                // Plain `none`: no exchange needed; `!none`: one is.
                if auth_required == negated {
                    return Err(duplicate());
                }
                auth_required = negated;
                continue;
            }
            let Some(m) = AuthMethod::ALL.into_iter().find(|m| m.as_str() == method) else {
                return Err(ConnInfoError::InvalidRequireAuth {
                    value: method.to_owned(),
                });
            };
            if negated {
                if allowed & m.bit() == 0 {
                    return Err(duplicate());
                }
                allowed &= !m.bit();
            } else {
                if allowed & m.bit() != 0 {
                    return Err(duplicate());
                }
                allowed |= m.bit();
            }
        }
        Ok(RequireAuth {
            text: s.to_owned(),
            allowed,
            auth_required,
        })
    }
}

/// `sslnegotiation` (PostgreSQL 17): how TLS is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslNegotiation {
    /// `postgres`: an SSLRequest first, TLS if the server answers `S`. The default.
    Postgres,
    /// `direct`: the TLS handshake at once, with ALPN `postgresql` (servers 17 and later).
    Direct,
}

impl SslNegotiation {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Direct => "direct",
        }
    }
}

impl FromStr for SslNegotiation {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "postgres" => Ok(Self::Postgres),
            "direct" => Ok(Self::Direct),
            _ => Err(ConnInfoError::InvalidValue {
                option: "sslnegotiation",
                value: s.to_owned(),
                allowed: "postgres or direct",
            }),
        }
    }
}

/// `sslcertmode` (PostgreSQL 16): whether a client certificate is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslCertMode {
    /// `disable`: never.
    Disable,
    /// `allow`: when the server asks and one is configured. The default.
    Allow,
    /// `require`: the server must ask for it, else the connection is refused.
    Require,
}

impl SslCertMode {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Require => "require",
        }
    }
}

impl FromStr for SslCertMode {
    type Err = ConnInfoError;

    /// Parse the libpq spelling (case-sensitive, as libpq).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "allow" => Ok(Self::Allow),
            "require" => Ok(Self::Require),
            _ => Err(ConnInfoError::InvalidValue {
                option: "sslcertmode",
                value: s.to_owned(),
                allowed: "disable, allow or require",
            }),
        }
    }
}

/// A TLS protocol version as `ssl_min_protocol_version` and `ssl_max_protocol_version`
/// name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// `TLSv1` (1.0).
    V1_0,
    /// `TLSv1.1`.
    V1_1,
    /// `TLSv1.2`, the default minimum.
    V1_2,
    /// `TLSv1.3`.
    V1_3,
}

impl TlsVersion {
    /// The libpq spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::V1_0 => "TLSv1",
            Self::V1_1 => "TLSv1.1",
            Self::V1_2 => "TLSv1.2",
            Self::V1_3 => "TLSv1.3",
        }
    }

    /// Parse as libpq's `sslVerifyProtocolVersion` (case-insensitive).
    pub(super) fn parse(option: &'static str, s: &str) -> Result<Self, ConnInfoError> {
        [Self::V1_0, Self::V1_1, Self::V1_2, Self::V1_3]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ConnInfoError::InvalidValue {
                option,
                value: s.to_owned(),
                allowed: "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
            })
    }
}
