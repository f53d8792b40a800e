//! pg_exporter: PostgreSQL metrics on :9630 from YAML-defined SQL collectors, a drop-in
//! replacement for the Go pg_exporter (same flags, config, endpoints and metric names).

use std::process::ExitCode;

use sql_collector::app::{Flavor, main as run};

fn main() -> ExitCode {
    run(&Flavor {
        name: "pg_exporter",
        title: "PG Exporter",
        default_listen: ":9630",
        default_url: "postgresql:///?sslmode=disable",
        auto_discovery: true,
        config_candidates: &sql_collector::config::DEFAULT_CONFIG_CANDIDATES,
    })
}
