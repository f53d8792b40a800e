//! `--web.config.file` reloads fail closed, checked on the running binary (the rule is the
//! serving kit's, so every agent behaves the same): a web config with basic authentication or
//! TLS that is emptied, removed, broken or half-written keeps the running one, unauthenticated
//! requests keep getting 401, the log names the file and the reason, and
//! `web_config_reload_failures_total` counts it; a valid file is applied, also one that turns
//! authentication off on purpose (with a warning).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_harness::Agent;
use test_harness::agent::value;

/// The log line of a refused reload.
const REFUSED: &str = "Web config reload refused";
/// The log line of an applied reload.
const RELOADED: &str = "Web config reloaded";

/// Requests over HTTP and HTTPS (trusting the harness's CA), with or without basic auth.
struct Client {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Client {
    fn new() -> Client {
        let ca = test_harness::tls::test_pki().unwrap().ca_cert_pem.clone();
        Client {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// The status and body of `GET url`, or why there was no answer.
    fn get(&self, url: &str, user: Option<(&str, &str)>) -> Result<(u16, String), String> {
        let mut request = self.http.get(url);
        if let Some((user, password)) = user {
            request = request.basic_auth(user, Some(password));
        }
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            Ok((status, response.text().await.map_err(|e| e.to_string())?))
        })
    }

    fn status(&self, url: &str, user: Option<(&str, &str)>) -> u16 {
        self.get(url, user)
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .0
    }
}

fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

fn count(exp: &Agent, line: &str) -> usize {
    exp.logs().matches(line).count()
}

/// Sends SIGHUP and waits until the log shows one more `line` (an applied or refused reload).
fn reload(exp: &Agent, line: &str) {
    let before = count(exp, line);
    exp.signal("HUP");
    exp.wait_for(line, || count(exp, line) > before);
}

/// The last log line containing `needle`.
fn last_line(exp: &Agent, needle: &str) -> String {
    exp.logs()
        .lines()
        .rfind(|l| l.contains(needle))
        .unwrap_or_default()
        .to_owned()
}

fn start(web_config: &Path) -> Agent {
    let args = [
        format!("--web.config.file={}", web_config.display()),
        "--no-collector.pgbackrest".to_owned(),
        "--backrest.binary=true".to_owned(),
        "--collect.interval=3600".to_owned(),
    ];
    Agent::builder(
        "pgbackrest_exporter",
        env!("CARGO_BIN_EXE_pgbackrest_exporter"),
    )
    .args(args)
    // Answered with 401 until credentials are given.
    .ready_when_answers("/metrics")
    .timeout(Duration::from_secs(60))
    .poll_interval(Duration::from_millis(50))
    .start()
}

#[test]
fn a_broken_web_config_never_turns_authentication_or_tls_off() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let write = |text: &str| std::fs::write(&web, text).unwrap();
    let alice = Some(("alice", "one"));
    let bob = Some(("bob", "two"));
    let alice_hash = hash("one");
    write(&format!("basic_auth_users:\n  alice: {alice_hash}\n"));

    let exp = start(&web);
    let client = Client::new();
    let http = |path: &str| exp.url(path);
    let metrics_as = |user: Option<(&str, &str)>, url: &str| {
        let (status, body) = client.get(url, user).unwrap();
        assert_eq!(status, 200, "{body}");
        body
    };
    let health = |url: &str, user: Option<(&str, &str)>| {
        let body = metrics_as(user, url);
        (
            value(&body, "web_config_reload_failures_total", &[]),
            value(&body, "web_config_last_reload_successful", &[]),
        )
    };
    assert_eq!(client.status(&http("/metrics"), None), 401);
    assert_eq!(client.status(&http("/metrics"), alice), 200);

    // Every broken form of the file is refused; the running config (alice) stays. (Before the
    // fix, the emptied file turned authentication off: 200 without credentials.)
    let broken: [(&str, &dyn Fn(), &str); 5] = [
        ("emptied", &|| write(""), "the file is empty"),
        (
            "removed",
            &|| std::fs::remove_file(&web).unwrap(),
            "No such file or directory",
        ),
        (
            "invalid YAML",
            &|| write("basic_auth_users: [not, a, map\n"),
            "web.yml",
        ),
        (
            "a truncated bcrypt hash",
            &|| {
                write(&format!(
                    "basic_auth_users:\n  alice: {}\n",
                    &alice_hash[..40]
                ));
            },
            "not a whole bcrypt hash",
        ),
        (
            "cut after its first key",
            &|| write("basic_auth_users:\n"),
            "basic_auth_users: lists no user",
        ),
    ];
    for (n, (what, break_it, reason)) in broken.iter().enumerate() {
        break_it();
        reload(&exp, REFUSED);
        let line = last_line(&exp, REFUSED);
        assert!(
            line.contains(&web.display().to_string()) && line.contains(reason),
            "{what}: {line}"
        );
        assert!(
            !line.contains(&alice_hash[7..]),
            "{what}: hash logged: {line}"
        );
        for path in ["/metrics", "/", "/no/such/page"] {
            assert_eq!(client.status(&http(path), None), 401, "{what}: {path}");
        }
        assert_eq!(client.status(&http("/metrics"), Some(("alice", "x"))), 401);
        if n == 0 {
            assert_eq!(health(&http("/metrics"), alice).0, Some(1.0));
        }
        assert_eq!(
            health(&http("/metrics"), alice),
            (Some((n + 1) as f64), Some(0.0)),
            "{what}"
        );
    }

    // A valid change is applied: bob replaces alice.
    write(&format!("basic_auth_users:\n  bob: {}\n", hash("two")));
    reload(&exp, RELOADED);
    assert_eq!(client.status(&http("/metrics"), alice), 401);
    assert_eq!(client.status(&http("/metrics"), None), 401);
    assert_eq!(health(&http("/metrics"), bob), (Some(5.0), Some(1.0)));

    // TLS on, by a valid change: HTTPS with bob's credentials, plain HTTP no more.
    let pki = test_harness::tls::test_pki().unwrap();
    std::fs::write(dir.path().join("server.crt"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &pki.server_key_pem).unwrap();
    let tls_and_bob = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  bob: {}\n",
        hash("two")
    );
    write(&tls_and_bob);
    reload(&exp, RELOADED);
    let https = |path: &str| format!("https://localhost:{}{path}", exp.port());
    assert_eq!(health(&https("/metrics"), bob), (Some(5.0), Some(1.0)));
    assert_eq!(client.status(&https("/metrics"), None), 401);
    // The client's plain connection, kept alive from before, is refused and closed too.
    for _ in 0..3 {
        let plain = client.get(&http("/metrics"), bob);
        assert!(
            !matches!(plain, Ok((200, _))),
            "plain HTTP on the TLS port: {plain:?}"
        );
    }
    let plain = client.get(&http("/metrics"), bob);
    assert!(plain.is_err(), "plain HTTP on the TLS port: {plain:?}");

    // TLS, then the file emptied, then the certificate gone: TLS and authentication stay.
    write("");
    reload(&exp, REFUSED);
    assert!(last_line(&exp, REFUSED).contains("empty"));
    assert_eq!(client.status(&https("/metrics"), None), 401);
    assert!(client.get(&http("/metrics"), None).is_err());
    assert_eq!(health(&https("/metrics"), bob), (Some(6.0), Some(0.0)));

    write(&tls_and_bob);
    std::fs::remove_file(dir.path().join("server.crt")).unwrap();
    reload(&exp, REFUSED);
    let line = last_line(&exp, REFUSED);
    assert!(
        line.contains("tls_server_config.cert_file") && line.contains("server.crt"),
        "{line}"
    );
    assert_eq!(client.status(&https("/metrics"), None), 401);
    assert!(client.get(&http("/metrics"), None).is_err());
    assert_eq!(health(&https("/metrics"), bob), (Some(7.0), Some(0.0)));

    // A valid file without basic_auth_users turns authentication off on purpose: applied,
    // with a warning naming what went off.
    std::fs::write(dir.path().join("server.crt"), &pki.server_cert_pem).unwrap();
    write("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    reload(&exp, RELOADED);
    let line = last_line(&exp, RELOADED);
    assert!(
        line.contains("level=warn") && line.contains("basic authentication off"),
        "{line}"
    );
    assert_eq!(health(&https("/metrics"), None), (Some(7.0), Some(1.0)));
    assert!(client.get(&http("/metrics"), None).is_err(), "TLS stays on");
}

#[test]
fn an_empty_web_config_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    for text in ["", "# basic_auth_users:\n", "basic_auth_users:\n"] {
        std::fs::write(&web, text).unwrap();
        let log = dir.path().join("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgbackrest_exporter"))
            .args([
                format!("--web.config.file={}", web.display()),
                "--web.listen-address=127.0.0.1:0".to_owned(),
                "--no-collector.pgbackrest".to_owned(),
                "--backrest.binary=true".to_owned(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "{text:?} (None: still serving after 20 s): {stderr}"
        );
        assert!(stderr.contains("web.yml"), "{text:?}: {stderr}");
    }
}
