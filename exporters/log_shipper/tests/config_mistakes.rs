//! Mistakes a new user makes, caught before they cost data: every directory the config
//! names is checked by `--dry-run` (which creates nothing) and created and written at start
//! (errors name the option and the path), output files that are not regular files, batch
//! limits over their caps, a write probe that follows no link, a reload that could not start leaves the running pipeline alone, and the
//! credentials of an endpoint (userinfo, tokens in its query, auth) never reach the log, the
//! metrics or the dead-letter files, whatever the destination answers.

#[path = "../../../collectors/log_pipeline/tests/receiver/mod.rs"]
mod receiver;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use receiver::Receiver;
use test_harness::Agent;
use test_harness::agent::value;
use tokio::task::block_in_place;

/// Runs `command` to its end; `None` if it still runs after 10 s (then killed).
fn run_within_10s(command: &mut Command) -> Option<Output> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `--dry-run` with `config`; fails if it hangs.
fn dry_run(config: &Path) -> Output {
    run_within_10s(
        Command::new(env!("CARGO_BIN_EXE_log_shipper"))
            .arg(format!("--config={}", config.display()))
            .arg("--dry-run"),
    )
    .unwrap_or_else(|| panic!("--dry-run with {} hung", config.display()))
}

/// Starts the shipper with `config` at debug level, killed on drop; ready once `/metrics`
/// answers.
fn start(config: &Path) -> Agent {
    Agent::builder("log_shipper", env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", config.display()))
        .arg("--log.level=debug")
        .kill_on_drop()
        .start()
}

/// Starts the shipper for real; its exit status and output, or `None` if it still runs after
/// 10 s (then killed).
fn start_and_wait(config: &Path) -> Option<(i32, String)> {
    let out = run_within_10s(
        Command::new(env!("CARGO_BIN_EXE_log_shipper"))
            .arg(format!("--config={}", config.display()))
            .arg("--web.listen-address=127.0.0.1:0"),
    )?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    Some((out.status.code().unwrap_or(-1), text))
}

#[test]
fn dry_run_and_start_refuse_directories_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A regular file: nothing can be created under it, not even by root (the tests run as
    // root, for whom permissions are no obstacle).
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("sub");
    let ok_ckpt = d.join("ckpt");
    let src = format!(
        "sources: {{app: {{include: ['{}/*.log'], format: plain}}}}\n",
        d.display()
    );
    let vl = "type: victorialogs, endpoint: 'http://127.0.0.1:9'";
    let cases = [
        (
            format!(
                "checkpoint_dir: {}\n{src}sinks: {{v: {{{vl}}}}}\n",
                file.display()
            ),
            format!("checkpoint_dir: {} is not a directory", file.display()),
        ),
        (
            format!(
                "checkpoint_dir: {}\n{src}sinks: {{v: {{{vl}}}}}\n",
                under.display()
            ),
            format!("checkpoint_dir: cannot create {}", under.display()),
        ),
        (
            format!("checkpoint_dir: /proc/log_shipper-ckpt\n{src}sinks: {{v: {{{vl}}}}}\n"),
            "checkpoint_dir: cannot create /proc/log_shipper-ckpt".to_owned(),
        ),
        (
            format!(
                "checkpoint_dir: {}\ndead_letter_dir: {}\n{src}sinks: {{v: {{{vl}}}}}\n",
                ok_ckpt.display(),
                under.display()
            ),
            format!("dead_letter_dir: cannot create {}", under.display()),
        ),
        (
            format!(
                "checkpoint_dir: {}\n{src}sinks: {{v: {{{vl}, dead_letter_path: '{}/v.jsonl'}}}}\n",
                ok_ckpt.display(),
                under.display()
            ),
            format!(
                "sinks.v.dead_letter_path: cannot create {}",
                under.display()
            ),
        ),
        (
            format!(
                "checkpoint_dir: {}\n{src}sinks: {{v: {{{vl}, buffer: {{type: disk, max_size: 1MiB, path: '{}'}}}}}}\n",
                ok_ckpt.display(),
                under.display()
            ),
            format!("sinks.v.buffer.path: cannot create {}", under.display()),
        ),
        (
            format!(
                "checkpoint_dir: {}\n{src}sinks: {{f: {{type: file, path: '{}/out.jsonl'}}}}\n",
                ok_ckpt.display(),
                under.display()
            ),
            format!("sinks.f.path: cannot create {}", under.display()),
        ),
        (
            format!(
                "checkpoint_dir: {}\n{src}sinks: {{f: {{type: file, path: '{}'}}}}\n",
                ok_ckpt.display(),
                d.display()
            ),
            format!("sinks.f.path: {} is a directory", d.display()),
        ),
    ];
    let cfg = d.join("c.yml");
    for (yaml, message) in &cases {
        std::fs::write(&cfg, yaml).unwrap();
        let out = dry_run(&cfg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{yaml}\n{stderr}");
        assert!(
            stderr.contains(message.as_str()),
            "{yaml}\nwant {message}\n{stderr}"
        );
    }
    // A real start refuses them the same way, rather than failing on the first dead letter.
    for (yaml, message) in &cases[3..5] {
        std::fs::write(&cfg, yaml).unwrap();
        let (code, out) = start_and_wait(&cfg).unwrap_or_else(|| panic!("started with {yaml}"));
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(message.as_str()), "want {message}\n{out}");
    }

    // All good. --dry-run creates nothing (p32: as root, it left root-owned directories the
    // service could not write) and says what a start would create; a start creates them, and
    // no probe file is left behind.
    let ok_ckpt = d.join("ckpt2");
    let buffer = d.join("buffer");
    std::fs::write(
        &cfg,
        format!(
            "checkpoint_dir: {}\ndead_letter_dir: {}/dl\n{src}sinks: {{v: {{{vl}, buffer: {{type: disk, max_size: 1MiB, path: '{}'}}}}, f: {{type: file, path: '{}/out/o.jsonl'}}}}\n",
            ok_ckpt.display(),
            d.display(),
            buffer.display(),
            d.display()
        ),
    )
    .unwrap();
    let made = [ok_ckpt, d.join("dl"), buffer, d.join("out")];
    let out = dry_run(&cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in &made {
        assert!(!dir.exists(), "--dry-run created {}", dir.display());
        assert!(
            stdout.contains(&format!("a start creates {}", dir.display())),
            "{stdout}"
        );
    }
    let shipper = start(&cfg);
    for dir in &made {
        assert!(dir.is_dir(), "{}", dir.display());
        let probes = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("probe"))
            .count();
        assert_eq!(probes, 0, "{}", dir.display());
    }
    shipper.stop(Duration::from_secs(10));
}

/// A reload into a config that cannot start (p14: a directory under a regular file, a FIFO as
/// the output file, which hung the reload and then SIGTERM) is refused at once, and the running
/// pipeline goes on.
#[test]
fn a_reload_that_cannot_start_leaves_the_running_pipeline_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("app.log");
    std::fs::write(&log, "line 1\n").unwrap();
    let out = d.join("out.jsonl");
    let fifo = d.join("fifo.jsonl");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let cfg = d.join("c.yml");
    let yaml = |dead_letters: &Path, path: &Path| {
        format!(
            "checkpoint_dir: {}\ndead_letter_dir: {}\nsources: {{app: {{include: ['{}'], format: plain, rescan_interval: 100ms}}}}\nsinks: {{f: {{type: file, path: '{}', batch: {{timeout: 100ms}}}}}}\n",
            d.join("ckpt").display(),
            dead_letters.display(),
            log.display(),
            path.display()
        )
    };
    std::fs::write(&cfg, yaml(&d.join("dl"), &out)).unwrap();
    let shipper = start(&cfg);
    let lines = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
    };
    shipper.wait_for("the first line", || lines() == 1);
    std::fs::write(d.join("a-file"), "x").unwrap();
    let refused = [
        (
            yaml(&d.join("a-file/dl"), &out),
            "dead_letter_dir: cannot create".to_owned(),
        ),
        (
            yaml(&d.join("dl"), &fifo),
            format!("sinks.f.path: {} is a FIFO", fifo.display()),
        ),
    ];
    for (n, (bad, message)) in (1..).zip(&refused) {
        std::fs::write(&cfg, bad).unwrap();
        shipper.signal("HUP");
        shipper.wait_for("the reload refused", || {
            value(
                &shipper.metrics(),
                "log_shipper_config_reload_failures_total",
                &[],
            ) == Some(f64::from(n))
        });
        let logs = shipper.logs();
        assert!(
            logs.contains("Reload rejected") && logs.contains(message.as_str()),
            "{logs}"
        );
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            format!("line {}\n", n + 1).as_bytes(),
        )
        .unwrap();
        shipper.wait_for("the next line", || lines() == n as usize + 1);
    }
    // The running pipeline was never stopped for them.
    assert!(
        !shipper.logs().contains("Pipeline stopped"),
        "{}",
        shipper.logs()
    );
    shipper.stop(Duration::from_secs(10));
}

const SECRETS: [&str; 4] = ["PW-S3CRET", "TK-S3CRET", "KEY-S3CRET", "BEARER-S3CRET"];

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{s} in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_endpoints_never_reach_the_log_the_metrics_or_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("app.log");
    std::fs::write(&log, "seq=0 first\n").unwrap();
    let mut rx = Receiver::start().await;
    rx.set_status(Some(500));
    let with_userinfo = rx.url().replacen("http://", "http://shipper:PW-S3CRET@", 1);
    let url = rx.url();
    let cfg = d.join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "checkpoint_dir: {ckpt}\nsources: {{app: {{include: ['{log}'], format: plain, rescan_interval: 100ms}}}}\nsinks:\n  vl:\n    type: victorialogs\n    endpoint: '{with_userinfo}/?tenant=x&token=TK-S3CRET&api_key=KEY-S3CRET'\n    batch: {{timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 200ms}}\n  loki:\n    type: loki\n    endpoint: '{url}/?Token=TK-S3CRET'\n    auth: {{bearer_token: BEARER-S3CRET}}\n    batch: {{timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 200ms}}\n",
            ckpt = d.join("ckpt").display(),
            log = log.display(),
        ),
    )
    .unwrap();

    let out = dry_run(&cfg);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}");
    assert_no_secret("the --dry-run output", &shown);
    assert!(
        shown.contains("sink vl: http://shipper:xxxxx@127.0.0.1:")
            && shown.contains("/?tenant=x&token=xxxxx&api_key=xxxxx"),
        "{shown}"
    );

    let shipper = block_in_place(|| start(&cfg));
    let retried = |sink: &str| {
        block_in_place(|| {
            value(
                &shipper.metrics(),
                "log_shipper_sink_requests_retried_total",
                &[("sink", sink)],
            )
            .unwrap_or(0.0)
        })
    };
    let wait_retries = |n: f64| {
        block_in_place(|| {
            shipper.wait_for("retries of both sinks", || {
                retried("vl") >= n && retried("loki") >= n
            });
        });
    };
    // 500s whose body echoes the request, then connection errors, then a 400 (dead letters).
    wait_retries(3.0);
    rx.stop().await;
    wait_retries(6.0);
    rx.set_status(Some(400));
    rx.restart().await;
    block_in_place(|| {
        shipper.wait_for("both batches rejected", || {
            let m = shipper.metrics();
            ["vl", "loki"].iter().all(|s| {
                value(&m, "log_shipper_sink_events_failed_total", &[("sink", s)]) == Some(1.0)
            })
        });
    });
    // The credentials were sent: the store saw them.
    let requests = rx.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.query == "tenant=x&token=TK-S3CRET&api_key=KEY-S3CRET"
                && r.headers.contains_key("authorization")),
        "{requests:?}"
    );
    let metrics = block_in_place(|| shipper.metrics());
    let logs = shipper.logs();
    assert!(
        logs.contains("HTTP 500") && logs.contains("HTTP 400"),
        "{logs}"
    );
    assert!(logs.contains("request to http://shipper:xxxxx@"), "{logs}");
    assert_no_secret("the log", &logs);
    assert_no_secret("/metrics", &metrics);
    for sink in ["vl", "loki"] {
        let dead =
            std::fs::read_to_string(d.join(format!("ckpt/dead_letter/{sink}.jsonl"))).unwrap();
        assert!(dead.contains("seq=0 first"), "{dead}");
        assert_no_secret("the dead letters", &dead);
    }
    block_in_place(|| shipper.stop(Duration::from_secs(10)));
}

/// A destination behind a proxy (p17, p18): what it answers to the shipper's POSTs (a status
/// and a `Location`; an error's body echoes the request line and headers, as proxies do), and
/// every POST it got (status answered, body).
#[derive(Debug, Default)]
struct Front {
    answer: std::sync::Mutex<(u16, String)>,
    posts: std::sync::Mutex<Vec<(u16, String)>>,
}

/// Serves `front` on 127.0.0.1; its URL.
async fn serve_front(front: std::sync::Arc<Front>) -> String {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse as _;
    let app = axum::Router::new()
        .route("/login", axum::routing::get(|| async { "a login page" }))
        .fallback(
            |axum::extract::State(s): axum::extract::State<std::sync::Arc<Front>>,
             request: axum::extract::Request| async move {
                let (status, location) = s.answer.lock().unwrap().clone();
                let mut echo = format!("{} {}\n", request.method(), request.uri());
                for (k, v) in request.headers() {
                    echo.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                }
                let body = axum::body::to_bytes(request.into_body(), usize::MAX)
                    .await
                    .unwrap();
                s.posts
                    .lock()
                    .unwrap()
                    .push((status, String::from_utf8_lossy(&body).into_owned()));
                let code = StatusCode::from_u16(status).unwrap();
                if !location.is_empty() {
                    (code, [(header::LOCATION, location)]).into_response()
                } else if status >= 400 {
                    (code, echo).into_response()
                } else {
                    code.into_response()
                }
            },
        )
        .with_state(front);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// p18: a redirect is a failed send, kept and retried, never followed: a 302 to a login page
/// does not count the records as sent (they reach the destination once it answers 200), and a
/// 307 to another host takes neither the body nor the credentials there (X-Api-Key, the
/// bearer token, the token in the query by way of Referer). The log names the masked Location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_failed_sends_that_keep_the_data_and_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("app.log");
    std::fs::write(&log, "seq=0 first\n").unwrap();
    let other = Receiver::start().await;
    let front = std::sync::Arc::new(Front::default());
    *front.answer.lock().unwrap() = (302, "/login?signature=KEY-S3CRET&next=a".to_owned());
    let url = serve_front(front.clone()).await;
    let cfg = d.join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "checkpoint_dir: {ckpt}\nsources: {{app: {{include: ['{log}'], format: plain, rescan_interval: 100ms}}}}\nsinks:\n  vl:\n    type: victorialogs\n    endpoint: '{url}/?token=TK-S3CRET'\n    headers: {{X-Api-Key: PW-S3CRET}}\n    auth: {{bearer_token: BEARER-S3CRET}}\n    batch: {{timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 200ms}}\n",
            ckpt = d.join("ckpt").display(),
            log = log.display(),
        ),
    )
    .unwrap();
    let shipper = block_in_place(|| start(&cfg));
    let posts = |status: u16| {
        let posts = front.posts.lock().unwrap();
        posts.iter().filter(|(s, _)| *s == status).count()
    };
    let sent = || {
        block_in_place(|| {
            value(
                &shipper.metrics(),
                "log_shipper_sink_events_sent_total",
                &[("sink", "vl")],
            )
            .unwrap_or(0.0)
        })
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        block_in_place(|| shipper.wait_for(what, cond));
    };
    wait("the 302 retried", &|| posts(302) >= 3);
    assert_eq!(sent(), 0.0, "a 302 counted as delivered");

    *front.answer.lock().unwrap() = (
        307,
        format!("{}/insert/jsonline?token=TK-S3CRET", other.url()),
    );
    wait("the 307 retried", &|| posts(307) >= 3);
    assert_eq!(sent(), 0.0, "a 307 counted as delivered");
    assert!(
        other.requests().is_empty(),
        "the redirect was followed: {:?}",
        other.requests()
    );

    *front.answer.lock().unwrap() = (200, String::new());
    wait(
        "the record delivered once the destination takes it",
        &|| sent() == 1.0,
    );
    assert!(
        front
            .posts
            .lock()
            .unwrap()
            .iter()
            .all(|(_, body)| body.contains("seq=0 first"))
    );
    let logs = shipper.logs();
    assert!(
        logs.contains("HTTP 302") && logs.contains("/login?signature=xxxxx&next=a"),
        "{logs}"
    );
    assert!(
        logs.contains("HTTP 307") && logs.contains("/insert/jsonline?token=xxxxx"),
        "{logs}"
    );
    assert_no_secret("the log", &logs);
    block_in_place(|| shipper.stop(Duration::from_secs(10)));
}

/// p17: whatever a destination echoes (here the request line and headers, in 500 and 400
/// answers), no credential reaches the log, the metrics, the dead letters or `--dry-run`:
/// basic auth as its header carries it (base64, from `auth` or the endpoint's userinfo),
/// `Proxy-Authorization`, `Cookie`, and secret query parameters by any common name (`sig`,
/// `pwd`, `p`, `X-Amz-Signature`, `access_token`…).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_headers_basic_auth_and_query_parameters_are_masked() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let encoded = [
        b64("buser:BasicPwS3CR"),
        b64("puser:ProxyPwS3CR"),
        b64("uinfo:UserinfoPwS3CR"),
    ];
    let leaks = |what: &str, text: &str| {
        assert!(!text.contains("S3CR"), "a secret in {what}:\n{text}");
        for e in &encoded {
            assert!(!text.contains(e.as_str()), "{e} in {what}:\n{text}");
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("app.log");
    std::fs::write(&log, "seq=0 first\n").unwrap();
    let front = std::sync::Arc::new(Front::default());
    *front.answer.lock().unwrap() = (500, String::new());
    let url = serve_front(front.clone()).await;
    let with_userinfo = url.replacen("http://", "http://uinfo:UserinfoPwS3CR@", 1);
    let quick = "batch: {timeout: 100ms}\n    retry: {initial_backoff: 100ms, max_backoff: 200ms}";
    let cfg = d.join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "checkpoint_dir: {ckpt}\nsources: {{app: {{include: ['{log}'], format: plain, rescan_interval: 100ms}}}}\nsinks:\n  q:\n    type: victorialogs\n    endpoint: '{url}/vl/?tenant=t1&token=TokS3CR&api_key=ApiKeyS3CR&X-Amz-Signature=AmzSigS3CR&X-Amz-Credential=AKIAS3CR&sig=AzureSigS3CR&pwd=PwdS3CR&access_token=AccTokS3CR&p=InfluxPS3CR'\n    headers: {{X-Api-Key: XApiKeyS3CR, X-Scope-OrgID: orgid-not-secret, Proxy-Authorization: 'Basic {proxy}', Cookie: 'session=CookieS3CR; theme=dark', X-Auth-Token: XAuthTokS3CR}}\n    {quick}\n  b:\n    type: loki\n    endpoint: '{url}/'\n    encoding: json\n    auth: {{username: buser, password: BasicPwS3CR}}\n    {quick}\n  u:\n    type: victorialogs\n    endpoint: '{with_userinfo}/'\n    {quick}\n",
            ckpt = d.join("ckpt").display(),
            log = log.display(),
            proxy = encoded[1],
        ),
    )
    .unwrap();
    let out = dry_run(&cfg);
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{shown}");
    leaks("the --dry-run output", &shown);
    assert!(shown.contains("tenant=t1&token=xxxxx"), "{shown}");

    let shipper = block_in_place(|| start(&cfg));
    let sinks = ["q", "b", "u"];
    let every_sink = |family: &str, n: f64| {
        block_in_place(|| {
            shipper.wait_for(family, || {
                let m = shipper.metrics();
                sinks
                    .iter()
                    .all(|s| value(&m, family, &[("sink", s)]).unwrap_or(0.0) >= n)
            });
        });
    };
    every_sink("log_shipper_sink_requests_retried_total", 2.0);
    *front.answer.lock().unwrap() = (400, String::new());
    every_sink("log_shipper_sink_events_failed_total", 1.0);
    let logs = shipper.logs();
    // The echo was logged, without its credentials.
    assert!(
        logs.contains("HTTP 500: POST /vl/insert/jsonline?tenant=t1&token=xxxxx")
            && logs.contains("x-scope-orgid: orgid-not-secret"),
        "{logs}"
    );
    leaks("the log", &logs);
    leaks("/metrics", &block_in_place(|| shipper.metrics()));
    for sink in sinks {
        let dead =
            std::fs::read_to_string(d.join(format!("ckpt/dead_letter/{sink}.jsonl"))).unwrap();
        assert!(dead.contains("HTTP 400: POST /"), "{dead}");
        leaks("the dead letters", &dead);
    }
    block_in_place(|| shipper.stop(Duration::from_secs(10)));
}

/// p15/p25: a FIFO or a device as a sink's `path` or `dead_letter_path` is refused by
/// `--dry-run` and at start, at once (opening a FIFO to write blocked until a reader came:
/// --dry-run and start hung; /dev/null swallowed the records). Reloads: see
/// `a_reload_that_cannot_start_leaves_the_running_pipeline_alone`.
#[test]
fn fifos_and_devices_as_output_files_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo.jsonl");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let log = d.join("app.log");
    std::fs::write(&log, "first\n").unwrap();
    let out = d.join("out.jsonl");
    let yaml = |sink: &str| {
        format!(
            "checkpoint_dir: {}\nsources: {{app: {{include: ['{}'], format: plain, rescan_interval: 100ms}}}}\nsinks: {{f: {{type: file, {sink}, batch: {{timeout: 100ms}}}}}}\n",
            d.join("ckpt").display(),
            log.display(),
        )
    };
    let cfg = d.join("c.yml");
    let cases = [
        (
            format!("path: '{}'", fifo.display()),
            format!(
                "sinks.f.path: {} is a FIFO, not a regular file",
                fifo.display()
            ),
        ),
        (
            format!(
                "path: '{}', dead_letter_path: '{}'",
                out.display(),
                fifo.display()
            ),
            format!(
                "sinks.f.dead_letter_path: {} is a FIFO, not a regular file",
                fifo.display()
            ),
        ),
        (
            "path: /dev/null".to_owned(),
            "sinks.f.path: /dev/null is a character device, not a regular file".to_owned(),
        ),
    ];
    for (sink, message) in &cases {
        std::fs::write(&cfg, yaml(sink)).unwrap();
        let out = dry_run(&cfg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sink}\n{stderr}");
        assert!(
            stderr.contains(message.as_str()),
            "want {message}\n{stderr}"
        );
        let (code, text) = start_and_wait(&cfg).unwrap_or_else(|| panic!("start hung: {sink}"));
        assert_eq!(code, 1, "{text}");
        assert!(text.contains(message.as_str()), "want {message}\n{text}");
    }
}

/// p21: batch limits are capped (2^64-1 of each was accepted and one batch grew to 2.5 GB);
/// the error names the file, the field and its line.
#[test]
fn batch_limits_over_their_caps_are_refused_naming_the_file_the_field_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "checkpoint_dir: {}/ckpt\nsources: {{app: {{include: ['/x/*.log'], format: plain}}}}\nsinks:\n  f:\n    type: file\n    path: /tmp/out.jsonl\n    batch: {{max_bytes: 18446744073709551615, timeout: 1h}}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = dry_run(&cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!(
        "{}: sinks.f.batch.max_bytes: must be between 1 and 10000000",
        cfg.display()
    );
    assert!(
        stderr.contains(&want) && stderr.contains("at line 7 column"),
        "want {want}\n{stderr}"
    );
}

/// Unmounts a test's file system on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// p16/p30: the write probe of --dry-run, start and reload never follows a link planted in a
/// directory others can write to (it truncated the link's target, as root), and is removed
/// also when writing it fails (a full file system left it behind).
#[test]
fn the_write_probe_follows_no_link_and_is_never_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dl = d.join("dl");
    std::fs::create_dir(&dl).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, "precious data").unwrap();
    let yaml = |checkpoints: &Path| {
        format!(
            "checkpoint_dir: {}\ndead_letter_dir: {}\nsources: {{app: {{include: ['{}/*.log'], format: plain}}}}\nsinks: {{f: {{type: file, path: '{}/out.jsonl'}}}}\n",
            checkpoints.display(),
            dl.display(),
            d.display(),
            d.display()
        )
    };
    let cfg = d.join("c.yml");
    std::fs::write(&cfg, yaml(&d.join("ckpt"))).unwrap();
    // The probe was named after the pid: plant a link by that name, then become the shipper.
    let out = run_within_10s(Command::new("bash").arg("-c").arg(format!(
        "ln -s '{}' '{}/.log_shipper-probe-'$$ && exec '{}' --config='{}' --dry-run",
        victim.display(),
        dl.display(),
        env!("CARGO_BIN_EXE_log_shipper"),
        cfg.display()
    )))
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious data");
    // Only the planted link is left in the directory.
    assert_eq!(std::fs::read_dir(&dl).unwrap().count(), 1);

    // A full file system: the probe is created, writing it fails, it is removed all the same.
    let full = d.join("full");
    std::fs::create_dir(&full).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "cannot mount a tmpfs on {}",
        full.display()
    );
    let _unmount = Mounted(full.clone());
    let checkpoints = full.join("ckpt");
    std::fs::create_dir(&checkpoints).unwrap();
    let _ = std::fs::write(full.join("fill"), vec![0u8; 1 << 20]);
    std::fs::write(&cfg, yaml(&checkpoints)).unwrap();
    let out = dry_run(&cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "checkpoint_dir: cannot write in {}",
            checkpoints.display()
        )),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&checkpoints).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
