//! The shared cluster (PostgreSQL 15 primary + streaming replica + Pgbouncer + pgBackRest + two
//! extra databases) and an own primary/replica pair for promotion.

use std::time::Duration;

use test_harness::{
    BackupType, ClusterBuilder, PASSWORD_USER, PgVersion, Pgbouncer, REPLICATION_PASSWORD,
    shared_cluster,
};

#[test]
fn replica_streams_and_follows_the_primary() {
    let cluster = shared_cluster();
    let primary = cluster.primary();
    let replica = cluster.replica();

    let rows = primary
        .query(
            "postgres",
            "SELECT application_name, state FROM pg_stat_replication",
        )
        .unwrap();
    assert!(
        rows.lines()
            .any(|r| r == format!("{}|streaming", replica.name())),
        "pg_stat_replication: {rows:?}"
    );
    assert_eq!(
        replica
            .query("postgres", "SELECT pg_is_in_recovery()")
            .unwrap(),
        "t"
    );

    let conninfo = replica.query("postgres", "SHOW primary_conninfo").unwrap();
    assert!(
        conninfo.contains(&format!("password='{REPLICATION_PASSWORD}'"))
            || conninfo.contains(&format!("password={REPLICATION_PASSWORD} ")),
        "primary_conninfo has no password: {conninfo}"
    );

    primary
        .execute(
            "db1",
            "CREATE TABLE appears_on_replica AS SELECT 42 AS answer;",
        )
        .unwrap();
    let mut seen = String::new();
    for _ in 0..100 {
        if let Ok(v) = replica.query("db1", "SELECT answer FROM appears_on_replica") {
            seen = v;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, "42");
}

#[test]
fn extra_databases_and_password_role() {
    let primary = shared_cluster().primary();
    for db in ["db1", "db2"] {
        assert_eq!(
            primary.query(db, "SELECT count(*) FROM t3").unwrap(),
            "1000"
        );
    }
    // scram-sha-256 over TCP for the password role.
    let mut psql = primary.client_command("psql", "postgres").unwrap();
    let out = psql
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &primary.password_url("postgres"),
            "-c",
        ])
        .arg("SELECT current_user, pg_has_role('pg_monitor', 'member')")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{PASSWORD_USER}|t")
    );
    // A wrong password is refused.
    let bad = primary
        .password_url("postgres")
        .replace(test_harness::PASSWORD_USER_PASSWORD, "wrong");
    let out = primary
        .client_command("psql", "postgres")
        .unwrap()
        .args(["-X", "-d", &bad, "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

#[test]
fn tls_verify_full_and_server_logs() {
    let primary = shared_cluster().primary();
    for mode in ["require", "verify-ca", "verify-full"] {
        let out = primary
            .client_command("psql", "postgres")
            .unwrap()
            .env_remove("PGSSLMODE")
            .args([
                "-X",
                "-A",
                "-t",
                "-d",
                &primary.ssl_url("postgres", mode),
                "-c",
            ])
            .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "t",
            "sslmode={mode}"
        );
    }
    let names: Vec<String> = std::fs::read_dir(primary.log_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".csv")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".json")), "{names:?}");
    assert_eq!(
        primary
            .query("postgres", "SELECT count(*) > 0 FROM pg_stat_statements")
            .unwrap(),
        "t"
    );
}

#[test]
fn pgbouncer_proxies_queries() {
    let bouncer = shared_cluster().pgbouncer();
    let run = |url: &str, sql: &str| {
        let out = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-A", "-t", "-d", url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run(&bouncer.url("db2"), "SELECT count(*) FROM t1"), "1000");
    assert_eq!(
        run(
            &bouncer.url(test_harness::pgbouncer::SINGLE_POOL_DB),
            "SELECT 1"
        ),
        "1"
    );
    let pools = run(&bouncer.admin_url(), "SHOW POOLS");
    assert!(pools.contains("db2|postgres"), "{pools}");
    let stats = run(&bouncer.stats_url(), "SHOW STATS");
    assert!(stats.contains("db2"), "{stats}");
}

#[test]
fn own_pgbouncer_restarts_on_the_same_port() {
    // An own Pgbouncer in front of the shared primary, so the shared one is left alone.
    let bouncer = Pgbouncer::start(shared_cluster().primary()).unwrap();
    let port = bouncer.port();
    let pid = bouncer.pid().unwrap();
    bouncer.restart().unwrap();
    assert_eq!(bouncer.port(), port);
    assert_ne!(bouncer.pid().unwrap(), pid);
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &bouncer.url("db1"),
            "-c",
            "SELECT count(*) FROM t2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
}

#[test]
fn full_backup_shows_in_info() {
    let backrest = shared_cluster().pgbackrest();
    backrest.backup(BackupType::Full).unwrap();
    let info = backrest.info_json().unwrap();
    let stanza = &info[0];
    assert_eq!(stanza["name"], backrest.stanza());
    assert_eq!(stanza["status"]["code"], 0, "{info}");
    let backups = stanza["backup"].as_array().unwrap();
    assert!(backups.iter().any(|b| b["type"] == "full"), "{info}");
}

#[test]
fn replica_can_be_promoted() {
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .replica()
        .start()
        .unwrap();
    let replica = cluster.replica();
    replica.promote().unwrap();
    assert!(!replica.is_in_recovery().unwrap());
    replica
        .execute("postgres", "CREATE TABLE written_after_promotion (x int);")
        .unwrap();
}
