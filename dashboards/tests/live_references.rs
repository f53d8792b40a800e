//! Every metric the dashboards and rules reference exists: recorded by our rules, or emitted by
//! our exporters running against a real cluster (PostgreSQL 15 primary + replica, Pgbouncer,
//! pgBackRest) and scraped through VictoriaMetrics, or on the short reviewed [`ALLOWED`] list.
//! Activity is induced for the families that need it (a backup, a deadlock, errors, slow and
//! long transactions, pgbench through Pgbouncer, clients queueing, a replication slot, temp
//! files, a WAL switch), and the check is shown to fail when a metric disappears.
//!
//! Patroni's `patroni_*` metrics come from a real Patroni 3.0 cluster (two members on etcd,
//! started in parallel with the rest), whose REST `/metrics` the same VictoriaMetrics scrapes.
//! Its expressions in `rules/patroni.yml` are then evaluated by VictoriaMetrics against that
//! cluster before and after a switchover: the leader-change alert stays quiet, then fires for
//! the new leader only; the no-leader and member-missing alerts stay quiet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use dashboards::grafana::{self, Language};
use dashboards::references::{self, Expression, Finding, Known};
use dashboards::rules::load_rules;
use dashboards::{dashboards_dir, rule_files};
use test_harness::{
    BackupType, Cluster, ClusterBuilder, ManagedChild, PatroniCluster, PatroniClusterBuilder,
    PgVersion, ScrapeTarget, VictoriaMetrics, free_port, http,
};

/// Metrics referenced on purpose that the harness cannot produce, each with the reason.
/// Reviewed: keep it short; the test fails if an entry is no longer referenced or the harness
/// starts producing it.
const ALLOWED: &[(&str, &str)] = &[(
    "ALERTS",
    "written by the rule evaluator (vmalert or Prometheus) for pending and firing alerts, not \
     by an exporter; the harness runs no rule evaluator",
)];

/// The suite's agent binaries (workspace packages of the same names).
const AGENTS: &[&str] = &[
    "pg_exporter",
    "pgbouncer_exporter",
    "pgbackrest_exporter",
    "log_shipper",
];

/// How long to wait for every referenced metric to reach VictoriaMetrics.
const NAMES_TIMEOUT: Duration = Duration::from_secs(90);

/// How long VictoriaMetrics may take to show the outcome of a Patroni switchover.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    dashboards::root().parent().unwrap().to_owned()
}

/// `target/<profile>`, from this test binary's path (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

fn newest_mtime(dir: &Path, newest: &mut SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Only what goes into the binaries: tests, benches and docs may be touched by runs.
        if path.file_name().is_some_and(|n| {
            ["target", "tests", "benches", "examples", "docs"].contains(&&*n.to_string_lossy())
        }) {
            continue;
        }
        if path.is_dir() {
            newest_mtime(&path, newest);
        } else if let Ok(m) = entry.metadata().and_then(|m| m.modified()) {
            *newest = (*newest).max(m);
        }
    }
}

/// The agents' binaries next to this test's profile directory, built first (`cargo build`)
/// when one is missing or older than the sources; `cargo test --workspace` has built them.
fn agent_binaries() -> BTreeMap<&'static str, PathBuf> {
    let dir = profile_dir();
    let bins: BTreeMap<&str, PathBuf> = AGENTS.iter().map(|a| (*a, dir.join(a))).collect();
    let ws = workspace();
    let mut sources = SystemTime::UNIX_EPOCH;
    for sub in ["shared", "collectors", "exporters"] {
        newest_mtime(&ws.join(sub), &mut sources);
    }
    if let Ok(m) = std::fs::metadata(ws.join("Cargo.lock")).and_then(|m| m.modified()) {
        sources = sources.max(m);
    }
    let stale = bins.values().any(|b| {
        std::fs::metadata(b)
            .and_then(|m| m.modified())
            .map_or(true, |m| m < sources)
    });
    if stale {
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(&ws)
            .args(["build", "--bins"])
            .arg(format!("--target-dir={}", dir.parent().unwrap().display()));
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.arg(format!("--profile={other}"));
            }
        }
        for a in AGENTS {
            cmd.args(["-p", a]);
        }
        let status = cmd.status().expect("cannot run cargo build");
        assert!(status.success(), "cargo build of the agents failed");
    }
    for (name, bin) in &bins {
        assert!(bin.is_file(), "{name}: {} missing", bin.display());
    }
    bins
}

/// A started agent and its scrape target.
struct Agent {
    process: ManagedChild,
    target: ScrapeTarget,
}

fn start_agent(job: &str, bin: &Path, args: &[String], logs: &Path) -> Agent {
    let port = free_port().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .env_remove("PG_EXPORTER_CONFIG")
        .env_remove("PGURL");
    let process = ManagedChild::spawn(job, &mut cmd, &logs.join(format!("{job}.log"))).unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http::get(&url, &[]).is_ok_and(|r| r.status == 200) {
        assert!(
            Instant::now() < deadline && process.is_running(),
            "{job} did not come up:\n{}",
            process.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Agent {
        process,
        target: ScrapeTarget::local(job, port),
    }
}

fn start_agents(cluster: &Cluster, dir: &Path) -> Vec<Agent> {
    let bins = agent_binaries();
    let identity = |ins: &str| format!("--label=cls=pg-test,ins={ins}");
    let primary = cluster.primary();
    let bouncer = cluster.pgbouncer();
    let backrest = cluster.pgbackrest();

    let mut backrest_args = vec![
        format!("--backrest.config={}", backrest.config_path().display()),
        "--collect.interval=2".to_owned(),
    ];
    if let Ok(user) = test_harness::privileges::service_user()
        && user.switch_user
    {
        backrest_args.push(format!("--backrest.user={}", user.name));
    }

    let shipper_config = dir.join("log_shipper.yml");
    std::fs::write(
        &shipper_config,
        format!(
            "checkpoint_dir: {dir}/checkpoints\n\
             dead_letter_dir: {dir}/dead_letter\n\
             fields: {{ins: pg-test-1, ip: 127.0.0.1, cls: pg-test}}\n\
             sources:\n  postgres:\n    include: [\"{logs}/*.csv\"]\n    format: postgres_csv\n    read_from: beginning\n\
             sinks:\n  out:\n    type: file\n    path: {dir}/shipped.jsonl\n",
            dir = dir.display(),
            logs = primary.log_dir().display(),
        ),
    )
    .unwrap();

    vec![
        start_agent(
            "pg_exporter_primary",
            &bins["pg_exporter"],
            &[
                // Not the bootstrap superuser: pg_query leaves out its statements.
                format!("--url={}", primary.password_url("postgres")),
                identity("pg-test-1"),
            ],
            dir,
        ),
        start_agent(
            "pg_exporter_replica",
            &bins["pg_exporter"],
            &[
                format!("--url={}", cluster.replica().password_url("postgres")),
                identity("pg-test-2"),
            ],
            dir,
        ),
        start_agent(
            "pgbouncer_exporter",
            &bins["pgbouncer_exporter"],
            &[
                format!(
                    "--url=postgres://{}@:{}/pgbouncer?host={}",
                    test_harness::pgbouncer::STATS_USER,
                    bouncer.port(),
                    bouncer.socket_dir().display()
                ),
                identity("pg-test-1"),
            ],
            dir,
        ),
        start_agent(
            "pgbackrest_exporter",
            &bins["pgbackrest_exporter"],
            &backrest_args,
            dir,
        ),
        start_agent(
            "log_shipper",
            &bins["log_shipper"],
            &[format!("--config={}", shipper_config.display())],
            dir,
        ),
    ]
}

fn spawn_psql(cluster: &Cluster, port: u16, db: &str, sql: &str) -> Child {
    let mut cmd = cluster.primary().psql_command(db).unwrap();
    cmd.env("PGPORT", port.to_string())
        .args(["-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

fn stderr_of(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Workload that makes the activity-dependent families appear; returns a transaction left
/// open for 12 s (pg_activity_max_tx_duration), to be waited for.
fn induce_activity(cluster: &Cluster) -> Child {
    let primary = cluster.primary();
    let (pg, bouncer) = (primary.port(), cluster.pgbouncer().port());
    primary
        .execute(
            "db1",
            "CREATE TABLE dl (id int PRIMARY KEY, v int); INSERT INTO dl VALUES (1, 0), (2, 0);",
        )
        .unwrap();

    // A transaction that stays open while the rest runs (pg_activity_max_tx_duration).
    let long = spawn_psql(
        cluster,
        pg,
        "db1",
        "BEGIN; SELECT txid_current(); SELECT pg_sleep(12); COMMIT;",
    );

    // Statements of a non-superuser called more than 4 times: pg_query leaves out the bootstrap
    // superuser's and rarely called ones.
    let mut psql = primary.psql_command("db1").unwrap();
    psql.env("PGUSER", test_harness::PASSWORD_USER)
        .env("PGPASSWORD", test_harness::PASSWORD_USER_PASSWORD);
    for _ in 0..6 {
        psql.args(["-c", "SELECT count(*) FROM pg_stat_database"]);
    }
    let out = psql.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A deadlock: two transactions taking the same two row locks in opposite order.
    let a = spawn_psql(
        cluster,
        pg,
        "db1",
        "BEGIN; UPDATE dl SET v = v + 1 WHERE id = 1; SELECT pg_sleep(1); UPDATE dl SET v = v + 1 WHERE id = 2; COMMIT;",
    );
    let b = spawn_psql(
        cluster,
        pg,
        "db1",
        "BEGIN; UPDATE dl SET v = v + 1 WHERE id = 2; SELECT pg_sleep(1); UPDATE dl SET v = v + 1 WHERE id = 1; COMMIT;",
    );
    let (a, b) = (stderr_of(a), stderr_of(b));
    assert!(
        a.1.contains("deadlock detected") || b.1.contains("deadlock detected"),
        "no deadlock: {a:?} {b:?}"
    );

    // Errors of several SQLSTATE classes (22, 23, 42) and a FATAL (3D).
    assert!(primary.query("db1", "SELECT 1/0").is_err());
    assert!(
        primary
            .query("db1", "INSERT INTO dl VALUES (1, 0)")
            .is_err()
    );
    assert!(primary.query("db1", "SELEC 1").is_err());
    assert!(primary.query("no_such_database", "SELECT 1").is_err());

    // A slow statement (log_min_duration_statement = 0 logs every duration) and temp files.
    primary.query("db1", "SELECT pg_sleep(0.3)").unwrap();
    primary
        .execute(
            "db1",
            "SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s;",
        )
        .unwrap();

    // pgbench through Pgbouncer (SHOW STATS traffic), and clients queueing on the one-server pool.
    let mut init = primary.pgbench_command("db1").unwrap();
    let init = init.args(["-i", "-q", "-s", "1"]).output().unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut bench = primary.pgbench_command("db1").unwrap();
    let bench = bench
        .env("PGPORT", bouncer.to_string())
        .args(["-n", "-T", "3", "-c", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let queued: Vec<Child> = (0..3)
        .map(|_| {
            spawn_psql(
                cluster,
                bouncer,
                test_harness::pgbouncer::SINGLE_POOL_DB,
                "SELECT pg_sleep(1.5)",
            )
        })
        .collect();
    for q in queued {
        let (ok, err) = stderr_of(q);
        assert!(ok, "{err}");
    }
    let (ok, err) = stderr_of(bench);
    assert!(ok, "pgbench through Pgbouncer: {err}");

    // A failing archive_command (pg_archiver_failed_*), then archiving again and a checkpoint.
    primary
        .execute(
            "postgres",
            "ALTER SYSTEM SET archive_command = '/bin/false'; SELECT pg_reload_conf();",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        primary
            .execute("db1", "INSERT INTO dl SELECT g, 0 FROM generate_series(3, 1000) g ON CONFLICT DO NOTHING; SELECT pg_switch_wal();")
            .unwrap();
        let failed: i64 = primary
            .query_scalar("postgres", "SELECT failed_count FROM pg_stat_archiver")
            .unwrap();
        if failed > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "archive_command never failed");
        std::thread::sleep(Duration::from_millis(200));
    }
    primary
        .execute(
            "postgres",
            "ALTER SYSTEM RESET archive_command; SELECT pg_reload_conf(); CHECKPOINT;",
        )
        .unwrap();
    long
}

/// Every PromQL expression of the dashboards (variables substituted) and rules.
fn expressions(dashboards_dir: &Path) -> Vec<Expression> {
    let mut out = Vec::new();
    for d in grafana::load_dashboards(dashboards_dir).unwrap() {
        for q in grafana::queries(&d) {
            if q.language == Language::PromQl {
                out.push(Expression {
                    origin: format!("{}: {}", q.dashboard, q.location),
                    expr: grafana::substitute_variables(&q.expr),
                });
            }
        }
    }
    for f in rule_files() {
        for r in load_rules(&f).unwrap() {
            out.push(Expression {
                origin: format!(
                    "rules {}: {}",
                    f.file_name().unwrap().to_string_lossy(),
                    r.name()
                ),
                expr: r.expr,
            });
        }
    }
    out
}

fn recorded_names() -> BTreeSet<String> {
    rule_files()
        .iter()
        .flat_map(|f| load_rules(f).unwrap())
        .filter_map(|r| r.record)
        .collect()
}

/// Metric names VictoriaMetrics holds from our agents' jobs (its own job excluded).
fn emitted_names(vm: &VictoriaMetrics, jobs: &[String]) -> BTreeSet<String> {
    vm.flush().unwrap();
    let matcher = format!("{{job=~\"{}\"}}", jobs.join("|"));
    let response = http::get(
        &format!("{}/api/v1/label/__name__/values", vm.url()),
        &[("match[]", matcher.as_str())],
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    json["data"]
        .as_array()
        .unwrap_or_else(|| panic!("unexpected answer: {json}"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// One scrape job per Patroni member (`patroni_pg1`, ...) on its REST API's `/metrics`.
fn patroni_targets(patroni: &PatroniCluster) -> Vec<ScrapeTarget> {
    patroni
        .members()
        .iter()
        .map(|m| ScrapeTarget::local(&format!("patroni_{}", m.name()), m.rest_port()))
        .collect()
}

/// `expr` with every name of `records` replaced by its expression in parentheses, `name[d]` by
/// the subquery `(expr)[d:1s]`, so that VictoriaMetrics can evaluate a rule without a rule
/// evaluator. Strings are copied as they are; a recorded name with label matchers is not
/// supported (the rules use none).
fn inline_records(expr: &str, records: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    while i < expr.len() {
        let rest = &expr[i..];
        let c = rest.chars().next().unwrap();
        if matches!(c, '"' | '\'' | '`') {
            let mut end = 1;
            while end < rest.len() && !rest[end..].starts_with(c) {
                end += if c != '`' && rest[end..].starts_with('\\') {
                    2
                } else {
                    1
                };
                while !rest.is_char_boundary(end.min(rest.len())) {
                    end += 1;
                }
            }
            let end = (end + 1).min(rest.len());
            out.push_str(&rest[..end]);
            i += end;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            i += len;
            let Some(inner) = records.get(name) else {
                out.push_str(name);
                continue;
            };
            let after = expr[i..].trim_start();
            assert!(!after.starts_with('{'), "matchers on {name} in {expr}");
            if let Some(range) = after.strip_prefix('[') {
                let close = range.find(']').unwrap();
                out.push_str(&format!("({inner})[{}:1s]", &range[..close]));
                i = expr.len() - range.len() + close + 1;
            } else {
                out.push_str(&format!("({inner})"));
            }
        } else {
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The recording rules (name → expression) and alerts (name → expression) of
/// `rules/patroni.yml`, recorded names inlined ([`inline_records`]).
fn patroni_rules() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let file = dashboards::rules_dir().join("patroni.yml");
    let (mut records, mut alerts) = (BTreeMap::new(), BTreeMap::new());
    for rule in load_rules(&file).unwrap() {
        let expr = inline_records(&rule.expr, &records);
        match (rule.record, rule.alert) {
            (Some(name), _) => records.insert(name, expr),
            (_, Some(name)) => alerts.insert(name, expr),
            _ => unreachable!("a rule is a recording rule or an alert"),
        };
    }
    (records, alerts)
}

/// `(job, value)` of every sample of `promql`, sorted.
fn samples(vm: &VictoriaMetrics, promql: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = vm
        .query_result(promql)
        .unwrap()
        .iter()
        .map(|s| {
            let job = s["metric"]["job"].as_str().unwrap_or("").to_owned();
            let value = s["value"][1].as_str().unwrap().parse().unwrap();
            (job, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Polls `check` every 500 ms until it returns `Ok`, at most `timeout`; a failed scrape leaves
/// a member's series out for a moment (staleness), so single readings are not conclusive.
fn wait_until(
    what: &str,
    vm: &VictoriaMetrics,
    timeout: Duration,
    check: impl Fn() -> Result<(), String>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: {why}\n--- targets ---\n{}", vm.targets_summary())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The patroni.yml rules against the live Patroni cluster, evaluated by VictoriaMetrics:
/// what they record for a healthy two-member cluster, which alerts are quiet, and the
/// leader-change alert firing for the new leader only after a switchover. Returns how long
/// VictoriaMetrics took to show the switchover.
fn check_patroni_rules(vm: &VictoriaMetrics, patroni: &PatroniCluster) -> Duration {
    let (records, alerts) = patroni_rules();
    let job = |m: &test_harness::PatroniMember| format!("patroni_{}", m.name());
    let leader = patroni.leader().unwrap();
    let replica = patroni.replica().unwrap();
    let eval = |name: &str| samples(vm, records.get(name).unwrap_or_else(|| &alerts[name]));
    let expect = |name: &str, want: &[(String, f64)]| {
        let got = eval(name);
        if got == want {
            Ok(())
        } else {
            Err(format!("{name}: {got:?}, expected {want:?}"))
        }
    };
    let cluster = |v: f64| vec![(String::new(), v)];

    wait_until(
        "the patroni.yml rules on a steady cluster",
        vm,
        NAMES_TIMEOUT,
        || {
            // patroni_primary and patroni_master agree; `or` keeps one series per member.
            let mut flags = vec![(job(leader), 1.0), (job(replica), 0.0)];
            flags.sort_by(|a, b| a.0.cmp(&b.0));
            expect("patroni:ins:leader", &flags)?;
            // Cluster level: these scrapes carry no `cls`, so one series for the scope.
            expect("patroni:cls:leaders", &cluster(1.0))?;
            expect("patroni:cls:members", &cluster(2.0))?;
            expect("patroni:cls:unlocked", &cluster(0.0))?;
            expect("patroni:cls:timeline", &cluster(1.0))?;
            // The lag rule leaves the leader out (its replayed location is 0).
            let lag = eval("patroni:ins:replay_lag_bytes");
            if lag.len() != 1 || lag[0].0 != job(replica) {
                return Err(format!("patroni:ins:replay_lag_bytes: {lag:?}"));
            }
            // Our pg_exporters' roles did not flip.
            expect(
                "pg:ins:role_changed_5m",
                &[
                    ("pg_exporter_primary".to_owned(), 0.0),
                    ("pg_exporter_replica".to_owned(), 0.0),
                ],
            )?;
            for alert in [
                "PatroniLeaderChange",
                "PatroniNoLeader",
                "PatroniMemberMissing",
            ] {
                expect(alert, &[])?;
            }
            Ok(())
        },
    );

    // A switchover: the leader-change alert fires for the new leader, and only for it.
    let switched = Instant::now();
    let change = patroni.switchover(replica).unwrap();
    assert_eq!(change.new.name(), replica.name());
    wait_until(
        "the patroni.yml rules after a switchover",
        vm,
        SWITCHOVER_TIMEOUT,
        || {
            expect("PatroniLeaderChange", &[(job(replica), 1.0)])?;
            expect("patroni:cls:leaders", &cluster(1.0))?;
            expect("patroni:cls:timeline", &cluster(2.0))?;
            expect("PatroniNoLeader", &[])?;
            expect("PatroniMemberMissing", &[])
        },
    );
    switched.elapsed()
}

#[test]
fn every_referenced_metric_is_recorded_or_emitted_by_our_exporters() {
    let started = Instant::now();
    // A real Patroni cluster for the patroni_* references, started while the rest starts.
    let patroni = std::thread::spawn(|| PatroniClusterBuilder::new().members(2).start());
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .replica()
        .pgbouncer()
        .pgbackrest()
        .with_databases(&[("db1", 2)])
        .setting("log_min_duration_statement", "0")
        .setting("deadlock_timeout", "100ms")
        .start()
        .unwrap();
    let primary = cluster.primary();
    primary
        .execute(
            "postgres",
            "SELECT pg_create_physical_replication_slot('dashboards_slot', true);",
        )
        .unwrap();
    cluster.pgbackrest().backup(BackupType::Full).unwrap();
    let cluster_ready = started.elapsed();

    // The workload runs before the agents start: its counters persist, log_shipper reads the
    // log from the beginning, and collectors with a long TTL (pg_archiver: 60 s) see it at once.
    let long_transaction = induce_activity(&cluster);
    let activity_done = started.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let agents = start_agents(&cluster, dir.path());
    let patroni = patroni
        .join()
        .expect("starting the Patroni cluster panicked")
        .unwrap();
    let mut targets: Vec<ScrapeTarget> = agents.iter().map(|a| a.target.clone()).collect();
    targets.extend(patroni_targets(&patroni));
    let jobs: Vec<String> = targets.iter().map(|t| t.job.clone()).collect();
    let vm = VictoriaMetrics::start(&targets).unwrap();
    let agents_ready = started.elapsed();

    let exprs = expressions(&dashboards_dir());
    let recorded = recorded_names();
    let allowed: BTreeMap<String, String> = ALLOWED
        .iter()
        .map(|(m, why)| ((*m).to_owned(), (*why).to_owned()))
        .collect();

    // Poll until nothing is missing (some families appear only after the workload's effects
    // are collected and scraped) or the time is up.
    let deadline = Instant::now() + NAMES_TIMEOUT;
    let (known, findings, referenced) = loop {
        let known = Known {
            recorded: recorded.clone(),
            emitted: emitted_names(&vm, &jobs),
            allowed: allowed.clone(),
        };
        let (findings, referenced) = references::check(&exprs, &known);
        if findings.is_empty() || Instant::now() >= deadline {
            break (known, findings, referenced);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let logs: String = agents
        .iter()
        .filter(|a| !a.process.is_running())
        .map(|a| format!("{} exited:\n{}\n", a.target.job, a.process.log_tail(20)))
        .collect();
    assert!(
        findings.is_empty(),
        "{} problems:\n{}\n{logs}\n--- targets ---\n{}",
        findings.len(),
        findings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        vm.targets_summary()
    );

    let raw: BTreeSet<&String> = referenced
        .iter()
        .filter(|m| !known.recorded.contains(*m))
        .collect();
    println!(
        "{} expressions reference {} metrics: {} recorded by our rules, {} emitted by the \
         exporters ({} names seen in VictoriaMetrics), {} allow-listed; cluster and backup \
         ready after {cluster_ready:.1?}, workload done after {activity_done:.1?}, agents \
         scraped after {agents_ready:.1?}, all present after {:.1?}",
        exprs.len(),
        referenced.len(),
        referenced.len() - raw.len(),
        raw.iter().filter(|m| known.emitted.contains(**m)).count(),
        known.emitted.len(),
        allowed.len(),
        started.elapsed()
    );

    // The allow-list stays honest: every entry is referenced and really not produced.
    for (metric, why) in &allowed {
        assert!(
            referenced.contains(metric),
            "allow-listed {metric} is not referenced"
        );
        assert!(
            !known.emitted.contains(metric) && !known.recorded.contains(metric),
            "allow-listed {metric} is produced after all: remove it ({why})"
        );
    }
    // Every recording rule is used by a dashboard or another rule.
    let unused: Vec<&String> = known
        .recorded
        .iter()
        .filter(|r| !referenced.contains(*r) && !r.ends_with("_agent_up"))
        .collect();
    assert!(
        unused.is_empty(),
        "recording rules nothing uses: {unused:?}"
    );

    // Patroni's `patroni_postgres_server_version {scope="..."} 150020` (a space before `{`)
    // reached VictoriaMetrics under its name.
    assert!(known.emitted.contains("patroni_postgres_server_version"));
    let switchover_seen = check_patroni_rules(&vm, &patroni);
    println!("Patroni switchover seen by the rules after {switchover_seen:.1?}");

    // The check fails when a metric disappears from an exporter ...
    let mut without = known.clone();
    assert!(without.emitted.remove("pg_db_deadlocks"));
    let (findings, _) = references::check(&exprs, &without);
    assert!(
        findings.contains(&Finding::Missing {
            origin: "rules pgsql.yml: pg:db:deadlocks_5m".to_owned(),
            metric: "pg_db_deadlocks".to_owned(),
        }),
        "{findings:?}"
    );
    // ... or from Patroni.
    let mut without = known.clone();
    assert!(without.emitted.remove("patroni_cluster_unlocked"));
    let (findings, _) = references::check(&exprs, &without);
    assert!(
        findings.contains(&Finding::Missing {
            origin: "rules patroni.yml: patroni:cls:unlocked".to_owned(),
            metric: "patroni_cluster_unlocked".to_owned(),
        }),
        "{findings:?}"
    );
    // ... and when a dashboard refers to a metric under a name nobody emits.
    let mutated = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(dashboards_dir().join("pgsql-database.json")).unwrap();
    let renamed = original.replace("pg_db_numbackends{", "pg_db_num_backends{");
    assert_ne!(original, renamed);
    std::fs::write(mutated.path().join("pgsql-database.json"), renamed).unwrap();
    let (findings, _) = references::check(&expressions(mutated.path()), &known);
    let missing: Vec<String> = findings
        .iter()
        .filter_map(|f| match f {
            Finding::Missing { origin, metric } if origin.starts_with("pgsql-database:") => {
                Some(metric.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(missing, ["pg_db_num_backends"], "{findings:?}");

    let (ok, err) = stderr_of(long_transaction);
    assert!(ok, "{err}");
    drop(agents);
    drop(vm);
    drop(patroni);
    drop(cluster);
}

#[test]
fn recorded_names_are_inlined_for_evaluation() {
    let records: BTreeMap<String, String> = [
        ("a:ins:x".to_owned(), "m_x or m_y".to_owned()),
        (
            "a:cls:x".to_owned(),
            "sum by (cls) ((m_x or m_y))".to_owned(),
        ),
    ]
    .into();
    assert_eq!(
        inline_records(
            r#"changes(a:ins:x[10m]) > 0 and a:ins:x == 1 unless a:cls:x + on(i) m_z{i="a:ins:x"}"#,
            &records
        ),
        r#"changes((m_x or m_y)[10m:1s]) > 0 and (m_x or m_y) == 1 unless (sum by (cls) ((m_x or m_y))) + on(i) m_z{i="a:ins:x"}"#
    );
    // Names that only start like a recorded one stay.
    assert_eq!(
        inline_records("a:ins:x_changes", &records),
        "a:ins:x_changes"
    );
}
