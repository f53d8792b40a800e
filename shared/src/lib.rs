//! What every agent of the suite shares, so that they all serve, log and take flags the same
//! way as the Go exporters they replace.
//!
//! - [`allocator`]: jemalloc for every agent, and why;
//! - [`cli`]: the `--web.*` and `--log.*` flags;
//! - [`entry`]: the shared `main` (flags, logging, runtime, exit codes);
//! - [`server`]: the HTTP server (TLS, basic auth, landing page, graceful shutdown, SIGHUP
//!   reload hook);
//! - [`web_config`]: the exporter-toolkit `--web.config.file`;
//! - [`exposition`]: Prometheus text format 0.0.4 with names kept byte-identical;
//! - [`process_metrics`]: the self-metrics every agent exposes: Go-compatible `process_*` and
//!   the web-config reload health;
//! - [`logging`]: logfmt or JSON logs with tracing;
//! - [`redact`]: masking of secrets: in connection strings, free text, shipped log records, HTTP
//!   endpoints, and known secret values;
//! - [`sync`]: the one way a lock is taken (a poisoned mutex is used as it is, and why);
//! - [`yaml`]: YAML config files parsed with a guard against pathological nesting and errors
//!   placed at a line and column.

pub mod allocator;
pub mod cli;
pub mod entry;
pub mod exposition;
pub mod logging;
pub mod process_metrics;
pub mod redact;
pub mod server;
pub mod sync;
pub mod web_config;
pub mod yaml;
