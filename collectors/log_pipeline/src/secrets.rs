//! Secrets of a sink's endpoint and settings kept out of logs, metrics and dead letters.
//!
//! Written here for now; [`mask_url`] and [`is_secret_key`] are candidates for
//! `agent_kit::redact` (which masks `password` in connection strings only), to move there
//! as they are once it grows URL query tokens.
//!
//! - [`mask_url`]: an endpoint as it may be shown: the userinfo's password (or a lone user
//!   name, which is then a token) and the values of query parameters that carry credentials
//!   replaced by [`MASK`];
//! - [`Secrets`]: the secret values of one sink (from its endpoint, auth and headers), scrubbed
//!   from any text before it is logged: error messages of the HTTP client, answers of the
//!   destination (a proxy may echo the request).

use agent_kit::redact::MASK;

/// Whether a query parameter or header named `key` carries a credential: `token`, `key`,
/// `pass` (password, passwd), `secret`, `credential`, `signature` anywhere in it, or a name
/// starting with `auth`; case-insensitive.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    k.starts_with("auth")
        || ["token", "key", "pass", "secret", "credential", "signature"]
            .iter()
            .any(|s| k.contains(s))
}

/// `url` with its credentials masked: `http://user:xxxxx@host:3100/path?tenant=a&token=xxxxx`.
pub fn mask_url(url: &url::Url) -> String {
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
                let v = if is_secret_key(&k) {
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

/// The secret values of one sink, to scrub from text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({})", self.0.len())
    }
}

impl Secrets {
    /// The credentials in `url`: its userinfo and its secret query values (raw and decoded).
    pub fn of_url(url: &url::Url) -> Secrets {
        let mut s = Secrets::default();
        if let Some(p) = url.password() {
            s.add(p);
            s.add(&percent_decode(p));
        } else {
            s.add(url.username());
            s.add(&percent_decode(url.username()));
        }
        for (k, v) in url.query_pairs() {
            if is_secret_key(&k) {
                s.add(&v);
            }
        }
        if let Some(q) = url.query() {
            for pair in q.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && is_secret_key(&percent_decode(k))
                {
                    s.add(v);
                }
            }
        }
        s
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
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "tenant",
            "orgid",
            "_msg_field",
            "project",
            "user",
            "sslmode",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_credentials() {
        let u = |s: &str| mask_url(&url::Url::parse(s).unwrap());
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
        assert_eq!(format!("{s:?}"), "Secrets(4)");
    }
}
