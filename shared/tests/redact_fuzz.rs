//! [`mask_password`] on well-formed connection strings written in every way libpq reads
//! them: the password never survives, whatever the other values hold (quotes, backslashes,
//! `://`, `@`, `?`, `&`). Any text at all: never a panic.
//!
//! The case count is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use agent_kit::redact::mask_password;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// `cases` cases unless `PROPTEST_CASES` says otherwise; failures are kept in the crate's
/// `proptest-regressions/` (cargo runs the tests in the crate's directory).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/redact_fuzz.txt",
        ))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Only passwords contain it.
const MARK: char = '§';

fn leaks(masked: &str) -> bool {
    masked.contains(MARK) || masked.to_ascii_uppercase().contains("%C2%A7")
}

fn value() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _'\\\\=@:/?&%#,.é-]{0,12}"
}

fn password() -> impl Strategy<Value = String> {
    (value(), value()).prop_map(|(a, b)| format!("{a}{MARK}{b}"))
}

/// libpq quoting: single quotes with `\'` and `\\`.
fn quote(v: &str) -> String {
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
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

proptest! {
    #![proptest_config(config(256))]

    /// `key=value` strings: quoted values, passwords among other keywords in any order.
    #[test]
    fn key_value_passwords_never_survive(
        others in prop::collection::vec((prop::sample::select(vec!["host", "user", "dbname", "application_name", "options"]), value()), 0..4),
        secret in prop::sample::select(vec!["password", "sslpassword"]),
        pw in password(),
        at in any::<prop::sample::Index>(),
    ) {
        let mut pairs: Vec<String> = others.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
        pairs.insert(at.index(pairs.len() + 1), format!("{secret}={}", quote(&pw)));
        let conn = pairs.join(" ");
        let masked = mask_password(&conn);
        prop_assert!(!leaks(&masked), "{:?} masked as {:?}", conn, masked);
    }

    /// URLs: the password in the user info or a query parameter, every component
    /// percent-encoded.
    #[test]
    fn url_passwords_never_survive(
        user in value(),
        host in "[a-z0-9.-]{1,10}",
        db in value(),
        params in prop::collection::vec((prop::sample::select(vec!["sslmode", "application_name", "options"]), value()), 0..3),
        pw in password(),
        in_query in any::<bool>(),
    ) {
        let mut conn = format!("postgresql://{}", pct(&user));
        if !in_query {
            conn.push(':');
            conn.push_str(&pct(&pw));
        }
        conn.push_str(&format!("@{host}/{}", pct(&db)));
        let mut query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", pct(v))).collect();
        if in_query {
            query.push(format!("password={}", pct(&pw)));
        }
        if !query.is_empty() {
            conn.push('?');
            conn.push_str(&query.join("&"));
        }
        let masked = mask_password(&conn);
        prop_assert!(!leaks(&masked), "{:?} masked as {:?}", conn, masked);
    }

    /// Any text: never a panic.
    #[test]
    fn any_text_is_masked_without_a_panic(s in "\\PC{0,80}|[a-z:/@?&=' \\\\]{0,40}") {
        let _ = mask_password(&s);
    }
}

/// Found by `key_value_passwords_never_survive`: a `://` anywhere in a `key=value` string made
/// it a URL for the masking, which then left the password as written.
#[test]
fn a_scheme_separator_in_a_value_does_not_unmask() {
    for conn in [
        "password='§' host='://'",
        "host=/tmp application_name=a://b password=TopSecret",
        "options='-c search_path=x://y' password='Top Secret'",
    ] {
        let masked = mask_password(conn);
        assert!(
            !masked.contains('§') && !masked.contains("Secret"),
            "{conn:?} masked as {masked:?}"
        );
    }
}
