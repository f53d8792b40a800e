//! Passwords sent to the server, and passwords inside connection strings the agents print,
//! never reach the logs, even at debug level. Its own test binary: the subscriber is global.

use std::sync::{Arc, Mutex};

use agent_kit::cli::WebArgs;
use agent_kit::redact::mask_password;
use agent_kit::server::{HttpServer, Lifecycle};
use clap::Parser;

const PASSWORD: &str = "Sw0rdfish-Secret";

/// A writer for tracing that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    web: WebArgs,
}

#[tokio::test]
async fn passwords_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("web.yml");
    std::fs::write(
        &config,
        format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt::hash(PASSWORD, 4).unwrap()
        ),
    )
    .unwrap();
    let cli = Cli::parse_from([
        "test".to_owned(),
        "--web.listen-address=127.0.0.1:0".to_owned(),
        format!("--web.config.file={}", config.display()),
    ]);
    let bound = HttpServer::new("x", &cli.web, ":0").bind().await.unwrap();
    let addr = bound.local_addrs()[0];
    let lifecycle = Lifecycle::new();
    let l = lifecycle.clone();
    let task = tokio::spawn(async move { bound.serve(axum::Router::new(), &l).await.unwrap() });

    let client = reqwest::Client::new();
    for pw in [PASSWORD, "Sw0rdfish-Secret-wrong"] {
        client
            .get(format!("http://{addr}/"))
            .basic_auth("prometheus", Some(pw))
            .send()
            .await
            .unwrap();
    }
    let url = format!("postgres://monitor:{PASSWORD}@127.0.0.1:5432/postgres");
    tracing::info!(url = %mask_password(&url), "Connecting.");
    lifecycle.reload();
    lifecycle.shutdown();
    task.await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Listening") && logs.contains("monitor:xxxxx@"),
        "{logs}"
    );
    assert!(
        !logs.contains("Sw0rdfish"),
        "password leaked into logs: {logs}"
    );
}
