//! Options with a fixed set of values, and what walsink refuses to do.

use std::str::FromStr;

use super::error::ConnInfoError;
use super::resolve::ConnConfig;

impl ConnConfig {
    /// The first option that asks for a protection walsink cannot give, as an error
    /// naming it and what to do instead; `None` if walsink can honour them all.
    ///
    /// walsink has no TLS and no GSSAPI yet, so it refuses `sslmode=require`,
    /// `verify-ca` and `verify-full`, `channel_binding=require` (SCRAM-SHA-256-PLUS binds
    /// to the TLS channel) and `gssencmode=require`, rather than connect with less than
    /// was asked for. `prefer` and `allow` modes connect unprotected, as libpq does when
    /// the server or the build offers nothing better.
    pub fn unsupported(&self) -> Option<ConnInfoError> {
        if matches!(
            self.sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Some(ConnInfoError::Unsupported {
                option: "sslmode",
                value: self.sslmode.as_str().to_owned(),
                why: "requires TLS, which this version of walsink does not support yet",
                fix: "use sslmode=disable or sslmode=prefer (unencrypted), or tunnel the connection",
            });
        }
        if self.channel_binding == ChannelBinding::Require {
            return Some(ConnInfoError::Unsupported {
                option: "channel_binding",
                value: "require".to_owned(),
                why: "requires SCRAM-SHA-256-PLUS authentication over TLS, which this version of walsink does not support yet",
                fix: "use channel_binding=prefer or channel_binding=disable (SCRAM without channel binding), or tunnel the connection",
            });
        }
        if self.gssencmode == GssEncMode::Require {
            return Some(ConnInfoError::Unsupported {
                option: "gssencmode",
                value: "require".to_owned(),
                why: "requires GSSAPI encryption, which walsink does not support",
                fix: "use gssencmode=disable or gssencmode=prefer (walsink then connects without GSSAPI encryption)",
            });
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
