//! The startup packet and the authentication exchange.
//!
//! [`Startup`] is a state machine: the driver writes [`Startup::startup_packet`], then
//! feeds every backend message to [`Startup::handle`] and writes whatever it appends to
//! the output buffer, until it returns [`StartupOutcome::Ready`]. Supported methods are
//! trust, cleartext password, md5 and SCRAM-SHA-256 (without channel binding until TLS
//! lands; the SCRAM client is postgres-protocol's).

use std::collections::HashMap;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use crate::error::ProtocolError;
use crate::frame::BackendMessage;

/// What the client identifies as at startup.
#[derive(Clone, Debug)]
pub struct StartupParams {
    /// Role name.
    pub user: String,
    /// Database name; `replication` for physical replication connections.
    pub database: String,
    /// `application_name`, shown in `pg_stat_replication` and matched by
    /// `synchronous_standby_names`.
    pub application_name: String,
    /// The libpq `options` string (command-line options for the backend), if any.
    pub options: Option<String>,
}

/// The server's parameters reported during startup.
#[derive(Clone, Debug, Default)]
pub struct ServerParams {
    /// Every `ParameterStatus` received.
    pub params: HashMap<String, String>,
}

impl ServerParams {
    /// `server_version_num` derived from `server_version` (e.g. "15.18 (Debian ...)" → 150018).
    pub fn server_version_num(&self) -> Option<u32> {
        let v = self.params.get("server_version")?;
        let digits: String = v
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = digits
            .split('.')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        Some(major * 10000 + minor)
    }

    /// The server's major version (15 for 15.18).
    pub fn major(&self) -> Option<u32> {
        self.server_version_num().map(|n| n / 10000)
    }
}

/// How the startup exchange ends.
#[derive(Debug)]
pub enum StartupOutcome {
    /// More messages are needed.
    Continue,
    /// Authenticated and `ReadyForQuery` received.
    Ready(ServerParams),
}

enum AuthState {
    Init,
    Scram(Box<ScramSha256>),
    Authenticated,
}

/// Most `ParameterStatus` messages accepted during startup. PostgreSQL sends about 15.
pub const MAX_PARAMETERS: usize = 1000;

/// Most bytes of `ParameterStatus` names and values accepted during startup.
pub const MAX_PARAMETER_BYTES: usize = 1 << 20;

/// The startup and authentication state machine.
pub struct Startup {
    params: StartupParams,
    password: Option<String>,
    state: AuthState,
    server: ServerParams,
    /// `ParameterStatus` messages and their bytes so far, against the limits.
    parameters: usize,
    parameter_bytes: usize,
}

impl Startup {
    /// A new exchange. `password` is used only if the server asks for one.
    pub fn new(params: StartupParams, password: Option<String>) -> Startup {
        Startup {
            params,
            password,
            state: AuthState::Init,
            server: ServerParams::default(),
            parameters: 0,
            parameter_bytes: 0,
        }
    }

    /// Appends the StartupMessage (protocol 3.0, `replication=true`) to `out`.
    pub fn startup_packet(&self, out: &mut BytesMut) {
        let mut kv: Vec<(&str, &str)> = vec![
            ("user", &self.params.user),
            ("database", &self.params.database),
            ("replication", "true"),
            ("application_name", &self.params.application_name),
        ];
        if let Some(o) = &self.params.options {
            kv.push(("options", o));
        }
        frontend::startup_message(kv, out).expect("startup parameters contain no NUL bytes");
    }

    fn password(&self) -> Result<&str, ProtocolError> {
        self.password
            .as_deref()
            .ok_or(ProtocolError::PasswordRequired)
    }

    /// Handles one backend message, appending any reply to `out`.
    pub fn handle(
        &mut self,
        msg: BackendMessage,
        out: &mut BytesMut,
    ) -> Result<StartupOutcome, ProtocolError> {
        use BackendMessage as M;
        match msg {
            M::ErrorResponse(e) => return Err(ProtocolError::Server(e)),
            M::AuthenticationOk => self.state = AuthState::Authenticated,
            M::AuthenticationCleartextPassword => {
                let pw = self.password()?;
                frontend::password_message(pw.as_bytes(), out).map_err(io_err)?;
            }
            M::AuthenticationMd5Password(salt) => {
                let hash = md5_hash(
                    self.params.user.as_bytes(),
                    self.password()?.as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), out).map_err(io_err)?;
            }
            M::AuthenticationSasl(mechs) => {
                if !mechs.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    return Err(ProtocolError::UnsupportedAuth(format!(
                        "SASL mechanisms {mechs:?}"
                    )));
                }
                let scram =
                    ScramSha256::new(self.password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), out)
                    .map_err(io_err)?;
                self.state = AuthState::Scram(Box::new(scram));
            }
            M::AuthenticationSaslContinue(data) => {
                let AuthState::Scram(scram) = &mut self.state else {
                    return Err(ProtocolError::Unexpected {
                        tag: 'R',
                        state: "not in SASL exchange",
                    });
                };
                scram
                    .update(&data)
                    .map_err(|e| ProtocolError::Scram(e.to_string()))?;
                frontend::sasl_response(scram.message(), out).map_err(io_err)?;
            }
            M::AuthenticationSaslFinal(data) => {
                let AuthState::Scram(scram) = &mut self.state else {
                    return Err(ProtocolError::Unexpected {
                        tag: 'R',
                        state: "not in SASL exchange",
                    });
                };
                scram
                    .finish(&data)
                    .map_err(|e| ProtocolError::Scram(e.to_string()))?;
            }
            M::AuthenticationOther(code) => {
                let name = match code {
                    2 => "Kerberos V5",
                    6 => "SCM credentials",
                    7 | 8 => "GSSAPI",
                    9 => "SSPI",
                    _ => "unknown",
                };
                return Err(ProtocolError::UnsupportedAuth(format!(
                    "{name}, code {code}"
                )));
            }
            M::ParameterStatus { name, value } => {
                self.parameters += 1;
                self.parameter_bytes = self
                    .parameter_bytes
                    .saturating_add(name.len() + value.len());
                if self.parameters > MAX_PARAMETERS {
                    return Err(ProtocolError::TooMuch {
                        what: "ParameterStatus messages during startup",
                        limit: format!("{MAX_PARAMETERS} messages"),
                    });
                }
                if self.parameter_bytes > MAX_PARAMETER_BYTES {
                    return Err(ProtocolError::TooMuch {
                        what: "bytes of ParameterStatus messages during startup",
                        limit: format!("{} MiB", MAX_PARAMETER_BYTES >> 20),
                    });
                }
                self.server.params.insert(name, value);
            }
            M::BackendKeyData | M::NoticeResponse(_) | M::NegotiateProtocolVersion => {}
            M::ReadyForQuery(_) => {
                if !matches!(self.state, AuthState::Authenticated) {
                    return Err(ProtocolError::Unexpected {
                        tag: 'Z',
                        state: "authenticating",
                    });
                }
                return Ok(StartupOutcome::Ready(std::mem::take(&mut self.server)));
            }
            other => {
                return Err(ProtocolError::Unexpected {
                    tag: other.tag(),
                    state: "starting up",
                });
            }
        }
        Ok(StartupOutcome::Continue)
    }
}

fn io_err(e: std::io::Error) -> ProtocolError {
    ProtocolError::Malformed {
        tag: '?',
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> StartupParams {
        StartupParams {
            user: "alice".into(),
            database: "replication".into(),
            application_name: "walsink".into(),
            options: None,
        }
    }

    #[test]
    fn startup_packet_asks_for_physical_replication() {
        let s = Startup::new(params(), None);
        let mut out = BytesMut::new();
        s.startup_packet(&mut out);
        let body = &out[8..];
        let text = String::from_utf8_lossy(body);
        assert!(text.contains("replication\0true\0"), "{text:?}");
        assert!(text.contains("user\0alice\0"));
        assert!(text.contains("application_name\0walsink\0"));
        assert_eq!(&out[4..8], &0x0003_0000u32.to_be_bytes());
    }

    #[test]
    fn trust_then_ready() {
        let mut s = Startup::new(params(), None);
        let mut out = BytesMut::new();
        assert!(matches!(
            s.handle(BackendMessage::AuthenticationOk, &mut out),
            Ok(StartupOutcome::Continue)
        ));
        s.handle(
            BackendMessage::ParameterStatus {
                name: "server_version".into(),
                value: "15.18 (Debian 15.18-0+deb12u1)".into(),
            },
            &mut out,
        )
        .unwrap();
        match s
            .handle(BackendMessage::ReadyForQuery(b'I'), &mut out)
            .unwrap()
        {
            StartupOutcome::Ready(p) => {
                assert_eq!(p.server_version_num(), Some(150018));
                assert_eq!(p.major(), Some(15));
            }
            o => panic!("{o:?}"),
        }
        assert!(out.is_empty());
    }

    #[test]
    fn password_required_without_one() {
        let mut s = Startup::new(params(), None);
        let mut out = BytesMut::new();
        let e = s
            .handle(
                BackendMessage::AuthenticationMd5Password([1, 2, 3, 4]),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e, ProtocolError::PasswordRequired);
    }

    #[test]
    fn md5_reply_matches_postgres_formula() {
        let mut s = Startup::new(params(), Some("secret".into()));
        let mut out = BytesMut::new();
        s.handle(
            BackendMessage::AuthenticationMd5Password([1, 2, 3, 4]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0], b'p');
        let expected = md5_hash(b"alice", b"secret", [1, 2, 3, 4]);
        assert_eq!(&out[5..out.len() - 1], expected.as_bytes());
    }

    #[test]
    fn ready_before_auth_is_an_error() {
        let mut s = Startup::new(params(), None);
        assert!(
            s.handle(BackendMessage::ReadyForQuery(b'I'), &mut BytesMut::new())
                .is_err()
        );
    }

    #[test]
    fn version_numbers() {
        let mut p = ServerParams::default();
        for (v, n) in [("18.4", 180004), ("13.23", 130023), ("19devel", 190000)] {
            p.params.insert("server_version".into(), v.into());
            assert_eq!(p.server_version_num(), Some(n), "{v}");
        }
    }
}
