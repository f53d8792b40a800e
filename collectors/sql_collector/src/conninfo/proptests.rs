//! Property tests of the connection-string parser: any text is parsed or refused without a
//! panic; connection strings rendered from random keyword values (in both syntaxes, with
//! quotes, escapes and percent-encoding) parse back to exactly those values; and no printed
//! form, masked string or error message ever shows a password.
//!
//! The case count is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::ConnInfo;

fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// The one character only passwords are made of here: its presence anywhere in a printed
/// form (or its percent-encoding) means a password leaked.
const MARK: char = '§';

/// Whether `printed` shows any part of a password made with [`MARK`].
fn leaks(printed: &str) -> bool {
    printed.contains(MARK) || printed.to_ascii_uppercase().contains("%C2%A7")
}

/// Text with every character the two syntaxes treat specially.
fn tricky() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _'\\\\=@:/?&%#,\\[\\]\t\"é🐘.-]{0,12}"
}

/// A password: at least one [`MARK`], mixed with the special characters.
fn password() -> impl Strategy<Value = String> {
    (tricky(), tricky()).prop_map(|(a, b)| format!("{a}{MARK}{b}"))
}

/// Keyword values that pass validation: the model a rendered string must parse back to.
#[derive(Debug, Clone)]
struct Model {
    user: Option<String>,
    password: Option<String>,
    hosts: Vec<String>,
    ports: Vec<u16>,
    dbname: Option<String>,
    /// Other free-text or enumerated keywords.
    others: Vec<(&'static str, String)>,
}

fn model() -> impl Strategy<Value = Model> {
    let host = "[a-zA-Z0-9._/:%é-]{1,12}";
    let others = prop::collection::btree_map(
        prop::sample::select(vec![
            "application_name",
            "options",
            "passfile",
            "sslmode",
            "connect_timeout",
            "target_session_attrs",
            "keepalives_idle",
            "sslsni",
        ]),
        tricky(),
        0..4,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                // Enumerated and numeric keywords get a valid value derived from the text.
                let n = v.len();
                let v = match k {
                    "sslmode" => ["disable", "allow", "prefer", "require"][n % 4].to_owned(),
                    "target_session_attrs" => ["any", "read-write", "standby"][n % 3].to_owned(),
                    "connect_timeout" | "keepalives_idle" => n.to_string(),
                    _ => v,
                };
                (k, v)
            })
            .collect::<Vec<_>>()
    });
    (
        prop::option::of(tricky().prop_filter("non-empty", |u| !u.is_empty())),
        prop::option::of(password()),
        prop::collection::vec(host, 0..4),
        prop::collection::vec(1u16.., 0..4),
        prop::option::of(tricky().prop_filter("non-empty", |d| !d.is_empty())),
        others,
    )
        .prop_map(|(user, password, hosts, ports, dbname, others)| {
            // libpq wants one port, or one per host.
            let ports = match ports.len() {
                0 | 1 => ports,
                _ => ports
                    .iter()
                    .copied()
                    .cycle()
                    .take(hosts.len().max(1))
                    .collect(),
            };
            Model {
                user,
                password,
                hosts,
                ports,
                dbname,
                others,
            }
        })
}

impl Model {
    /// What the parser must give back.
    fn values(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        if let Some(u) = &self.user {
            m.insert("user", u.clone());
        }
        if let Some(p) = &self.password {
            m.insert("password", p.clone());
        }
        if !self.hosts.is_empty() {
            m.insert("host", self.hosts.join(","));
        }
        if !self.ports.is_empty() {
            m.insert("port", join_ports(&self.ports));
        }
        if let Some(d) = &self.dbname {
            m.insert("dbname", d.clone());
        }
        for (k, v) in &self.others {
            m.insert(*k, v.clone());
        }
        m
    }

    /// The `key=value` form: values quoted (or backslash-escaped) as libpq reads them, with
    /// random white space around `=`.
    fn key_values(&self, quote_all: bool, spaced: bool) -> String {
        let eq = if spaced { " = " } else { "=" };
        self.values()
            .iter()
            .map(|(k, v)| format!("{k}{eq}{}", kv_quote(v, quote_all)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The URL form, every component percent-encoded; the password in the user info, or as
    /// the first query parameter.
    fn url(&self, scheme: &str, password_in_query: bool) -> String {
        let mut s = format!("{scheme}://");
        let userinfo_password = self.password.as_ref().filter(|_| !password_in_query);
        if self.user.is_some() || userinfo_password.is_some() {
            s.push_str(&pct(self.user.as_deref().unwrap_or("")));
            if let Some(p) = userinfo_password {
                s.push(':');
                s.push_str(&pct(p));
            }
            s.push('@');
        }
        let specs: Vec<String> = (0..self.hosts.len().max(usize::from(!self.ports.is_empty())))
            .map(|i| {
                let mut spec = self.hosts.get(i).map(|h| pct(h)).unwrap_or_default();
                if let Some(p) = self.ports.get(i) {
                    spec.push(':');
                    spec.push_str(&p.to_string());
                }
                spec
            })
            .collect();
        s.push_str(&specs.join(","));
        if let Some(d) = &self.dbname {
            s.push('/');
            s.push_str(&pct(d));
        }
        let query_password = self.password.iter().filter(|_| password_in_query);
        let query: Vec<String> = query_password
            .map(|p| ("password", p))
            .chain(self.others.iter().map(|(k, v)| (*k, v)))
            .map(|(k, v)| format!("{k}={}", pct(v)))
            .collect();
        if !query.is_empty() {
            s.push('?');
            s.push_str(&query.join("&"));
        }
        s
    }

    /// The URL form's values: with fewer ports than hosts, the URL gives the port to the
    /// first host only (`h1:5432,h2` is `port=5432,`).
    fn url_values(&self) -> BTreeMap<&'static str, String> {
        let mut m = self.values();
        if self.ports.len() == 1 && self.hosts.len() > 1 {
            let mut ports = vec![self.ports[0].to_string()];
            ports.resize(self.hosts.len(), String::new());
            m.insert("port", ports.join(","));
        }
        m
    }
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// libpq quoting, written here from its documentation (single quotes, `\'` and `\\`), or
/// backslash escapes without quotes.
fn kv_quote(v: &str, quote_all: bool) -> String {
    let mut out = String::new();
    if quote_all || v.is_empty() {
        out.push('\'');
        for c in v.chars() {
            if c == '\'' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
    } else {
        for c in v.chars() {
            if c.is_ascii_whitespace() || c == '\'' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        // A value starting with a quote would be read as a quoted value.
    }
    out
}

/// Percent-encodes every byte but ASCII letters and digits.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every printed form of a parsed connection.
fn printed(info: &ConnInfo) -> Vec<String> {
    vec![
        info.masked(),
        info.to_string(),
        format!("{info:?}"),
        info.with_dbname("other db").masked(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text: parsed or refused, never a panic; what parses can be printed and re-targeted.
    #[test]
    fn any_text_parses_or_is_refused(s in "\\PC{0,80}") {
        if let Ok(info) = ConnInfo::parse(&s) {
            let other = info.with_dbname("x");
            prop_assert_eq!(other.dbname(), Some("x"));
            ConnInfo::parse(&other.raw).map_err(|e| TestCaseError::fail(format!("{:?} after with_dbname: {e}", other.raw)))?;
            let _ = printed(&info);
        }
    }

    /// Text made of the characters both syntaxes treat specially, after either URL prefix.
    #[test]
    fn any_url_parses_or_is_refused(scheme in prop::sample::select(vec!["postgres://", "postgresql://", "POSTGRESQL://"]), rest in "[a-z0-9:@/?&=%\\[\\],. '\\\\§]{0,60}") {
        let s = format!("{scheme}{rest}");
        if let Ok(info) = ConnInfo::parse(&s) {
            let other = info.with_dbname("x y/z");
            prop_assert_eq!(other.dbname(), Some("x y/z"));
            prop_assert!(ConnInfo::parse(&other.raw).is_ok(), "{:?}", other.raw);
        }
    }

    /// `key=value` strings rendered from random values parse back to exactly those values.
    #[test]
    fn key_values_round_trip(m in model(), quote_all in any::<bool>(), spaced in any::<bool>()) {
        let s = m.key_values(quote_all, spaced);
        let info = ConnInfo::parse(&s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        prop_assert_eq!(&info.values, &m.values(), "{:?}", s);
        prop_assert!(!info.is_url());
        for p in printed(&info) {
            prop_assert!(!leaks(&p), "{:?} printed as {:?}", s, p);
        }
        // Re-targeted, it still parses to the same values but the database.
        let other = info.with_dbname("o'ther\\ db");
        let again = ConnInfo::parse(&other.raw).map_err(|e| TestCaseError::fail(format!("{:?}: {e}", other.raw)))?;
        let mut want = m.values();
        want.insert("dbname", "o'ther\\ db".to_owned());
        prop_assert_eq!(&again.values, &want);
    }

    /// URLs rendered from random values (every component percent-encoded) parse back to
    /// exactly those values.
    #[test]
    fn urls_round_trip(m in model(), scheme in prop::sample::select(vec!["postgres", "postgresql"]), in_query in any::<bool>()) {
        let s = m.url(scheme, in_query);
        let info = ConnInfo::parse(&s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        prop_assert_eq!(&info.values, &m.url_values(), "{:?}", s);
        prop_assert!(info.is_url());
        for p in printed(&info) {
            prop_assert!(!leaks(&p), "{:?} printed as {:?}", s, p);
        }
        let other = info.with_dbname("o/ther?db");
        let again = ConnInfo::parse(&other.raw).map_err(|e| TestCaseError::fail(format!("{:?}: {e}", other.raw)))?;
        let mut want = m.url_values();
        want.insert("dbname", "o/ther?db".to_owned());
        prop_assert_eq!(&again.values, &want);
    }

    /// A connection string with a password, spoilt by one inserted character (a typo):
    /// whatever the parser says, it does not show the password. (A typo inside the keyword
    /// `password` itself makes the value an ordinary one, which may then be shown; the test
    /// spoils only the rest.)
    #[test]
    fn errors_never_show_a_password(
        m in model().prop_filter("with a password", |m| m.password.is_some()),
        url in any::<bool>(),
        in_query in any::<bool>(),
        at in any::<prop::sample::Index>(),
        c in prop::sample::select(vec!['\'', '\\', ' ', '=', '@', '/', '?', ':', '%', '&', '#', '[', ']', ',']),
    ) {
        let s = if url { m.url("postgresql", in_query) } else { m.key_values(false, false) };
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        let pos = at.index(chars.len() + 1);
        let byte = chars.get(pos).map_or(s.len(), |(b, _)| *b);
        let protected = s.find("password").map(|p| p..p + "password".len());
        prop_assume!(!protected.is_some_and(|r| r.start < byte && byte < r.end));
        let mut spoilt = s.clone();
        spoilt.insert(byte, c);
        match ConnInfo::parse(&spoilt) {
            Ok(info) => {
                // Still a password somewhere: never printed.
                if info.values.get("password").is_some_and(|p| p.contains(MARK)) {
                    for p in printed(&info) {
                        prop_assert!(!leaks(&p), "{:?} printed as {:?}", spoilt, p);
                    }
                }
            }
            Err(e) => {
                for p in [e.to_string(), format!("{e:?}")] {
                    prop_assert!(!leaks(&p), "{:?}: {}", spoilt, p);
                }
            }
        }
    }
}

// Defects the properties found, as plain tests with the minimized inputs.

/// A value ending in an escaped white space at the end of the string kept it (the whole
/// string was trimmed before parsing, eating the escaped character).
#[test]
fn escaped_white_space_at_the_end_is_kept() {
    let info = ConnInfo::parse("user=\\\t").unwrap();
    assert_eq!(info.user(), Some("\t"));
    let info = ConnInfo::parse("  host=h application_name=a\\  \n").unwrap();
    assert_eq!(info.get("application_name"), Some("a "));
    assert_eq!(info.host(), Some("h"));
    // libpq ends values at ASCII white space only.
    let info = ConnInfo::parse("user=a\u{a0}").unwrap();
    assert_eq!(info.user(), Some("a\u{a0}"));
}

/// A URL with a mistyped scheme is read as `key=value` text; its "keyword" (the whole URL,
/// password included) was echoed in the error.
#[test]
fn a_mistyped_url_is_not_echoed() {
    for s in [
        "@postgresql://:%C2%A7@",
        "postgres:/mon:TopSecret@h/db?sslmode=disable",
        "postgres//mon:TopSecret@h/db",
        "host=h postgres:/mon:TopSecret@h/db=1",
    ] {
        let e = ConnInfo::parse(s).expect_err(s).to_string();
        assert!(
            !e.contains("TopSecret") && !e.contains("%C2%A7"),
            "{s}: {e}"
        );
    }
    let e = ConnInfo::parse("host=h HOST=x").unwrap_err().to_string();
    assert!(
        e.contains("\"HOST\""),
        "a keyword-like name is still shown: {e}"
    );
}

/// A password query parameter with an unencoded `&`: the rest of the password became the next
/// parameter, whose name (and value) the error showed.
#[test]
fn the_rest_of_a_password_in_a_url_query_is_not_echoed() {
    for s in [
        "postgresql://?password=%09%3D%25&%5Fa%20%25A%22%3D%C2%A7&connect_timeout=10",
        "postgresql://h/d?password=Top&Secret",
        "postgresql://h/d?password=Top&Secret=x",
        "postgresql://h/d?password=Top&Secret=%zz",
        "postgresql://h/d?sslpassword=Top&x&Secret",
    ] {
        let e = ConnInfo::parse(s).expect_err(s).to_string();
        assert!(!e.contains("Secret") && !e.contains("%C2%A7"), "{s}: {e}");
    }
    let e = ConnInfo::parse("postgresql://h/d?foo=bar")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"foo\""), "{e}");
}

/// The masked form guessed the syntax from the text (`://` anywhere made it a URL) and the
/// secret keys from their spelling: a `key=value` string with `://` in a value, or a URL
/// with a percent-encoded `password` parameter name, showed the password.
#[test]
fn masked_hides_passwords_wherever_written() {
    for s in [
        "application_name=a://b password=TopSecret",
        "options='-c x=y://z' password='Top Secret'",
        "postgresql://h/d?pass%77ord=TopSecret",
        "postgresql://h/d?%73slpassword=TopSecret&sslmode=disable",
    ] {
        let info = ConnInfo::parse(s).unwrap();
        assert!(
            info.has_password() || info.values.contains_key("sslpassword"),
            "{s}"
        );
        for p in printed(&info) {
            assert!(!p.contains("Secret"), "{s} printed as {p}");
        }
    }
}
