//! The serving kit over real sockets: plain HTTP, TLS with a generated certificate, client
//! certificates, basic auth, reload of the web config and graceful shutdown, driven by a real
//! HTTPS client.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agent_kit::cli::WebArgs;
use agent_kit::exposition::{MetricType, TextEncoder, metrics_response};
use agent_kit::server::{HttpServer, Lifecycle};
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use clap::Parser;

const PASSWORD: &str = "Tr0ub4dor-and-3";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    web: WebArgs,
}

fn app() -> Router {
    Router::new().route(
        "/metrics",
        get(|headers: HeaderMap| async move {
            let mut body = String::new();
            TextEncoder::new(&mut body)
                .family("demo_up", "demo", MetricType::Gauge)
                .sample::<&str, &str>(&[], 1.0);
            metrics_response(body, &headers)
        }),
    )
}

/// Starts the kit's server on a free loopback port; returns its address, lifecycle and task.
async fn start(args: &[&str]) -> (SocketAddr, Lifecycle, tokio::task::JoinHandle<()>) {
    let mut argv = vec!["test", "--web.listen-address=127.0.0.1:0"];
    argv.extend_from_slice(args);
    let cli = Cli::parse_from(argv);
    let bound = HttpServer::new("Demo Exporter", &cli.web, ":0")
        .endpoint("/metrics", "Prometheus metrics")
        .bind()
        .await
        .expect("bind");
    let addr = bound.local_addrs()[0];
    let lifecycle = Lifecycle::new();
    let l = lifecycle.clone();
    let task = tokio::spawn(async move { bound.serve(app(), &l).await.expect("serve") });
    (addr, lifecycle, task)
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["scraper".into()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn plain_http_serves_metrics_landing_page_and_gzip() {
    let (addr, lifecycle, task) = start(&[]).await;
    let client = reqwest::Client::builder().no_gzip().build().unwrap();

    let resp = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        resp.text().await.unwrap(),
        "# HELP demo_up demo\n# TYPE demo_up gauge\ndemo_up 1\n"
    );

    // Unknown paths answer the landing page, as the Go exporters' catch-all does.
    for path in ["/", "/no/such/page"] {
        let resp = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("Demo Exporter") && body.contains("href=\"/metrics\""),
            "{body}"
        );
    }

    let resp = client
        .get(format!("http://{addr}/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");

    lifecycle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn tls_and_basic_auth_with_a_real_https_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    write(dir.path(), "server.crt", &pki.server_cert);
    write(dir.path(), "server.key", &pki.server_key);
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let config = write(
        dir.path(),
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    );
    let (addr, lifecycle, task) = start(&[&format!("--web.config.file={config}")]).await;
    let url = format!("https://127.0.0.1:{}/metrics", addr.port());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();

    let ok = client
        .get(&url)
        .basic_auth("prometheus", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("demo_up 1"));

    let wrong = client
        .get(&url)
        .basic_auth("prometheus", Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Basic");
    let unknown = client
        .get(&url)
        .basic_auth("root", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // The landing page is protected too.
    let landing = client
        .get(url.replace("/metrics", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(landing.status(), 401);

    // Plain HTTP on a TLS port fails; so does a client that does not trust the certificate.
    assert!(
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
    assert!(reqwest::Client::new().get(&url).send().await.is_err());

    lifecycle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn client_certificates_are_required_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    write(dir.path(), "server.crt", &pki.server_cert);
    write(dir.path(), "server.key", &pki.server_key);
    write(dir.path(), "ca.crt", &pki.ca_pem);
    let config = write(
        dir.path(),
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n",
    );
    let (addr, lifecycle, task) = start(&[&format!("--web.config.file={config}")]).await;
    let url = format!("https://localhost:{}/metrics", addr.port());
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();

    let without = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    assert!(
        without.get(&url).send().await.is_err(),
        "no client certificate must be refused"
    );

    let identity =
        reqwest::Identity::from_pem(format!("{}{}", pki.client_cert, pki.client_key).as_bytes())
            .unwrap();
    let with = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(identity)
        .build()
        .unwrap();
    assert_eq!(with.get(&url).send().await.unwrap().status(), 200);

    // A client certificate from another CA is refused.
    let stranger = make_pki();
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", stranger.client_cert, stranger.client_key).as_bytes(),
    )
    .unwrap();
    let foreign = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    assert!(foreign.get(&url).send().await.is_err());

    lifecycle.shutdown();
    task.await.unwrap();
}

#[tokio::test]
async fn reload_applies_a_valid_web_config_and_keeps_the_old_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = bcrypt::hash("one", 4).unwrap();
    let config = write(
        dir.path(),
        "web.yml",
        &format!("basic_auth_users:\n  alice: {first}\n"),
    );
    let (addr, lifecycle, task) = start(&[&format!("--web.config.file={config}")]).await;
    let url = format!("http://{addr}/metrics");
    let client = reqwest::Client::new();
    let status = |user: &'static str, pw: &'static str| {
        let req = client.get(&url).basic_auth(user, Some(pw));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("alice", "one").await, 200);

    let second = bcrypt::hash("two", 4).unwrap();
    write(
        dir.path(),
        "web.yml",
        &format!("basic_auth_users:\n  bob: {second}\n"),
    );
    lifecycle.reload();
    wait_until(|| async { status("bob", "two").await == 200 }).await;
    assert_eq!(status("alice", "one").await, 401);

    // A broken file is rejected: bob keeps access.
    let mut f = std::fs::File::create(dir.path().join("web.yml")).unwrap();
    f.write_all(b"basic_auth_users: [not, a, map\n").unwrap();
    drop(f);
    lifecycle.reload();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status("bob", "two").await, 200);

    lifecycle.shutdown();
    task.await.unwrap();
}

#[tokio::test]
async fn bad_web_config_fails_at_bind_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "broken-web.yml",
        "tls_server_config:\n  cert_file: x.crt\n",
    );
    let cli = Cli::parse_from([
        "test",
        "--web.listen-address=127.0.0.1:0",
        &format!("--web.config.file={config}"),
    ]);
    let err = HttpServer::new("x", &cli.web, ":0")
        .bind()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken-web.yml"), "{err}");
}

#[tokio::test]
async fn listens_on_ipv6_loopback_and_all_interfaces() {
    // `[::1]:0` works where the host has IPv6; `:0` (all interfaces) always does.
    let cli = Cli::parse_from(["test", "--web.listen-address=:0"]);
    let bound = HttpServer::new("x", &cli.web, ":0").bind().await.unwrap();
    let port = bound.local_addrs()[0].port();
    let lifecycle = Lifecycle::new();
    let l = lifecycle.clone();
    let task = tokio::spawn(async move { bound.serve(app(), &l).await.unwrap() });
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    lifecycle.shutdown();
    task.await.unwrap();

    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let (addr, lifecycle, task) = {
            let cli = Cli::parse_from(["test", "--web.listen-address=[::1]:0"]);
            let bound = HttpServer::new("x", &cli.web, ":0").bind().await.unwrap();
            let addr = bound.local_addrs()[0];
            let lifecycle = Lifecycle::new();
            let l = lifecycle.clone();
            (
                addr,
                lifecycle,
                tokio::spawn(async move { bound.serve(app(), &l).await.unwrap() }),
            )
        };
        assert!(addr.is_ipv6());
        let resp = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        lifecycle.shutdown();
        task.await.unwrap();
    }
}

async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..50 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met within 5 s");
}
