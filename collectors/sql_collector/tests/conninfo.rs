//! Live tests of `sql_collector::conninfo` against a real PostgreSQL 15 (TLS on, a
//! scram-sha-256 password role) started by the test harness.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use sql_collector::conninfo::{ConnInfo, ConnInfoError, ConnectionTask, SslMode};
use test_harness::{PASSWORD_USER, PASSWORD_USER_PASSWORD, PgVersion, Postgres, PostgresBuilder};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A self-signed CA that signed nothing the server uses.
const UNRELATED_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUN14qdk7DDUcsDw+V0c7hangEPvcwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdW5yZWxhdGVkIHRlc3QgQ0EwIBcNMjYxMTI1MjMxNDIxWhgP
MjEyNjExMDEyMzE0MjFaMBwxGjAYBgNVBAMMEXVucmVsYXRlZCB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEo5Aw0Gdj0oCjBnBfhoiOkGqs92bQkLOG
ObetZiBsyTPHu3LzSQ5GrSJ+oC1mLBfzgwMK+m5DSsA4bCuxDC1I8KNjMGEwHQYD
VR0OBBYEFEo2GrCrs5JRtv2HjI5GjkOuQRJ+MB8GA1UdIwQYMBaAFEo2GrCrs5JR
tv2HjI5GjkOuQRJ+MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoG
CCqGSM49BAMCA0gAMEUCIQD5T5yt9MnubUtET1T5NmGU+0hy9vZOB/qPkWz40w9A
XQIgQznIKvi6Obf+paR4fWB3QNex65oFyeZJodlNkMbalLU=
-----END CERTIFICATE-----
";

/// The server shared by every test of this binary (stopped by the harness's reaper at exit).
fn pg() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        PostgresBuilder::new(PgVersion::V15)
            .name("conninfo")
            .start()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL 15: {e:#}"))
    })
}

/// An environment with only these variables (and an empty `HOME`, so that the real
/// `~/.pgpass` and `~/.postgresql/` of the user running the tests play no part).
fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    map.entry("HOME".to_owned())
        .or_insert_with(|| "/nonexistent-home".to_owned());
    move |k| map.get(k).cloned()
}

fn info(s: &str) -> ConnInfo {
    ConnInfo::parse(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_env_from(env(&[]))
}

async fn connect(info: &ConnInfo) -> (Client, ConnectionTask) {
    info.connect(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", info.masked()))
}

async fn scalar(client: &Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.get(0).unwrap_or("NULL").to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}

/// Whether the session uses TLS, as the server sees it.
async fn server_ssl(client: &Client) -> bool {
    scalar(
        client,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await
        == "t"
}

fn write_private(path: &Path, text: &str, mode: u32) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Named `conninfo::…` so that `cargo test -p sql-collector conninfo` selects them.
mod conninfo {
    use super::*;

    #[tokio::test]
    async fn tcp_trust() {
        let pg = pg();
        let info = info(&format!("{}?sslmode=disable", pg.url("postgres")));
        let (client, task) = connect(&info).await;
        assert_eq!(scalar(&client, "SELECT current_user").await, "postgres");
        assert_eq!(
            scalar(&client, "SELECT inet_server_addr()").await,
            "127.0.0.1"
        );
        assert!(!server_ssl(&client).await && !task.uses_tls());
        assert_eq!(
            task.target(),
            format!("at \"127.0.0.1\", port {}", pg.port())
        );

        // key=value form, with application_name from the environment (PGAPPNAME).
        let kv = ConnInfo::parse(&format!("{} sslmode=disable", pg.conninfo("postgres")))
            .unwrap()
            .with_env_from(env(&[("PGAPPNAME", "conninfo-test")]));
        let (client, _task) = connect(&kv).await;
        assert_eq!(
            scalar(&client, "SHOW application_name").await,
            "conninfo-test"
        );
    }

    #[tokio::test]
    async fn unix_socket() {
        let pg = pg();
        let dir = pg.socket_dir().display().to_string();
        // Pigsty's form: empty host in the URL, socket directory as a query parameter, and no
        // TLS attempted on the socket even with sslmode=require.
        for url in [
            format!(
                "postgres://postgres@:{}/postgres?host={dir}&sslmode=disable",
                pg.port()
            ),
            format!(
                "postgres://postgres@:{}/postgres?host={dir}&sslmode=require",
                pg.port()
            ),
            pg.socket_conninfo("postgres"),
            format!(
                "postgresql://postgres@{}:{}/postgres",
                dir.replace('/', "%2F"),
                pg.port()
            ),
        ] {
            let (client, task) = connect(&info(&url)).await;
            assert_eq!(
                scalar(
                    &client,
                    "SELECT coalesce(inet_server_addr()::text, 'socket')"
                )
                .await,
                "socket",
                "{url}"
            );
            assert!(!server_ssl(&client).await && !task.uses_tls(), "{url}");
            assert!(task.target().starts_with("on socket"), "{}", task.target());
        }
        // The database from PGDATABASE and the port from PGPORT.
        let from_env = ConnInfo::parse(&format!("host={dir} user=postgres"))
            .unwrap()
            .with_env_from(env(&[
                ("PGPORT", &pg.port().to_string()),
                ("PGDATABASE", "template1"),
            ]));
        let (client, _task) = connect(&from_env).await;
        assert_eq!(
            scalar(&client, "SELECT current_database()").await,
            "template1"
        );
    }

    #[tokio::test]
    async fn password_from_url_env_and_file() {
        let pg = pg();
        let port = pg.port();
        let no_password =
            format!("postgres://{PASSWORD_USER}@127.0.0.1:{port}/postgres?sslmode=disable");

        // In the URL.
        let (client, _task) = connect(&info(&pg.password_url("postgres"))).await;
        assert_eq!(scalar(&client, "SELECT current_user").await, PASSWORD_USER);

        // PGPASSWORD.
        let with_env = ConnInfo::parse(&no_password)
            .unwrap()
            .with_env_from(env(&[("PGPASSWORD", PASSWORD_USER_PASSWORD)]));
        let (client, _task) = connect(&with_env).await;
        assert_eq!(scalar(&client, "SELECT current_user").await, PASSWORD_USER);

        // A password file through PGPASSFILE: the first matching line wins.
        let dir = tempfile::tempdir().unwrap();
        let passfile = dir.path().join("pgpass");
        let text = format!(
            "# test\n\
             127.0.0.1:{other}:postgres:{PASSWORD_USER}:wrong-port\n\
             127.0.0.1:{port}:*:{PASSWORD_USER}:{PASSWORD_USER_PASSWORD}\n\
             *:*:*:*:wrong-later\n",
            other = port.wrapping_add(1)
        );
        write_private(&passfile, &text, 0o600);
        let passfile_env = env(&[("PGPASSFILE", passfile.to_str().unwrap())]);
        let with_file = ConnInfo::parse(&no_password)
            .unwrap()
            .with_env_from(&passfile_env);
        let (client, _task) = connect(&with_file).await;
        assert_eq!(scalar(&client, "SELECT current_user").await, PASSWORD_USER);

        // A password file others may read is ignored: the server's password request goes
        // unanswered.
        fs::set_permissions(&passfile, fs::Permissions::from_mode(0o644)).unwrap();
        let err = with_file.connect(TIMEOUT).await.unwrap_err().to_string();
        assert!(err.contains("password"), "{err}");
        assert!(!err.contains(PASSWORD_USER_PASSWORD), "{err}");

        // The passfile keyword itself, and an explicit password beats the file.
        write_private(
            &passfile,
            &format!("*:*:*:*:{PASSWORD_USER_PASSWORD}\n"),
            0o600,
        );
        let keyword = info(&format!("{no_password}&passfile={}", passfile.display()));
        let (client, _task) = connect(&keyword).await;
        assert_eq!(scalar(&client, "SELECT current_user").await, PASSWORD_USER);
        let explicit = info(&format!(
            "{no_password}&passfile={}&password=Wrong-Explicit",
            passfile.display()
        ));
        let err = explicit.connect(TIMEOUT).await.unwrap_err();
        assert_eq!(
            err.db_error().map(|e| e.code()),
            Some(&SqlState::INVALID_PASSWORD)
        );
    }

    #[tokio::test]
    async fn wrong_password_is_not_shown() {
        let pg = pg();
        let secret = "Wrong-Pa55word";
        let url = format!(
            "postgres://{PASSWORD_USER}:{secret}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port()
        );
        let err = info(&url).connect(TIMEOUT).await.unwrap_err();
        assert_eq!(
            err.db_error().map(|e| e.code()),
            Some(&SqlState::INVALID_PASSWORD),
            "{err}"
        );
        let (text, debug) = (err.to_string(), format!("{err:?}"));
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(
            !text.contains(secret) && !debug.contains(secret),
            "{text}\n{debug}"
        );

        // From a password file: the message says where the password came from.
        let dir = tempfile::tempdir().unwrap();
        let passfile = dir.path().join("pgpass");
        write_private(&passfile, &format!("*:*:*:*:{secret}\n"), 0o600);
        let from_file = ConnInfo::parse(&format!(
            "host=127.0.0.1 port={} user={PASSWORD_USER} dbname=postgres sslmode=disable",
            pg.port()
        ))
        .unwrap()
        .with_env_from(env(&[("PGPASSFILE", passfile.to_str().unwrap())]));
        let err = from_file.connect(TIMEOUT).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "password retrieved from file \"{}\"",
                passfile.display()
            )),
            "{err}"
        );
        assert!(!err.contains(secret), "{err}");

        // With prefer, libpq retries without TLS after the failure with TLS: both reported.
        let prefer = info(&url.replace("sslmode=disable", "sslmode=prefer"));
        let err = prefer.connect(TIMEOUT).await.unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::AllFailed(v) if v.len() == 2),
            "{err}"
        );
        assert!(!err.to_string().contains(secret));
    }

    #[tokio::test]
    async fn sslmodes() {
        let pg = pg();
        let ca = pg.tls().ca_cert.display().to_string();
        let port = pg.port();
        for (mode, host, tls) in [
            ("disable", "127.0.0.1", false),
            ("allow", "127.0.0.1", false),
            ("prefer", "127.0.0.1", true),
            ("require", "127.0.0.1", true),
            ("verify-ca", "127.0.0.1", true),
            ("verify-full", "127.0.0.1", true),
            ("verify-full", "localhost", true),
        ] {
            let url = format!(
                "postgres://postgres@{host}:{port}/postgres?sslmode={mode}&sslrootcert={ca}"
            );
            let info = info(&url);
            assert_eq!(info.sslmode().unwrap().as_str(), mode);
            let (client, task) = connect(&info).await;
            assert_eq!(server_ssl(&client).await, tls, "{url}");
            assert_eq!(task.uses_tls(), tls, "{url}");
        }
        // The harness's own helper URL.
        let (client, _task) = connect(&info(&pg.ssl_url("postgres", "verify-full"))).await;
        assert!(server_ssl(&client).await);
        // prefer and require without any root certificate: TLS without verification.
        for mode in ["prefer", "require"] {
            let (client, _task) =
                connect(&info(&format!("{}?sslmode={mode}", pg.url("postgres")))).await;
            assert!(server_ssl(&client).await, "{mode}");
        }
        // The password role over TLS (scram with channel binding).
        let url = format!(
            "{}?sslmode=verify-full&sslrootcert={ca}&channel_binding=require",
            pg.password_url("postgres")
        );
        let (client, _task) = connect(&info(&url)).await;
        assert!(server_ssl(&client).await);
    }

    #[tokio::test]
    async fn certificate_verification_failures() {
        let pg = pg();
        let ca = pg.tls().ca_cert.display().to_string();
        let port = pg.port();
        let dir = tempfile::tempdir().unwrap();
        let unrelated = dir.path().join("unrelated.crt");
        fs::write(&unrelated, UNRELATED_CA).unwrap();
        let unrelated = unrelated.display().to_string();

        // A name not in the certificate (connecting to 127.0.0.1 through hostaddr): verify-ca
        // accepts it, verify-full does not.
        let wrong_name = |mode: &str| {
            info(&format!(
                "host=wrong-name.example hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
                 sslmode={mode} sslrootcert={ca}"
            ))
        };
        let (client, _task) = connect(&wrong_name("verify-ca")).await;
        assert!(server_ssl(&client).await);
        let err = wrong_name("verify-full")
            .connect(TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wrong-name.example") && err.to_lowercase().contains("certificate"),
            "{err}"
        );

        // Another root CA: verify-ca, verify-full and require (a root file makes require verify)
        // fail.
        for mode in ["verify-ca", "verify-full", "require"] {
            let url = format!(
                "postgres://postgres@127.0.0.1:{port}/postgres?sslmode={mode}&sslrootcert={unrelated}"
            );
            let err = info(&url).connect(TIMEOUT).await.unwrap_err().to_string();
            assert!(err.to_lowercase().contains("certificate"), "{mode}: {err}");
        }
        // prefer falls back to a plain connection after the failed handshake, as libpq.
        let url = format!(
            "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=prefer&sslrootcert={unrelated}"
        );
        let (client, task) = connect(&info(&url)).await;
        assert!(!server_ssl(&client).await && !task.uses_tls());

        // A missing root certificate file is named.
        let url = format!(
            "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt"
        );
        let err = info(&url).connect(TIMEOUT).await.unwrap_err().to_string();
        assert!(
            err.contains("root certificate file \"/nonexistent/ca.crt\" does not exist"),
            "{err}"
        );
        // ... and as libpq, require ignores a missing one.
        let url = format!(
            "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require&sslrootcert=/nonexistent/ca.crt"
        );
        let (client, _task) = connect(&info(&url)).await;
        assert!(server_ssl(&client).await);
    }

    #[tokio::test]
    async fn default_root_certificate_in_home() {
        let pg = pg();
        let home = tempfile::tempdir().unwrap();
        fs::create_dir(home.path().join(".postgresql")).unwrap();
        fs::copy(&pg.tls().ca_cert, home.path().join(".postgresql/root.crt")).unwrap();
        let home_env = env(&[("HOME", home.path().to_str().unwrap())]);
        let url = format!(
            "host=wrong-name.example hostaddr=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        );
        // ~/.postgresql/root.crt makes verify-full possible without sslrootcert...
        let full = ConnInfo::parse(&format!("{url} sslmode=verify-full"))
            .unwrap()
            .with_env_from(&home_env);
        assert!(
            full.connect(TIMEOUT).await.is_err(),
            "the name does not match"
        );
        let ca = ConnInfo::parse(&format!("{url} sslmode=verify-ca"))
            .unwrap()
            .with_env_from(&home_env);
        let (client, _task) = connect(&ca).await;
        assert!(server_ssl(&client).await);
        // ... and with the unrelated CA there, require verifies and fails.
        fs::write(home.path().join(".postgresql/root.crt"), UNRELATED_CA).unwrap();
        let require = ConnInfo::parse(&format!("{url} sslmode=require"))
            .unwrap()
            .with_env_from(&home_env);
        assert!(require.connect(TIMEOUT).await.is_err());
    }

    #[tokio::test]
    async fn cancel_with_tls_and_on_socket() {
        let pg = pg();
        let ca = pg.tls().ca_cert.display().to_string();
        for url in [
            format!(
                "{}?sslmode=verify-full&sslrootcert={ca}",
                pg.url("postgres")
            ),
            format!("{}?sslmode=require", pg.url("postgres")),
            pg.socket_conninfo("postgres"),
        ] {
            let info = info(&url);
            let (client, task) = connect(&info).await;
            let token = client.cancel_token();
            let sleeper =
                tokio::spawn(
                    async move { client.simple_query("SELECT pg_sleep(30)").await.map(drop) },
                );
            tokio::time::sleep(Duration::from_millis(300)).await;
            token
                .cancel_query(info.cancel_tls().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
                .await
                .expect("cancelled in time")
                .unwrap();
            let err = result.expect_err("the query was cancelled");
            assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{url}: {err}");
            // The task's own connector works too.
            let (client, _) = connect(&info).await;
            let token = client.cancel_token();
            let sleeper =
                tokio::spawn(
                    async move { client.simple_query("SELECT pg_sleep(30)").await.map(drop) },
                );
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(task.cancel_tls()).await.unwrap();
            let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
                .await
                .unwrap()
                .unwrap()
                .unwrap_err();
            assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn hosts_and_session_attrs() {
        let pg = pg();
        let port = pg.port();
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The first host refuses, the second answers.
        let url = format!(
            "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{port}/postgres?sslmode=disable"
        );
        let (client, task) = connect(&info(&url)).await;
        assert_eq!(scalar(&client, "SELECT 1").await, "1");
        assert_eq!(task.target(), format!("at \"127.0.0.1\", port {port}"));

        let attrs = |a: &str| {
            info(&format!(
                "{}?sslmode=disable&target_session_attrs={a}",
                pg.url("postgres")
            ))
        };
        for ok in ["any", "read-write", "primary", "prefer-standby"] {
            connect(&attrs(ok)).await;
        }
        let err = attrs("standby")
            .connect(TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("server is not in hot standby mode"), "{err}");
        let err = attrs("read-only")
            .connect(TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("session is not read-only"), "{err}");
    }

    #[tokio::test]
    async fn with_dbname_connects_to_the_other_database() {
        let pg = pg();
        let base = info(&format!("{}?sslmode=disable", pg.url("postgres")));
        let other = base.with_dbname("template1");
        assert!(other.masked().contains("/template1?"), "{}", other.masked());
        let (client, _task) = connect(&other).await;
        assert_eq!(
            scalar(&client, "SELECT current_database()").await,
            "template1"
        );
        assert!(!base.is_pgbouncer() && base.with_dbname("pgbouncer").is_pgbouncer());
        assert_eq!(base.sslmode().unwrap(), SslMode::Disable);
    }

    /// Certificates made by the `openssl` command line as PostgreSQL's documentation and DBAs
    /// make them (self-signed with `CA:TRUE`, version 1 by `openssl x509 -req`, CAs with
    /// intermediates and CRLs) and as a hostile reviewer made them, served by a PostgreSQL 15
    /// of its own: under each `sslmode`, our verdict is psql's (asked the same each time), and
    /// a refusal is in words. Prints the table of both verdicts (`--nocapture`).
    #[tokio::test]
    async fn certificates_made_by_openssl_as_libpq_accepts_them() {
        let certs = openssl_certificates();
        let certs = certs.path();
        let pg = PostgresBuilder::new(PgVersion::V15)
            .name("openssl-certs")
            .start()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL 15: {e:#}"));
        let port = pg.port();
        let conninfo = |host: &str, mode: &str, root: &str, extra: &str| {
            let root = match root {
                "system" => root.to_owned(),
                file => certs.join(file).display().to_string(),
            };
            let extra = match extra.split_once('=') {
                Some((keyword, file)) => format!(" {keyword}={}", certs.join(file).display()),
                None => String::new(),
            };
            // No host: hostaddr only.
            let host = match host {
                "" => String::new(),
                host => format!("host={host} "),
            };
            format!(
                "{host}hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
                 sslmode={mode} sslrootcert={root}{extra}"
            )
        };
        let mut served = "";
        let mut wrong = Vec::new();
        println!("| served | host | sslmode | sslrootcert | also | psql | ours |");
        println!("|---|---|---|---|---|---|---|");
        for (cert, host, mode, root, extra, want) in CERTIFICATE_CASES {
            if served != *cert {
                serve_certificate(&pg, certs, cert);
                served = cert;
            }
            let conninfo = conninfo(host, mode, root, extra);
            let libpq = psql_connects(&pg, &conninfo);
            let ours = match info(&conninfo).connect(TIMEOUT).await {
                Ok((client, task)) => {
                    let tls = server_ssl(&client).await;
                    assert_eq!(task.uses_tls(), tls, "{conninfo}");
                    Ok(tls)
                }
                Err(e) => Err(e.to_string()),
            };
            println!(
                "| {cert} | {host} | {mode} | {root} | {extra} | {} | {} |",
                outcome(&libpq),
                outcome(&ours)
            );
            if let Err(problem) = judge(want, &libpq, &ours) {
                wrong.push(format!(
                    "{cert}.crt served, host={host} sslmode={mode} sslrootcert={root} {extra}: \
                     {problem}"
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} cases wrong:\n{}",
            wrong.len(),
            CERTIFICATE_CASES.len(),
            wrong.join("\n")
        );
    }
}

/// What a connection gives, by us and by psql.
#[derive(Debug)]
enum Want {
    /// Connected, with TLS or not.
    Tls(bool),
    /// Refused, with these words.
    Refused(&'static [&'static str]),
    /// Refused, with these words, where psql connects with TLS: what we cannot check as
    /// libpq does.
    RefusedUnlikeLibpq(&'static [&'static str]),
}

/// One case of [`CERTIFICATE_CASES`]: a name `n` is the file `n.crt` of
/// [`openssl_certificates`] (served with its key `n.key`), `system` the system's CA bundle.
type CertificateCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Want,
);

/// (served certificate, host, sslmode, sslrootcert, another keyword=file, outcome).
const CERTIFICATE_CASES: &[CertificateCase] = {
    use Want::{Refused, RefusedUnlikeLibpq, Tls};
    &[
        // `openssl req -new -x509 … -subj "/CN=localhost"`, trusted as itself.
        ("docs", "localhost", "disable", "docs.crt", "", Tls(false)),
        ("docs", "localhost", "allow", "docs.crt", "", Tls(false)),
        ("docs", "localhost", "prefer", "docs.crt", "", Tls(true)),
        ("docs", "localhost", "require", "docs.crt", "", Tls(true)),
        ("docs", "localhost", "verify-ca", "docs.crt", "", Tls(true)),
        (
            "docs",
            "localhost",
            "verify-full",
            "docs.crt",
            "",
            Tls(true),
        ),
        (
            "docs",
            "wrong-name.example",
            "verify-ca",
            "docs.crt",
            "",
            Tls(true),
        ),
        // The host name is checked against the Common Name (no subjectAltName).
        (
            "docs",
            "wrong-name.example",
            "verify-full",
            "docs.crt",
            "",
            Refused(&[
                "does not match host name \"wrong-name.example\"",
                "it is for CN=localhost",
            ]),
        ),
        (
            "docs",
            "127.0.0.1",
            "verify-full",
            "docs.crt",
            "",
            Refused(&["does not match host name \"127.0.0.1\"", "CN=localhost"]),
        ),
        // Another self-signed certificate as root: refused, prefer goes without TLS.
        ("docs", "localhost", "prefer", "other.crt", "", Tls(false)),
        ("docs", "localhost", "disable", "other.crt", "", Tls(false)),
        (
            "docs",
            "localhost",
            "require",
            "other.crt",
            "",
            Refused(&[
                "is self-signed and is not one of the certificates",
                "other.crt",
                "unknown issuer",
            ]),
        ),
        (
            "docs",
            "localhost",
            "verify-full",
            "other.crt",
            "",
            Refused(&["is self-signed and is not one of the certificates"]),
        ),
        // ... nor one of the system's CA bundle (and no "the the").
        (
            "docs",
            "localhost",
            "verify-full",
            "system",
            "",
            Refused(&[
                "is self-signed and is not one of the certificates of the system's CA bundle",
            ]),
        ),
        // Revoked by its own CRL (`openssl ca -revoke`, `-gencrl` with its own key).
        (
            "docs",
            "localhost",
            "verify-ca",
            "docs.crt",
            "sslcrl=docs-self.crl",
            Refused(&["\"CN=localhost\"", "is revoked"]),
        ),
        // With sslcrl, libpq wants a CRL of the issuer of every certificate, its own here.
        (
            "docs",
            "localhost",
            "verify-ca",
            "docs.crt",
            "sslcrl=ca.crl",
            Refused(&["no certificate revocation list", "\"CN=localhost\""]),
        ),
        // Dated self-signed certificates, even trusted as themselves.
        (
            "expired",
            "localhost",
            "verify-ca",
            "expired.crt",
            "",
            Refused(&["\"CN=localhost\" expired on 2020-02-01T00:00:00Z"]),
        ),
        (
            "expired",
            "localhost",
            "require",
            "expired.crt",
            "",
            Refused(&["expired on 2020-02-01T00:00:00Z"]),
        ),
        (
            "expired",
            "localhost",
            "require",
            "absent.crt",
            "",
            Tls(true),
        ),
        (
            "future",
            "localhost",
            "verify-full",
            "future.crt",
            "",
            Refused(&["is not valid before 2090-01-01T00:00:00Z"]),
        ),
        // A CA and the certificate it signed (subjectAltName DNS:localhost, IP:127.0.0.1).
        ("leaf", "localhost", "verify-full", "ca.crt", "", Tls(true)),
        ("leaf", "127.0.0.1", "verify-full", "ca.crt", "", Tls(true)),
        // hostaddr without host: no name for verify-full.
        (
            "leaf",
            "",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["needs a host name"]),
        ),
        ("leaf", "", "verify-ca", "ca.crt", "", Tls(true)),
        (
            "leaf",
            "wrong-name.example",
            "verify-full",
            "ca.crt",
            "",
            Refused(&[
                "does not match host name \"wrong-name.example\"",
                "DNS:localhost, IP:127.0.0.1, CN=localhost (not used",
            ]),
        ),
        (
            "leaf",
            "localhost",
            "verify-ca",
            "docs.crt",
            "",
            Refused(&[
                "is not signed by a CA of the root certificate file",
                "unknown issuer \"CN=pgsuite openssl test CA\"",
            ]),
        ),
        // The host as written: "localhost." is not "localhost".
        (
            "leaf",
            "localhost.",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["does not match host name \"localhost.\""]),
        ),
        // Alone in the root file, a certificate that is not self-signed is no trust anchor.
        (
            "leaf",
            "localhost",
            "verify-ca",
            "leaf.crt",
            "",
            Refused(&[
                "unknown issuer \"CN=pgsuite openssl test CA\"",
                "self-signed",
            ]),
        ),
        // The CA's CRL, which revokes nothing, in a file and in a rehashed directory; not
        // found in a directory without the hash names.
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca.crl",
            Tls(true),
        ),
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrldir=crldir",
            Tls(true),
        ),
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrldir=crldir-unhashed",
            Refused(&["no certificate revocation list"]),
        ),
        // Revoked by the CA: refused, prefer goes without TLS as libpq.
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca-revoked.crl",
            Refused(&["\"CN=localhost\"", "is revoked"]),
        ),
        (
            "leaf-revoked",
            "localhost",
            "prefer",
            "ca.crt",
            "sslcrl=ca-revoked.crl",
            Tls(false),
        ),
        (
            "leaf-expired",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["\"CN=localhost\" expired on 2020-02-01T00:00:00Z"]),
        ),
        // CA:TRUE, signed by the CA: OpenSSL takes it as server certificate.
        (
            "leaf-ca",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Tls(true),
        ),
        // Key usages: only keyCertSign, or anyExtendedKeyUsage, is not for a TLS server.
        (
            "leaf-kucertsign",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["is not for TLS servers", "key usage"]),
        ),
        (
            "leaf-anyeku",
            "localhost",
            "verify-ca",
            "ca.crt",
            "",
            Refused(&["is not for TLS servers", "extended key usage"]),
        ),
        (
            "self-ku",
            "localhost",
            "verify-full",
            "self-ku.crt",
            "",
            Refused(&["is not for TLS servers", "key usage"]),
        ),
        // A critical extension OpenSSL does not know.
        (
            "leaf-unkcrit",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["critical extension 1.2.3.4"]),
        ),
        (
            "self-unkcrit",
            "localhost",
            "verify-full",
            "self-unkcrit.crt",
            "",
            Refused(&["critical extension 1.2.3.4"]),
        ),
        (
            "self-unkcrit",
            "localhost",
            "require",
            "absent.crt",
            "",
            Tls(true),
        ),
        (
            "self-unkcrit",
            "localhost",
            "prefer",
            "absent.crt",
            "",
            Tls(true),
        ),
        // Version 1, as `openssl x509 -req` makes it (PostgreSQL's documentation).
        (
            "leaf-v1",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Tls(true),
        ),
        ("leaf-v1", "localhost", "verify-ca", "ca.crt", "", Tls(true)),
        ("leaf-v1", "localhost", "require", "ca.crt", "", Tls(true)),
        ("leaf-v1", "localhost", "prefer", "ca.crt", "", Tls(true)),
        (
            "leaf-v1",
            "localhost",
            "require",
            "absent.crt",
            "",
            Tls(true),
        ),
        (
            "leaf-v1",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca.crl",
            Tls(true),
        ),
        (
            "leaf-v1",
            "wrong-name.example",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["does not match host name \"wrong-name.example\""]),
        ),
        (
            "leaf-v1",
            "localhost",
            "verify-ca",
            "other.crt",
            "",
            Refused(&["unknown issuer \"CN=pgsuite openssl test CA\""]),
        ),
        (
            "leaf-v1",
            "localhost",
            "verify-ca",
            "leaf-v1.crt",
            "",
            Refused(&["unknown issuer \"CN=pgsuite openssl test CA\""]),
        ),
        (
            "by-v1root",
            "localhost",
            "verify-full",
            "v1root.crt",
            "",
            Tls(true),
        ),
        // A self-signed CA:FALSE root: a trust anchor for itself only.
        (
            "rootcafalse",
            "a.example",
            "verify-full",
            "rootcafalse.crt",
            "",
            Tls(true),
        ),
        (
            "by-rootcafalse",
            "localhost",
            "verify-full",
            "rootcafalse.crt",
            "",
            Refused(&["\"CN=pgsuite CA:FALSE root\"", "not a CA certificate"]),
        ),
        (
            "by-leaf",
            "localhost",
            "verify-ca",
            "leaf.crt",
            "",
            Refused(&["\"CN=localhost\"", "self-signed"]),
        ),
        // An expired CA.
        (
            "by-caexp",
            "localhost",
            "verify-full",
            "caexp.crt",
            "",
            Refused(&[
                "\"CN=pgsuite expired CA\"",
                "expired on 2020-02-01T00:00:00Z",
            ]),
        ),
        (
            "by-caexp",
            "localhost",
            "require",
            "caexp.crt",
            "",
            Refused(&["expired on 2020-02-01T00:00:00Z"]),
        ),
        // Intermediates sent by the server: a CA, and a certificate that is not one.
        (
            "by-inter",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Tls(true),
        ),
        (
            "by-inter",
            "localhost",
            "verify-full",
            "inter.crt",
            "",
            Refused(&["\"CN=pgsuite intermediate\"", "self-signed"]),
        ),
        (
            "by-notca",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["\"CN=pgsuite not a CA\"", "not a CA certificate"]),
        ),
        // Wildcards and trailing dots, compared as written.
        (
            "wild",
            "a.example.com",
            "verify-full",
            "ca.crt",
            "",
            Tls(true),
        ),
        (
            "wild",
            "a.example.com.",
            "verify-full",
            "ca.crt",
            "",
            Refused(&["does not match host name \"a.example.com.\""]),
        ),
        (
            "dotted",
            "localhost.",
            "verify-full",
            "ca.crt",
            "",
            Tls(true),
        ),
        // Name constraints, which we do not check: refused, and prefer does not then go
        // without TLS.
        (
            "by-ncca",
            "localhost",
            "verify-full",
            "ncca.crt",
            "",
            RefusedUnlikeLibpq(&["\"CN=pgsuite constrained CA\"", "has name constraints"]),
        ),
        (
            "by-ncca",
            "localhost",
            "prefer",
            "ncca.crt",
            "",
            RefusedUnlikeLibpq(&["has name constraints", "not retried without TLS"]),
        ),
        // A delta CRL (deltaCRLIndicator) is read as a complete CRL by libpq (OpenSSL without
        // X509_V_FLAG_USE_DELTAS): the newest of the CA's CRLs decides.
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrldir=crldir-delta",
            Refused(&[
                "\"CN=localhost\" is revoked",
                "delta certificate revocation list",
            ]),
        ),
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=base-and-delta.crl",
            Refused(&["is revoked", "delta certificate revocation list"]),
        ),
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrldir=crldir-delta",
            Tls(true),
        ),
        // CRLs of the renewed CA (same name and key, another serial number) name it in their
        // authority key identifier: libpq leaves them out for the CA of the root file.
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=renewed-clean.crl",
            Refused(&[
                "no certificate revocation list",
                "authority key identifier names another certificate",
            ]),
        ),
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=akid-mix-revoking.crl",
            Refused(&["is revoked", "issued 2024-01-01T00:00:00Z"]),
        ),
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=akid-mix-clean.crl",
            Tls(true),
        ),
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca-renewed.crt",
            "sslcrl=renewed-revoking.crl",
            Refused(&["is revoked"]),
        ),
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca-renewed.crt",
            "sslcrl=renewed-revoking.crl",
            Tls(true),
        ),
        // An entry with reason removeFromCRL does not revoke.
        (
            "leaf-removed",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca-removed.crl",
            Tls(true),
        ),
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca-removed.crl",
            Refused(&["is revoked"]),
        ),
        // A serial number of 25 bytes.
        (
            "leaf-serial25",
            "localhost",
            "verify-full",
            "ca.crt",
            "",
            Tls(true),
        ),
        (
            "leaf-serial25",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca-serial25.crl",
            Refused(&["is revoked"]),
        ),
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca-serial25.crl",
            Tls(true),
        ),
        // A version 1 CRL (no version field, no extensions).
        (
            "leaf-revoked",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca-v1.crl",
            Refused(&["is revoked"]),
        ),
        (
            "leaf",
            "localhost",
            "verify-full",
            "ca.crt",
            "sslcrl=ca-v1.crl",
            Tls(true),
        ),
    ]
};

/// Whether our outcome is the wanted one, and psql's too.
fn judge(
    want: &Want,
    libpq: &Result<bool, String>,
    ours: &Result<bool, String>,
) -> Result<(), String> {
    match (want, ours) {
        (Want::Tls(tls), Ok(ours)) if tls == ours => {}
        (Want::Refused(words) | Want::RefusedUnlikeLibpq(words), Err(e)) => {
            if let Some(word) = words.iter().find(|w| !e.contains(**w)) {
                return Err(format!("our refusal lacks {word:?}: {e}"));
            }
            if !e.contains("server certificate not trusted: ") || e.contains("Other(") {
                return Err(format!("our refusal is not in words: {e}"));
            }
        }
        (want, ours) => return Err(format!("we: {}, expected {want:?}", outcome(ours))),
    }
    match (want, libpq) {
        (Want::Tls(tls), Ok(libpq)) if tls == libpq => Ok(()),
        (Want::Refused(_), Err(_)) | (Want::RefusedUnlikeLibpq(_), Ok(true)) => Ok(()),
        (want, libpq) => Err(format!("psql: {}, expected {want:?}", outcome(libpq))),
    }
}

/// "TLS", "plain" or "refused: …" (the reason's last part), for the table.
fn outcome(result: &Result<bool, String>) -> String {
    match result {
        Ok(true) => "TLS".to_owned(),
        Ok(false) => "plain".to_owned(),
        Err(e) => {
            let e = e.trim();
            let reason = e
                .rsplit_once("server certificate not trusted: ")
                .or_else(|| e.rsplit_once("failed: "))
                .map_or(e, |(_, r)| r);
            format!("refused: {}", reason.replace('|', "/").replace('\n', " "))
        }
    }
}

/// Certificates made by the `openssl` command line, in a directory the server can read (each
/// `name.crt` with its key `name.key`; EC P-256 keys unless said):
/// - `docs` and `other` as PostgreSQL's documentation makes them (`openssl req -new -x509
///   -days 365 -nodes -text …`: self-signed, CA:TRUE, CN=localhost, RSA);
/// - `expired` (2020-01-01 to 2020-02-01) and `future` (from 2090) alike but dated by
///   `openssl ca`; `self-ku` (keyUsage keyCertSign, cRLSign) and `self-unkcrit` (a critical
///   extension 1.2.3.4) alike; `rootcafalse` self-signed with CA:FALSE (SAN DNS:a.example);
/// - `ca` (as `docs`, CN=pgsuite openssl test CA) and, signed by it with `openssl ca`, `leaf`
///   (CA:FALSE, SAN DNS:localhost, IP:127.0.0.1, serverAuth), `leaf-expired`, `leaf-revoked`,
///   `leaf-ca` (CA:TRUE), `leaf-kucertsign` (keyUsage keyCertSign only), `leaf-anyeku`
///   (extendedKeyUsage anyExtendedKeyUsage), `leaf-unkcrit`, `wild` (SAN `*.example.com`),
///   `dotted` (SAN `localhost.`); with `openssl x509 -req` as the documentation does,
///   `leaf-v1` (version 1, RSA);
/// - the CA's CRLs: `ca.crl` (nothing revoked; also in `crldir/`, rehashed, and
///   `crldir-unhashed/`), `ca-revoked.crl` (`leaf-revoked`); `docs-self.crl` by `docs`
///   revoking itself; `ca-2024.crl` and `ca-2024-revoked.crl` alike but issued 2024-01-01;
///   `ca-delta.crl`, a delta CRL (deltaCRLIndicator) revoking `leaf-revoked`, with
///   `ca-2024.crl` in `base-and-delta.crl` and in `crldir-delta/` (rehashed);
///   `ca-removed.crl` listing `leaf-revoked` and `leaf-removed` (reason removeFromCRL);
/// - `ca-renewed.crt`, the CA renewed (same name and key, serial number 4242), and its CRLs
///   naming it in their authority key identifier (key identifier, issuer and serial):
///   `renewed-clean.crl`, `renewed-revoking.crl` (`leaf-revoked`); `akid-mix-revoking.crl`
///   (`ca-2024-revoked.crl` and `renewed-clean.crl`), `akid-mix-clean.crl` (`ca-2024.crl`
///   and `renewed-revoking.crl`);
/// - `by-inter` signed by `inter` (CA:TRUE, signed by `ca`) and `by-notca` signed by `notca`
///   (CA:FALSE, signed by `ca`), each file with the intermediate after the leaf;
/// - `by-rootcafalse`, `by-leaf` (signed with `leaf.key`), `by-caexp` signed by `caexp` (a CA
///   valid in January 2020 only), `by-v1root` (version 1) signed by `v1root` (version 1,
///   self-signed by `openssl x509 -req -signkey`).
fn openssl_certificates() -> tempfile::TempDir {
    let dir = test_harness::privileges::service_tempdir("openssl-certs").unwrap();
    let path = |name: &str| dir.path().join(name);
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (name, subject) in [
        ("docs", "/CN=localhost"),
        ("other", "/CN=localhost"),
        ("ca", "/CN=pgsuite openssl test CA"),
    ] {
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "365",
            "-nodes",
            "-text",
            "-out",
            &format!("{name}.crt"),
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            subject,
        ]);
    }
    let config = "[ ca ]\ndefault_ca = local\n[ local ]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = serial\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 3650\n\
         policy = any\nunique_subject = no\n[ any ]\ncommonName = supplied\n\
         [ self ]\nbasicConstraints = critical, CA:TRUE\nsubjectKeyIdentifier = hash\n\
         [ self_ku ]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = keyCertSign, cRLSign\n\
         [ self_unkcrit ]\nbasicConstraints = critical, CA:TRUE\n1.2.3.4 = critical, ASN1:NULL\n\
         [ ca_false ]\nbasicConstraints = critical, CA:FALSE\nsubjectAltName = DNS:a.example\n\
         [ inter ]\nbasicConstraints = critical, CA:TRUE\n\
         [ not_ca ]\nbasicConstraints = critical, CA:FALSE\n\
         [ leaf ]\nbasicConstraints = CA:FALSE\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n\
         extendedKeyUsage = serverAuth\n\
         [ leaf_ca ]\nbasicConstraints = critical, CA:TRUE\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         [ ku_cert_sign ]\nsubjectAltName = DNS:localhost\nkeyUsage = critical, keyCertSign\n\
         [ any_eku ]\nsubjectAltName = DNS:localhost\nextendedKeyUsage = anyExtendedKeyUsage\n\
         [ unkcrit ]\nsubjectAltName = DNS:localhost\n1.2.3.4 = critical, ASN1:NULL\n\
         [ wild ]\nsubjectAltName = DNS:*.example.com\n\
         [ dotted ]\nsubjectAltName = DNS:localhost.\n\
         [ nc_ca ]\nbasicConstraints = critical, CA:TRUE\n\
         nameConstraints = critical, permitted;DNS:localhost\n\
         [ delta ]\ndeltaCRL = critical, DER:02:01:01\n\
         [ akid_full ]\nauthorityKeyIdentifier = keyid:always, issuer:always\n";
    fs::write(path("ca.cnf"), config).unwrap();
    // `docs` keeps its own database to revoke itself.
    fs::write(
        path("docs.cnf"),
        config
            .replace("database = index.txt", "database = docs-index.txt")
            .replace("crlnumber = crlnumber", "crlnumber = docs-crlnumber"),
    )
    .unwrap();
    for (file, text) in [
        ("index.txt", ""),
        ("docs-index.txt", ""),
        ("serial", "1000\n"),
        ("crlnumber", "1000\n"),
        ("docs-crlnumber", "1000\n"),
    ] {
        fs::write(path(file), text).unwrap();
    }
    let request = |name: &str, subject: &str| {
        openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
    };
    let sign = |name: &str, subject: &str, signer: &str, extensions: &str, dates: (&str, &str)| {
        request(name, subject);
        let (key, csr, out) = (
            format!("{signer}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let cert = format!("{signer}.crt");
        let mut args = vec![
            "ca", "-batch", "-notext", "-config", "ca.cnf", "-keyfile", &key,
        ];
        if signer == name {
            args.push("-selfsign");
        } else {
            args.extend_from_slice(&["-cert", &cert]);
        }
        args.extend_from_slice(&[
            "-in",
            &csr,
            "-extensions",
            extensions,
            "-startdate",
            dates.0,
            "-enddate",
            dates.1,
            "-out",
            &out,
        ]);
        openssl(&args);
    };
    let now = ("20240101000000Z", "20990101000000Z");
    let past = ("20200101000000Z", "20200201000000Z");
    let localhost = "/CN=localhost";
    // CRLs: `gencrl(cert, out, more)` with the CA's key and database.
    let gencrl = |cert: &str, out: &str, more: &[&str]| {
        let mut args = vec![
            "ca", "-config", "ca.cnf", "-cert", cert, "-keyfile", "ca.key", "-gencrl", "-out", out,
        ];
        args.extend_from_slice(more);
        openssl(&args);
    };
    let old = ["-crl_lastupdate", "20240101000000Z"];
    // The CA renewed: same name and key, another serial number.
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-key",
        "ca.key",
        "-subj",
        "/CN=pgsuite openssl test CA",
        "-set_serial",
        "4242",
        "-days",
        "365",
        "-out",
        "ca-renewed.crt",
    ]);
    gencrl("ca.crt", "ca.crl", &[]);
    gencrl("ca.crt", "ca-2024.crl", &old);
    gencrl(
        "ca-renewed.crt",
        "renewed-clean.crl",
        &["-crlexts", "akid_full"],
    );
    sign("expired", localhost, "expired", "self", past);
    sign(
        "future",
        localhost,
        "future",
        "self",
        ("20900101000000Z", "20910101000000Z"),
    );
    sign("self-ku", localhost, "self-ku", "self_ku", now);
    sign(
        "self-unkcrit",
        localhost,
        "self-unkcrit",
        "self_unkcrit",
        now,
    );
    sign(
        "rootcafalse",
        "/CN=pgsuite CA:FALSE root",
        "rootcafalse",
        "ca_false",
        now,
    );
    sign("leaf", localhost, "ca", "leaf", now);
    sign("leaf-expired", localhost, "ca", "leaf", past);
    sign("leaf-revoked", localhost, "ca", "leaf", now);
    sign("leaf-ca", localhost, "ca", "leaf_ca", now);
    sign("leaf-kucertsign", localhost, "ca", "ku_cert_sign", now);
    sign("leaf-anyeku", localhost, "ca", "any_eku", now);
    sign("leaf-unkcrit", localhost, "ca", "unkcrit", now);
    sign("wild", localhost, "ca", "wild", now);
    sign("dotted", localhost, "ca", "dotted", now);
    sign("inter", "/CN=pgsuite intermediate", "ca", "inter", now);
    sign("by-inter", localhost, "inter", "leaf", now);
    sign("notca", "/CN=pgsuite not a CA", "ca", "not_ca", now);
    sign("by-notca", localhost, "notca", "leaf", now);
    sign("by-rootcafalse", localhost, "rootcafalse", "leaf", now);
    sign("by-leaf", localhost, "leaf", "leaf", now);
    sign("ncca", "/CN=pgsuite constrained CA", "ncca", "nc_ca", now);
    sign("by-ncca", localhost, "ncca", "leaf", now);
    sign("leaf-removed", localhost, "ca", "leaf", now);
    sign("caexp", "/CN=pgsuite expired CA", "caexp", "self", past);
    sign("by-caexp", localhost, "caexp", "leaf", now);
    for chain in ["by-inter", "by-notca"] {
        let signer = if chain == "by-inter" {
            "inter"
        } else {
            "notca"
        };
        let mut pem = fs::read_to_string(path(&format!("{chain}.crt"))).unwrap();
        pem.push_str(&fs::read_to_string(path(&format!("{signer}.crt"))).unwrap());
        fs::write(path(&format!("{chain}.crt")), pem).unwrap();
    }
    // Revocations: the CA revokes leaf-revoked, docs itself.
    let revoke = |cert: &str, more: &[&str]| {
        let mut args = vec![
            "ca", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key", "-revoke", cert,
        ];
        args.extend_from_slice(more);
        openssl(&args);
    };
    revoke("leaf-revoked.crt", &[]);
    gencrl("ca.crt", "ca-revoked.crl", &[]);
    gencrl("ca.crt", "ca-2024-revoked.crl", &old);
    // Version 1 (no version field): without a CRL number.
    fs::write(
        path("v1.cnf"),
        config.replace("crlnumber = crlnumber\n", ""),
    )
    .unwrap();
    openssl(&[
        "ca",
        "-config",
        "v1.cnf",
        "-cert",
        "ca.crt",
        "-keyfile",
        "ca.key",
        "-gencrl",
        "-out",
        "ca-v1.crl",
    ]);
    gencrl("ca.crt", "ca-delta.crl", &["-crlexts", "delta"]);
    gencrl(
        "ca-renewed.crt",
        "renewed-revoking.crl",
        &["-crlexts", "akid_full"],
    );
    // Listed with reason removeFromCRL.
    revoke("leaf-removed.crt", &["-crl_reason", "removeFromCRL"]);
    gencrl("ca.crt", "ca-removed.crl", &[]);
    let concat = |out: &str, parts: &[&str]| {
        let text: String = parts
            .iter()
            .map(|p| fs::read_to_string(path(p)).unwrap())
            .collect();
        fs::write(path(out), text).unwrap();
    };
    concat("base-and-delta.crl", &["ca-2024.crl", "ca-delta.crl"]);
    concat(
        "akid-mix-revoking.crl",
        &["ca-2024-revoked.crl", "renewed-clean.crl"],
    );
    concat(
        "akid-mix-clean.crl",
        &["ca-2024.crl", "renewed-revoking.crl"],
    );
    openssl(&[
        "ca", "-config", "docs.cnf", "-cert", "docs.crt", "-keyfile", "docs.key", "-revoke",
        "docs.crt",
    ]);
    openssl(&[
        "ca",
        "-config",
        "docs.cnf",
        "-cert",
        "docs.crt",
        "-keyfile",
        "docs.key",
        "-gencrl",
        "-out",
        "docs-self.crl",
    ]);
    for crl_dir in ["crldir", "crldir-unhashed"] {
        fs::create_dir(path(crl_dir)).unwrap();
        fs::copy(path("ca.crl"), path(crl_dir).join("ca.crl")).unwrap();
    }
    openssl(&["rehash", "crldir"]);
    fs::create_dir(path("crldir-delta")).unwrap();
    for crl in ["ca-2024.crl", "ca-delta.crl"] {
        fs::copy(path(crl), path("crldir-delta").join(crl)).unwrap();
    }
    openssl(&["rehash", "crldir-delta"]);
    // A serial number of 25 bytes (RFC 5280 allows 20; OpenSSL takes any).
    request("leaf-serial25", localhost);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf-serial25.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "0x7f111111111111111111111111111111111111111111111111",
        "-days",
        "365",
        "-out",
        "leaf-serial25.crt",
    ]);
    revoke("leaf-serial25.crt", &[]);
    gencrl("ca.crt", "ca-serial25.crl", &[]);
    // Version 1, by `openssl x509 -req` (RSA, as the documentation's commands).
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-subj",
        localhost,
        "-keyout",
        "leaf-v1.key",
        "-out",
        "leaf-v1.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf-v1.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-out",
        "leaf-v1.crt",
    ]);
    request("v1root", "/CN=pgsuite v1 root");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "v1root.csr",
        "-signkey",
        "v1root.key",
        "-days",
        "365",
        "-out",
        "v1root.crt",
    ]);
    request("by-v1root", localhost);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "by-v1root.csr",
        "-CA",
        "v1root.crt",
        "-CAkey",
        "v1root.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-out",
        "by-v1root.crt",
    ]);
    for entry in fs::read_dir(dir.path()).unwrap() {
        test_harness::privileges::chown_to_service_user(&entry.unwrap().path()).unwrap();
    }
    dir
}

/// Makes `pg` serve `<name>.crt` and `<name>.key` of `dir`, once a new session sees them.
fn serve_certificate(pg: &Postgres, dir: &Path, name: &str) {
    let cert = dir.join(format!("{name}.crt")).display().to_string();
    let key = dir.join(format!("{name}.key")).display().to_string();
    pg.execute(
        "postgres",
        &format!(
            "ALTER SYSTEM SET ssl_cert_file = '{cert}';\n\
             ALTER SYSTEM SET ssl_key_file = '{key}';\n\
             SELECT pg_reload_conf();\n"
        ),
    )
    .unwrap();
    let until = std::time::Instant::now() + TIMEOUT;
    while pg.query("postgres", "SHOW ssl_cert_file").unwrap() != cert {
        assert!(std::time::Instant::now() < until, "{cert} not served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether psql (libpq) connects with `conninfo`, and with TLS.
fn psql_connects(pg: &Postgres, conninfo: &str) -> Result<bool, String> {
    let out = std::process::Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-c"])
        .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .arg(conninfo)
        .env("HOME", "/nonexistent-home")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "t")
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
