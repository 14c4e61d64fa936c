//! The process facts the sans-IO connection options take as inputs: environment
//! variables, the user from the password database, the password file's content, and the
//! user name of a Unix socket's peer.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use walsink_protocol::conninfo::{ConnConfig, Env, Target};

/// The largest password file walsink reads. libpq reads any size; a password file of
/// more than a megabyte is not one.
pub const MAX_PASSFILE_BYTES: u64 = 1 << 20;

/// Reads the real process environment: all UTF-8 environment variables; the user name
/// of the effective uid from the password database, else `USER` or `LOGNAME`; the home
/// directory from `HOME`, else the password database; `/var/run/postgresql` as the
/// socket directory if it exists, else `/tmp`.
pub fn process_env() -> Env {
    let vars: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let passwd = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten();
    let home = vars
        .get("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| passwd.as_ref().map(|p| p.dir.clone()));
    let os_user = passwd.map(|p| p.name).or_else(|| {
        ["USER", "LOGNAME"]
            .iter()
            .find_map(|k| vars.get(*k).filter(|u| !u.is_empty()).cloned())
    });
    let run = Path::new("/var/run/postgresql");
    let default_socket_dir = if run.is_dir() {
        run.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    };
    Env {
        vars,
        home,
        os_user,
        default_socket_dir,
    }
}

/// The outcome of [`password_for`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordLookup {
    /// The password to send, if any was found.
    pub password: Option<String>,
    /// Something the caller should log as a warning (e.g. an insecure password file).
    pub warning: Option<String>,
}

impl fmt::Debug for PasswordLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordLookup")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("warning", &self.warning)
            .finish()
    }
}

/// The password for `target`: the configured one, else from the password file
/// (`passfile`, `PGPASSFILE`, `~/.pgpass`), read now, as libpq reads it for each
/// connection attempt. A file that is group- or world-readable, not a regular file,
/// larger than [`MAX_PASSFILE_BYTES`] or unreadable is not used, with a warning for the
/// caller to log (libpq's words for the permissions case); a missing one silently.
pub fn password_for(cfg: &ConnConfig, target: &Target) -> PasswordLookup {
    if cfg.password.is_some() {
        return PasswordLookup {
            password: cfg.password_for(target, None),
            warning: None,
        };
    }
    let Some(path) = &cfg.passfile else {
        return PasswordLookup::default();
    };
    match read_passfile(path) {
        Ok(content) => PasswordLookup {
            password: cfg.password_for(target, content.as_deref()),
            warning: None,
        },
        Err(warning) => PasswordLookup {
            password: None,
            warning: Some(warning),
        },
    }
}

/// The password file's content; `Ok(None)` if it does not exist; `Err(warning)` if
/// it must not or cannot be used.
fn read_passfile(path: &Path) -> Result<Option<String>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "could not open password file \"{}\": {e}",
                path.display()
            ));
        }
    };
    // The checks are on the file opened, so it cannot be swapped in between.
    let meta = file
        .metadata()
        .map_err(|e| format!("could not access password file \"{}\": {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "password file \"{}\" is not a plain file",
            path.display()
        ));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            ));
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_PASSFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("could not read password file \"{}\": {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PASSFILE_BYTES {
        return Err(format!(
            "password file \"{}\" is larger than {} MiB; it is not used",
            path.display(),
            MAX_PASSFILE_BYTES >> 20
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The name of the operating-system user with id `uid`, from the password database.
pub fn user_name(uid: u32) -> Result<Option<String>, String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map(|u| u.map(|u| u.name))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use walsink_protocol::conninfo::ConnOptions;

    fn write_passfile(dir: &tempfile::TempDir, content: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join("pgpass");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn config(conninfo: &str, passfile: Option<PathBuf>) -> ConnConfig {
        let env = Env {
            os_user: Some("alice".into()),
            ..Env::default()
        };
        let mut c =
            ConnConfig::resolve(&ConnOptions::parse(conninfo).unwrap(), &env, "walsink").unwrap();
        c.passfile = passfile;
        c
    }

    #[test]
    fn explicit_password_wins_and_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_passfile(&dir, "*:*:*:*:fromfile\n", 0o600);
        let c = config("host=h password=explicit", Some(path.clone()));
        let l = password_for(&c, &c.targets[0]);
        assert_eq!(l.password.as_deref(), Some("explicit"));
        assert_eq!(l.warning, None);
        let c = config("host=h", Some(path));
        assert_eq!(
            password_for(&c, &c.targets[0]).password.as_deref(),
            Some("fromfile")
        );
        assert!(!format!("{:?}", password_for(&c, &c.targets[0])).contains("fromfile"));
    }

    #[test]
    fn insecure_file_is_refused_with_libpq_warning() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o607] {
            let path = write_passfile(&dir, "*:*:*:*:secret\n", mode);
            let c = config("host=h", Some(path.clone()));
            let l = password_for(&c, &c.targets[0]);
            assert_eq!(l.password, None, "{mode:o}");
            assert_eq!(
                l.warning,
                Some(format!(
                    "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                    path.display()
                ))
            );
        }
        for mode in [0o600, 0o400] {
            let path = write_passfile(&dir, "*:*:*:*:secret\n", mode);
            let c = config("host=h", Some(path));
            let l = password_for(&c, &c.targets[0]);
            assert_eq!(l.password.as_deref(), Some("secret"), "{mode:o}");
            assert_eq!(l.warning, None);
        }
    }

    #[test]
    fn missing_odd_or_huge_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = config("host=h", Some(dir.path().join("nope")));
        assert_eq!(password_for(&c, &c.targets[0]), PasswordLookup::default());
        let c = config("host=h", None);
        assert_eq!(password_for(&c, &c.targets[0]), PasswordLookup::default());
        // A directory is not a password file.
        let c = config("host=h", Some(dir.path().to_path_buf()));
        let l = password_for(&c, &c.targets[0]);
        assert_eq!(l.password, None);
        assert!(l.warning.unwrap().contains("is not a plain file"));
        // Nor is something larger than the limit.
        let mut big = "x".repeat(MAX_PASSFILE_BYTES as usize);
        big.push_str("\n*:*:*:*:secret\n");
        let path = write_passfile(&dir, &big, 0o600);
        let c = config("host=h", Some(path));
        let l = password_for(&c, &c.targets[0]);
        assert_eq!(l.password, None);
        assert!(l.warning.unwrap().contains("is larger than 1 MiB"));
    }

    #[test]
    fn process_env_is_sane() {
        let e = process_env();
        assert!(e.default_socket_dir.is_absolute());
        assert_eq!(
            e.home,
            std::env::var("HOME")
                .ok()
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
        );
        if let Some(me) = user_name(nix::unistd::geteuid().as_raw()).unwrap() {
            assert_eq!(Some(me), e.os_user);
        }
    }
}
