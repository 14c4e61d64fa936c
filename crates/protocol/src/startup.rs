//! The startup packet and the authentication exchange.
//!
//! [`Startup`] is a state machine: the driver writes [`Startup::startup_packet`], then
//! feeds every backend message to [`Startup::handle`] and writes whatever it appends to
//! the output buffer, until it returns [`StartupOutcome::Ready`]. Supported methods are
//! trust, cleartext password, md5, SCRAM-SHA-256 and, over TLS, SCRAM-SHA-256-PLUS with
//! `tls-server-end-point` channel binding (the SCRAM client is postgres-protocol's).

use std::collections::HashMap;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::frontend;

use crate::conninfo::{AuthMethod, ChannelBinding, RequireAuth};
use crate::error::ProtocolError;
use crate::frame::BackendMessage;
use crate::tls::TlsError;

/// Which authentication requests the client answers: `require_auth` and
/// `channel_binding`, checked on every request before anything is sent, as libpq's
/// `check_expected_areq` does. The default answers every method walsink implements.
#[derive(Clone, Debug)]
pub struct AuthPolicy {
    /// `require_auth`; `None`: no requirement.
    pub require_auth: Option<RequireAuth>,
    /// `channel_binding`. `require` refuses every request but SCRAM over TLS, and a
    /// SCRAM exchange unless the server offers SCRAM-SHA-256-PLUS; without TLS
    /// ([`Startup::with_tls`] not called) it refuses everything.
    pub channel_binding: ChannelBinding,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            require_auth: None,
            channel_binding: ChannelBinding::Prefer,
        }
    }
}

/// A request of the server's, as `require_auth` and messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    /// AuthenticationOk.
    Ok,
    Method(AuthMethod),
    Other,
}

impl Request {
    fn description(self) -> &'static str {
        match self {
            Request::Ok => "server did not complete authentication",
            Request::Method(AuthMethod::Password) => "server requested a cleartext password",
            Request::Method(AuthMethod::Md5) => "server requested a hashed password",
            Request::Method(AuthMethod::Gss) => "server requested GSSAPI authentication",
            Request::Method(AuthMethod::Sspi) => "server requested SSPI authentication",
            Request::Method(AuthMethod::ScramSha256) => "server requested SASL authentication",
            Request::Other => "server requested an unknown authentication type",
        }
    }
}

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
    policy: AuthPolicy,
    /// Whether the client completed an authentication exchange: sent a password, or
    /// verified the server's SCRAM signature.
    finished_auth: bool,
    /// Over TLS: the channel-binding data of the server's certificate (or why there is
    /// none). `None`: no TLS.
    tls: Option<Result<Vec<u8>, TlsError>>,
    /// Whether the SCRAM exchange in progress uses channel binding.
    binding: bool,
    /// Whether a SCRAM exchange with channel binding completed (the server proved it
    /// saw the same TLS channel).
    channel_bound: bool,
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
            policy: AuthPolicy::default(),
            finished_auth: false,
            tls: None,
            binding: false,
            channel_bound: false,
        }
    }

    /// Tells the exchange it runs over TLS, with the `tls-server-end-point` data of the
    /// server's certificate ([`crate::tls::tls_server_end_point`]) or why there is
    /// none: SCRAM-SHA-256-PLUS becomes possible.
    pub fn with_tls(mut self, end_point: Result<Vec<u8>, TlsError>) -> Startup {
        self.tls = Some(end_point);
        self
    }

    /// Whether authentication used channel binding (SCRAM-SHA-256-PLUS, completed).
    pub fn channel_bound(&self) -> bool {
        self.channel_bound
    }

    /// Sets which authentication requests are answered (default: all walsink
    /// implements).
    pub fn with_policy(mut self, policy: AuthPolicy) -> Startup {
        self.policy = policy;
        self
    }

    /// Refuses `request` if the policy does not allow it (libpq's
    /// `check_expected_areq`); called before anything is sent in reply.
    fn check(&self, request: Request) -> Result<(), ProtocolError> {
        if let Some(req) = &self.policy.require_auth {
            let allowed = match request {
                Request::Ok => req.allows_none() || self.finished_auth,
                Request::Method(m) => req.allows(m),
                Request::Other => false,
            };
            if !allowed {
                return Err(ProtocolError::AuthNotAllowed {
                    option: "require_auth",
                    requirement: req.as_str().to_owned(),
                    reason: request.description(),
                });
            }
        }
        if self.policy.channel_binding == ChannelBinding::Require {
            // libpq's check_expected_areq: over TLS, SCRAM goes on (the mechanism is
            // checked when chosen) and only a channel-bound exchange may end it.
            let reason = match request {
                _ if self.tls.is_none() => "channel binding required, but SSL not in use",
                Request::Method(AuthMethod::ScramSha256) => return Ok(()),
                Request::Ok if self.channel_bound => return Ok(()),
                Request::Ok => {
                    "channel binding required, but server authenticated client without channel binding"
                }
                _ => {
                    "channel binding required but not supported by server's authentication request"
                }
            };
            return Err(ProtocolError::AuthNotAllowed {
                option: "channel_binding",
                requirement: "require".to_owned(),
                reason,
            });
        }
        Ok(())
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
            M::AuthenticationOk => {
                self.check(Request::Ok)?;
                self.state = AuthState::Authenticated;
            }
            M::AuthenticationCleartextPassword => {
                self.check(Request::Method(AuthMethod::Password))?;
                let pw = self.password()?;
                frontend::password_message(pw.as_bytes(), out).map_err(io_err)?;
                self.finished_auth = true;
            }
            M::AuthenticationMd5Password(salt) => {
                self.check(Request::Method(AuthMethod::Md5))?;
                self.finished_auth = true;
                let hash = md5_hash(
                    self.params.user.as_bytes(),
                    self.password()?.as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), out).map_err(io_err)?;
            }
            M::AuthenticationSasl(mechs) => {
                self.check(Request::Method(AuthMethod::ScramSha256))?;
                let (mechanism, binding) = self.choose_mechanism(&mechs)?;
                self.binding = mechanism == sasl::SCRAM_SHA_256_PLUS;
                let scram = ScramSha256::new(self.password()?.as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, scram.message(), out).map_err(io_err)?;
                self.state = AuthState::Scram(Box::new(scram));
            }
            M::AuthenticationSaslContinue(data) => {
                let scram = self.scram_exchange()?;
                scram
                    .update(&data)
                    .map_err(|e| ProtocolError::Scram(e.to_string()))?;
                frontend::sasl_response(scram.message(), out).map_err(io_err)?;
            }
            M::AuthenticationSaslFinal(data) => {
                self.scram_exchange()?
                    .finish(&data)
                    .map_err(|e| ProtocolError::Scram(e.to_string()))?;
                self.finished_auth = true;
                self.channel_bound = self.binding;
            }
            M::AuthenticationOther(code) => {
                self.check(match code {
                    7 | 8 => Request::Method(AuthMethod::Gss),
                    9 => Request::Method(AuthMethod::Sspi),
                    _ => Request::Other,
                })?;
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

impl Startup {
    /// The SASL mechanism and channel-binding flag, as libpq's `pg_SASL_init`:
    /// SCRAM-SHA-256-PLUS over TLS when the server offers it and `channel_binding`
    /// is not `disable`; else SCRAM-SHA-256, telling the server the client could bind
    /// (`y`, over TLS) or cannot (`n`), so a man in the middle who strips the PLUS
    /// offer is caught by the server. `require` without PLUS is refused.
    /// The SCRAM exchange a SASLContinue or SASLFinal continues, if SCRAM is allowed and
    /// one was started.
    fn scram_exchange(&mut self) -> Result<&mut ScramSha256, ProtocolError> {
        self.check(Request::Method(AuthMethod::ScramSha256))?;
        match &mut self.state {
            AuthState::Scram(scram) => Ok(scram),
            _ => Err(ProtocolError::Unexpected {
                tag: 'R',
                state: "not in SASL exchange",
            }),
        }
    }

    fn choose_mechanism(
        &self,
        mechs: &[String],
    ) -> Result<(&'static str, sasl::ChannelBinding), ProtocolError> {
        let offered = |m: &str| mechs.iter().any(|x| x == m);
        let cb = self.policy.channel_binding;
        if let Some(end_point) = &self.tls
            && cb != ChannelBinding::Disable
            && offered(sasl::SCRAM_SHA_256_PLUS)
        {
            let data = end_point
                .clone()
                .map_err(|e| ProtocolError::Scram(e.to_string()))?;
            return Ok((
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(data),
            ));
        }
        if cb == ChannelBinding::Require {
            return Err(ProtocolError::AuthNotAllowed {
                option: "channel_binding",
                requirement: "require".to_owned(),
                reason: "channel binding is required, but server did not offer an authentication method that supports channel binding",
            });
        }
        if !offered(sasl::SCRAM_SHA_256) {
            return Err(ProtocolError::UnsupportedAuth(format!(
                "SASL mechanisms {mechs:?}"
            )));
        }
        let binding = if self.tls.is_some() && cb != ChannelBinding::Disable {
            sasl::ChannelBinding::unrequested()
        } else {
            sasl::ChannelBinding::unsupported()
        };
        Ok((sasl::SCRAM_SHA_256, binding))
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
    fn sasl_continue_or_final_outside_an_exchange_is_an_error() {
        for msg in [
            BackendMessage::AuthenticationSaslContinue(bytes::Bytes::from_static(
                b"r=x,s=eA==,i=4096",
            )),
            BackendMessage::AuthenticationSaslFinal(bytes::Bytes::from_static(b"v=eA==")),
        ] {
            let mut s = Startup::new(params(), Some("secret".into()));
            let mut out = BytesMut::new();
            assert_eq!(
                s.handle(msg.clone(), &mut out).unwrap_err(),
                ProtocolError::Unexpected {
                    tag: 'R',
                    state: "not in SASL exchange",
                },
                "{msg:?}"
            );
            assert!(out.is_empty(), "{msg:?}: sent {out:?}");
        }
    }

    fn with_policy(require_auth: Option<&str>, password: Option<&str>) -> Startup {
        Startup::new(params(), password.map(str::to_owned)).with_policy(AuthPolicy {
            require_auth: require_auth.map(|r| r.parse().unwrap()),
            channel_binding: ChannelBinding::Prefer,
        })
    }

    fn refusal(e: ProtocolError) -> String {
        assert!(matches!(e, ProtocolError::AuthNotAllowed { .. }), "{e:?}");
        e.to_string()
    }

    #[test]
    fn require_auth_refuses_before_sending_anything() {
        let md5 = || BackendMessage::AuthenticationMd5Password([1, 2, 3, 4]);
        let clear = || BackendMessage::AuthenticationCleartextPassword;
        for (req, msg, reason) in [
            (
                "scram-sha-256",
                clear(),
                "server requested a cleartext password",
            ),
            ("scram-sha-256", md5(), "server requested a hashed password"),
            ("!md5", md5(), "server requested a hashed password"),
            (
                "!password",
                clear(),
                "server requested a cleartext password",
            ),
            (
                "md5",
                BackendMessage::AuthenticationSasl(vec!["SCRAM-SHA-256".into()]),
                "server requested SASL authentication",
            ),
            (
                "md5",
                BackendMessage::AuthenticationOther(7),
                "server requested GSSAPI authentication",
            ),
            (
                "md5",
                BackendMessage::AuthenticationOk,
                "server did not complete authentication",
            ),
            (
                "!none",
                BackendMessage::AuthenticationOk,
                "server did not complete authentication",
            ),
        ] {
            // With a password at hand, and without one (then it must not ask for one).
            for pw in [Some("secret"), None] {
                let mut s = with_policy(Some(req), pw);
                let mut out = BytesMut::new();
                let e = refusal(s.handle(msg.clone(), &mut out).unwrap_err());
                assert_eq!(
                    e,
                    format!(
                        "authentication method requirement require_auth=\"{req}\" failed: {reason}; nothing was sent to the server. If this server is the right one, allow its method in require_auth (pg_hba.conf names it)"
                    )
                );
                assert!(out.is_empty(), "{req}: sent {out:?}");
            }
        }
    }

    #[test]
    fn require_auth_allows_what_it_lists() {
        let mut out = BytesMut::new();
        // Allowed methods are answered, and the exchange then counts as completed.
        let mut s = with_policy(Some("password"), Some("secret"));
        s.handle(BackendMessage::AuthenticationCleartextPassword, &mut out)
            .unwrap();
        assert_eq!(&out[5..out.len() - 1], b"secret");
        s.handle(BackendMessage::AuthenticationOk, &mut out)
            .unwrap();
        let mut s = with_policy(Some("!password,!gss"), Some("secret"));
        s.handle(
            BackendMessage::AuthenticationMd5Password([1, 2, 3, 4]),
            &mut out,
        )
        .unwrap();
        s.handle(BackendMessage::AuthenticationOk, &mut out)
            .unwrap();
        // No authentication at all: only with none allowed, or no requirement.
        for req in [Some("none"), Some("md5,none"), Some("!md5"), None] {
            let mut s = with_policy(req, None);
            s.handle(BackendMessage::AuthenticationOk, &mut out)
                .unwrap_or_else(|e| panic!("{req:?}: {e}"));
        }
        // A SCRAM exchange the server cut short before proving itself is not completed.
        let mut s = with_policy(Some("scram-sha-256"), Some("secret"));
        let mut out = BytesMut::new();
        s.handle(
            BackendMessage::AuthenticationSasl(vec!["SCRAM-SHA-256".into()]),
            &mut out,
        )
        .unwrap();
        assert!(!out.is_empty());
        let e = refusal(
            s.handle(BackendMessage::AuthenticationOk, &mut out)
                .unwrap_err(),
        );
        assert!(e.contains("server did not complete authentication"), "{e}");
    }

    #[test]
    fn channel_binding_require_answers_nothing() {
        for msg in [
            BackendMessage::AuthenticationCleartextPassword,
            BackendMessage::AuthenticationMd5Password([1, 2, 3, 4]),
            BackendMessage::AuthenticationSasl(vec!["SCRAM-SHA-256".into()]),
            BackendMessage::AuthenticationOk,
        ] {
            let mut s = Startup::new(params(), Some("secret".into())).with_policy(AuthPolicy {
                require_auth: None,
                channel_binding: ChannelBinding::Require,
            });
            let mut out = BytesMut::new();
            let e = refusal(s.handle(msg.clone(), &mut out).unwrap_err());
            assert!(
                e.starts_with("authentication method requirement channel_binding=\"require\" failed: channel binding"),
                "{e}"
            );
            assert!(out.is_empty(), "{msg:?}: sent {out:?}");
        }
    }

    /// The SASLInitialResponse's mechanism and GS2 header for `mechs` under `cb`,
    /// over TLS (`tls`) or not.
    fn first_scram(
        cb: ChannelBinding,
        tls: Option<Result<Vec<u8>, TlsError>>,
        mechs: &[&str],
    ) -> Result<(String, String), ProtocolError> {
        let mut s = Startup::new(params(), Some("secret".into())).with_policy(AuthPolicy {
            require_auth: None,
            channel_binding: cb,
        });
        if let Some(t) = tls {
            s = s.with_tls(t);
        }
        let mut out = BytesMut::new();
        s.handle(
            BackendMessage::AuthenticationSasl(mechs.iter().map(|m| m.to_string()).collect()),
            &mut out,
        )?;
        // 'p', length, mechanism\0, i32 length, data.
        let body = &out[5..];
        let nul = body.iter().position(|&b| b == 0).unwrap();
        let mech = String::from_utf8(body[..nul].to_vec()).unwrap();
        let data = String::from_utf8_lossy(&body[nul + 5..]).into_owned();
        let gs2 = data.split(",,").next().unwrap().to_owned();
        Ok((mech, gs2))
    }

    #[test]
    fn channel_binding_over_tls_follows_libpq() {
        use ChannelBinding as C;
        let both = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
        let plain = ["SCRAM-SHA-256"];
        let hash = || Some(Ok(vec![7u8; 32]));
        let ok = |m: &str, g: &str| Ok((m.to_owned(), g.to_owned()));
        // PLUS whenever TLS is up, offered and not disabled.
        assert_eq!(
            first_scram(C::Prefer, hash(), &both),
            ok("SCRAM-SHA-256-PLUS", "p=tls-server-end-point")
        );
        assert_eq!(
            first_scram(C::Require, hash(), &both),
            ok("SCRAM-SHA-256-PLUS", "p=tls-server-end-point")
        );
        // Over TLS without the offer: "y" (the server detects a stripped offer).
        assert_eq!(
            first_scram(C::Prefer, hash(), &plain),
            ok("SCRAM-SHA-256", "y")
        );
        // Disabled, or no TLS: "n".
        assert_eq!(
            first_scram(C::Disable, hash(), &both),
            ok("SCRAM-SHA-256", "n")
        );
        assert_eq!(
            first_scram(C::Prefer, None, &both),
            ok("SCRAM-SHA-256", "n")
        );
        // require: no PLUS offered, or no TLS, is refused before anything is sent.
        let e = first_scram(C::Require, hash(), &plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("channel binding is required, but server did not offer an authentication method that supports channel binding"), "{e}");
        let e = first_scram(C::Require, None, &both)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("channel binding required, but SSL not in use"),
            "{e}"
        );
        // A certificate without a usable hash cannot be bound to.
        let e = first_scram(
            C::Prefer,
            Some(Err(TlsError::CertificateHash("no hash"))),
            &both,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("could not compute the channel binding data"),
            "{e}"
        );
    }

    #[test]
    fn channel_binding_require_over_tls_needs_a_bound_exchange() {
        let tls = || {
            Startup::new(params(), Some("secret".into()))
                .with_policy(AuthPolicy {
                    require_auth: None,
                    channel_binding: ChannelBinding::Require,
                })
                .with_tls(Ok(vec![1; 32]))
        };
        let mut out = BytesMut::new();
        for msg in [
            BackendMessage::AuthenticationOk,
            BackendMessage::AuthenticationCleartextPassword,
            BackendMessage::AuthenticationMd5Password([1, 2, 3, 4]),
        ] {
            let e = refusal(tls().handle(msg.clone(), &mut out).unwrap_err());
            assert!(e.contains("channel binding required"), "{msg:?}: {e}");
            assert!(out.is_empty());
        }
        // A PLUS exchange the server cuts short is not channel-bound.
        let mut s = tls();
        s.handle(
            BackendMessage::AuthenticationSasl(vec!["SCRAM-SHA-256-PLUS".into()]),
            &mut out,
        )
        .unwrap();
        assert!(!s.channel_bound());
        let e = refusal(
            s.handle(BackendMessage::AuthenticationOk, &mut BytesMut::new())
                .unwrap_err(),
        );
        assert!(
            e.contains("server authenticated client without channel binding"),
            "{e}"
        );
    }

    #[test]
    fn parameter_status_is_bounded() {
        let mut s = Startup::new(params(), None);
        let mut out = BytesMut::new();
        let p = |v: usize| BackendMessage::ParameterStatus {
            name: "p".into(),
            value: "v".repeat(v),
        };
        for _ in 0..MAX_PARAMETERS {
            s.handle(p(1), &mut out).unwrap();
        }
        let e = s.handle(p(1), &mut out).unwrap_err();
        assert!(matches!(e, ProtocolError::TooMuch { .. }), "{e}");
        let mut s = Startup::new(params(), None);
        s.handle(p(MAX_PARAMETER_BYTES - 1), &mut out).unwrap();
        let e = s.handle(p(1), &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server sent bytes of ParameterStatus messages during startup over walsink's limit of 1 MiB; the connection is not to a PostgreSQL server or it is broken"
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
