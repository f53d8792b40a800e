//! The engine of `log_shipper`: a small, at-least-once log tailer for the logs of a PostgreSQL
//! HA node (PostgreSQL csvlog/jsonlog, Patroni, Pgbouncer, pgBackRest), shipping to
//! VictoriaLogs, Loki, or a JSON-lines file.
//!
//! Modules by stage, each using only those listed after it (no import cycle: `cargo test -p
//! test-harness --test module_graph`):
//!
//! - [`app`]: the program `log_shipper` (flags, route, wiring, signals, reloads); the binary
//!   only calls [`app::main`];
//! - [`pipeline`]: wiring sources to sinks with bounded buffers (backpressure), a
//!   checkpointer per source;
//! - [`source`]: what reads records: [`source::tailer`] (files: discovery, rotation,
//!   truncation) and [`source::journald`] (the journal through `journalctl`);
//! - [`sink`]: batching, delivery with retries, dead letters, disk buffers, encoders;
//! - [`config`]: the YAML config, validated with errors that name the field;
//! - [`stats`]: the shipper's own metrics, and metrics derived from PostgreSQL logs (events by
//!   severity and SQLSTATE class, statement durations by database);
//! - [`checkpoint`]: positions acknowledged by every sink, written atomically, one
//!   checkpointer loop for every kind of source;
//! - [`parse`]: record framing (multi-line records) and the parsers of each format;
//! - [`expand`]: glob expansion bounded under any tree (loops, links, limits, only regular
//!   files, cancellable);
//! - [`chunk`]: the records a source hands to its sinks in one turn (the data between stages);
//! - [`record`]: the output schema Pigsty's log dashboards query;
//! - [`identity`]: file identity (device + inode + head hash) and stream ids;
//! - [`format`]: the formats of a source's files.
//!
//! Delivery is at-least-once: a checkpoint only moves over data that every sink subscribed to
//! the source has acknowledged, so a crash or an outage re-sends at most the unacknowledged
//! tail and never loses data still on disk.

pub mod app;
pub mod checkpoint;
pub mod chunk;
pub mod config;
pub mod expand;
pub mod format;
pub mod identity;
pub mod parse;
pub mod pipeline;
pub mod record;
pub mod sink;
pub mod source;
pub mod stats;
