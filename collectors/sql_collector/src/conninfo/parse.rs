//! The two libpq connection string syntaxes: `postgres[ql]://` URLs and `key=value` strings.
//!
//! Both parsers follow libpq's `conninfo_uri_parse_options` and `conninfo_parse`, and keep the
//! byte ranges of the values in the original text so that `ConnInfo::with_dbname` can rewrite
//! the database name in place. Error messages never contain the value of a secret keyword,
//! nor a fragment of text that may be part of one.

use std::ops::Range;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::ConnInfoError;
use super::keywords::{self, Keyword};

/// Which syntax a connection string uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// `postgres://…` or `postgresql://…`.
    Url,
    /// `key=value key='quoted value'`.
    KeyValue,
}

/// One `keyword = value` found in the text.
#[derive(Debug)]
pub(super) struct Setting {
    pub(super) keyword: &'static Keyword,
    pub(super) value: String,
    /// Where the value is written in the text (quotes included), when it is written there.
    pub(super) span: Option<Range<usize>>,
}

/// Where a URL keeps its database name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UrlPath {
    /// The path after the `/` that ends the authority (possibly empty).
    Span(Range<usize>),
    /// No path: a `/dbname` would be inserted at this position.
    InsertAt(usize),
}

/// A parsed connection string.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) form: Form,
    pub(super) entries: Vec<Setting>,
    /// For URLs, the place of the database name.
    pub(super) path: Option<UrlPath>,
}

/// The URL prefixes libpq accepts.
const URL_PREFIXES: [&str; 2] = ["postgresql://", "postgres://"];

/// What [`encode_url_component`] leaves alone: RFC 3986 unreserved characters.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Stands for a URL query parameter name that follows a password parameter in errors.
const HIDDEN_AFTER_PASSWORD: &str =
    "(hidden: it follows a password; percent-encode '&' in passwords as %26)";

/// Length of the URL prefix `s` starts with (ASCII case-insensitively), if any.
pub(super) fn url_prefix_len(s: &str) -> Option<usize> {
    URL_PREFIXES.iter().find_map(|p| {
        s.get(..p.len())
            .filter(|head| head.eq_ignore_ascii_case(p))
            .map(|_| p.len())
    })
}

/// `s` without the white space around it, as the parsers read it: a URL is trimmed; a
/// `key=value` string keeps a last white space character escaped by a backslash (part of the
/// last value), and only ASCII white space ends it, as in libpq.
pub(super) fn trim(s: &str) -> &str {
    let s = s.trim_start();
    if url_prefix_len(s).is_some() {
        return s.trim_end();
    }
    let t = s.trim_end_matches(|c: char| c.is_ascii_whitespace());
    let backslashes = t.bytes().rev().take_while(|b| *b == b'\\').count();
    if backslashes % 2 == 1 && t.len() < s.len() {
        // The escaped character is ASCII white space: one byte.
        &s[..t.len() + 1]
    } else {
        t
    }
}

/// Parses `s` (already [trimmed](trim)) in whichever syntax it uses.
pub(super) fn parse(s: &str) -> Result<Parsed, ConnInfoError> {
    if let Some(prefix) = url_prefix_len(s) {
        return parse_url(s, prefix);
    }
    if let Some(scheme_end) = s.find("://") {
        let scheme = &s[..scheme_end];
        if !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(ConnInfoError::Url(format!(
                "unsupported scheme \"{scheme}\" (expected \"postgresql://\" or \"postgres://\")"
            )));
        }
    }
    parse_key_values(s)
}

/// Whether `s` is a URL whose text after the authority contains an '@' while the authority
/// has none: a password with an unencoded '/' or '?' ends the authority early, and the rest of
/// it is then taken for a host, port, path or query parameter that error messages would show.
pub(super) fn url_may_hide_password(s: &str) -> bool {
    let Some(prefix) = url_prefix_len(s) else {
        return false;
    };
    let rest = &s[prefix..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    !rest[..authority_len].contains('@') && rest[authority_len..].contains('@')
}

fn parse_url(s: &str, prefix: usize) -> Result<Parsed, ConnInfoError> {
    let rest = &s[prefix..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let path_end = rest.find('?').unwrap_or(rest.len());
    parse_url_parts(s, prefix, authority_len, path_end)
}

fn parse_url_parts(
    s: &str,
    prefix: usize,
    authority_len: usize,
    path_end: usize,
) -> Result<Parsed, ConnInfoError> {
    let rest = &s[prefix..];
    let authority = &rest[..authority_len];
    let mut entries = Vec::new();

    // Userinfo: up to the last '@' of the authority (as Go's net/url does, so that an
    // unencoded '@' in a password still works as it did with pg_exporter).
    let hostspec = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let user = decode(user, "user name", false)?;
            if !user.is_empty() {
                entries.push(entry("user", user, None));
            }
            if let Some(password) = password {
                let end = prefix + at;
                let span = end - password.len()..end;
                entries.push(entry(
                    "password",
                    decode(password, "password", true)?,
                    Some(span),
                ));
            }
            &authority[at + 1..]
        }
        None => authority,
    };

    let (hosts, ports) = split_hostspec(hostspec)?;
    if hosts.iter().any(|h| !h.is_empty()) || hosts.len() > 1 {
        let decoded: Vec<String> = hosts
            .iter()
            .map(|h| decode(h, "host", false))
            .collect::<Result<_, _>>()?;
        entries.push(entry("host", decoded.join(","), None));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        let decoded: Vec<String> = ports
            .iter()
            .map(|p| decode(p, "port", false))
            .collect::<Result<_, _>>()?;
        entries.push(entry("port", decoded.join(","), None));
    }

    let path = if rest[authority_len..].starts_with('/') {
        let span = prefix + authority_len + 1..prefix + path_end;
        let dbname = decode(&s[span.clone()], "database name", false)?;
        if !dbname.is_empty() {
            entries.push(entry("dbname", dbname, Some(span.clone())));
        }
        UrlPath::Span(span)
    } else {
        UrlPath::InsertAt(prefix + authority_len)
    };

    if path_end < rest.len() {
        let mut offset = prefix + path_end + 1;
        // Set after a secret parameter: an unencoded '&' in a password makes the rest of it
        // look like further parameters, which errors must not show.
        let mut after_secret = false;
        for param in rest[path_end + 1..].split('&') {
            let start = offset;
            offset += param.len() + 1;
            if param.is_empty() {
                continue;
            }
            let Some((key, value)) = param.split_once('=') else {
                return Err(ConnInfoError::Url(if after_secret {
                    format!(
                        "missing key/value separator \"=\" in a URL query parameter {HIDDEN_AFTER_PASSWORD}"
                    )
                } else {
                    format!(
                        "missing key/value separator \"=\" in URL query parameter \"{}\"",
                        decode(param, "query parameter", false)
                            .unwrap_or_else(|_| param.to_owned())
                    )
                }));
            };
            let key = decode(key, "query parameter name", after_secret)?;
            let secret = keywords::is_secret(&key);
            let what = if after_secret {
                format!("the value of a query parameter {HIDDEN_AFTER_PASSWORD}")
            } else {
                format!("the value of query parameter \"{key}\"")
            };
            let value = decode(value, &what, secret || after_secret)?;
            // libpq's JDBC compatibility: `ssl=true` means `sslmode=require`.
            let (key, value) = if key == "ssl" && value == "true" {
                ("sslmode".to_owned(), "require".to_owned())
            } else {
                (key, value)
            };
            let Some(keyword) = keywords::lookup(&key) else {
                return Err(ConnInfoError::UnknownKeyword {
                    keyword: if after_secret {
                        HIDDEN_AFTER_PASSWORD.to_owned()
                    } else {
                        key
                    },
                    in_url: true,
                });
            };
            after_secret |= secret;
            let value_start = start + param.find('=').map_or(param.len(), |e| e + 1);
            entries.push(Setting {
                keyword,
                value,
                span: Some(value_start..start + param.len()),
            });
        }
    }

    Ok(Parsed {
        form: Form::Url,
        entries,
        path: Some(path),
    })
}

/// Splits `h1:p1,[::1]:p2,h3` into hosts and ports (both still percent-encoded).
fn split_hostspec(spec: &str) -> Result<(Vec<&str>, Vec<&str>), ConnInfoError> {
    let b = spec.as_bytes();
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    let mut i = 0;
    loop {
        let host = if b.get(i) == Some(&b'[') {
            let start = i + 1;
            let end = spec[start..].find(']').map(|e| start + e).ok_or_else(|| {
                ConnInfoError::Url(
                    "end of string reached when looking for the \"]\" of an IPv6 host address"
                        .to_owned(),
                )
            })?;
            if end == start {
                return Err(ConnInfoError::Url(
                    "IPv6 host address may not be empty".to_owned(),
                ));
            }
            i = end + 1;
            if let Some(&c) = b.get(i).filter(|c| **c != b':' && **c != b',') {
                return Err(ConnInfoError::Url(format!(
                    "unexpected character \"{}\" after the IPv6 host address \"{}\" (expected \
                     \":\" or \"/\")",
                    c as char,
                    &spec[start..end]
                )));
            }
            &spec[start..end]
        } else {
            let start = i;
            while i < b.len() && b[i] != b':' && b[i] != b',' {
                i += 1;
            }
            &spec[start..i]
        };
        hosts.push(host);
        let mut port = "";
        if b.get(i) == Some(&b':') {
            let start = i + 1;
            i = start;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            port = &spec[start..i];
        }
        ports.push(port);
        if b.get(i) == Some(&b',') {
            i += 1;
        } else {
            break;
        }
    }
    Ok((hosts, ports))
}

/// Strict percent-decoding as libpq's `conninfo_uri_decode` (`+` stays `+`). `what` names the
/// component in errors; the value itself is only shown when it is not `secret`.
fn decode(s: &str, what: &str, secret: bool) -> Result<String, ConnInfoError> {
    let fail = |reason: &str| {
        ConnInfoError::Url(if secret {
            format!("{reason} in {what}")
        } else {
            format!("{reason} in {what} \"{s}\"")
        })
    };
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) else {
                return Err(fail("invalid percent-encoded token"));
            };
            let byte = (hi * 16 + lo) as u8;
            if byte == 0 {
                return Err(fail("forbidden value %00"));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| fail("percent-encoded bytes that are not UTF-8"))
}

/// Percent-encodes `s` for a URL path or query value.
pub(super) fn encode_url_component(s: &str) -> String {
    utf8_percent_encode(s, URL_COMPONENT).to_string()
}

fn entry(name: &str, value: String, span: Option<Range<usize>>) -> Setting {
    let keyword = keywords::lookup(name).unwrap_or_else(|| unreachable!("{name} is a keyword"));
    Setting {
        keyword,
        value,
        span,
    }
}

fn parse_key_values(s: &str) -> Result<Parsed, ConnInfoError> {
    let b = s.as_bytes();
    let mut entries: Vec<Setting> = Vec::new();
    let mut i = 0;
    // Set after an unquoted secret value: a word that follows may be the rest of a password
    // containing a space, and must not be echoed in errors.
    let mut after_secret = false;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let name_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let name = &s[name_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let shown = |name: &str| {
            if after_secret {
                "(hidden: it follows an unquoted password)".to_owned()
            } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                // Not a keyword, maybe a mistyped URL with its password.
                "(hidden: not a keyword name; a mistyped postgres:// URL?)".to_owned()
            } else {
                name.to_owned()
            }
        };
        if b.get(i) != Some(&b'=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after \"{}\"",
                shown(name)
            )));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        let mut value = Vec::new();
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(ConnInfoError::Syntax(format!(
                            "unterminated quoted string in the value of \"{}\"",
                            shown(name)
                        )));
                    }
                    Some(b'\\') => {
                        if let Some(&c) = b.get(i + 1) {
                            value.push(c);
                        }
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    if let Some(&c) = b.get(i + 1) {
                        value.push(c);
                    }
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
        }
        let end = i.min(b.len());
        let Some(keyword) = keywords::lookup(name) else {
            return Err(ConnInfoError::UnknownKeyword {
                keyword: shown(name),
                in_url: false,
            });
        };
        // Escapes only remove ASCII backslashes, so the bytes stay valid UTF-8.
        let value = String::from_utf8(value)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        after_secret = keyword.secret && !quoted;
        entries.push(Setting {
            keyword,
            value,
            span: Some(value_start..end),
        });
        i = end;
    }
    Ok(Parsed {
        form: Form::KeyValue,
        entries,
        path: None,
    })
}

/// `raw` (a valid connection string) with the value of every secret keyword replaced by
/// `mask` where the parser found it: the URL's password and secret query parameters (however
/// their names are encoded), or `key=value` values with their quotes.
pub(super) fn mask_secrets(raw: &str, mask: &str) -> Result<String, ConnInfoError> {
    let parsed = parse(raw)?;
    let mut spans = Vec::new();
    for e in parsed.entries.iter().filter(|e| e.keyword.secret) {
        // Every secret is written in the text; one that is not cannot be masked in place.
        let span = e.span.clone().ok_or_else(|| {
            ConnInfoError::Syntax(format!("no place of {} in the text", e.keyword.name))
        })?;
        spans.push(span);
    }
    spans.sort_by_key(|r| std::cmp::Reverse(r.start));
    let mut out = raw.to_owned();
    for span in spans {
        out.replace_range(span, mask);
    }
    Ok(out)
}

/// Quotes `value` for a `key=value` string when it needs it.
pub(super) fn quote_key_value(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_ascii_whitespace() || "'\\=".contains(c))
    {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// `raw` (a valid connection string) with its database name replaced by `dbname`: the URL path
/// and any `dbname` query parameter, or every `dbname=` of a `key=value` string (appended when
/// there is none).
pub(super) fn rewrite_dbname(raw: &str, dbname: &str) -> Result<String, ConnInfoError> {
    let parsed = parse(raw)?;
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let spans = parsed
        .entries
        .iter()
        .filter(|e| e.keyword.name == "dbname")
        .filter_map(|e| e.span.clone());
    match parsed.form {
        Form::Url => {
            let encoded = encode_url_component(dbname);
            match &parsed.path {
                Some(UrlPath::Span(span)) => edits.push((span.clone(), encoded.clone())),
                Some(UrlPath::InsertAt(at)) => edits.push((*at..*at, format!("/{encoded}"))),
                None => {}
            }
            // The path's own span is already in `edits`; only query parameters remain.
            let path_span = match &parsed.path {
                Some(UrlPath::Span(span)) => Some(span.clone()),
                _ => None,
            };
            edits.extend(
                spans
                    .filter(|s| Some(s) != path_span.as_ref())
                    .map(|s| (s, encoded.clone())),
            );
        }
        Form::KeyValue => {
            let quoted = quote_key_value(dbname);
            edits.extend(spans.map(|s| (s, quoted.clone())));
            if edits.is_empty() {
                // `raw` may end with an escaped white space: always separate.
                let sep = if raw.is_empty() { "" } else { " " };
                edits.push((raw.len()..raw.len(), format!("{sep}dbname={quoted}")));
            }
        }
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = raw.to_owned();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .entries
            .into_iter()
            .map(|e| (e.keyword.name.to_owned(), e.value))
            .collect()
    }

    fn p(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn urls() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "postgres://dbuser_monitor:pass@127.0.0.1:5432/postgres?sslmode=disable",
                &[
                    ("user", "dbuser_monitor"),
                    ("password", "pass"),
                    ("host", "127.0.0.1"),
                    ("port", "5432"),
                    ("dbname", "postgres"),
                    ("sslmode", "disable"),
                ],
            ),
            (
                "postgres://dbuser_monitor@:5432/postgres?host=/var/run/postgresql&sslmode=disable",
                &[
                    ("user", "dbuser_monitor"),
                    ("port", "5432"),
                    ("dbname", "postgres"),
                    ("host", "/var/run/postgresql"),
                    ("sslmode", "disable"),
                ],
            ),
            ("postgresql://", &[]),
            ("postgresql:///", &[]),
            ("postgresql:///?sslmode=disable", &[("sslmode", "disable")]),
            ("POSTGRESQL://h", &[("host", "h")]),
            ("postgresql://h?dbname=x", &[("host", "h"), ("dbname", "x")]),
            (
                "postgresql://u:p%40s%2Fw%3Ad@h/d",
                &[
                    ("user", "u"),
                    ("password", "p@s/w:d"),
                    ("host", "h"),
                    ("dbname", "d"),
                ],
            ),
            (
                "postgresql://u:p@ss@h/d",
                &[
                    ("user", "u"),
                    ("password", "p@ss"),
                    ("host", "h"),
                    ("dbname", "d"),
                ],
            ),
            (
                "postgresql://u:@h",
                &[("user", "u"), ("password", ""), ("host", "h")],
            ),
            (
                "postgresql://[::1]:6432/db",
                &[("host", "::1"), ("port", "6432"), ("dbname", "db")],
            ),
            (
                "postgresql://[2001:db8::7]/db",
                &[("host", "2001:db8::7"), ("dbname", "db")],
            ),
            (
                "postgresql://h1:5432,h2:5433,[::1]/db?target_session_attrs=read-write",
                &[
                    ("host", "h1,h2,::1"),
                    ("port", "5432,5433,"),
                    ("dbname", "db"),
                    ("target_session_attrs", "read-write"),
                ],
            ),
            (
                "postgresql://h1,h2/db",
                &[("host", "h1,h2"), ("dbname", "db")],
            ),
            (
                "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
                &[("host", "/var/run/postgresql"), ("dbname", "db")],
            ),
            (
                "postgresql://h/my%20db?application_name=a+b",
                &[
                    ("host", "h"),
                    ("dbname", "my db"),
                    ("application_name", "a+b"),
                ],
            ),
            (
                "postgresql://h/?ssl=true",
                &[("host", "h"), ("sslmode", "require")],
            ),
            (
                "postgresql://h/d?options=-c%20x%3Dy&&keepalives=0",
                &[
                    ("host", "h"),
                    ("dbname", "d"),
                    ("options", "-c x=y"),
                    ("keepalives", "0"),
                ],
            ),
            (
                "postgresql://h/d?password=s%26",
                &[("host", "h"), ("dbname", "d"), ("password", "s&")],
            ),
        ];
        for (url, want) in cases {
            assert_eq!(pairs(url), p(want), "{url}");
            assert_eq!(parse(url).unwrap().form, Form::Url);
        }
    }

    #[test]
    fn url_errors_never_show_passwords() {
        let cases: &[(&str, &str)] = &[
            (
                "postgresql://h/d?foo=bar",
                "invalid URL query parameter \"foo\"",
            ),
            ("postgresql://h/d?sslmode", "missing key/value separator"),
            ("postgresql://[::1/d", "\"]\""),
            ("postgresql://[]/d", "may not be empty"),
            ("postgresql://[::1]x/d", "unexpected character \"x\""),
            (
                "postgresql://h/d%zz",
                "invalid percent-encoded token in database name \"d%zz\"",
            ),
            ("postgresql://h/d%00", "forbidden value %00"),
            ("mysql://h/d", "unsupported scheme \"mysql\""),
        ];
        for (url, want) in cases {
            let err = parse(url).expect_err(url).to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
        for url in [
            "postgresql://u:Sec%zzret@h/d",
            "postgresql://h/d?password=Sec%zzret",
        ] {
            let err = parse(url).expect_err(url).to_string();
            assert!(!err.contains("Sec") && !err.contains("ret"), "{url}: {err}");
        }
    }

    #[test]
    fn suspicious_urls() {
        assert!(url_may_hide_password("postgresql://u:Sec/ret@h/d"));
        assert!(url_may_hide_password("postgresql://u:Sec?ret@h/d"));
        assert!(!url_may_hide_password(
            "postgresql://u:Sec@h/d?application_name=a@b"
        ));
        assert!(!url_may_hide_password("host=h password=a@b"));
    }

    #[test]
    fn key_values() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("   ", &[]),
            (
                "host=/tmp port=5432 user=x dbname=y",
                &[
                    ("host", "/tmp"),
                    ("port", "5432"),
                    ("user", "x"),
                    ("dbname", "y"),
                ],
            ),
            (
                "host = h  port= 1 user =u",
                &[("host", "h"), ("port", "1"), ("user", "u")],
            ),
            (
                r"password='a b\'c\\d' application_name=x\ y",
                &[("password", r"a b'c\d"), ("application_name", "x y")],
            ),
            ("dbname='' user=u", &[("dbname", ""), ("user", "u")]),
            ("dbname= user=u", &[("dbname", "user=u")]),
            (
                "options='-c geqo=off'user=u",
                &[("options", "-c geqo=off"), ("user", "u")],
            ),
            ("host=h1,h2 port=1,2", &[("host", "h1,h2"), ("port", "1,2")]),
            ("dbname=é", &[("dbname", "é")]),
        ];
        for (s, want) in cases {
            assert_eq!(pairs(s), p(want), "{s}");
        }
    }

    #[test]
    fn key_value_errors() {
        let cases: &[(&str, &str)] = &[
            ("host", "missing \"=\" after \"host\""),
            ("host=h foo=bar", "invalid connection option \"foo\""),
            (
                "host='h",
                "unterminated quoted string in the value of \"host\"",
            ),
            ("HOST=h", "invalid connection option \"HOST\""),
        ];
        for (s, want) in cases {
            let err = parse(s).expect_err(s).to_string();
            assert!(err.contains(want), "{s}: {err}");
        }
        for s in [
            "password=Sec ret user=u",
            "password=Sec ret=x",
            "user=u password=Sec ret",
        ] {
            let err = parse(s).expect_err(s).to_string();
            assert!(!err.contains("ret"), "{s}: {err}");
        }
    }

    #[test]
    fn dbname_rewrites() {
        let cases = [
            (
                "postgres://u:p@h:5432/postgres?sslmode=disable",
                "postgres://u:p@h:5432/app%201?sslmode=disable",
            ),
            (
                "postgres://u@h:5432?sslmode=disable",
                "postgres://u@h:5432/app%201?sslmode=disable",
            ),
            ("postgres://u@h:5432", "postgres://u@h:5432/app%201"),
            ("postgres://u@h:5432/", "postgres://u@h:5432/app%201"),
            (
                "postgres://u@:5432/postgres?host=/var/run/postgresql&dbname=postgres&options=",
                "postgres://u@:5432/app%201?host=/var/run/postgresql&dbname=app%201&options=",
            ),
            (
                "postgres://u@h/?dbname=postgres",
                "postgres://u@h/app%201?dbname=app%201",
            ),
            (
                "host=/tmp dbname=postgres user=u",
                "host=/tmp dbname='app 1' user=u",
            ),
            (
                "host=/tmp dbname = 'postgres' user=u",
                "host=/tmp dbname = 'app 1' user=u",
            ),
            ("host=/tmp user=u", "host=/tmp user=u dbname='app 1'"),
            ("", "dbname='app 1'"),
        ];
        for (raw, want) in cases {
            assert_eq!(rewrite_dbname(raw, "app 1").unwrap(), want, "{raw}");
        }
        assert_eq!(
            rewrite_dbname("host=h dbname=a", "b").unwrap(),
            "host=h dbname=b"
        );
        assert_eq!(
            rewrite_dbname("postgres://h/a", "x/y?").unwrap(),
            "postgres://h/x%2Fy%3F"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_key_value("abc"), "abc");
        assert_eq!(quote_key_value(""), "''");
        assert_eq!(quote_key_value(r"a'b\c d"), r"'a\'b\\c d'");
        assert_eq!(quote_key_value("a=b"), "'a=b'");
    }
}
