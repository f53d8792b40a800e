//! pgbouncer_exporter: Pgbouncer metrics on :9631 from its admin console (database
//! `pgbouncer`), the Go pg_exporter in Pgbouncer mode as Pigsty runs it (same flags, config,
//! endpoints and metric names).

use std::process::ExitCode;

use sql_collector::app::{Flavor, main as run};

fn main() -> ExitCode {
    run(&Flavor {
        name: "pgbouncer_exporter",
        title: "Pgbouncer Exporter",
        default_listen: ":9631",
        default_url: "postgresql://:6432/pgbouncer?sslmode=disable",
        auto_discovery: false,
        // Pigsty's file first, then the paths the Go pg_exporter would try.
        config_candidates: &[
            "pgbouncer_exporter.yml",
            "/etc/pgbouncer_exporter.yml",
            "/etc/pgbouncer_exporter",
            "/etc/pg_exporter.yml",
            "/etc/pg_exporter",
        ],
    })
}
