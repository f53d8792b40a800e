//! The libpq connection keywords this module knows, with their environment variables.

/// What [`ConnInfo`](super::ConnInfo) does with a keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Support {
    /// Honoured when connecting.
    Used,
    /// Accepted (libpq knows it) but has no effect here.
    Ignored,
    /// Accepted by the parser, but a non-empty value is refused when validating: silently
    /// dropping it would weaken what the user asked for (authentication or peer checks).
    Refused,
}

/// One libpq keyword.
#[derive(Debug)]
pub(super) struct Keyword {
    /// The keyword, lower case as libpq spells it (libpq matches keywords case-sensitively).
    pub(super) name: &'static str,
    /// The `PG*` environment variable supplying its default, as in libpq.
    pub(super) env: Option<&'static str>,
    pub(super) support: Support,
    /// Its value is a secret: never printed.
    pub(super) secret: bool,
}

const fn kw(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword {
        name,
        env,
        support,
        secret: false,
    }
}

const fn secret(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword {
        name,
        env,
        support,
        secret: true,
    }
}

use Support::{Ignored, Refused, Used};

/// The keywords of libpq 17/18 (`PQconndefaults`), in libpq's order.
pub(super) const KEYWORDS: &[Keyword] = &[
    kw("service", Some("PGSERVICE"), Refused),
    kw("user", Some("PGUSER"), Used),
    secret("password", Some("PGPASSWORD"), Used),
    kw("passfile", Some("PGPASSFILE"), Used),
    kw("channel_binding", Some("PGCHANNELBINDING"), Used),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Used),
    kw("dbname", Some("PGDATABASE"), Used),
    kw("host", Some("PGHOST"), Used),
    kw("hostaddr", Some("PGHOSTADDR"), Used),
    kw("port", Some("PGPORT"), Used),
    kw("client_encoding", Some("PGCLIENTENCODING"), Ignored),
    kw("options", Some("PGOPTIONS"), Used),
    kw("application_name", Some("PGAPPNAME"), Used),
    kw("fallback_application_name", None, Used),
    kw("keepalives", None, Used),
    kw("keepalives_idle", None, Used),
    kw("keepalives_interval", None, Used),
    kw("keepalives_count", None, Used),
    kw("tcp_user_timeout", None, Used),
    kw("sslmode", Some("PGSSLMODE"), Used),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION"), Used),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Ignored),
    kw("sslcert", Some("PGSSLCERT"), Used),
    kw("sslkey", Some("PGSSLKEY"), Used),
    kw("sslcertmode", Some("PGSSLCERTMODE"), Used),
    secret("sslpassword", None, Ignored),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Used),
    kw("sslcrl", Some("PGSSLCRL"), Used),
    kw("sslcrldir", Some("PGSSLCRLDIR"), Used),
    kw("sslsni", Some("PGSSLSNI"), Used),
    kw("sslkeylogfile", Some("PGSSLKEYLOGFILE"), Ignored),
    kw("requirepeer", Some("PGREQUIREPEER"), Refused),
    kw("require_auth", Some("PGREQUIREAUTH"), Refused),
    kw(
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Used,
    ),
    kw(
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Used,
    ),
    kw(
        "min_protocol_version",
        Some("PGMINPROTOCOLVERSION"),
        Ignored,
    ),
    kw(
        "max_protocol_version",
        Some("PGMAXPROTOCOLVERSION"),
        Ignored,
    ),
    kw("gssencmode", Some("PGGSSENCMODE"), Used),
    kw("krbsrvname", Some("PGKRBSRVNAME"), Ignored),
    kw("gsslib", Some("PGGSSLIB"), Ignored),
    kw("gssdelegation", Some("PGGSSDELEGATION"), Ignored),
    kw("replication", None, Used),
    kw("target_session_attrs", Some("PGTARGETSESSIONATTRS"), Used),
    kw("load_balance_hosts", Some("PGLOADBALANCEHOSTS"), Used),
    secret("scram_client_key", None, Refused),
    secret("scram_server_key", None, Refused),
    kw("oauth_issuer", None, Refused),
    kw("oauth_client_id", None, Refused),
    secret("oauth_client_secret", None, Refused),
    kw("oauth_scope", None, Refused),
];

/// The keyword spelled exactly `name`.
pub(super) fn lookup(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// Whether `name` is a keyword whose value is a secret (unknown names are not).
pub(super) fn is_secret(name: &str) -> bool {
    lookup(name).is_some_and(|k| k.secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_unique_and_lower_case() {
        for (i, k) in KEYWORDS.iter().enumerate() {
            assert_eq!(k.name, k.name.to_ascii_lowercase());
            assert!(
                KEYWORDS[i + 1..].iter().all(|o| o.name != k.name),
                "{}",
                k.name
            );
        }
        assert!(is_secret("password") && is_secret("sslpassword") && !is_secret("user"));
        assert_eq!(lookup("sslmode").and_then(|k| k.env), Some("PGSSLMODE"));
        assert!(lookup("SSLMODE").is_none());
    }
}
