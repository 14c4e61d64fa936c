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

/// `[[source]]` tables named `s0`, `s1`, ... with these `directory` values (and `host=h`).
fn with_dirs(dirs: &[&str]) -> String {
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            format!("[[source]]\nname = \"s{i}\"\nconninfo = \"host=h\"\ndirectory = \"{d}\"\n")
        })
        .collect()
}

#[test]
fn one_directory_however_spelled_or_one_inside_another_is_refused() {
    // The same directory: trailing slash, `.` and `..` components, relative to the file's directory.
    for (a, b) in [
        ("/w/a", "/w/a/"),
        ("/w/a", "/w/./a"),
        ("/w/a", "/w/b/../a"),
        ("/etc/walsink/wal", "wal"),
        ("/etc/walsink/wal", "./x/../wal/"),
    ] {
        let e = errors(&with_dirs(&[a, b]));
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with("/etc/walsink/walsink.toml:8:13: source \"s1\": directory: \"")
                && e.contains("is also the directory of source \"s0\" (line 2)"),
            "{a} and {b}: {e}"
        );
    }
    // Nested, either way round; the error names both directories and the other source.
    let e = errors(&with_dirs(&["/w/a", "/w/a/db2"]));
    assert!(
        e.starts_with("/etc/walsink/walsink.toml:8:13: source \"s1\": directory: \"/w/a/db2\" is inside \"/w/a\", the directory of source \"s0\" (line 2): "),
        "{e}"
    );
    assert!(e.contains("side by side"), "says how to fix it: {e}");
    let e = errors(&with_dirs(&["/w/a/db2/x", "/w/c", "/w/a"]));
    assert!(
        e.starts_with("/etc/walsink/walsink.toml:12:13: source \"s2\": directory: \"/w/a\" contains \"/w/a/db2/x\", the directory of source \"s0\" (line 2): "),
        "{e}"
    );
    // Three in one place: each later one names the first.
    let e = errors(&with_dirs(&["/w/a", "/w/a", "/w/a"]));
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(
        e.lines().all(|l| l.contains("source \"s0\" (line 2)")),
        "{e}"
    );
    // Siblings, even with a common prefix in their names, are fine; so is the root of another tree.
    ok(&with_dirs(&["/w/db1", "/w/db10", "/w/db1x/a", "/x/w/db1"]));
}

#[test]
fn symbolic_links_hide_neither_a_duplicate_nor_a_nested_archive() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("real/db1")).unwrap();
    std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
    let parse_in = |dirs: &[&str]| match parse(&with_dirs(dirs), root, &env()) {
        Ok(_) => panic!("accepted {dirs:?}"),
        Err(e) => render(e),
    };
    // Both exist: the link names the same directory.
    let e = parse_in(&["real/db1", "link/db1/"]);
    assert!(
        e.contains("source \"s1\": directory: ")
            && e.contains("is also the directory of source \"s0\" (line 2), which names it")
            && e.contains("once symbolic links are followed"),
        "{e}"
    );
    // Not created yet: the link in the existing part of the path is followed all the same.
    let e = parse_in(&["real/new", "link/new"]);
    assert!(e.contains("is also the directory of source \"s0\""), "{e}");
    // Nested through the link, both ways.
    let e = parse_in(&["real", "link/db1"]);
    assert!(
        e.contains("source \"s1\": directory: ")
            && e.contains("is inside")
            && e.contains("once symbolic links and mounts are followed"),
        "{e}"
    );
    let e = parse_in(&["link/db1/x", "real/db1"]);
    assert!(e.contains(" contains "), "{e}");
    // The link itself next to its target's sibling is fine.
    parse(&with_dirs(&["link/db1", "real/db2"]), root, &env())
        .unwrap_or_else(|e| panic!("{}", render(e)));
}

/// Two sources with `slot = "walsink"` and these connection strings.
fn with_conninfos(a: &str, b: &str) -> String {
    format!(
        "[[source]]\nname = \"a\"\nconninfo = \"{a}\"\ndirectory = \"/w/a\"\nslot = \"walsink\"\n\
         [[source]]\nname = \"DB-2\"\nconninfo = \"{b}\"\ndirectory = \"/w/b\"\nslot = \"walsink\"\n"
    )
}

#[test]
fn one_slot_on_one_server_is_refused_only_when_surely_the_same() {
    let mut pghost = env();
    pghost.vars.insert("PGHOST".into(), "db1".into());
    pghost.vars.insert("PGPORT".into(), "5433".into());
    // Surely the same server, once parsed with the defaults a connection applies.
    for (a, b, e) in [
        ("host=db1", "host=db1 port=5432 user=other", env()),
        ("host=db1", "host=DB1", env()),
        ("postgresql://u@db1/", "host=db1 dbname=x", env()),
        ("host=db1 hostaddr=10.0.0.5", "hostaddr=10.0.0.5", env()),
        ("host=10.0.0.5", "host=other hostaddr=10.0.0.5", env()),
        ("host=::1", "hostaddr=0:0:0:0:0:0:0:1", env()),
        ("user=u", "host=/tmp/", env()),
        ("host=/run/pg", "host=/run/./pg port=5432", env()),
        ("user=u", "host=db1 port=5433", pghost.clone()),
        (
            "host=db1,db2",
            "host=db1,db2 target_session_attrs=any",
            env(),
        ),
    ] {
        let text = with_conninfos(a, b);
        let err = match parse(&text, Path::new("/etc/walsink"), &e) {
            Ok(_) => panic!("{a:?} and {b:?}: accepted"),
            Err(errs) => render(errs),
        };
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("/etc/walsink/walsink.toml:10:8: source \"DB-2\": slot: replication slot \"walsink\" of the server ")
                && err.contains("is also the slot of source \"a\" (line 2)"),
            "{a:?} and {b:?}: {err}"
        );
        // How to fix it, with a valid slot name.
        assert!(
            err.contains("slot = \"db_2\" with create_slot_if_missing = true")
                && err.contains("pg_create_physical_replication_slot('db_2')"),
            "{err}"
        );
    }
    let err = errors(&with_conninfos("host=db1", "host=db1"));
    assert!(
        err.contains("of the server at \"db1\", port 5432 is also"),
        "{err}"
    );
    // Perhaps different servers: not refused.
    for (a, b) in [
        ("host=db1", "host=db2"),
        ("host=db1", "host=db1 port=5433"),
        ("host=localhost", "host=127.0.0.1"),
        ("host=db1", "hostaddr=10.0.0.5"),
        ("host=db1 hostaddr=10.0.0.5", "host=db1 hostaddr=10.0.0.6"),
        ("host=/run/pg", "host=/tmp"),
        ("host=db1,db2", "host=db2,db1"),
        ("host=db1,db2", "host=db1"),
        (
            "host=db1,db2 target_session_attrs=primary",
            "host=db1,db2 target_session_attrs=standby",
        ),
    ] {
        ok(&with_conninfos(a, b));
    }
    // Another slot, or none, on the same server: fine.
    ok(&with_conninfos("host=db1", "host=db1").replacen(
        "slot = \"walsink\"",
        "slot = \"other\"",
        1,
    ));
    ok(&with_conninfos("host=db1", "host=db1").replacen("slot = \"walsink\"\n", "", 1));
}

#[test]
fn clashes_are_found_even_when_a_source_has_other_errors() {
    let text = with_conninfos("host=db1", "host=db1").replace(
        "directory = \"/w/b\"",
        "directory = \"/w/a\"\nflush_bytes = \"lots\"",
    );
    let e = errors(&text);
    assert!(
        e.contains("source \"DB-2\": directory: \"/w/a\" is also"),
        "{e}"
    );
    assert!(e.contains("source \"DB-2\": flush_bytes: "), "{e}");
    assert!(e.contains("source \"DB-2\": slot: replication slot"), "{e}");
}
