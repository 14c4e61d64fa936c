use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn env() -> Env {
    Env {
        vars: HashMap::new(),
        home: None,
        os_user: Some("walsink".into()),
        default_socket_dir: PathBuf::from("/tmp"),
    }
}

fn ok(text: &str) -> DaemonConfig {
    match parse(text, Path::new("/etc/walsink"), &env()) {
        Ok(c) => c,
        Err(e) => panic!("{}", render(e)),
    }
}

fn render(errors: Vec<ConfigError>) -> String {
    ConfigErrors {
        file: PathBuf::from("/etc/walsink/walsink.toml"),
        errors,
    }
    .to_string()
}

fn errors(text: &str) -> String {
    match parse(text, Path::new("/etc/walsink"), &env()) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => render(e),
    }
}

const EXAMPLE: &str = r#"metrics_listen = "127.0.0.1:9187"
log_format = "json"

[[source]]
name = "db1"
conninfo = "host=db1 user=replicator"
slot = "walsink"
directory = "/srv/wal/db1"
mode = "default"
status_interval = "10s"
flush_bytes = "8MB"
flush_interval = "500ms"
receive_timeout = "1min"
create_slot_if_missing = true

[[source]]
name = "db2"
conninfo = "postgresql://replicator@db2:5433/"
directory = "wal/db2"
mode = "synchronous"
status_interval = "0"
"#;

#[test]
fn the_readme_example_maps_to_receive_configs() {
    let c = ok(EXAMPLE);
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9187".parse().unwrap()));
    assert_eq!(c.log_format, Some(LogFormat::Json));
    assert_eq!(c.sources.len(), 2);
    let (a, b) = (&c.sources[0], &c.sources[1]);
    assert_eq!(a.name, "db1");
    let r = &a.config;
    assert_eq!(r.dir, PathBuf::from("/srv/wal/db1"));
    assert_eq!(r.slot.as_deref(), Some("walsink"));
    assert_eq!(r.conn.user, "replicator");
    assert_eq!(r.conn.targets[0].port, 5432);
    assert_eq!(r.flush_bytes, 8 << 20);
    assert_eq!(r.flush_interval, Duration::from_millis(500));
    assert_eq!(r.status_interval, Some(Duration::from_secs(10)));
    assert_eq!(r.receive_timeout, Some(Duration::from_secs(60)));
    assert!(r.create_slot_if_missing && !r.synchronous && !r.no_sync && !r.no_loop);
    assert_eq!(r.endpos, None);
    // Relative to the file's directory; defaults as in `walsink receive`.
    let r = &b.config;
    assert_eq!(r.dir, PathBuf::from("/etc/walsink/wal/db2"));
    assert_eq!(r.conn.targets[0].port, 5433);
    assert!(r.synchronous);
    assert_eq!(r.status_interval, None, "\"0\" disables status updates");
    assert_eq!(r.flush_bytes, 4 << 20);
    assert_eq!(r.flush_interval, Duration::from_secs(1));
    assert_eq!(r.slot, None);
}

#[test]
fn the_fingerprint_changes_with_any_setting_and_only_then() {
    let c1 = ok(EXAMPLE);
    let c2 = ok(EXAMPLE);
    assert_eq!(c1.sources[0].fingerprint, c2.sources[0].fingerprint);
    assert_eq!(c1.sources[1].fingerprint, c2.sources[1].fingerprint);
    // Reordered sources and other sources' changes do not matter.
    let changed = EXAMPLE.replace("\"synchronous\"", "\"no-sync\"");
    let c3 = ok(&changed);
    assert_eq!(c1.sources[0].fingerprint, c3.sources[0].fingerprint);
    assert_ne!(c1.sources[1].fingerprint, c3.sources[1].fingerprint);
    assert!(c3.sources[1].config.no_sync);
    let c4 = ok(&EXAMPLE.replace("\"8MB\"", "\"16MB\""));
    assert_ne!(c1.sources[0].fingerprint, c4.sources[0].fingerprint);
}

#[test]
fn an_unknown_key_is_an_error_naming_file_line_and_key() {
    let text = EXAMPLE.replace("flush_interval = \"500ms\"", "flush_intreval = \"500ms\"");
    let e = errors(&text);
    assert!(
        e.starts_with("/etc/walsink/walsink.toml:12:1: flush_intreval: unknown key;"),
        "{e}"
    );
    assert!(e.contains("flush_interval"), "lists the valid keys: {e}");
    let e = errors(&format!("metrics_listn = \"x\"\n{EXAMPLE}"));
    assert!(
        e.starts_with("/etc/walsink/walsink.toml:1:1: metrics_listn: unknown key;"),
        "{e}"
    );
}

#[test]
fn every_semantic_error_is_reported_with_its_line_and_key() {
    let text = r#"
[[source]]
name = "a"
conninfo = "host=h"
directory = "/w/a"
flush_bytes = "4XB"
status_interval = "10 parsecs"

[[source]]
name = "a"
conninfo = "host=h"
directory = "/w/a/"
mode = "fast"
slot = "Bad-Slot"
create_slot_if_missing = true
"#;
    let e = errors(text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 6, "{e}");
    let f = "/etc/walsink/walsink.toml";
    assert!(
        lines[0].starts_with(&format!(
            "{f}:6:15: source \"a\": flush_bytes: invalid size \"4XB\""
        )),
        "{e}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{f}:7:19: source \"a\": status_interval: invalid duration"
        )),
        "{e}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{f}:10:8: source \"a\": name: a second source named \"a\" (the first is on line 3)"
        )),
        "{e}"
    );
    assert!(lines[3].starts_with(&format!("{f}:12:13: source \"a\": directory: \"/w/a\" is also the directory of source \"a\" (line 3)")), "{e}");
    assert!(
        lines[4].starts_with(&format!(
            "{f}:13:8: source \"a\": mode: invalid mode \"fast\""
        )),
        "{e}"
    );
    assert!(
        lines[5].starts_with(&format!(
            "{f}:14:8: source \"a\": slot: invalid replication slot name"
        )),
        "{e}"
    );
}

#[test]
fn missing_keys_and_wrong_types_name_the_key() {
    let e = errors("[[source]]\nname = \"a\"\nconninfo = \"host=h\"\n");
    assert!(e.contains("directory: missing"), "{e}");
    assert!(e.contains(":1:1:"), "{e}");
    let e = errors("[[source]]\nname = \"a\"\nconninfo = \"host=h\"\ndirectory = 5\n");
    assert!(
        e.starts_with("/etc/walsink/walsink.toml:4:13: directory: "),
        "{e}"
    );
    let e = errors(
        "[[source]]\nname = \"a\"\nconninfo = \"host=h\"\ndirectory = \"/x\"\nflush_interval = 5\n",
    );
    assert!(e.contains(":5:18: flush_interval: "), "{e}");
    let e = errors(
        "log_format = \"yaml\"\n[[source]]\nname = \"a\"\nconninfo = \"\"\ndirectory = \"/x\"\n",
    );
    assert!(
        e.contains(":1:14: log_format: invalid value \"yaml\""),
        "{e}"
    );
    let e = errors("metrics_listen = \"localhost\"\n");
    assert!(e.contains(":1:18: metrics_listen: invalid address"), "{e}");
    assert!(e.contains("no [[source]] table"), "{e}");
    let e = errors("[[source]\n");
    assert!(e.contains(":1:"), "a syntax error has a position: {e}");
}

#[test]
fn a_password_in_conninfo_never_appears_in_an_error() {
    // A conninfo error, a type error on the next line, and an unknown key after it.
    for text in [
        "[[source]]\nname = \"a\"\nconninfo = \"password=hunter2 sslmode=bogus\"\ndirectory = \"/x\"\n",
        "[[source]]\nname = \"a\"\nconninfo = \"password=hunter2\" ; mode = 5\ndirectory = \"/x\"\n",
        "[[source]]\nname = \"a\"\nconninfo = \"password=hunter2\"\ndirectory = \"/x\"\nmode = 5\n",
        "[[source]]\nname = \"a\"\nconninfo = \"postgresql://u:hunter2@h/%zz\"\ndirectory = \"/x\"\n",
        "[[source]]\nname = \"a\"\nconninfo = \"password=hunter2\" directory = \"/x\"\n",
    ] {
        let e = errors(text);
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("/etc/walsink/walsink.toml:"), "{e}");
    }
}

#[test]
fn password_files_must_be_private_and_are_never_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("db1.password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = "[[source]]\nname = \"a\"\nconninfo = \"host=h\"\ndirectory = \"/x\"\npassword_file = \"db1.password\"\n";
    let e = match parse(text, dir.path(), &env()) {
        Ok(_) => panic!("a world-readable password file was accepted"),
        Err(e) => render(e),
    };
    assert!(e.contains(":5:17: source \"a\": password_file: "), "{e}");
    assert!(e.contains("chmod 600"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = parse(text, dir.path(), &env()).unwrap_or_else(|e| panic!("{}", render(e)));
    assert_eq!(c.sources[0].config.password.as_deref(), Some("s3cret"));
    // A new password restarts the source on reload.
    std::fs::write(&pw, "other\n").unwrap();
    let c2 = parse(text, dir.path(), &env()).unwrap_or_else(|e| panic!("{}", render(e)));
    assert_ne!(c.sources[0].fingerprint, c2.sources[0].fingerprint);
    std::fs::write(&pw, "").unwrap();
    assert!(parse(text, dir.path(), &env()).is_err());
}

#[test]
fn the_same_directory_through_a_symbolic_link_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    let text = "[[source]]\nname = \"a\"\nconninfo = \"host=h\"\ndirectory = \"real\"\n\
                [[source]]\nname = \"b\"\nconninfo = \"host=h\"\ndirectory = \"./link\"\n";
    let e = match parse(text, dir.path(), &env()) {
        Ok(_) => panic!("accepted"),
        Err(e) => render(e),
    };
    assert!(e.contains("source \"b\": directory: "), "{e}");
    assert!(e.contains("also the directory of source \"a\""), "{e}");
}

#[test]
fn load_names_an_unreadable_file() {
    let e = match load(Path::new("/nonexistent/walsink.toml"), &env()) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.starts_with("/nonexistent/walsink.toml: cannot read the configuration file:"),
        "{e}"
    );
}
