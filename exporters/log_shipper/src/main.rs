//! log_shipper: tails PostgreSQL, Patroni, Pgbouncer and pgBackRest logs and ships them to
//! VictoriaLogs, Loki or a file, at-least-once, with its own metrics on :9598.
//!
//! ```text
//! log_shipper --config /etc/log_shipper.yml [--web.listen-address :9598] [--dry-run]
//! ```
//!
//! The program (flags, route, wiring, signals) is [`log_pipeline::app`]; the allocator is
//! agent-kit's (jemalloc).

use std::process::ExitCode;

fn main() -> ExitCode {
    log_pipeline::app::main()
}
