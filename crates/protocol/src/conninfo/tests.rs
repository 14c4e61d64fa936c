use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn env(vars: &[(&str, &str)]) -> Env {
    Env {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        home: Some(PathBuf::from("/home/alice")),
        os_user: Some("alice".to_owned()),
        default_socket_dir: PathBuf::from("/var/run/postgresql"),
    }
}

fn parse(s: &str) -> ConnOptions {
    ConnOptions::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn pairs(o: &ConnOptions) -> Vec<(&'static str, &str)> {
    o.iter().collect()
}

fn resolve_with(s: &str, vars: &[(&str, &str)]) -> Result<ConnConfig, ConnInfoError> {
    ConnConfig::resolve(&parse(s), &env(vars), "walsink")
}

fn resolve(s: &str) -> ConnConfig {
    resolve_with(s, &[]).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn tcp(host: &str, port: u16) -> Target {
    Target {
        host: Host::Tcp(host.to_owned()),
        hostaddr: None,
        port,
    }
}

fn unix(dir: &str, port: u16) -> Target {
    Target {
        host: Host::Unix(PathBuf::from(dir)),
        hostaddr: None,
        port,
    }
}

// ---------------------------------------------------------------- keyword=value

#[test]
fn keyword_value_basic() {
    let o = parse("host=db1 port=5433 user=alice dbname=replication");
    assert_eq!(o.get("host"), Some("db1"));
    assert_eq!(o.get("port"), Some("5433"));
    assert_eq!(o.get("user"), Some("alice"));
    assert_eq!(o.get("dbname"), Some("replication"));
    assert_eq!(o.get("password"), None);
    assert_eq!(o.get("nonsense"), None);
}

#[test]
fn keyword_value_whitespace_everywhere() {
    let o = parse(" \t host =  db1\n\tport=\r\n5433   user\x0b=\x0cu  ");
    assert_eq!(
        pairs(&o),
        vec![("user", "u"), ("host", "db1"), ("port", "5433")]
    );
}

#[test]
fn keyword_value_quoting_and_escapes() {
    let o = parse(r"password='a b\'c\\d' application_name='x=y z'");
    assert_eq!(o.get("password"), Some(r"a b'c\d"));
    assert_eq!(o.get("application_name"), Some("x=y z"));
    // Escapes work unquoted too, and an escaped space does not end the value.
    let o = parse(r"password=a\ b\'c\\ user=u");
    assert_eq!(o.get("password"), Some(r"a b'c\"));
    assert_eq!(o.get("user"), Some("u"));
    // A backslash before an ordinary character just drops the backslash.
    assert_eq!(parse(r"user='\x'").get("user"), Some("x"));
    // A trailing lone backslash in an unquoted value disappears.
    assert_eq!(parse(r"user=u\").get("user"), Some("u"));
    // Quotes inside an unquoted value are literal.
    assert_eq!(parse("user=o'brien").get("user"), Some("o'brien"));
}

#[test]
fn keyword_value_empty_values() {
    let o = parse("host='' port=5433");
    assert_eq!(o.get("host"), Some(""));
    assert_eq!(o.get("port"), Some("5433"));
    assert_eq!(parse("host=").get("host"), Some(""));
    assert_eq!(parse("host=''").get("host"), Some(""));
    // libpq skips blanks after '=', so the next word becomes the value.
    let o = parse("host= port=5433");
    assert_eq!(o.get("host"), Some("port=5433"));
    assert_eq!(o.get("port"), None);
}

#[test]
fn keyword_value_quoted_value_needs_no_separator() {
    let o = parse("host='a'port=1");
    assert_eq!(o.get("host"), Some("a"));
    assert_eq!(o.get("port"), Some("1"));
}

#[test]
fn keyword_value_later_wins() {
    let o = parse("host=a port=1 host=b");
    assert_eq!(o.get("host"), Some("b"));
    assert_eq!(o, parse("port=1 host=b"));
}

#[test]
fn keyword_value_utf8() {
    assert_eq!(
        parse("application_name=naïve").get("application_name"),
        Some("naïve")
    );
    assert_eq!(
        parse(r"application_name='\é日本'").get("application_name"),
        Some("é日本")
    );
    assert_eq!(
        parse(r"application_name=\é").get("application_name"),
        Some("é")
    );
}

#[test]
fn keyword_value_empty_input() {
    assert!(parse("").is_empty());
    assert!(parse(" \t\n ").is_empty());
}

#[test]
fn keyword_value_errors() {
    let e = ConnOptions::parse("host=a foo=bar").unwrap_err();
    assert_eq!(
        e,
        ConnInfoError::InvalidOption {
            keyword: "foo".into()
        }
    );
    assert!(
        e.to_string()
            .starts_with("invalid connection option \"foo\""),
        "{e}"
    );
    // Keywords are case-sensitive, as in libpq.
    assert_eq!(
        ConnOptions::parse("HOST=a").unwrap_err(),
        ConnInfoError::InvalidOption {
            keyword: "HOST".into()
        }
    );
    assert_eq!(
        ConnOptions::parse("=a").unwrap_err(),
        ConnInfoError::InvalidOption { keyword: "".into() }
    );

    for (s, key) in [
        ("host", "host"),
        ("host localhost", "host"),
        ("mydb", "mydb"),
        ("port=1 x", "x"),
    ] {
        let e = ConnOptions::parse(s).unwrap_err();
        assert_eq!(
            e,
            ConnInfoError::MissingEquals {
                keyword: key.into()
            },
            "{s}"
        );
    }
    let e = ConnOptions::parse("host").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("missing \"=\" after \"host\" in connection info string"),
        "{e}"
    );

    for s in ["host='abc", r"host='abc\'", r"host='abc\", "host='"] {
        let e = ConnOptions::parse(s).unwrap_err();
        assert_eq!(e, ConnInfoError::UnterminatedQuote, "{s}");
        assert!(
            e.to_string()
                .starts_with("unterminated quoted string in connection info string")
        );
    }
}

#[test]
fn all_libpq_keywords_accepted() {
    for kw in [
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "sslmode",
        "sslnegotiation",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "require_auth",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "gssencmode",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    ] {
        let o = parse(&format!("{kw}=v"));
        assert_eq!(o.get(kw), Some("v"), "{kw}");
    }
    // walsink ignores `replication`, but it must not break resolution.
    assert_eq!(
        resolve("replication=true host=h").targets,
        vec![tcp("h", 5432)]
    );
}

#[test]
fn set_get_remove_iter() {
    let mut o = ConnOptions::default();
    o.set("port", "1").unwrap();
    o.set("host", "h").unwrap();
    o.set("host", "h2").unwrap();
    assert_eq!(
        o.set("bogus", "x").unwrap_err(),
        ConnInfoError::InvalidOption {
            keyword: "bogus".into()
        }
    );
    // libpq keyword order, not insertion order.
    assert_eq!(pairs(&o), vec![("host", "h2"), ("port", "1")]);
    assert_eq!(o.remove("host").as_deref(), Some("h2"));
    assert_eq!(o.remove("bogus"), None);
    assert_eq!(pairs(&o), vec![("port", "1")]);
}

#[test]
fn debug_redacts_secrets() {
    let o = parse("user=u password=hunter2 sslpassword=s3cret");
    let s = format!("{o:?}");
    assert!(!s.contains("hunter2") && !s.contains("s3cret"), "{s}");
    assert!(s.contains("\"user\": \"u\""), "{s}");
    let c = resolve("password=hunter2 host=h");
    let s = format!("{c:?}");
    assert!(!s.contains("hunter2") && s.contains("<redacted>"), "{s}");
}

#[test]
fn is_conninfo_matches_libpq() {
    assert!(!ConnOptions::is_conninfo("mydb"));
    assert!(!ConnOptions::is_conninfo(""));
    assert!(!ConnOptions::is_conninfo("postgresql:/h"));
    assert!(!ConnOptions::is_conninfo("POSTGRESQL://h"));
    assert!(ConnOptions::is_conninfo("host=h"));
    assert!(ConnOptions::is_conninfo("weird=db name"));
    assert!(ConnOptions::is_conninfo("postgresql://"));
    assert!(ConnOptions::is_conninfo("postgres://h/db"));
}

// ---------------------------------------------------------------- URIs

#[test]
fn uri_with_everything() {
    let o = parse("postgresql://user:pw@h1:1,h2:2/db?application_name=x&sslmode=require");
    assert_eq!(
        pairs(&o),
        vec![
            ("user", "user"),
            ("password", "pw"),
            ("dbname", "db"),
            ("host", "h1,h2"),
            ("port", "1,2"),
            ("application_name", "x"),
            ("sslmode", "require"),
        ]
    );
    let c = ConnConfig::resolve(&o, &env(&[]), "walsink").unwrap();
    assert_eq!(c.targets, vec![tcp("h1", 1), tcp("h2", 2)]);
    assert_eq!(c.user, "user");
    assert_eq!(c.password.as_deref(), Some("pw"));
    assert_eq!(c.dbname, "db");
    assert_eq!(c.application_name, "x");
    assert_eq!(c.sslmode, SslMode::Require);
}

#[test]
fn uri_short_scheme_and_minimal_forms() {
    assert_eq!(parse("postgres://h"), parse("postgresql://h"));
    assert!(parse("postgresql://").is_empty());
    assert!(parse("postgresql:///").is_empty());
    assert!(parse("postgresql://?").is_empty());
    assert_eq!(pairs(&parse("postgresql://h/")), vec![("host", "h")]);
    assert_eq!(pairs(&parse("postgresql://h?")), vec![("host", "h")]);
    assert_eq!(pairs(&parse("postgresql://:5433")), vec![("port", "5433")]);
    assert_eq!(
        pairs(&parse("postgresql://h/db?sslmode=require&")),
        vec![("dbname", "db"), ("host", "h"), ("sslmode", "require")]
    );
}

#[test]
fn uri_credentials() {
    assert_eq!(
        pairs(&parse("postgresql://u@h")),
        vec![("user", "u"), ("host", "h")]
    );
    assert_eq!(
        pairs(&parse("postgresql://u:@h")),
        vec![("user", "u"), ("host", "h")]
    );
    assert_eq!(
        pairs(&parse("postgresql://:pw@h")),
        vec![("password", "pw"), ("host", "h")]
    );
    assert_eq!(pairs(&parse("postgresql://@h")), vec![("host", "h")]);
    // The password runs to the first '@'; a second '@' belongs to the host (libpq).
    let o = parse("postgresql://u:p:q@ss@h");
    assert_eq!(o.get("password"), Some("p:q"));
    assert_eq!(o.get("host"), Some("ss@h"));
    // An '@' after the first '/' is not a credentials separator.
    let o = parse("postgresql://h/d@b");
    assert_eq!(o.get("user"), None);
    assert_eq!(o.get("dbname"), Some("d@b"));
}

#[test]
fn uri_percent_decoding() {
    let o = parse("postgresql://us%40er:p%3Aw%2F%25@h%2Dx/my%20db?application_name=a%26b%3Dc");
    assert_eq!(o.get("user"), Some("us@er"));
    assert_eq!(o.get("password"), Some("p:w/%"));
    assert_eq!(o.get("host"), Some("h-x"));
    assert_eq!(o.get("dbname"), Some("my db"));
    assert_eq!(o.get("application_name"), Some("a&b=c"));
    // '+' is not a space; multi-byte UTF-8 decodes; the query keyword is decoded too.
    let o = parse("postgresql://h/a+b?application%5Fname=%C3%A9");
    assert_eq!(o.get("dbname"), Some("a+b"));
    assert_eq!(o.get("application_name"), Some("é"));
}

#[test]
fn uri_percent_decoding_errors() {
    let e = ConnOptions::parse("postgresql://h/db%zz").unwrap_err();
    assert_eq!(
        e,
        ConnInfoError::InvalidPercentEncoding {
            component: "dbname".into(),
            value: "db%zz".into()
        }
    );
    assert!(e.to_string().contains("%25"), "{e}");
    assert!(matches!(
        ConnOptions::parse("postgresql://h/db%4").unwrap_err(),
        ConnInfoError::InvalidPercentEncoding { .. }
    ));
    assert!(matches!(
        ConnOptions::parse("postgresql://h/db%").unwrap_err(),
        ConnInfoError::InvalidPercentEncoding { .. }
    ));
    assert_eq!(
        ConnOptions::parse("postgresql://h/db%00").unwrap_err(),
        ConnInfoError::PercentEncodedNul {
            component: "dbname".into()
        }
    );
    assert_eq!(
        ConnOptions::parse("postgresql://h/%ff").unwrap_err(),
        ConnInfoError::PercentDecodedNotUtf8 {
            component: "dbname".into()
        }
    );
    // Passwords never appear in errors.
    for s in [
        "postgresql://u:sec%zzret@h",
        "postgresql://h?password=sec%zzret",
    ] {
        let e = ConnOptions::parse(s).unwrap_err();
        assert!(!e.to_string().contains("sec"), "{e}");
        assert!(!format!("{e:?}").contains("sec"), "{e:?}");
    }
}

#[test]
fn uri_ipv6() {
    let o = parse("postgresql://[::1]:5433/db");
    assert_eq!(o.get("host"), Some("::1"));
    assert_eq!(o.get("port"), Some("5433"));
    assert_eq!(o.get("dbname"), Some("db"));
    let o = parse("postgresql://[2001:db8::1],[::1]:2,h:3?connect_timeout=5");
    assert_eq!(o.get("host"), Some("2001:db8::1,::1,h"));
    assert_eq!(o.get("port"), Some(",2,3"));
    let c = resolve("postgresql://[2001:db8::1],[::1]:2,h:3");
    assert_eq!(
        c.targets,
        vec![tcp("2001:db8::1", 5432), tcp("::1", 2), tcp("h", 3)]
    );
    // A zone id, percent-encoded.
    assert_eq!(
        parse("postgresql://[fe80::1%25eth0]").get("host"),
        Some("fe80::1%eth0")
    );
}

#[test]
fn uri_ipv6_errors() {
    assert_eq!(
        ConnOptions::parse("postgresql://[::1").unwrap_err(),
        ConnInfoError::UnterminatedIpv6
    );
    assert_eq!(
        ConnOptions::parse("postgresql://[]:5432").unwrap_err(),
        ConnInfoError::EmptyIpv6
    );
    let e = ConnOptions::parse("postgresql://[::1]x").unwrap_err();
    assert_eq!(
        e,
        ConnInfoError::UnexpectedUriChar {
            found: 'x',
            position: 19
        }
    );
    assert!(
        e.to_string()
            .starts_with("unexpected character \"x\" at position 19 in URI"),
        "{e}"
    );
}

#[test]
fn uri_unix_sockets() {
    let o = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/db");
    assert_eq!(o.get("host"), Some("/var/run/postgresql"));
    assert_eq!(o.get("dbname"), Some("db"));
    let c = ConnConfig::resolve(&o, &env(&[]), "walsink").unwrap();
    assert_eq!(c.targets, vec![unix("/var/run/postgresql", 5432)]);

    let o = parse("postgresql:///db?host=/tmp");
    assert_eq!(pairs(&o), vec![("dbname", "db"), ("host", "/tmp")]);
    let c = ConnConfig::resolve(&o, &env(&[]), "walsink").unwrap();
    assert_eq!(c.targets, vec![unix("/tmp", 5432)]);
    assert_eq!(c.dbname, "db");

    // Query parameters are parsed after the netloc, so they win.
    assert_eq!(
        parse("postgresql://h1:1/db?host=h2&port=2").get("host"),
        Some("h2")
    );
    let c = resolve("postgresql://%2Ftmp:5433,h");
    assert_eq!(c.targets, vec![unix("/tmp", 5433), tcp("h", 5432)]);
}

#[test]
fn uri_query_errors() {
    let e = ConnOptions::parse("postgresql://h?sslmode").unwrap_err();
    assert_eq!(
        e,
        ConnInfoError::MissingQuerySeparator {
            param: "sslmode".into()
        }
    );
    assert_eq!(
        ConnOptions::parse("postgresql://h?&sslmode=require").unwrap_err(),
        ConnInfoError::MissingQuerySeparator { param: "".into() }
    );
    assert_eq!(
        ConnOptions::parse("postgresql://h?sslmode=require&&port=2").unwrap_err(),
        ConnInfoError::MissingQuerySeparator { param: "".into() }
    );
    assert_eq!(
        ConnOptions::parse("postgresql://h?options=-c=x").unwrap_err(),
        ConnInfoError::ExtraQuerySeparator {
            keyword: "options".into()
        }
    );
    let e = ConnOptions::parse("postgresql://h?foo=bar").unwrap_err();
    assert_eq!(
        e,
        ConnInfoError::InvalidUriQueryParameter {
            keyword: "foo".into()
        }
    );
    assert!(
        e.to_string()
            .starts_with("invalid URI query parameter: \"foo\""),
        "{e}"
    );
}

#[test]
fn uri_ssl_true_is_jdbc_compat() {
    assert_eq!(
        parse("postgresql://h?ssl=true").get("sslmode"),
        Some("require")
    );
    assert_eq!(
        ConnOptions::parse("postgresql://h?ssl=false").unwrap_err(),
        ConnInfoError::InvalidUriQueryParameter {
            keyword: "ssl".into()
        }
    );
}

// ---------------------------------------------------------------- resolve

#[test]
fn resolve_defaults() {
    let c = ConnConfig::resolve(&ConnOptions::default(), &env(&[]), "walsink").unwrap();
    assert_eq!(c.targets, vec![unix("/var/run/postgresql", 5432)]);
    assert_eq!(c.user, "alice");
    assert_eq!(c.dbname, "replication");
    assert_eq!(c.password, None);
    assert_eq!(c.passfile, Some(PathBuf::from("/home/alice/.pgpass")));
    assert_eq!(c.application_name, "walsink");
    assert_eq!(c.connect_timeout, None);
    assert_eq!(c.options, None);
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!((c.sslrootcert, c.sslcert, c.sslkey), (None, None, None));
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::Any);
    assert!(c.keepalives);
    assert_eq!(c.keepalives_idle, None);
    assert_eq!(c.keepalives_interval, None);
    assert_eq!(c.keepalives_count, None);
    assert_eq!(c.tcp_user_timeout, None);
}

#[test]
fn resolve_empty_env_defaults() {
    let c = ConnConfig::resolve(&parse("user=u"), &Env::default(), "walsink").unwrap();
    assert_eq!(c.targets, vec![unix("/tmp", 5432)]);
    assert_eq!(c.passfile, None);
    assert_eq!(
        ConnConfig::resolve(&ConnOptions::default(), &Env::default(), "walsink").unwrap_err(),
        ConnInfoError::NoUser
    );
}

const FULL_ENV: &[(&str, &str)] = &[
    ("PGHOST", "envhost"),
    ("PGPORT", "6000"),
    ("PGUSER", "envuser"),
    ("PGPASSWORD", "envpw"),
    ("PGPASSFILE", "/etc/envpass"),
    ("PGAPPNAME", "envapp"),
    ("PGCONNECT_TIMEOUT", "10"),
    ("PGOPTIONS", "-c x=1"),
    ("PGSSLMODE", "verify-full"),
    ("PGSSLROOTCERT", "/env/root.crt"),
    ("PGSSLCERT", "/env/client.crt"),
    ("PGSSLKEY", "/env/client.key"),
    ("PGTARGETSESSIONATTRS", "primary"),
    ("PGDATABASE", "envdb"),
];

#[test]
fn resolve_env_vars_apply() {
    let c = resolve_with("", FULL_ENV).unwrap();
    assert_eq!(c.targets, vec![tcp("envhost", 6000)]);
    assert_eq!(c.user, "envuser");
    assert_eq!(c.password.as_deref(), Some("envpw"));
    assert_eq!(c.passfile, Some(PathBuf::from("/etc/envpass")));
    assert_eq!(c.application_name, "envapp");
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.options.as_deref(), Some("-c x=1"));
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(c.sslrootcert.as_deref(), Some("/env/root.crt"));
    assert_eq!(c.sslcert.as_deref(), Some("/env/client.crt"));
    assert_eq!(c.sslkey.as_deref(), Some("/env/client.key"));
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::Primary);
    // PGDATABASE does not apply to physical replication connections.
    assert_eq!(c.dbname, "replication");
}

#[test]
fn resolve_options_beat_env_vars() {
    let c = resolve_with(
        "host=h port=1 user=u password=p passfile=/pf application_name=a connect_timeout=3 \
         options=-cy=2 sslmode=disable sslrootcert=r sslcert=c sslkey=k \
         target_session_attrs=standby dbname=mydb",
        FULL_ENV,
    )
    .unwrap();
    assert_eq!(c.targets, vec![tcp("h", 1)]);
    assert_eq!(c.user, "u");
    assert_eq!(c.password.as_deref(), Some("p"));
    assert_eq!(c.passfile, Some(PathBuf::from("/pf")));
    assert_eq!(c.application_name, "a");
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(3)));
    assert_eq!(c.options.as_deref(), Some("-cy=2"));
    assert_eq!(c.sslmode, SslMode::Disable);
    assert_eq!(c.sslrootcert.as_deref(), Some("r"));
    assert_eq!(c.sslcert.as_deref(), Some("c"));
    assert_eq!(c.sslkey.as_deref(), Some("k"));
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::Standby);
    assert_eq!(c.dbname, "mydb");
}

#[test]
fn resolve_empty_option_hides_env_var() {
    // libpq: an explicitly empty host means the default socket, not PGHOST.
    let c = resolve_with("host='' port=''", FULL_ENV).unwrap();
    assert_eq!(c.targets, vec![unix("/var/run/postgresql", 5432)]);
    // An empty user means the OS user, not PGUSER.
    assert_eq!(resolve_with("user=''", FULL_ENV).unwrap().user, "alice");
    // An empty password means none (so .pgpass is consulted), not PGPASSWORD.
    assert_eq!(
        resolve_with("password=''", FULL_ENV).unwrap().password,
        None
    );
    // Empty environment variables mean "unset".
    let c = resolve_with(
        "",
        &[
            ("PGHOST", ""),
            ("PGPORT", ""),
            ("PGSSLMODE", ""),
            ("PGUSER", ""),
        ],
    )
    .unwrap();
    assert_eq!(c.targets, vec![unix("/var/run/postgresql", 5432)]);
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.user, "alice");
}

#[test]
fn resolve_application_name_precedence() {
    assert_eq!(resolve("").application_name, "walsink");
    assert_eq!(
        resolve("fallback_application_name=fb").application_name,
        "fb"
    );
    assert_eq!(
        resolve_with("fallback_application_name=fb", &[("PGAPPNAME", "env")])
            .unwrap()
            .application_name,
        "env"
    );
    assert_eq!(
        resolve_with(
            "application_name=a fallback_application_name=fb",
            &[("PGAPPNAME", "env")]
        )
        .unwrap()
        .application_name,
        "a"
    );
    assert_eq!(resolve("application_name=''").application_name, "walsink");
}

#[test]
fn resolve_host_kinds() {
    let c = resolve("host=/tmp,@abstract,db.example.com,127.0.0.1,,::1");
    assert_eq!(
        c.targets,
        vec![
            unix("/tmp", 5432),
            unix("@abstract", 5432),
            tcp("db.example.com", 5432),
            tcp("127.0.0.1", 5432),
            unix("/var/run/postgresql", 5432),
            tcp("::1", 5432),
        ]
    );
}

#[test]
fn resolve_port_pairing() {
    let c = resolve("host=a,b,c port=7");
    assert_eq!(c.targets, vec![tcp("a", 7), tcp("b", 7), tcp("c", 7)]);
    let c = resolve("host=a,b,c port=1,,3");
    assert_eq!(c.targets, vec![tcp("a", 1), tcp("b", 5432), tcp("c", 3)]);
    let c = resolve_with("host=a,b", &[("PGPORT", "1,2")]).unwrap();
    assert_eq!(c.targets, vec![tcp("a", 1), tcp("b", 2)]);
    // A single port (even empty-ish) for several hosts.
    assert_eq!(
        resolve("host=a,b port=,").targets,
        vec![tcp("a", 5432), tcp("b", 5432)]
    );

    let e = resolve_with("host=a,b port=1,2,3", &[]).unwrap_err();
    assert_eq!(e, ConnInfoError::PortCountMismatch { ports: 3, hosts: 2 });
    assert!(
        e.to_string()
            .starts_with("could not match 3 port numbers to 2 hosts"),
        "{e}"
    );
    assert_eq!(
        resolve_with("host=a,b,c port=1,2", &[]).unwrap_err(),
        ConnInfoError::PortCountMismatch { ports: 2, hosts: 3 }
    );
    assert_eq!(
        resolve_with("port=1,2", &[]).unwrap_err(),
        ConnInfoError::PortCountMismatch { ports: 2, hosts: 1 }
    );
}

#[test]
fn resolve_port_values() {
    for (p, want) in [
        ("5433", 5433),
        (" 5433 ", 5433),
        ("+5433", 5433),
        ("65535", 65535),
        ("1", 1),
    ] {
        assert_eq!(
            resolve(&format!("host=h port='{p}'")).targets[0].port,
            want,
            "{p}"
        );
    }
    for p in [
        "abc",
        "0",
        "65536",
        "-1",
        "54 32",
        "5432x",
        "99999999999999999999",
        "+",
        "0x10",
    ] {
        let e = resolve_with(&format!("host=h port='{p}'"), &[]).unwrap_err();
        assert_eq!(e, ConnInfoError::InvalidPort { value: p.into() }, "{p}");
    }
    let e = resolve_with("port=abc", &[]).unwrap_err();
    assert!(
        e.to_string().starts_with("invalid port number: \"abc\""),
        "{e}"
    );
    assert_eq!(
        resolve_with("", &[("PGPORT", "x")]).unwrap_err(),
        ConnInfoError::InvalidPort { value: "x".into() }
    );
}

#[test]
fn resolve_hostaddr_pairing() {
    let c = resolve("host=a,b hostaddr=10.0.0.1,::1 port=1,2");
    assert_eq!(
        c.targets,
        vec![
            Target {
                host: Host::Tcp("a".into()),
                hostaddr: Some("10.0.0.1".parse().unwrap()),
                port: 1
            },
            Target {
                host: Host::Tcp("b".into()),
                hostaddr: Some("::1".parse().unwrap()),
                port: 2
            },
        ]
    );
    // hostaddr alone: the address stands in for the host name.
    let c = resolve("hostaddr=10.0.0.1");
    assert_eq!(c.targets[0].host, Host::Tcp("10.0.0.1".into()));
    assert_eq!(c.targets[0].display_host(), "10.0.0.1");
    assert_eq!(c.targets[0].socket_path(), None);
    // hostaddr decides the count; an empty hostaddr entry falls back to the host.
    let c = resolve("hostaddr=10.0.0.1, host=a,/tmp");
    assert_eq!(c.targets[1], unix("/tmp", 5432));
    let c = resolve("hostaddr=,10.0.0.2");
    assert_eq!(c.targets[0], unix("/var/run/postgresql", 5432));
    assert_eq!(c.targets[1].host, Host::Tcp("10.0.0.2".into()));
    // From the environment.
    let c = resolve_with("host=a", &[("PGHOSTADDR", "192.0.2.1")]).unwrap();
    assert_eq!(c.targets[0].hostaddr, Some("192.0.2.1".parse().unwrap()));

    let e = resolve_with("host=a,b,c hostaddr=10.0.0.1,10.0.0.2", &[]).unwrap_err();
    assert_eq!(
        e,
        ConnInfoError::HostCountMismatch {
            hosts: 3,
            hostaddrs: 2
        }
    );
    assert!(
        e.to_string()
            .starts_with("could not match 3 host names to 2 hostaddr values")
    );
    assert_eq!(
        resolve_with("host=a hostaddr=10.0.0.1,10.0.0.2 port=1,2,3", &[]).unwrap_err(),
        ConnInfoError::HostCountMismatch {
            hosts: 1,
            hostaddrs: 2
        }
    );
    assert_eq!(
        resolve_with("hostaddr=10.0.0.1,10.0.0.2 port=1,2,3", &[]).unwrap_err(),
        ConnInfoError::PortCountMismatch { ports: 3, hosts: 2 }
    );
    assert_eq!(
        resolve_with("hostaddr=db.example.com", &[]).unwrap_err(),
        ConnInfoError::InvalidHostaddr {
            value: "db.example.com".into()
        }
    );
}

#[test]
fn resolve_connect_timeout() {
    let t =
        |v: &str| resolve_with(&format!("connect_timeout='{v}'"), &[]).map(|c| c.connect_timeout);
    assert_eq!(t("1"), Ok(Some(Duration::from_secs(2))));
    assert_eq!(t("2"), Ok(Some(Duration::from_secs(2))));
    assert_eq!(t("30"), Ok(Some(Duration::from_secs(30))));
    assert_eq!(t(" 10 "), Ok(Some(Duration::from_secs(10))));
    assert_eq!(t("2147483647"), Ok(Some(Duration::from_secs(2147483647))));
    assert_eq!(t("0"), Ok(None));
    assert_eq!(t("-5"), Ok(None));
    assert_eq!(t(""), Ok(None));
    for bad in [
        "abc",
        "1.5",
        "2147483648",
        "99999999999999999999",
        "1 2",
        "-",
    ] {
        let e = t(bad).unwrap_err();
        assert_eq!(
            e,
            ConnInfoError::InvalidInteger {
                keyword: "connect_timeout".into(),
                value: bad.into()
            }
        );
    }
    assert_eq!(
        resolve_with("", &[("PGCONNECT_TIMEOUT", "1")])
            .unwrap()
            .connect_timeout,
        Some(Duration::from_secs(2))
    );
}

#[test]
fn resolve_keepalives() {
    let c = resolve(
        "keepalives=0 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=9000",
    );
    assert!(!c.keepalives);
    assert_eq!(c.keepalives_idle, Some(Duration::from_secs(30)));
    assert_eq!(c.keepalives_interval, Some(Duration::from_secs(5)));
    assert_eq!(c.keepalives_count, Some(3));
    assert_eq!(c.tcp_user_timeout, Some(Duration::from_millis(9000)));
    assert!(resolve("keepalives=1").keepalives);
    assert!(resolve("keepalives=-1").keepalives);
    let c =
        resolve("keepalives_idle=0 keepalives_interval=-1 keepalives_count=0 tcp_user_timeout=0");
    assert_eq!(
        (
            c.keepalives_idle,
            c.keepalives_interval,
            c.keepalives_count,
            c.tcp_user_timeout
        ),
        (None, None, None, None)
    );
    assert_eq!(
        resolve_with("keepalives=yes", &[]).unwrap_err(),
        ConnInfoError::InvalidInteger {
            keyword: "keepalives".into(),
            value: "yes".into()
        }
    );
}

#[test]
fn resolve_sslmode_and_target_session_attrs() {
    for (s, m) in [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        assert_eq!(resolve(&format!("sslmode={s}")).sslmode, m);
        assert_eq!(m.as_str(), s);
    }
    for (s, a) in [
        ("any", TargetSessionAttrs::Any),
        ("read-write", TargetSessionAttrs::ReadWrite),
        ("read-only", TargetSessionAttrs::ReadOnly),
        ("primary", TargetSessionAttrs::Primary),
        ("standby", TargetSessionAttrs::Standby),
        ("prefer-standby", TargetSessionAttrs::PreferStandby),
    ] {
        assert_eq!(
            resolve(&format!("target_session_attrs={s}")).target_session_attrs,
            a
        );
        assert_eq!(a.as_str(), s);
    }
    let e = resolve_with("sslmode=x", &[]).unwrap_err();
    assert_eq!(e, ConnInfoError::InvalidSslMode { value: "x".into() });
    assert!(e.to_string().starts_with("invalid sslmode value: \"x\""));
    assert_eq!(
        resolve_with("", &[("PGSSLMODE", "Require")]).unwrap_err(),
        ConnInfoError::InvalidSslMode {
            value: "Require".into()
        }
    );
    let e = resolve_with("target_session_attrs=master", &[]).unwrap_err();
    assert_eq!(
        e,
        ConnInfoError::InvalidTargetSessionAttrs {
            value: "master".into()
        }
    );
    assert!(
        e.to_string()
            .starts_with("invalid target_session_attrs value")
    );
}

#[test]
fn security_options_and_their_env_vars() {
    let c = resolve("");
    assert_eq!(c.channel_binding, ChannelBinding::Prefer);
    assert_eq!(c.gssencmode, GssEncMode::Prefer);
    assert_eq!(c.require_auth, None);
    assert_eq!(c.requirepeer, None);
    assert_eq!(c.unsupported(), None);
    for (s, m) in [
        ("disable", ChannelBinding::Disable),
        ("prefer", ChannelBinding::Prefer),
        ("require", ChannelBinding::Require),
    ] {
        assert_eq!(resolve(&format!("channel_binding={s}")).channel_binding, m);
        assert_eq!(m.as_str(), s);
    }
    for (s, m) in [
        ("disable", GssEncMode::Disable),
        ("prefer", GssEncMode::Prefer),
        ("require", GssEncMode::Require),
    ] {
        assert_eq!(resolve(&format!("gssencmode={s}")).gssencmode, m);
        assert_eq!(m.as_str(), s);
    }
    let from_env = resolve_with(
        "",
        &[
            ("PGCHANNELBINDING", "disable"),
            ("PGGSSENCMODE", "disable"),
            ("PGREQUIREAUTH", "scram-sha-256"),
            ("PGREQUIREPEER", "postgres"),
        ],
    )
    .unwrap();
    assert_eq!(from_env.channel_binding, ChannelBinding::Disable);
    assert_eq!(from_env.gssencmode, GssEncMode::Disable);
    assert_eq!(
        from_env.require_auth.as_ref().map(RequireAuth::as_str),
        Some("scram-sha-256")
    );
    assert_eq!(from_env.requirepeer.as_deref(), Some("postgres"));
    // The connection string beats the environment.
    let c = resolve_with(
        "channel_binding=prefer require_auth=md5 requirepeer=pg",
        &[
            ("PGCHANNELBINDING", "require"),
            ("PGREQUIREAUTH", "password"),
            ("PGREQUIREPEER", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.channel_binding, ChannelBinding::Prefer);
    assert_eq!(c.require_auth.unwrap().as_str(), "md5");
    assert_eq!(c.requirepeer.as_deref(), Some("pg"));
    assert_eq!(
        resolve_with("channel_binding=Require", &[]).unwrap_err(),
        ConnInfoError::InvalidChannelBinding {
            value: "Require".into()
        }
    );
    assert_eq!(
        resolve_with("", &[("PGGSSENCMODE", "allow")]).unwrap_err(),
        ConnInfoError::InvalidGssEncMode {
            value: "allow".into()
        }
    );
}

#[test]
fn unsupported_protections_are_refused_naming_option_and_fix() {
    let msg = |s: &str, vars: &[(&str, &str)]| {
        resolve_with(s, vars)
            .unwrap()
            .unsupported()
            .map(|e| e.to_string())
    };
    assert_eq!(
        msg("gssencmode=require", &[]).as_deref(),
        Some(
            "gssencmode=require requires GSSAPI encryption, which walsink does not support; use gssencmode=disable or gssencmode=prefer (walsink then connects without GSSAPI encryption), and sslmode=verify-full for an encrypted connection"
        )
    );
    assert!(
        msg("", &[("PGGSSENCMODE", "require")])
            .unwrap()
            .starts_with("gssencmode=require")
    );
    let e = msg("sslpassword=hunter2", &[]).unwrap();
    assert!(
        e.starts_with("sslpassword=<redacted> gives the pass phrase of an encrypted client key, which walsink cannot decrypt; remove sslpassword"),
        "{e}"
    );
    assert!(!e.contains("hunter2"));
    for (s, vars, start) in [
        (
            "sslcompression=1",
            &[][..],
            "sslcompression=1 asks for TLS compression",
        ),
        ("", &[("PGSSLCOMPRESSION", "1")][..], "sslcompression=1"),
        (
            "ssl_min_protocol_version=TLSv1.1",
            &[],
            "ssl_min_protocol_version=TLSv1.1 names a TLS version before 1.2, which walsink does not speak; use TLSv1.2 or TLSv1.3",
        ),
        (
            "ssl_min_protocol_version=tlsv1 ssl_max_protocol_version=TLSv1",
            &[],
            "ssl_min_protocol_version=TLSv1 names",
        ),
        (
            "",
            &[
                ("PGSSLMAXPROTOCOLVERSION", "TLSv1.1"),
                ("PGSSLMINPROTOCOLVERSION", "TLSv1"),
            ],
            "ssl_min_protocol_version=TLSv1 ",
        ),
    ] {
        let e = msg(s, vars).unwrap_or_else(|| panic!("{s} {vars:?} accepted"));
        assert!(e.starts_with(start), "{s} {vars:?}: {e}");
    }
    for ok in [
        "channel_binding=require gssencmode=prefer sslmode=require",
        "channel_binding=prefer gssencmode=prefer sslmode=prefer",
        "channel_binding=disable gssencmode=disable sslmode=disable",
        "sslmode=allow sslcompression=0 sslpassword=",
        "sslmode=verify-full ssl_min_protocol_version=TLSv1.3",
        "ssl_min_protocol_version=TLSv1.2 ssl_max_protocol_version=tlsv1.2",
        "sslkeylogfile=/tmp/keys",
    ] {
        assert_eq!(msg(ok, &[]), None, "{ok}");
    }
}

#[test]
fn tls_options_resolve_as_libpq() {
    let c = resolve_with("", &[]).unwrap();
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.sslnegotiation, SslNegotiation::Postgres);
    assert_eq!(c.sslcertmode, SslCertMode::Allow);
    assert!(c.sslsni);
    assert!(!c.sslcompression);
    assert_eq!(c.ssl_min_protocol_version, TlsVersion::V1_2);
    assert_eq!(c.ssl_max_protocol_version, None);
    assert_eq!(c.channel_binding, ChannelBinding::Prefer);
    let c = resolve_with(
        "",
        &[
            ("PGSSLNEGOTIATION", "direct"),
            ("PGSSLMODE", "require"),
            ("PGSSLCERTMODE", "require"),
            ("PGSSLCRL", "/c.crl"),
            ("PGSSLCRLDIR", "/crls"),
            ("PGSSLSNI", "0"),
            ("PGSSLMINPROTOCOLVERSION", "TLSv1.3"),
            ("PGCHANNELBINDING", "require"),
        ],
    )
    .unwrap();
    assert_eq!(c.sslnegotiation, SslNegotiation::Direct);
    assert_eq!(c.sslcertmode, SslCertMode::Require);
    assert_eq!(c.sslcrl.as_deref(), Some("/c.crl"));
    assert_eq!(c.sslcrldir.as_deref(), Some("/crls"));
    assert!(!c.sslsni);
    assert_eq!(c.ssl_min_protocol_version, TlsVersion::V1_3);
    assert_eq!(c.channel_binding, ChannelBinding::Require);
    // libpq tests the first character of sslsni only.
    assert!(resolve_with("sslsni=1yes", &[]).unwrap().sslsni);
    assert!(!resolve_with("sslsni=yes", &[]).unwrap().sslsni);
    // sslrootcert=system: verify-full by default, nothing weaker.
    let c = resolve_with("sslrootcert=system", &[]).unwrap();
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(
        resolve_with("", &[("PGSSLROOTCERT", "system")])
            .unwrap()
            .sslmode,
        SslMode::VerifyFull
    );
    for (s, vars, e) in [
        (
            "sslrootcert=system sslmode=verify-ca",
            &[][..],
            "weak sslmode \"verify-ca\" may not be used with sslrootcert=system (use \"verify-full\")",
        ),
        (
            "sslrootcert=system",
            &[("PGSSLMODE", "require")][..],
            "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")",
        ),
        (
            "sslnegotiation=direct",
            &[],
            "weak sslmode \"prefer\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")",
        ),
        (
            "sslnegotiation=direct sslmode=allow",
            &[],
            "weak sslmode \"allow\" may not be used with sslnegotiation=direct",
        ),
        (
            "sslnegotiation=postgresql",
            &[],
            "invalid sslnegotiation value: \"postgresql\"; use postgres or direct",
        ),
        (
            "sslcertmode=always",
            &[],
            "invalid sslcertmode value: \"always\"; use disable, allow or require",
        ),
        (
            "ssl_max_protocol_version=TLSv1.4",
            &[],
            "invalid ssl_max_protocol_version value: \"TLSv1.4\"; use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
        ),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            &[],
            "invalid SSL protocol version range: ssl_min_protocol_version=TLSv1.3 is above ssl_max_protocol_version=TLSv1.2",
        ),
        (
            "sslmode=disable channel_binding=require",
            &[],
            "channel_binding=require needs TLS (SCRAM-SHA-256-PLUS binds to the TLS channel), but sslmode=disable never uses it",
        ),
    ] {
        let got = resolve_with(s, vars).unwrap_err().to_string();
        assert!(got.starts_with(e), "{s} {vars:?}: {got}");
    }
    // The default files live in ~/.postgresql.
    let env = Env {
        os_user: Some("u".into()),
        home: Some("/home/u".into()),
        ..Env::default()
    };
    let c = ConnConfig::resolve(&ConnOptions::default(), &env, "w").unwrap();
    assert_eq!(c.ssl_dir, Some(PathBuf::from("/home/u/.postgresql")));
    // The key's pass phrase is never printed.
    let c = resolve_with("sslpassword=hunter2", &[]).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn require_auth_lists_as_libpq_16() {
    use AuthMethod::*;
    let all = [Password, Md5, Gss, Sspi, ScramSha256];
    let parse_ra = |s: &str| s.parse::<RequireAuth>();
    let allowed = |r: &RequireAuth| all.into_iter().filter(|m| r.allows(*m)).collect::<Vec<_>>();
    let r = parse_ra("scram-sha-256").unwrap();
    assert_eq!(allowed(&r), vec![ScramSha256]);
    assert!(!r.allows_none());
    let r = parse_ra("password,md5").unwrap();
    assert_eq!(allowed(&r), vec![Password, Md5]);
    assert!(!r.allows_none());
    let r = parse_ra("none").unwrap();
    assert_eq!(allowed(&r), vec![]);
    assert!(r.allows_none());
    let r = parse_ra("md5,none").unwrap();
    assert_eq!(allowed(&r), vec![Md5]);
    assert!(r.allows_none());
    // Negated: everything but the listed, and none allowed unless !none.
    let r = parse_ra("!password").unwrap();
    assert_eq!(allowed(&r), vec![Md5, Gss, Sspi, ScramSha256]);
    assert!(r.allows_none());
    let r = parse_ra("!password,!md5,!none").unwrap();
    assert_eq!(allowed(&r), vec![Gss, Sspi, ScramSha256]);
    assert!(!r.allows_none());
    let r = parse_ra("!none").unwrap();
    assert_eq!(allowed(&r), all.to_vec());
    assert!(!r.allows_none());
    assert_eq!(r.as_str(), "!none");
    // Errors, in libpq's words.
    let err = |s: &str| parse_ra(s).unwrap_err().to_string();
    assert!(
        err("md5,!password").starts_with(
            "negative require_auth method \"!password\" cannot be mixed with non-negative methods"
        ),
        "{}",
        err("md5,!password")
    );
    assert!(
        err("!md5,password")
            .starts_with("require_auth method \"password\" cannot be mixed with negative methods"),
        "{}",
        err("!md5,password")
    );
    for dup in [
        "md5,md5",
        "!md5,!md5",
        "none,none",
        "!none,!none",
        "md5,none,none",
    ] {
        assert!(
            err(dup).contains("is specified more than once"),
            "{dup}: {}",
            err(dup)
        );
    }
    for bad in ["", "md5,", "MD5", "scram", " md5", "trust", "md5 ,password"] {
        assert!(
            err(bad).starts_with("invalid require_auth value: "),
            "{bad:?}: {}",
            err(bad)
        );
    }
    // Through resolve, from the option or PGREQUIREAUTH.
    assert!(matches!(
        resolve_with("require_auth=bogus", &[]),
        Err(ConnInfoError::InvalidRequireAuth { .. })
    ));
    assert!(matches!(
        resolve_with("", &[("PGREQUIREAUTH", "md5,!gss")]),
        Err(ConnInfoError::RequireAuthMixed { .. })
    ));
}

#[test]
fn resolve_misc() {
    assert_eq!(
        resolve_with("service=mydb", &[]).unwrap_err(),
        ConnInfoError::ServiceNotSupported {
            service: "mydb".into()
        }
    );
    // Options walsink does not use are accepted and ignored.
    resolve(
        "gssencmode=disable channel_binding=prefer load_balance_hosts=disable client_encoding=UTF8",
    );
    // HOME empty: no default passfile.
    let mut e = env(&[]);
    e.home = Some(PathBuf::new());
    assert_eq!(
        ConnConfig::resolve(&ConnOptions::default(), &e, "w")
            .unwrap()
            .passfile,
        None
    );
}

#[test]
fn target_display() {
    let t = unix("/tmp", 5433);
    assert_eq!(t.display_host(), "/tmp");
    assert_eq!(t.socket_path(), Some(PathBuf::from("/tmp/.s.PGSQL.5433")));
    assert_eq!(t.to_string(), "on socket \"/tmp/.s.PGSQL.5433\"");
    let t = unix("@abstract", 5432);
    assert_eq!(
        t.socket_path(),
        Some(PathBuf::from("@abstract/.s.PGSQL.5432"))
    );
    let t = tcp("db1", 5432);
    assert_eq!(t.socket_path(), None);
    assert_eq!(t.to_string(), "at \"db1\", port 5432");
    let t = Target {
        host: Host::Tcp("db1".into()),
        hostaddr: Some("10.0.0.1".parse().unwrap()),
        port: 6000,
    };
    assert_eq!(t.to_string(), "at \"db1\" (10.0.0.1), port 6000");
    let t = resolve("hostaddr=10.0.0.1").targets.remove(0);
    assert_eq!(t.to_string(), "at \"10.0.0.1\", port 5432");
}

// ---------------------------------------------------------------- .pgpass

#[test]
fn pgpass_basic_and_first_match_wins() {
    let content = "\
# comment: h:5432:db:u:nope
other:5432:db:u:wrong-host
h:5433:db:u:wrong-port
h:5432:other:u:wrong-db
h:5432:db:other:wrong-user
h:5432:db:u:right
h:5432:db:u:second
";
    assert_eq!(
        pgpass_match(content, "h", 5432, "db", "u").as_deref(),
        Some("right")
    );
    assert_eq!(pgpass_match(content, "h", 5432, "db", "nobody"), None);
    assert_eq!(pgpass_match("", "h", 5432, "db", "u"), None);
}

#[test]
fn pgpass_wildcards() {
    let content = "*:*:*:*:any\n";
    assert_eq!(
        pgpass_match(content, "h", 1, "d", "u").as_deref(),
        Some("any")
    );
    let content = "h:*:replication:*:rep\n*:5432:*:u:pw\n";
    assert_eq!(
        pgpass_match(content, "h", 9, "replication", "x").as_deref(),
        Some("rep")
    );
    assert_eq!(
        pgpass_match(content, "h", 5432, "db", "u").as_deref(),
        Some("pw")
    );
    assert_eq!(pgpass_match(content, "h", 5433, "db", "u"), None);
    // Only a whole-field '*' is a wildcard.
    assert_eq!(pgpass_match("h*:5432:d:u:p\n", "hx", 5432, "d", "u"), None);
    assert_eq!(
        pgpass_match("h*:5432:d:u:p\n", "h*", 5432, "d", "u").as_deref(),
        Some("p")
    );
    assert_eq!(pgpass_match("**:5432:d:u:p\n", "hx", 5432, "d", "u"), None);
    // An escaped '*' is literal.
    assert_eq!(pgpass_match("\\*:5432:d:u:p\n", "hx", 5432, "d", "u"), None);
    assert_eq!(
        pgpass_match("\\*:5432:d:u:p\n", "*", 5432, "d", "u").as_deref(),
        Some("p")
    );
}

#[test]
fn pgpass_escapes() {
    // IPv6 host with escaped colons, user with an escaped backslash.
    let content = r"\:\:1:5432:db:do\\main:p\:w\\d:ignored";
    assert_eq!(
        pgpass_match(content, "::1", 5432, "db", r"do\main").as_deref(),
        Some(r"p:w\d")
    );
    // The password ends at the first unescaped ':'.
    assert_eq!(
        pgpass_match("h:1:d:u:a:b", "h", 1, "d", "u").as_deref(),
        Some("a")
    );
    // A trailing lone backslash in the password is kept.
    assert_eq!(
        pgpass_match(r"h:1:d:u:ab\", "h", 1, "d", "u").as_deref(),
        Some(r"ab\")
    );
    // Escaping an ordinary character is harmless.
    assert_eq!(
        pgpass_match(r"\h:1:d:u:p", "h", 1, "d", "u").as_deref(),
        Some("p")
    );
    // A field cut short by a trailing backslash does not match.
    assert_eq!(pgpass_match(r"h\", "h", 1, "d", "u"), None);
}

#[test]
fn pgpass_line_handling() {
    // CRLF and a missing final newline.
    let content = "x:1:d:u:no\r\nh:1:d:u:yes\r\n";
    assert_eq!(
        pgpass_match(content, "h", 1, "d", "u").as_deref(),
        Some("yes")
    );
    assert_eq!(
        pgpass_match("h:1:d:u:last", "h", 1, "d", "u").as_deref(),
        Some("last")
    );
    // Incomplete lines never match; an empty password is an empty string.
    assert_eq!(pgpass_match("h:1:d:u\n", "h", 1, "d", "u"), None);
    assert_eq!(pgpass_match("h:1:d\n", "h", 1, "d", "u"), None);
    assert_eq!(
        pgpass_match("h:1:d:u:\n", "h", 1, "d", "u").as_deref(),
        Some("")
    );
    // Comments only at the start of the line; blank lines ignored.
    assert_eq!(pgpass_match("\n\n #h:1:d:u:p\n", "h", 1, "d", "u"), None);
    assert_eq!(
        pgpass_match("\n#x\nh:1:d:u:p #not a comment\n", "h", 1, "d", "u").as_deref(),
        Some("p #not a comment")
    );
    // Fields are compared exactly: no prefix matches.
    assert_eq!(pgpass_match("hh:1:d:u:p", "h", 1, "d", "u"), None);
    assert_eq!(pgpass_match("h:1:d:u:p", "hh", 1, "d", "u"), None);
    assert_eq!(pgpass_match("h:15:d:u:p", "h", 1, "d", "u"), None);
    assert_eq!(pgpass_match("h:01:d:u:p", "h", 1, "d", "u"), None);
}

fn config_with_passfile(conninfo: &str) -> ConnConfig {
    resolve(conninfo)
}

#[test]
fn password_for_prefers_explicit_password() {
    let file = Some("*:*:*:*:fromfile\n");
    let c = config_with_passfile("host=h password=explicit");
    assert_eq!(
        c.password_for(&c.targets[0], file).as_deref(),
        Some("explicit")
    );
    let c = config_with_passfile("host=h");
    assert_eq!(
        c.password_for(&c.targets[0], file).as_deref(),
        Some("fromfile")
    );
    assert_eq!(c.password_for(&c.targets[0], None), None);
}

#[test]
fn password_for_matches_per_target() {
    let content = "\
db1:5432:replication:alice:pw1
db2:6000:*:alice:pw2
localhost:5432:replication:alice:sock
/tmp:5433:replication:alice:tmpsock
10.0.0.9:5432:*:*:byaddr
";
    let file = Some(content);
    let c = config_with_passfile(
        "host=db1,db2,/var/run/postgresql,/tmp,db3 port=5432,6000,5432,5433,5432",
    );
    let got: Vec<_> = c.targets.iter().map(|t| c.password_for(t, file)).collect();
    assert_eq!(
        got,
        vec![
            Some("pw1".into()),
            Some("pw2".into()),
            Some("sock".into()),
            Some("tmpsock".into()),
            None
        ]
    );
    // dbname takes part in matching.
    let c = config_with_passfile("host=db1 dbname=other");
    assert_eq!(c.password_for(&c.targets[0], file), None);
    // hostaddr-only targets match on the address.
    let c = config_with_passfile("hostaddr=10.0.0.9");
    assert_eq!(
        c.password_for(&c.targets[0], file).as_deref(),
        Some("byaddr")
    );
    // A "localhost" line matches any socket directory at its port...
    let c = config_with_passfile("host=/somewhere/else");
    assert_eq!(c.password_for(&c.targets[0], file).as_deref(), Some("sock"));
    // ...but not a TCP connection to another host.
    let c = config_with_passfile("host=db9");
    assert_eq!(c.password_for(&c.targets[0], file), None);
    // An empty password field is no password.
    let c = config_with_passfile("host=db1");
    assert_eq!(
        c.password_for(&c.targets[0], Some("db1:5432:*:*:\n*:*:*:*:later\n")),
        None
    );
}

#[test]
fn fuzz_entry_point_smoke() {
    for input in [
        &b""[..],
        b"postgresql://",
        b"postgresql://[",
        b"postgresql://u:p@[::1]:99999,%2Ftmp/db?host=&port=,,",
        b"host=a,b port=1,2,3",
        b"\xff\xfe=\x00'",
        b"hostaddr=::1,1.2.3.4 host=,x port=0",
    ] {
        fuzz_conninfo(input);
    }
}

// ---------------------------------------------------------------- properties

/// Quote a value the way a careful client would for a keyword=value string.
fn quote(v: &str) -> String {
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// Percent-encode everything but unreserved characters.
fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Escape a .pgpass field.
fn pgpass_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace(':', "\\:")
}

proptest! {
    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = ConnOptions::parse(&s);
        let _ = ConnOptions::is_conninfo(&s);
    }

    #[test]
    fn parse_never_panics_on_conninfo_like(
        prefix in prop::sample::select(vec!["", "postgresql://", "postgres://", "host="]),
        body in "[a-z=' \\\\:/@%,?&\\[\\]0-9.fF]{0,40}",
    ) {
        let s = format!("{prefix}{body}");
        if let Ok(o) = ConnOptions::parse(&s) {
            let _ = ConnConfig::resolve(&o, &env(&[]), "walsink");
        }
    }

    #[test]
    fn fuzz_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzz_conninfo(&data);
    }

    #[test]
    fn quoted_values_round_trip(
        entries in prop::collection::vec((prop::sample::select(KEYWORDS.to_vec()), any::<String>()), 0..6),
        sep in "[ \t\n]{1,3}",
    ) {
        let text: Vec<String> = entries.iter().map(|(k, v)| format!("{k} = {}", quote(v))).collect();
        let o = ConnOptions::parse(&text.join(&sep)).unwrap();
        let mut want = ConnOptions::default();
        for (k, v) in &entries {
            want.set(k, v).unwrap();
        }
        prop_assert_eq!(o, want);
    }

    #[test]
    fn uri_components_round_trip(
        user in "[^\u{0}]{1,12}",
        password in "[^\u{0}]{1,12}",
        dbname in "[^\u{0}]{1,12}",
        appname in "[^\u{0}]{1,12}",
    ) {
        let uri = format!(
            "postgresql://{}:{}@h/{}?application_name={}",
            percent_encode(&user), percent_encode(&password), percent_encode(&dbname), percent_encode(&appname),
        );
        let o = ConnOptions::parse(&uri).unwrap();
        prop_assert_eq!(o.get("user"), Some(user.as_str()));
        prop_assert_eq!(o.get("password"), Some(password.as_str()));
        prop_assert_eq!(o.get("dbname"), Some(dbname.as_str()));
        prop_assert_eq!(o.get("application_name"), Some(appname.as_str()));
    }

    #[test]
    fn pgpass_escaped_fields_round_trip(
        host in "[^\n\r]{1,10}",
        port in 1u16..,
        db in "[^\n\r]{1,10}",
        user in "[^\n\r]{1,10}",
        password in "[^\n\r]{0,10}",
    ) {
        prop_assume!(!host.starts_with('#') && host != "*");
        let line = format!(
            "{}:{port}:{}:{}:{}\n",
            pgpass_escape(&host), pgpass_escape(&db), pgpass_escape(&user), pgpass_escape(&password)
        );
        // An escaped password keeps trailing backslashes paired, so it round-trips.
        prop_assert_eq!(pgpass_match(&line, &host, port, &db, &user), Some(password.clone()));
        prop_assert_eq!(pgpass_match(&line, &format!("{host}x"), port, &db, &user), None);
    }
}
