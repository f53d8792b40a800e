//! A primary of every other major version (13, 14, 16, 17, 18, from the npm builds) starts,
//! reports its `server_version_num` and has a working `pg_stat_statements`; Debian's
//! PostgreSQL 15 `pgbench` drives the oldest and the newest.

use test_harness::{PgVersion, PostgresBuilder};

fn check_version(version: PgVersion, with_pgbench: bool) {
    let pg = PostgresBuilder::new(version).start().unwrap();
    let num = pg.server_version_num().unwrap();
    assert_eq!(
        num / 10_000,
        version.major(),
        "server_version_num {num} for {version}"
    );

    pg.execute(
        "postgres",
        "CREATE TABLE probe (x int); INSERT INTO probe VALUES (1), (2);",
    )
    .unwrap();
    assert_eq!(
        pg.query("postgres", "SELECT sum(x) FROM probe").unwrap(),
        "3"
    );
    let calls: i64 = pg
        .query_scalar(
            "postgres",
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
             WHERE query LIKE 'SELECT sum(x) FROM probe%'",
        )
        .unwrap();
    assert!(
        calls >= 1,
        "pg_stat_statements saw {calls} calls on {version}"
    );
    assert_eq!(
        pg.query("postgres", "SHOW ssl").unwrap(),
        "on",
        "ssl should be on for {version}"
    );
    if with_pgbench {
        // Debian's PostgreSQL 15 pgbench drives the other majors over TCP.
        let out = pg
            .pgbench_command("postgres")
            .unwrap()
            .args(["-i", "-q", "-s", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = pg
            .pgbench_command("postgres")
            .unwrap()
            .args(["-n", "-S", "-t", "50"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("number of transactions actually processed: 50")
        );
    }
}

#[test]
fn postgres_13() {
    check_version(PgVersion::V13, true);
}

#[test]
fn postgres_14() {
    check_version(PgVersion::V14, false);
}

#[test]
fn postgres_16() {
    check_version(PgVersion::V16, false);
}

#[test]
fn postgres_17() {
    check_version(PgVersion::V17, false);
}

#[test]
fn postgres_18() {
    check_version(PgVersion::V18, true);
}
