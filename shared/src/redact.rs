//! Masking of secrets before they are printed anywhere: logs, metrics labels, HTTP bodies.
//!
//! [`mask_password`] masks a connection string, in both libpq forms (URLs and `key=value`
//! strings) as a user would write them; [`mask_secrets`] masks every secret inside free text,
//! such as what a child process (pgBackRest) prints on its standard error.

use std::borrow::Cow;

/// What a password is replaced with, as the Go pg_exporter prints it.
pub const MASK: &str = "xxxxx";

/// Returns `conn` with every password replaced by [`MASK`].
///
/// Handles `scheme://user:password@host/...` URLs (also with `password=` query parameters) and
/// libpq `key=value` strings with quoted or bare values.
///
/// ```
/// use agent_kit::redact::mask_password;
/// assert_eq!(
///     mask_password("postgres://dbuser_monitor:Secret@127.0.0.1:5432/postgres?sslmode=disable"),
///     "postgres://dbuser_monitor:xxxxx@127.0.0.1:5432/postgres?sslmode=disable"
/// );
/// assert_eq!(
///     mask_password("host=/tmp user=app password='p w' dbname=x"),
///     "host=/tmp user=app password=xxxxx dbname=x"
/// );
/// ```
pub fn mask_password(conn: &str) -> String {
    match url_authority_start(conn) {
        Some(authority_start) => mask_url(conn, authority_start),
        None => mask_key_values(conn),
    }
}

/// Where the authority of `conn` starts when `conn` is a URL: it begins, after blanks, with a
/// scheme (`[A-Za-z][A-Za-z0-9+.-]*`) and `://`, as libpq decides between its two forms by the
/// prefix alone. A `://` further on (inside a quoted `key=value`) does not make a URL.
fn url_authority_start(conn: &str) -> Option<usize> {
    let start = conn.len() - conn.trim_start().len();
    let scheme_len = conn[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
        .unwrap_or(conn.len() - start);
    let first = conn[start..].chars().next()?;
    (scheme_len > 0 && first.is_ascii_alphabetic() && conn[start + scheme_len..].starts_with("://"))
        .then_some(start + scheme_len + 3)
}

fn mask_url(url: &str, authority_start: usize) -> String {
    let rest = &url[authority_start..];
    let query_start = rest.find('?').unwrap_or(rest.len());
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    // The userinfo ends at the last '@' before the query: an unencoded '@' or '/' inside a
    // password must not leave half of it visible.
    match rest[..query_start].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&rest[at..query_start]);
        }
        None => out.push_str(&rest[..query_start]),
    }
    if query_start < rest.len() {
        out.push('?');
        let query = &rest[query_start + 1..];
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if is_secret_key(key) => format!("{key}={MASK}"),
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    is_secret_name(key.trim())
}

/// Returns `text` with every secret in it masked: free text such as a child process's standard
/// error, an error message or a log line. Borrowed when there is nothing to mask.
///
/// Masks what [`mask_password`] masks wherever it appears in the text (the password of
/// `scheme://user:password@…` URLs, secret query parameters), plus:
/// - `name=value` (also `--name=value`, `NAME = 'quoted value'`) for every secret-looking name
///   (see [`is_secret_name`]): libpq's `password=…`, pgBackRest's `repo1-cipher-pass=…`,
///   `repo1-s3-key-secret=…`, environment text such as `PGPASSWORD=…` or
///   `PGBACKREST_REPO1_CIPHER_PASS=…`, `token=…`;
/// - `name value` for a hyphenated secret option name (pgBackRest's
///   `missing '=' in key/value at line 3: repo1-cipher-pass S3cret`);
/// - SQL's `PASSWORD 'literal'` (`CREATE ROLE … PASSWORD '…'`, also `E'…'`).
///
/// ```
/// use agent_kit::redact::mask_secrets;
/// assert_eq!(
///     mask_secrets("ERROR: [032]: 'postgresql://backup:S3cret@db1/postgres' is not valid"),
///     "ERROR: [032]: 'postgresql://backup:xxxxx@db1/postgres' is not valid"
/// );
/// assert_eq!(
///     mask_secrets("key/value found outside of section at line 1: repo1-cipher-pass=S3cret"),
///     "key/value found outside of section at line 1: repo1-cipher-pass=xxxxx"
/// );
/// assert_eq!(mask_secrets("password authentication failed"), "password authentication failed");
/// ```
pub fn mask_secrets(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':' && b[i..].starts_with(b"://") {
            // The URL around this "://": back to a blank, quote, '(' or '=', on to a blank or
            // quote (a password may hold any other character).
            let start = text[copied..i]
                .rfind(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | '(' | '='))
                .map_or(copied, |p| copied + p + 1);
            let end = i + 3 + b[i + 3..].iter().take_while(|c| !ends_url(**c)).count();
            let url = &text[start..end];
            let masked = mask_password(url);
            if masked != url {
                out.push_str(&text[copied..start]);
                out.push_str(&masked);
                copied = end;
            }
            i = end;
            continue;
        }
        let at_word_start = is_name_byte(b[i]) && (i == 0 || !is_name_byte(b[i - 1]));
        if !at_word_start {
            i += 1;
            continue;
        }
        let name_end = i + b[i..].iter().take_while(|c| is_name_byte(**c)).count();
        let name = &text[i..name_end];
        let after_blanks = skip_blanks(b, name_end);
        let masked_range =
            if after_blanks < b.len() && b[after_blanks] == b'=' && is_secret_name(name) {
                // name=value, name = 'value'
                let value = skip_blanks(b, after_blanks + 1);
                Some((value, value_end(b, value)))
            } else if after_blanks > name_end && name.eq_ignore_ascii_case("password") {
                // SQL: PASSWORD 'literal', PASSWORD E'literal'; the quotes stay.
                let quote = match b.get(after_blanks..after_blanks + 2) {
                    Some([b'E' | b'e', b'\'']) => Some(after_blanks + 1),
                    _ => (b.get(after_blanks) == Some(&b'\'')).then_some(after_blanks),
                };
                quote.map(|q| (q + 1, sql_literal_close(b, q + 1)))
            } else if after_blanks > name_end
                && after_blanks < b.len()
                && !matches!(b[after_blanks], b'\n' | b'\r' | b'=')
                && name.trim_start_matches('-').contains('-')
                && is_secret_name(name)
            {
                // A secret option and its value without '=' (pgBackRest's "missing '='" message).
                let end = after_blanks
                    + b[after_blanks..]
                        .iter()
                        .take_while(|c| !c.is_ascii_whitespace())
                        .count();
                Some((after_blanks, end))
            } else {
                None
            };
        match masked_range {
            Some((from, to)) if to > from => {
                out.push_str(&text[copied..from]);
                out.push_str(MASK);
                copied = to;
                i = to;
            }
            _ => i = name_end,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether `name` names a secret, whatever its spelling: `password`, `--repo1-cipher-pass`,
/// `PGBACKREST_REPO1_S3_KEY_SECRET`, `PGPASSWORD`, `api_key`, `token`. Case, a leading `--`
/// and `_` for `-` do not matter; the name ends in `password` or `passwd`, or its last
/// `-`/`_`-separated part is `pass`, `passphrase`, `secret`, `token` or `key` (not `sslkey`, a
/// file name).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.trim_start_matches('-');
    let ends_with = |suffix: &str| {
        name.len() >= suffix.len()
            && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    let last = name.rsplit(['-', '_', '.']).next().unwrap_or_default();
    ends_with("password")
        || ends_with("passwd")
        || ["pass", "passphrase", "secret", "token", "key"]
            .iter()
            .any(|k| last.eq_ignore_ascii_case(k))
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')
}

fn ends_url(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'\'' | b'"' | b'`' | b'<' | b'>')
}

/// The index of the first byte at or after `i` that is not a space or tab.
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// The end of a value starting at `from`: after its closing quote when quoted (libpq's `\'`
/// escapes), else at a blank, a quote or `&` (the next query parameter).
fn value_end(b: &[u8], from: usize) -> usize {
    match b.get(from) {
        Some(&quote @ (b'\'' | b'"')) => {
            let mut i = from + 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    c if c == quote => return i + 1,
                    _ => i += 1,
                }
            }
            b.len()
        }
        _ => {
            from + b[from..]
                .iter()
                .take_while(|c| !c.is_ascii_whitespace() && !matches!(c, b'\'' | b'"' | b'&'))
                .count()
        }
    }
}

/// The index of the closing quote of a SQL literal whose content starts at `from` (`''` and
/// `\'` are escaped quotes), or the end of the text when it is not closed.
fn sql_literal_close(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    b.len()
}

fn mask_key_values(conn: &str) -> String {
    let bytes = conn.as_bytes();
    let mut out = String::with_capacity(conn.len());
    let mut i = 0;
    while i < bytes.len() {
        // Copy whitespace verbatim.
        if bytes[i].is_ascii_whitespace() {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        // A keyword runs up to '=' (spaces around '=' are allowed by libpq).
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conn[key_start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            // Not a key=value pair: keep the word as it is.
            out.push_str(key);
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let value_start = j;
        if j < bytes.len() && bytes[j] == b'\'' {
            j += 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(bytes.len());
        } else {
            while j < bytes.len() && !bytes[j].is_ascii_whitespace() {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j = j.min(bytes.len());
        }
        out.push_str(key);
        out.push('=');
        if is_secret_key(key) {
            out.push_str(MASK);
        } else {
            out.push_str(&conn[value_start..j]);
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cases = [
            ("postgres://u:p@h/db", "postgres://u:xxxxx@h/db"),
            ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
            (
                "postgres://h/db?password=s3&user=u",
                "postgres://h/db?password=xxxxx&user=u",
            ),
            (
                "postgres://u:p@/db?host=/var/run/postgresql&sslpassword=k",
                "postgres://u:xxxxx@/db?host=/var/run/postgresql&sslpassword=xxxxx",
            ),
            ("postgres://u:p@ss/w@h:1/db", "postgres://u:xxxxx@h:1/db"),
            (
                "postgres://u:p%40s@:6432/pgbouncer",
                "postgres://u:xxxxx@:6432/pgbouncer",
            ),
            (
                "postgresql:///?sslmode=disable",
                "postgresql:///?sslmode=disable",
            ),
            (
                "https://user:tok@127.0.0.1:9428/x",
                "https://user:xxxxx@127.0.0.1:9428/x",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(mask_password(input), want, "{input}");
        }
    }

    #[test]
    fn key_values() {
        let cases = [
            (
                "host=h password=secret user=u",
                "host=h password=xxxxx user=u",
            ),
            ("password = 'a b\\' c' user=u", "password=xxxxx user=u"),
            ("user=u PASSWORD=x", "user=u PASSWORD=xxxxx"),
            ("host=h port=1", "host=h port=1"),
            ("password=", "password=xxxxx"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_password(input), want, "{input}");
        }
    }

    #[test]
    fn secrets_in_free_text() {
        let cases = [
            // pgBackRest's messages (2.45) about a config file.
            (
                "ERROR: [029]: missing '=' in key/value at line 3: repo1-cipher-pass S3cret",
                "ERROR: [029]: missing '=' in key/value at line 3: repo1-cipher-pass xxxxx",
            ),
            (
                "ERROR: [029]: key/value found outside of section at line 1: repo1-cipher-pass=S3cret",
                "ERROR: [029]: key/value found outside of section at line 1: repo1-cipher-pass=xxxxx",
            ),
            (
                "ERROR: [032]: 'postgresql://backup:S3cret@127.0.0.1:5432/postgres' is not valid for 'io-timeout' option",
                "ERROR: [032]: 'postgresql://backup:xxxxx@127.0.0.1:5432/postgres' is not valid for 'io-timeout' option",
            ),
            (
                "ERROR: [031]: option 'repo1-cipher-pass' is not allowed on the command-line",
                "ERROR: [031]: option 'repo1-cipher-pass' is not allowed on the command-line",
            ),
            (
                "--repo1-s3-key=AKIA1 --repo1-s3-key-secret=\"a b\" --repo1-s3-token=t --repo1-sftp-private-key-passphrase=p --repo1-path=/r",
                "--repo1-s3-key=xxxxx --repo1-s3-key-secret=xxxxx --repo1-s3-token=xxxxx --repo1-sftp-private-key-passphrase=xxxxx --repo1-path=/r",
            ),
            // Environment text.
            (
                "PGPASSWORD=S3cret PGBACKREST_REPO1_CIPHER_PASS=S3cret PGUSER=backup",
                "PGPASSWORD=xxxxx PGBACKREST_REPO1_CIPHER_PASS=xxxxx PGUSER=backup",
            ),
            ("PGPASSWORD=\nnext", "PGPASSWORD=\nnext"),
            // URLs anywhere, with secret query parameters.
            (
                "GET https://h/api?user=u&access_token=T0k&x=1 failed",
                "GET https://h/api?user=u&access_token=xxxxx&x=1 failed",
            ),
            (
                "url=postgres://u:p@ss@h/db?sslpassword=k",
                "url=postgres://u:xxxxx@h/db?sslpassword=xxxxx",
            ),
            // The statements log_shipper masks.
            (
                "statement: CREATE ROLE app LOGIN PASSWORD 'S3cr''et' VALID UNTIL 'infinity'",
                "statement: CREATE ROLE app LOGIN PASSWORD 'xxxxx' VALID UNTIL 'infinity'",
            ),
            (
                "ALTER USER x WITH ENCRYPTED password E'a\\'b';",
                "ALTER USER x WITH ENCRYPTED password E'xxxxx';",
            ),
            (
                "CREATE SUBSCRIPTION s CONNECTION 'host=h password=secret dbname=d' PUBLICATION p",
                "CREATE SUBSCRIPTION s CONNECTION 'host=h password=xxxxx dbname=d' PUBLICATION p",
            ),
            (
                "options (password = 'p w', user 'u')",
                "options (password = xxxxx, user 'u')",
            ),
            (
                "connect to postgres://u:pw@h:5432/db now",
                "connect to postgres://u:xxxxx@h:5432/db now",
            ),
            (
                "CREATE ROLE r PASSWORD 'unterminated",
                "CREATE ROLE r PASSWORD 'xxxxx",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(mask_secrets(input), want, "{input}");
        }
        // Nothing to mask: the text itself, not a copy.
        for text in [
            "password authentication failed for user \"x\"",
            "duplicate key value violates unique constraint; Key (id)=(1) already exists.",
            "sslkey=/etc/k.pem passfile=/root/.pgpass PWD=/root",
            "postgres://u@h/db",
            "",
            "é://ü password",
        ] {
            assert!(
                matches!(mask_secrets(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn secret_names() {
        for name in [
            "password",
            "sslpassword",
            "PGPASSWORD",
            "--repo1-cipher-pass",
            "repo2-s3-key-secret",
            "PGBACKREST_REPO1_S3_KEY",
            "api_key",
            "token",
            "db.passwd",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "sslkey",
            "passfile",
            "pwd",
            "user",
            "repo1-path",
            "bypass",
            "monkey",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn secret_never_survives() {
        for conn in [
            "postgres://mon:TopSecret@127.0.0.1/db?password=TopSecret",
            "host=127.0.0.1 password='TopSecret' sslpassword=TopSecret",
            "postgres://mon:Top@Secret@h/db",
        ] {
            let masked = mask_password(conn);
            assert!(!masked.contains("Secret"), "{conn} -> {masked}");
        }
    }
}
