//! The engine of `pgbackrest_exporter`: pgBackRest backup, archive and repository metrics with
//! the names and labels of woblerr/pgbackrest_exporter v0.23.
//!
//! Modules, each using only those listed after it:
//! - [`app`]: the program `pgbackrest_exporter` (flags, routes, wiring); the binary only calls
//!   [`app::main`];
//! - [`collector`]: the background collection loop, which runs the commands and records what
//!   they print in its [`state::State`];
//! - [`metrics`]: renders the state at scrape time;
//! - [`state`]: what a collection keeps and a scrape renders (last good data, failures, ages)
//!   and the rules that read it;
//! - [`settings`]: what to collect and the pgbackrest command lines it makes;
//! - [`command`]: runs `pgbackrest` in its own process group, as the repository owner if asked,
//!   with a timeout that kills the whole group, its standard error with secrets masked;
//! - [`info`]: parses `pgbackrest info --output=json` leniently (unknown fields and codes,
//!   `null`s, integers beyond 2^53, a bad part left out without hiding the rest).
//!
//! ```no_run
//! # async fn run() {
//! use pgbackrest_collector::collector::Collector;
//! use pgbackrest_collector::settings::Settings;
//! let collector = Collector::new(Settings::default());
//! tokio::spawn(collector.clone().run(std::future::pending()));
//! let app = pgbackrest_collector::app::router(collector, "/metrics");
//! # let _ = app; }
//! ```

pub mod app;
pub mod collector;
pub mod command;
pub mod info;
pub mod metrics;
pub mod settings;
pub mod state;
