//! A long run of the three exporters under what a database host does to them, checked for
//! failed scrapes and for growth. Prints a row per minute and a verdict; exits non-zero when a
//! check fails.
//!
//! ```text
//! cargo build --release -p pg_exporter -p pgbouncer_exporter -p pgbackrest_exporter
//! cargo bench -p test-harness --bench soak_exporters      # 30 minutes
//! ```
//!
//! `PGSUITE_SOAK_MINUTES` sets the length; `PGSUITE_PG_EXPORTER_BIN`,
//! `PGSUITE_PGBOUNCER_EXPORTER_BIN` and `PGSUITE_PGBACKREST_EXPORTER_BIN` other binaries (default
//! `target/release/<name>`). Not run in CI.
//!
//! - A PostgreSQL 15 primary with Pgbouncer and a pgBackRest repository (one full backup), and
//!   the three exporters: pg_exporter with auto-discovery, pgbouncer_exporter, and
//!   pgbackrest_exporter collecting every 30 s.
//! - Two scrapers per exporter, each scraping every second: one announcing a 10 s scrape
//!   timeout (`X-Prometheus-Scrape-Timeout-Seconds`), one 2 s, each giving up after its own.
//! - Every 2 minutes a config reload (`POST /reload` of both SQL exporters, `SIGHUP` of
//!   pgbackrest_exporter); every minute a database created and the previous one dropped (the
//!   `DROP DATABASE` must succeed at once, without `FORCE`); PostgreSQL stopped for 5 s at
//!   minutes 8 and 20, Pgbouncer at minute 14; an incremental pgBackRest backup at minute 17.
//! - Each minute, per exporter: RSS, open descriptors, connections held to its server, the
//!   scrapes' p99 and failures. A failure is any answer but 200, a scraper timing out, or
//!   `pg_up`/`pgbouncer_up` 0 outside a server outage (+5 s).
//! - Passes when no scrape failed and, per exporter, RSS and descriptors after minute 5 stay
//!   within 5 % of their minute-5 values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use test_harness::bench::{connections_to, open_fds, release_binary, rss_mib};
use test_harness::{Agent, BackupType, ClusterBuilder, PgVersion};

/// Growth allowed after minute 5, relative to minute 5.
const FLAT: f64 = 0.05;
/// The scrapers' announced timeouts.
const TIMEOUTS: [Duration; 2] = [Duration::from_secs(10), Duration::from_secs(2)];
/// How long a server stays stopped, and the grace after it for `*_up 0`.
const OUTAGE: Duration = Duration::from_secs(5);

/// One exporter under test and what its scrapers recorded.
struct Subject {
    name: &'static str,
    agent: Agent,
    /// The port of the server it connects to (for connections held).
    server_port: Option<u16>,
    /// Its `*_up` metric, checked outside outages.
    up_metric: Option<&'static str>,
    samples: Mutex<Vec<Scrape>>,
}

#[derive(Debug, Clone)]
struct Scrape {
    at: Instant,
    ms: f64,
    failure: Option<String>,
}

/// Server outages: when each began and ended (ended + [`OUTAGE`] is still excused).
#[derive(Debug, Default)]
struct Outages(Mutex<Vec<(&'static str, Instant, Option<Instant>)>>);

impl Outages {
    fn begin(&self, what: &'static str) {
        self.0.lock().unwrap().push((what, Instant::now(), None));
    }

    fn end(&self) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.2 = Some(Instant::now());
        }
    }

    /// Whether a scrape of `subject` that started at `started` overlapped an outage of its
    /// server (`postgres` for every SQL exporter: Pgbouncer's clients go through it too).
    fn excuses(&self, subject: &str, started: Instant, ended: Instant) -> bool {
        self.0.lock().unwrap().iter().any(|(what, from, to)| {
            let affects = *what == "postgres" || subject == "pgbouncer_exporter";
            let to = to.map_or(ended, |t| t + OUTAGE);
            affects && started <= to && ended >= *from
        })
    }
}

fn main() {
    let minutes: u64 = std::env::var("PGSUITE_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let bins = [
        release_binary("pg_exporter", "PGSUITE_PG_EXPORTER_BIN"),
        release_binary("pgbouncer_exporter", "PGSUITE_PGBOUNCER_EXPORTER_BIN"),
        release_binary("pgbackrest_exporter", "PGSUITE_PGBACKREST_EXPORTER_BIN"),
    ];
    eprintln!("soak: starting PostgreSQL 15, Pgbouncer, pgBackRest (full backup) …");
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .pgbouncer()
        .pgbackrest()
        .with_databases(&[("app1", 10), ("app2", 10)])
        .start()
        .expect("cluster");
    cluster
        .pgbackrest()
        .backup(BackupType::Full)
        .expect("backup");
    let pg = cluster.primary();
    let bouncer = cluster.pgbouncer();

    let mut backrest_args = vec![
        format!(
            "--backrest.config={}",
            cluster.pgbackrest().config_path().display()
        ),
        "--collect.interval=30".to_owned(),
    ];
    if let Ok(user) = test_harness::privileges::service_user()
        && user.switch_user
    {
        backrest_args.push(format!("--backrest.user={}", user.name));
    }
    let subjects: Vec<Arc<Subject>> = vec![
        Arc::new(Subject {
            name: "pg_exporter",
            agent: Agent::builder("pg_exporter", &bins[0])
                .args([
                    format!("--url={}", pg.url("postgres")),
                    "--auto-discovery".to_owned(),
                    "--exclude-database=template0,template1".to_owned(),
                    "--connect-timeout=1000".to_owned(),
                ])
                .env_remove("PG_EXPORTER_CONFIG")
                .start(),
            server_port: Some(pg.port()),
            up_metric: Some("pg_up"),
            samples: Mutex::default(),
        }),
        Arc::new(Subject {
            name: "pgbouncer_exporter",
            agent: Agent::builder("pgbouncer_exporter", &bins[1])
                .args([
                    format!("--url={}", bouncer.admin_url()),
                    "--connect-timeout=1000".to_owned(),
                ])
                .env_remove("PG_EXPORTER_CONFIG")
                .start(),
            server_port: Some(bouncer.port()),
            up_metric: Some("pgbouncer_up"),
            samples: Mutex::default(),
        }),
        Arc::new(Subject {
            name: "pgbackrest_exporter",
            agent: Agent::builder("pgbackrest_exporter", &bins[2])
                .args(backrest_args)
                .start(),
            server_port: None,
            up_metric: None,
            samples: Mutex::default(),
        }),
    ];

    let outages = Arc::new(Outages::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut scrapers = Vec::new();
    for subject in &subjects {
        for timeout in TIMEOUTS {
            let (subject, outages, stop) = (subject.clone(), outages.clone(), stop.clone());
            scrapers.push(std::thread::spawn(move || {
                scrape_loop(&subject, timeout, &outages, &stop);
            }));
        }
    }

    eprintln!(
        "soak: {minutes} min; two scrapers per exporter every second (timeouts 10 s and 2 s); \
         reload every 2 min, a database created and dropped every minute, PostgreSQL stopped at \
         minutes 8 and 20, Pgbouncer at 14, a backup at 17"
    );
    println!(
        "\n| minute | exporter | RSS MiB | open fds | connections | scrapes | p99 ms | failures | events |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---|");
    let start = Instant::now();
    let mut rows: Vec<Vec<Row>> = Vec::new();
    let mut drop_failures = Vec::new();
    let mut backup: Option<std::thread::JoinHandle<anyhow::Result<()>>> = None;
    for minute in 1..=minutes {
        let mut events = Vec::new();
        // Events at the start of the minute, in the order a DBA might do them.
        let db = format!("soak_{minute}");
        if pg.create_database(&db, 3).is_ok() {
            events.push(format!("CREATE {db}"));
        }
        if minute > 1 {
            let old = format!("soak_{}", minute - 1);
            // After a scrape or two of the new database, drop the previous one.
            std::thread::sleep(Duration::from_secs(2));
            match pg.execute("postgres", &format!("DROP DATABASE {old};")) {
                Ok(()) => events.push(format!("DROP {old}")),
                Err(e) => {
                    events.push(format!("DROP {old} FAILED"));
                    drop_failures.push(format!("minute {minute}: DROP DATABASE {old}: {e:#}"));
                }
            }
        }
        if minute % 2 == 0 {
            for subject in &subjects[..2] {
                let _ = subject.agent.request("POST", "/reload");
            }
            subjects[2].agent.signal("HUP");
            events.push("reload".to_owned());
        }
        if minute == 8 || minute == 20 {
            outages.begin("postgres");
            pg.stop().expect("stop PostgreSQL");
            std::thread::sleep(OUTAGE);
            pg.start().expect("start PostgreSQL");
            outages.end();
            events.push("PostgreSQL restarted".to_owned());
        }
        if minute == 14 {
            outages.begin("pgbouncer");
            bouncer.stop();
            std::thread::sleep(OUTAGE);
            bouncer.restart().expect("restart Pgbouncer");
            outages.end();
            events.push("Pgbouncer restarted".to_owned());
        }
        if minute == 17 {
            events.push("backup".to_owned());
            backup = Some(spawn_backup(&cluster));
        }
        let deadline = start + Duration::from_secs(minute * 60);
        let mut peak_connections = vec![0usize; subjects.len()];
        while Instant::now() < deadline {
            for (i, s) in subjects.iter().enumerate() {
                if let Some(port) = s.server_port {
                    peak_connections[i] =
                        peak_connections[i].max(connections_to(s.agent.pid(), port));
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let since = deadline - Duration::from_secs(60);
        let minute_rows: Vec<Row> = subjects
            .iter()
            .zip(&peak_connections)
            .map(|(s, &peak)| Row::sample(minute, s, since, peak, &events.join(", ")))
            .collect();
        for row in &minute_rows {
            row.print();
        }
        rows.push(minute_rows);
    }
    stop.store(true, Ordering::SeqCst);
    for scraper in scrapers {
        let _ = scraper.join();
    }
    let backup_result = backup.map(|b| b.join().expect("backup thread"));

    let mut checks = Vec::new();
    let failures: Vec<String> = subjects
        .iter()
        .flat_map(|s| {
            s.samples
                .lock()
                .unwrap()
                .iter()
                .filter_map(|x| {
                    x.failure
                        .as_ref()
                        .map(|f| format!("{} at {:.0}s: {f}", s.name, (x.at - start).as_secs_f64()))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let total: usize = subjects
        .iter()
        .map(|s| s.samples.lock().unwrap().len())
        .sum();
    checks.push((
        failures.is_empty(),
        format!(
            "no failed scrape out of {total} ({} failed; first: {:?})",
            failures.len(),
            &failures[..failures.len().min(5)]
        ),
    ));
    checks.push((
        drop_failures.is_empty(),
        format!("every DROP DATABASE succeeded at once ({drop_failures:?})"),
    ));
    if let Some(result) = backup_result {
        checks.push((
            result.is_ok(),
            format!("the backup during the run succeeded ({result:?})"),
        ));
    }
    for (i, subject) in subjects.iter().enumerate() {
        let series: Vec<&Row> = rows.iter().map(|r| &r[i]).collect();
        let Some(base) = series.get(4) else {
            checks.push((false, format!("{}: shorter than 5 minutes", subject.name)));
            continue;
        };
        let worst = |f: fn(&Row) -> f64| {
            series[5..]
                .iter()
                .map(|r| (f(r) - f(base)) / f(base))
                .fold(0.0f64, |a, d| if d.abs() > a.abs() { d } else { a })
        };
        let (rss, fds) = (worst(|r| r.rss_mib), worst(|r| r.fds as f64));
        checks.push((
            rss.abs() <= FLAT,
            format!(
                "{}: RSS after minute 5 within 5 % of {:.1} MiB (largest change {:+.1} %)",
                subject.name,
                base.rss_mib,
                rss * 100.0
            ),
        ));
        checks.push((
            fds.abs() <= FLAT,
            format!(
                "{}: descriptors after minute 5 within 5 % of {} (largest change {:+.1} %)",
                subject.name,
                base.fds,
                fds * 100.0
            ),
        ));
    }
    println!();
    let mut failed = false;
    for (ok, what) in checks {
        println!("  {} {what}", if ok { "PASS" } else { "FAIL" });
        failed |= !ok;
    }
    if failed {
        for s in &subjects {
            eprintln!("{} log tail:\n{}", s.name, s.agent.log_tail(20));
        }
        std::process::exit(1);
    }
}

/// An incremental backup in a thread of its own (joined before the cluster stops).
fn spawn_backup(cluster: &test_harness::Cluster) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let config = cluster.pgbackrest().config_path().to_owned();
    let stanza = cluster.pgbackrest().stanza().to_owned();
    std::thread::spawn(move || {
        let mut cmd =
            test_harness::privileges::service_command("pgbackrest", &std::env::temp_dir())?;
        let status = cmd
            .arg(format!("--config={}", config.display()))
            .arg(format!("--stanza={stanza}"))
            .args(["backup", "--type=incr"])
            .status()?;
        anyhow::ensure!(status.success(), "pgbackrest backup exited with {status}");
        Ok(())
    })
}

fn scrape_loop(subject: &Subject, timeout: Duration, outages: &Outages, stop: &AtomicBool) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build(),
    );
    let url = subject.agent.url("/metrics");
    let header = format!("{}", timeout.as_secs_f64());
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let result = agent
            .get(&url)
            .header("X-Prometheus-Scrape-Timeout-Seconds", &header)
            .call();
        let ended = Instant::now();
        let failure = match result {
            Err(e) => Some(format!("no answer within {timeout:?}: {e}")),
            Ok(mut response) if response.status() != 200 => {
                Some(format!("HTTP {}", response.status().as_u16())).map(|s| {
                    format!(
                        "{s}: {}",
                        response.body_mut().read_to_string().unwrap_or_default()
                    )
                })
            }
            Ok(mut response) => {
                let body = response.body_mut().read_to_string().unwrap_or_default();
                subject.up_metric.and_then(|m| {
                    let up = test_harness::agent::sample(&body, m);
                    (up != Some(1.0) && !outages.excuses(subject.name, at, ended))
                        .then(|| format!("{m} = {up:?} outside an outage"))
                })
            }
        };
        subject.samples.lock().unwrap().push(Scrape {
            at,
            ms: (ended - at).as_secs_f64() * 1e3,
            failure,
        });
        std::thread::sleep(Duration::from_secs(1).saturating_sub(ended - at));
    }
}

/// One exporter in one minute.
#[derive(Debug)]
struct Row {
    minute: u64,
    name: &'static str,
    rss_mib: f64,
    fds: usize,
    connections: Option<(usize, usize)>,
    scrapes: usize,
    p99_ms: f64,
    failures: usize,
    events: String,
}

impl Row {
    fn sample(minute: u64, s: &Subject, since: Instant, peak: usize, events: &str) -> Row {
        let pid = s.agent.pid();
        let samples: Vec<Scrape> = s
            .samples
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.at >= since)
            .cloned()
            .collect();
        let mut ms: Vec<f64> = samples.iter().map(|x| x.ms).collect();
        ms.sort_by(f64::total_cmp);
        Row {
            minute,
            name: s.name,
            rss_mib: rss_mib(pid),
            fds: open_fds(pid),
            connections: s.server_port.map(|p| (connections_to(pid, p), peak)),
            scrapes: samples.len(),
            p99_ms: ms.get(ms.len() * 99 / 100).copied().unwrap_or(f64::NAN),
            failures: samples.iter().filter(|x| x.failure.is_some()).count(),
            events: events.to_owned(),
        }
    }

    fn print(&self) {
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {:.1} | {} | {} |",
            self.minute,
            self.name,
            self.rss_mib,
            self.fds,
            self.connections
                .map_or("-".to_owned(), |(now, peak)| format!("{now} (peak {peak})")),
            self.scrapes,
            self.p99_ms,
            self.failures,
            if self.name == "pg_exporter" {
                &self.events
            } else {
                ""
            }
        );
    }
}
