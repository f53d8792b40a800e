//! log_shipper: tails PostgreSQL, Patroni, Pgbouncer and pgBackRest logs and ships them to
//! VictoriaLogs, Loki or a file, at-least-once, with its own metrics on :9598.
//!
//! ```text
//! log_shipper --config /etc/log_shipper.yml [--web.listen-address :9598] [--dry-run]
//! ```
//!
//! The program (flags, route, wiring, signals) is [`log_pipeline::app`].

use std::process::ExitCode;

/// jemalloc: parsing allocates a handful of small strings per record on the tailer thread,
/// freed on a sink's thread once delivered; glibc's malloc spent about a third of the parsing
/// time on them. mimalloc was as fast but tripled the peak RSS (see the README's Benchmarks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    log_pipeline::app::main()
}
