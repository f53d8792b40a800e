//! Masking of secrets before they are printed anywhere: logs, metrics labels, HTTP bodies,
//! shipped log records. One implementation for every agent:
//!
//! - [`mask_password`] masks a connection string, in both libpq forms (URLs and `key=value`
//!   strings) as a user would write them;
//! - [`mask_secrets`] masks every secret inside free text, such as what a child process
//!   (pgBackRest) prints on its standard error;
//! - [`mask_passwords`] masks the passwords inside a log record that log_shipper ships
//!   (statements, connection strings, URLs), leaving other data as it is;
//! - [`mask_endpoint`] shows an HTTP endpoint with its credentials masked, and [`Secrets`]
//!   scrubs known secret values (a sink's token, password, secret headers) from any text;
//! - [`is_secret_name`] decides which names hold secrets, for option names and HTTP names.

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
    is_secret_name(key.trim(), Names::Options)
}

/// Which `name=value` pairs of free text are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Masked {
    /// Every secret-looking option name ([`mask_secrets`]).
    AnySecret,
    /// Names ending in `password` only ([`mask_passwords`]).
    Passwords,
}

impl Masked {
    fn masks(self, name: &str) -> bool {
        match self {
            Masked::AnySecret => is_secret_name(name, Names::Options),
            Masked::Passwords => ends_with_ignore_case(name, "password"),
        }
    }
}

fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
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
/// - SQL's `PASSWORD 'literal'` (`CREATE ROLE … PASSWORD '…'`, also `E'…'`, and after any
///   name ending in `password`).
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
    mask_text(text, Masked::AnySecret)
}

/// Returns the text of a log record with its passwords masked, as log_shipper ships it:
/// borrowed when there is none, which a fast scan for `password` and `://` decides for most
/// records.
///
/// Masks what [`mask_secrets`] masks, but of the `name=value` pairs only those whose name ends
/// in `password` (`password=…` in connection strings of `CREATE SUBSCRIPTION`, dblink,
/// postgres_fdw options, `PGPASSWORD=…`): in a log record, `key = 'x'` or `token = 5` in a
/// `WHERE` clause is data a DBA searches for, not a credential; so is a hyphenated option and
/// its value.
///
/// ```
/// use agent_kit::redact::mask_passwords;
/// assert_eq!(
///     mask_passwords("statement: CREATE ROLE app LOGIN PASSWORD 'S3cr''et'"),
///     "statement: CREATE ROLE app LOGIN PASSWORD 'xxxxx'"
/// );
/// assert_eq!(mask_passwords("SELECT * FROM kv WHERE key = 'k1'"), "SELECT * FROM kv WHERE key = 'k1'");
/// ```
pub fn mask_passwords(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    if !contains_password(b) && memchr::memmem::find(b, b"://").is_none() {
        return Cow::Borrowed(text);
    }
    mask_text(text, Masked::Passwords)
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

/// The scan of [`mask_secrets`] and [`mask_passwords`], masking the `name=value` pairs that
/// `masked` says.
fn mask_text(text: &str, masked: Masked) -> Cow<'_, str> {
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
        // A statement may break its line anywhere between a name and what follows.
        let after_space = skip_space(b, name_end);
        let masked_range = if after_space < b.len() && b[after_space] == b'=' && masked.masks(name)
        {
            // name=value, name = 'value'
            let value = skip_blanks(b, after_space + 1);
            Some((value, value_end(b, value)))
        } else if after_space > name_end && ends_with_ignore_case(name, "password") {
            // SQL: PASSWORD 'literal', PASSWORD E'literal'; the quotes stay.
            let quote = match b.get(after_space..after_space + 2) {
                Some([b'E' | b'e', b'\'']) => Some(after_space + 1),
                _ => (b.get(after_space) == Some(&b'\'')).then_some(after_space),
            };
            quote.map(|q| (q + 1, sql_literal_close(b, q + 1)))
        } else if masked == Masked::AnySecret
            && after_blanks > name_end
            && after_blanks < b.len()
            && !matches!(b[after_blanks], b'\n' | b'\r' | b'=')
            && name.trim_start_matches('-').contains('-')
            && is_secret_name(name, Names::Options)
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

/// Where a name comes from, which decides what makes it name a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// Option and keyword names: libpq's (`password`, `sslpassword`), pgBackRest's
    /// (`repo1-cipher-pass`), environment variables (`PGPASSWORD`). A closed vocabulary where
    /// `sslkey` and `passfile` name files, so only how a name ends counts.
    Options,
    /// HTTP header and query parameter names (`X-Api-Key`, `apikey`, `Authorization`,
    /// `X-Amz-Signature`): free-form, so any mention of a credential word counts; masking a
    /// harmless header costs nothing.
    Http,
}

/// Whether `name` names a secret, whatever its spelling (case does not matter), by the rule of
/// where it comes from:
///
/// - [`Names::Options`]: `password`, `--repo1-cipher-pass`, `PGBACKREST_REPO1_S3_KEY_SECRET`,
///   `PGPASSWORD`, `api_key`, `token`. A leading `--` and `_` for `-` do not matter; the name
///   ends in `password` or `passwd`, or its last `-`/`_`/`.`-separated part is `pass`,
///   `passphrase`, `secret`, `token` or `key` (not `sslkey`, a file name).
/// - [`Names::Http`]: `token`, `key`, `pass` (password, passwd), `secret`, `credential`,
///   `signature`, `cookie`, `session` anywhere in the name (`X-Amz-Signature`,
///   `access_token`, `Set-Cookie`), a name starting with `auth` or ending in `authorization`
///   (`Proxy-Authorization`), a `-`/`_`/`.`-separated part `sig`, `pwd` or `pw` (Azure's
///   `sig`), or the name `p` (InfluxDB's password).
pub fn is_secret_name(name: &str, names: Names) -> bool {
    match names {
        Names::Options => is_secret_option(name),
        Names::Http => is_secret_http_name(name),
    }
}

fn is_secret_http_name(name: &str) -> bool {
    let k = name.trim().to_ascii_lowercase();
    k.starts_with("auth")
        || k.ends_with("authorization")
        || k == "p"
        || [
            "token",
            "key",
            "pass",
            "secret",
            "credential",
            "signature",
            "cookie",
            "session",
        ]
        .iter()
        .any(|s| k.contains(s))
        || k.split(['-', '_', '.'])
            .any(|part| matches!(part, "sig" | "pwd" | "pw"))
}

fn is_secret_option(name: &str) -> bool {
    let name = name.trim_start_matches('-');
    let ends_with = |suffix: &str| ends_with_ignore_case(name, suffix);
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

/// The index of the first byte at or after `i` that is not ASCII white space.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
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

/// HTTP endpoint `url` with its credentials masked, as it may be shown:
/// `http://user:xxxxx@host:3100/path?tenant=a&token=xxxxx`. The userinfo's password (or a lone
/// user name, which is then a token) and the values of query parameters with secret names
/// ([`Names::Http`]) are replaced by [`MASK`].
pub fn mask_endpoint(url: &url::Url) -> String {
    let mut shown = url.clone();
    if url.password().is_some() {
        let _ = shown.set_password(Some(MASK));
    } else if !url.username().is_empty() {
        let _ = shown.set_username(MASK);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_name(&k, Names::Http) {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// Shorter values are not scrubbed: they would mangle every message and protect nothing.
const MIN_SECRET_LEN: usize = 4;

/// Secret values known by value (a sink's password, bearer token, secret headers, the
/// credentials of its endpoint), scrubbed from any text before it is shown: error messages of
/// an HTTP client, answers of a destination (a proxy may echo the request).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({})", self.0.len())
    }
}

impl Secrets {
    /// The credentials in `url`: its userinfo (raw, decoded, and as the basic auth header made
    /// of it carries it) and its secret query values (raw and decoded).
    pub fn of_url(url: &url::Url) -> Secrets {
        let mut s = Secrets::default();
        let user = percent_decode(url.username());
        if let Some(p) = url.password() {
            s.add(p);
            s.add_basic(&user, &percent_decode(p));
        } else if !user.is_empty() {
            s.add(url.username());
            s.add_basic(&user, "");
        }
        for (k, v) in url.query_pairs() {
            if is_secret_name(&k, Names::Http) {
                s.add(&v);
            }
        }
        if let Some(q) = url.query() {
            for pair in q.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && is_secret_name(&percent_decode(k), Names::Http)
                {
                    s.add(v);
                }
            }
        }
        s
    }

    /// The credentials of HTTP basic auth: `password`, and `user:password` in base64 as the
    /// `Authorization: Basic …` header carries it.
    pub fn add_basic(&mut self, user: &str, password: &str) {
        use base64::Engine as _;
        self.add(password);
        self.add(&base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    }

    /// The value of HTTP header `name` when the name is secret ([`Names::Http`]): the value,
    /// the credentials after an auth scheme (`Basic <base64>`, `Bearer <token>`), and the
    /// value of each cookie in it (`a=1; session=…`).
    pub fn add_header(&mut self, name: &str, value: &str) {
        if !is_secret_name(name, Names::Http) {
            return;
        }
        self.add(value);
        if let Some((scheme, credentials)) = value.trim().split_once(' ')
            && !scheme.contains('=')
        {
            self.add(credentials.trim());
        }
        for cookie in value.split(';') {
            if let Some((_, v)) = cookie.split_once('=') {
                self.add(v.trim());
            }
        }
    }

    /// Adds one secret value.
    pub fn add(&mut self, secret: &str) {
        if secret.len() >= MIN_SECRET_LEN && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_owned());
            // Longest first: a secret containing another is masked whole.
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
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
            // The statements log_shipper masks: see passwords_in_log_records.
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
            assert!(is_secret_name(name, Names::Options), "{name}");
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
            assert!(!is_secret_name(name, Names::Options), "{name}");
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

    #[test]
    fn credential_keys() {
        for k in [
            "token",
            "X-Token",
            "access_token",
            "api_key",
            "apikey",
            "KEY",
            "password",
            "Passwd",
            "client_secret",
            "auth",
            "Authorization",
            "auth_token",
            "sig_signature",
            "Proxy-Authorization",
            "Cookie",
            "Set-Cookie",
            "X-Session-Id",
            "sig",
            "pwd",
            "p",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
        ] {
            assert!(is_secret_name(k, Names::Http), "{k}");
        }
        for k in [
            "tenant",
            "orgid",
            "_msg_field",
            "project",
            "user",
            "sslmode",
            "X-Scope-OrgID",
            "page",
            "design",
            "X-Amz-Date",
        ] {
            assert!(!is_secret_name(k, Names::Http), "{k}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_credentials() {
        let u = |s: &str| mask_endpoint(&url::Url::parse(s).unwrap());
        assert_eq!(
            u("http://user:p%40ss@host:3100/x/?tenant=a&token=T0KEN&Api_Key=K&auth=A"),
            "http://user:xxxxx@host:3100/x/?tenant=a&token=xxxxx&Api_Key=xxxxx&auth=xxxxx"
        );
        assert_eq!(u("https://glpat-abc@host/"), "https://xxxxx@host/");
        assert_eq!(u("http://host:9428"), "http://host:9428/");
        assert_eq!(u("http://host/?tenant=a"), "http://host/?tenant=a");
    }

    #[test]
    fn secret_values_are_scrubbed_raw_and_decoded() {
        let url = url::Url::parse(
            "http://user:p%40ssword@host/?token=T0KEN%2Bplus&tenant=abcdef&key=abc",
        )
        .unwrap();
        let s = Secrets::of_url(&url);
        let text = "error for url (http://host/?token=T0KEN%2Bplus): T0KEN+plus p@ssword p%40ssword tenant abcdef key=abc";
        assert_eq!(
            s.scrub(text),
            "error for url (http://host/?token=xxxxx): xxxxx xxxxx xxxxx tenant abcdef key=abc"
        );
        // Both passwords, both tokens, and user:password in base64.
        assert_eq!(format!("{s:?}"), "Secrets(5)");
    }

    /// Basic auth as its header carries it, and secret headers' credentials however a proxy
    /// echoes them.
    #[test]
    fn auth_headers_and_cookies_are_scrubbed() {
        let mut s = Secrets::default();
        s.add_basic("buser", "BasicPw");
        // base64("puser:ProxyPw")
        s.add_header("Proxy-Authorization", "Basic cHVzZXI6UHJveHlQdw==");
        s.add_header("Cookie", "theme=dark; session=CookieVal");
        s.add_header("X-Scope-OrgID", "tenant-one");
        let echoed = "authorization: Basic YnVzZXI6QmFzaWNQdw==\nproxy-authorization: cHVzZXI6UHJveHlQdw==\ncookie: session=CookieVal\nx-scope-orgid: tenant-one BasicPw";
        assert_eq!(
            s.scrub(echoed),
            "authorization: Basic xxxxx\nproxy-authorization: xxxxx\ncookie: session=xxxxx\nx-scope-orgid: tenant-one xxxxx"
        );
        let url = url::Url::parse("http://uinfo:Pw%40d@h/").unwrap();
        // base64("uinfo:Pw@d"), as a client sends the userinfo.
        assert_eq!(
            Secrets::of_url(&url).scrub("Basic dWluZm86UHdAZA== Pw@d"),
            "Basic xxxxx xxxxx"
        );
        let token = url::Url::parse("https://glpat-abcd@h/").unwrap();
        // base64("glpat-abcd:")
        assert_eq!(
            Secrets::of_url(&token).scrub("Basic Z2xwYXQtYWJjZDo="),
            "Basic xxxxx"
        );
    }

    /// Passwords in the statements of log records, masked alike by both scans.
    #[test]
    fn passwords_in_log_records() {
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
            assert_eq!(mask_passwords(input), want, "{input}");
            assert_eq!(mask_secrets(input), want, "{input}");
        }
    }

    /// What log_shipper ships: passwords masked, wherever a statement breaks its lines; other
    /// secret-looking names are data there, and a record without a password is not copied.
    #[test]
    fn log_records_keep_their_data() {
        for (input, want) in [
            (
                "ALTER ROLE app PASSWORD\n'S3cret' VALID UNTIL 'infinity'",
                "ALTER ROLE app PASSWORD\n'xxxxx' VALID UNTIL 'infinity'",
            ),
            ("password\n= 'S3cret'", "password\n= xxxxx"),
            (
                "CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password 'S3cret')",
                "CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password 'xxxxx')",
            ),
            ("PGPASSWORD=S3cret psql", "PGPASSWORD=xxxxx psql"),
        ] {
            assert_eq!(mask_passwords(input), want, "{input}");
            assert_eq!(mask_secrets(input), want, "{input}");
        }
        for text in [
            "SELECT * FROM kv WHERE key = 'k1' AND token = 5",
            "UPDATE t SET api_key='abc' WHERE secret=1",
            "repo1-cipher-pass S3cret",
            "duplicate key value violates unique constraint; Key (id)=(1) already exists.",
            "",
        ] {
            assert!(
                matches!(mask_passwords(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
        assert_eq!(
            mask_secrets("UPDATE t SET api_key='abc' WHERE secret=1"),
            "UPDATE t SET api_key=xxxxx WHERE secret=xxxxx"
        );
    }
}
