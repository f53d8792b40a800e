//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), with libpq's rules.
//!
//! Each line is `hostname:port:database:username:password`; `*` alone matches anything in
//! the first four fields; `\:` and `\\` escape; lines starting with `#` are comments; the first
//! matching line wins. A file that is not a regular file, or that the group or others may
//! access, is ignored with a warning, as libpq does.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The connection a password is looked up for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Query<'a> {
    /// The host name as libpq matches it: `localhost` for the default unix socket, else the
    /// `host` value (a socket directory stays a path), else `hostaddr`.
    pub(super) host: &'a str,
    pub(super) port: &'a str,
    pub(super) dbname: &'a str,
    pub(super) user: &'a str,
}

/// The password for `query` in the password file at `path`, if the file exists, is private
/// and has a matching line.
pub(super) fn lookup(path: &Path, query: Query<'_>) -> Option<String> {
    if query.dbname.is_empty() || query.user.is_empty() {
        return None;
    }
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read password file \"{}\": {e}", path.display());
            return None;
        }
    };
    if !meta.is_file() {
        tracing::warn!("password file \"{}\" is not a plain file", path.display());
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) \
             or less",
            path.display()
        );
        return None;
    }
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!("cannot read password file \"{}\": {e}", path.display());
            return None;
        }
    };
    find(&text, query)
}

/// The password of the first line of `text` matching `query`.
pub(super) fn find(text: &[u8], query: Query<'_>) -> Option<String> {
    text.split(|b| *b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            return None;
        }
        let rest = match_field(line, query.host)?;
        let rest = match_field(rest, query.port)?;
        let rest = match_field(rest, query.dbname)?;
        let rest = match_field(rest, query.user)?;
        Some(unescape_password(rest))
    })
}

/// libpq's `pwdfMatchesString`: if the field at the start of `line` is `*` or equals `token`
/// (after unescaping), the text after the field's `:`.
fn match_field<'l>(line: &'l [u8], token: &str) -> Option<&'l [u8]> {
    if line.starts_with(b"*:") {
        return Some(&line[2..]);
    }
    let token = token.as_bytes();
    let (mut i, mut t) = (0, 0);
    while i < line.len() {
        let mut escaped = false;
        if line[i] == b'\\' && i + 1 < line.len() {
            i += 1;
            escaped = true;
        }
        if line[i] == b':' && !escaped {
            return (t == token.len()).then(|| &line[i + 1..]);
        }
        if t >= token.len() || line[i] != token[t] {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

/// The password field: up to an unescaped `:`, with `\x` meaning `x`.
fn unescape_password(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() && field[i] != b':' {
        if field[i] == b'\\' && i + 1 < field.len() {
            i += 1;
        }
        out.push(field[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const Q: Query<'static> = Query {
        host: "db1",
        port: "5432",
        dbname: "postgres",
        user: "mon",
    };

    fn find_str(text: &str, q: Query<'_>) -> Option<String> {
        find(text.as_bytes(), q)
    }

    #[test]
    fn matching_rules() {
        let text = "# comment\n\
                    \n\
                    db2:5432:postgres:mon:wrong-host\n\
                    db1:5433:postgres:mon:wrong-port\n\
                    db1:5432:other:mon:wrong-db\n\
                    db1:5432:postgres:other:wrong-user\n\
                    db1:5432:postgres:mon:first\n\
                    db1:5432:postgres:mon:second\n";
        assert_eq!(find_str(text, Q).as_deref(), Some("first"));
        assert_eq!(find_str("*:*:*:*:any\n", Q).as_deref(), Some("any"));
        assert_eq!(find_str("db1:*:postgres:*:w\r\n", Q).as_deref(), Some("w"));
        // `*` is a wildcard only as a whole field.
        assert_eq!(find_str("db*:5432:postgres:mon:x\n", Q), None);
        assert_eq!(
            find_str("db*:5432:postgres:mon:x\n", Query { host: "db*", ..Q }).as_deref(),
            Some("x")
        );
        // Too few fields: no match.
        assert_eq!(find_str("db1:5432:postgres:mon\n", Q), None);
        assert_eq!(find_str("db1:5432:postgres\n", Q), None);
        // No newline at the end of the file.
        assert_eq!(find_str("*:*:*:*:last", Q).as_deref(), Some("last"));
        // A prefix of the token does not match, nor does a longer field.
        assert_eq!(find_str("db:5432:postgres:mon:x\n", Q), None);
        assert_eq!(find_str("db11:5432:postgres:mon:x\n", Q), None);
        // An empty password.
        assert_eq!(find_str("*:*:*:*:\n", Q).as_deref(), Some(""));
    }

    #[test]
    fn escapes() {
        let q = Query {
            host: "fe80::1",
            port: "5432",
            dbname: "a\\b",
            user: "u:x",
        };
        let text = r"fe80\:\:1:5432:a\\b:u\:x:p\:a\\ss\word:ignored";
        assert_eq!(find_str(text, q).as_deref(), Some(r"p:a\ssword"));
        // An unescaped ':' in the host field splits it.
        assert_eq!(find_str("fe80::1:5432:a\\\\b:u\\:x:p\n", q), None);
        // A socket directory is matched as written.
        let q = Query {
            host: "/var/run/postgresql",
            ..Q
        };
        assert_eq!(
            find_str("/var/run/postgresql:*:*:*:sock\n", q).as_deref(),
            Some("sock")
        );
    }

    #[test]
    fn empty_user_or_database_never_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        write_mode(&path, "*:*:*:*:pw\n", 0o600);
        assert_eq!(lookup(&path, Q).as_deref(), Some("pw"));
        assert_eq!(lookup(&path, Query { user: "", ..Q }), None);
        assert_eq!(lookup(&path, Query { dbname: "", ..Q }), None);
    }

    #[test]
    fn permissions_and_file_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        for (mode, found) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o660, false),
        ] {
            write_mode(&path, "*:*:*:*:pw\n", mode);
            assert_eq!(lookup(&path, Q).is_some(), found, "mode {mode:o}");
        }
        assert_eq!(lookup(&dir.path().join("missing"), Q), None);
        assert_eq!(
            lookup(dir.path(), Q),
            None,
            "a directory is not a password file"
        );
    }

    fn write_mode(path: &Path, text: &str, mode: u32) {
        let mut f = fs::File::create(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
}
