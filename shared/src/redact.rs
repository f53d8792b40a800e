//! Masking of passwords in connection strings before they are printed anywhere: logs, metrics
//! labels, HTTP bodies.
//!
//! [`mask_password`] understands both libpq forms, URLs and `key=value` strings, as a user
//! would write them.

/// What a password is replaced with, as the Go pg_exporter prints it.
pub const MASK: &str = "xxxxx";

/// Keys whose values are secrets in libpq connection strings and URL query parameters.
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

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
    match conn.find("://") {
        Some(scheme_end) => mask_url(conn, scheme_end + 3),
        None => mask_key_values(conn),
    }
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
    SECRET_KEYS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key.trim()))
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
