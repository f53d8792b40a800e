//! Hostile `--web.config.file`s through [`WebConfig::load`]: arbitrary bytes, random YAML
//! documents shaped like web configs, alias bombs and deep nesting. Never a panic; every
//! error names the file, and the line or the field; a file that loads with users keeps
//! authentication on.
//!
//! The case count is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use std::time::{Duration, Instant};

use agent_kit::web_config::{WebConfig, WebConfigError};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// `cases` cases unless `PROPTEST_CASES` says otherwise; failures are kept in the crate's
/// `proptest-regressions/` (cargo runs the tests in the crate's directory).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/web_config_fuzz.txt",
        ))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Loads `bytes` as a web config file.
fn load(bytes: &[u8]) -> (Result<WebConfig, WebConfigError>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web-config.yml");
    std::fs::write(&path, bytes).unwrap();
    (WebConfig::load(&path), path.display().to_string())
}

fn load_and_check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (result, path) = load(bytes);
    match result {
        Ok(config) => {
            // Users in the file keep authentication on.
            let text = String::from_utf8_lossy(bytes);
            if let Ok(file) = serde_norway::from_str::<agent_kit::web_config::WebConfigFile>(&text)
                && !file.basic_auth_users.is_empty()
            {
                prop_assert!(config.basic_auth.is_some());
            }
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(
                shown.starts_with(&format!("web config {path}: ")),
                "{}",
                shown
            );
            match &e {
                WebConfigError::Read { .. } => {
                    // Only text that is not UTF-8 cannot be read.
                    prop_assert!(std::str::from_utf8(bytes).is_err(), "{}", shown);
                }
                WebConfigError::Parse { message, .. } => {
                    // The parser gives a line, except for an unknown or repeated field, which
                    // it names.
                    prop_assert!(
                        message.contains("line ")
                            || message.starts_with("unknown field `")
                            || message.starts_with("duplicate field `"),
                        "neither line nor field: {}",
                        shown
                    );
                }
                WebConfigError::Invalid { field, .. } => {
                    prop_assert!(!field.is_empty());
                }
                WebConfigError::Empty { .. } => {
                    // Only a text without a YAML document is empty.
                    let text = String::from_utf8_lossy(bytes);
                    prop_assert!(
                        serde_norway::from_str::<serde_norway::Value>(&text)
                            .is_ok_and(|v| v.is_null())
                            || text.trim().is_empty(),
                        "{}",
                        shown
                    );
                }
            }
        }
    }
    Ok(())
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "~",
            "true",
            "1",
            "TLS12",
            "TLS13",
            "TLS10",
            "NoClientCert",
            "RequireAndVerifyClientCert",
            "VerifyClientCertIfGiven",
            "RequestClientCert",
            "$2y$10$abcdefghijklmnopqrstuv",
            "plaintext",
            "/nonexistent/cert.pem",
            "cert.pem",
            "\"X-Frame-Options\"",
            "\"bad header\\n\"",
            "[]",
            "{}",
            "*a",
            "&a x",
            "1e400",
            "-----BEGIN CERTIFICATE-----",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,10}",
    ]
}

fn document() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "tls_server_config",
            "http_server_config",
            "basic_auth_users",
            "cert_file",
            "key_file",
            "cert",
            "key",
            "client_auth_type",
            "client_ca_file",
            "min_version",
            "max_version",
            "cipher_suites",
            "curve_preferences",
            "prefer_server_cipher_suites",
            "client_allowed_sans",
            "http2",
            "headers",
            "prometheus",
            "<<",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z_-]{1,8}",
    ];
    let value = scalar().prop_recursive(3, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(|pairs| {
                let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    });
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "tls_server_config",
                "http_server_config",
                "basic_auth_users",
                "other",
            ]),
            value,
        ),
        0..4,
    )
    .prop_map(|entries| {
        entries
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect::<String>()
    })
}

proptest! {
    #![proptest_config(config(64))]

    /// Any bytes.
    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        load_and_check(&bytes)?;
    }

    /// Random documents shaped like web configs.
    #[test]
    fn any_document(doc in document()) {
        load_and_check(doc.as_bytes())?;
    }
}

/// A "billion laughs", also under `basic_auth_users`: refused with an error naming the file,
/// in bounded time.
#[test]
fn alias_bombs_are_refused_within_bounds() {
    let mut bomb = String::from(
        "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let in_users = format!(
        "basic_auth_users:\n  {}",
        bomb.trim_end().replace('\n', "\n  ")
    );
    for (what, text) in [("bomb", bomb.as_str()), ("bomb in users", &in_users)] {
        let start = Instant::now();
        let (result, path) = load(text.as_bytes());
        let took = start.elapsed();
        let shown = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            shown.starts_with(&format!("web config {path}")),
            "{what}: {shown}"
        );
        assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    }
}

/// Brackets nested deep: refused with an error naming the file, in time that grows with the
/// size of the file, not with its square (the YAML parser's cost for flow nesting).
#[test]
fn deep_nesting_is_refused_in_linear_time() {
    let timed = |depth: usize| {
        let text = format!(
            "tls_server_config:\n  cipher_suites: {}1{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let start = Instant::now();
        let (result, path) = load(text.as_bytes());
        let took = start.elapsed();
        let shown = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            shown.starts_with(&format!("web config {path}")),
            "{depth}: {shown}"
        );
        took
    };
    let (small, big) = (timed(10_000), timed(80_000));
    // 8 times the input: 8 times the time if linear, 64 if quadratic.
    assert!(
        big <= small * 20 + Duration::from_millis(200),
        "10k levels: {small:?}, 80k levels: {big:?}"
    );
}
