//! VictoriaMetrics scrapes itself and a target served by the test, and reports `up == 1`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::time::Duration;

use test_harness::victoria_metrics::SELF_JOB;
use test_harness::{ScrapeTarget, VictoriaMetrics, sample_value};

/// Serves a fixed Prometheus exposition on a free port from a background thread.
fn serve_metrics(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            // Read the request head up to the blank line.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn scrapes_itself_and_a_served_target() {
    let port = serve_metrics("# TYPE harness_probe gauge\nharness_probe{kind=\"test\"} 42\n");
    let vm = VictoriaMetrics::start(&[ScrapeTarget::local("served", port)]).unwrap();

    vm.wait_for_up(SELF_JOB, Duration::from_secs(30)).unwrap();
    vm.wait_for_up("served", Duration::from_secs(30)).unwrap();
    let result = vm
        .wait_for("harness_probe", |r| !r.is_empty(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(sample_value(&result[0]), Some(42.0));
    assert_eq!(result[0]["metric"]["kind"], "test");

    // Re-targeting: a target nobody listens on goes down.
    let dead = test_harness::free_port().unwrap();
    vm.set_targets(&[ScrapeTarget::local("dead", dead)])
        .unwrap();
    vm.wait_for(
        "up{job=\"dead\"}",
        |r| r.len() == 1 && sample_value(&r[0]) == Some(0.0),
        Duration::from_secs(30),
    )
    .unwrap();
}
