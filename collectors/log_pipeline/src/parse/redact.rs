//! Passwords out of shipped statements: `PASSWORD '…'` (CREATE/ALTER ROLE, also
//! `ENCRYPTED PASSWORD`), `password=…` in connection strings (CREATE SUBSCRIPTION, dblink,
//! postgres_fdw options) and `user:password@` in URLs are replaced with
//! [`MASK`](agent_kit::redact::MASK).

use std::borrow::Cow;

use agent_kit::redact::{MASK, mask_password};

/// Returns `s` with every password masked (borrowed when there is none).
pub fn redact(s: &str) -> Cow<'_, str> {
    if !contains_password(s.as_bytes()) && memchr::memmem::find(s.as_bytes(), b"://").is_none() {
        return Cow::Borrowed(s);
    }
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let lb = lower.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if lb[i..].starts_with(b"password") {
            let mut j = i + 8;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t' || b[j] == b'\n') {
                j += 1;
            }
            // PASSWORD 'literal' (also E'literal').
            let quote_at = if j < b.len() && b[j] == b'\'' {
                Some(j)
            } else if j + 1 < b.len() && (b[j] == b'E' || b[j] == b'e') && b[j + 1] == b'\'' {
                Some(j + 1)
            } else {
                None
            };
            if let Some(q) = quote_at
                && j > i + 8
            {
                let end = sql_literal_end(b, q + 1);
                out.push_str(&s[copied..=q]);
                out.push_str(MASK);
                out.push('\'');
                copied = end.min(b.len());
                i = copied;
                continue;
            }
            // password=value or password = 'value'.
            if j < b.len() && b[j] == b'=' {
                let mut k = j + 1;
                while k < b.len() && b[k] == b' ' {
                    k += 1;
                }
                let end = if k < b.len() && b[k] == b'\'' {
                    quoted_value_end(b, k + 1)
                } else {
                    let mut e = k;
                    while e < b.len()
                        && !matches!(
                            b[e],
                            b' ' | b'\t' | b'\n' | b'\'' | b'"' | b'&' | b',' | b')'
                        )
                    {
                        e += 1;
                    }
                    e
                };
                if end > k {
                    out.push_str(&s[copied..k]);
                    out.push_str(MASK);
                    copied = end;
                    i = end;
                    continue;
                }
            }
            i += 8;
            continue;
        }
        if b[i..].starts_with(b"://") {
            // The URL token around this "://".
            let start = s[..i]
                .rfind(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '(' || c == '=')
                .map_or(0, |p| p + 1)
                .max(copied);
            let mut end = i + 3;
            while end < b.len() && !matches!(b[end], b' ' | b'\t' | b'\n' | b'\'' | b'"' | b')') {
                end += 1;
            }
            let masked = mask_password(&s[start..end]);
            out.push_str(&s[copied..start]);
            out.push_str(&masked);
            copied = end;
            i = end;
            continue;
        }
        i += 1;
    }
    out.push_str(&s[copied.min(s.len())..]);
    Cow::Owned(out)
}

/// Whether `b` contains "password" in any ASCII case, without allocating.
fn contains_password(b: &[u8]) -> bool {
    const WORD: &[u8] = b"password";
    // Jump from one `p`/`P` to the next instead of testing every window.
    memchr::memchr2_iter(b'p', b'P', b).any(|i| {
        b.get(i..i + WORD.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(WORD))
    })
}

/// Index just after the closing quote of a SQL literal whose content starts at `from`
/// (`''` is an escaped quote).
fn sql_literal_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < b.len() {
        if b[i] == b'\'' {
            if i + 1 < b.len() && b[i + 1] == b'\'' {
                i += 2;
                continue;
            }
            return i + 1;
        }
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        i += 1;
    }
    b.len()
}

/// Index just after a libpq single-quoted value (`\'` escapes) starting at `from`.
fn quoted_value_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements() {
        for (input, want) in [
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
                "password authentication failed for user \"x\"",
                "password authentication failed for user \"x\"",
            ),
            ("no secrets here", "no secrets here"),
        ] {
            assert_eq!(redact(input), want, "{input}");
        }
    }
}
