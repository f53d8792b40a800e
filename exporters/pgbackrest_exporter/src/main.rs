//! pgbackrest_exporter: pgBackRest backup, archive and repository metrics on :9854, a drop-in
//! replacement for woblerr/pgbackrest_exporter v0.23 (same flags, metric names and labels).
//! Flags of our own: `--collect.timeout`, `--backrest.binary`, `--backrest.user`,
//! `--backrest.backup-limit`, `--[no-]backrest.wal-age`.
//!
//! pgBackRest must run as the repository's owner (usually `postgres`): run the exporter as that
//! user (Pigsty's and upstream's systemd units do), or, when it runs as root, pass
//! `--backrest.user=postgres` and it runs only pgbackrest as that user.
//!
//! The program (flags, routes, wiring) is [`pgbackrest_collector::app`].

use std::process::ExitCode;

fn main() -> ExitCode {
    pgbackrest_collector::app::main()
}
