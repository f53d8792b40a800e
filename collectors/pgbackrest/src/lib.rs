//! The engine of `pgbackrest_exporter`: pgBackRest backup, archive and repository metrics with
//! the names and labels of woblerr/pgbackrest_exporter v0.23.
//!
//! - [`command`]: runs `pgbackrest` in its own process group, as the repository owner if asked,
//!   with a timeout that kills the whole group;
//! - [`info`]: parses `pgbackrest info --output=json` leniently (unknown fields and codes,
//!   `null`s, integers beyond 2^53, a bad part left out without hiding the rest);
//! - [`collector`]: the background collection loop and the [`collector::State`] it keeps
//!   (last good data, failures, ages);
//! - [`metrics`]: renders the state at scrape time;
//! - [`http`]: the metrics route.
//!
//! ```no_run
//! # async fn run() {
//! use pgbackrest_collector::collector::{Collector, Settings};
//! let collector = Collector::new(Settings::default());
//! tokio::spawn(collector.clone().run(std::future::pending()));
//! let app = pgbackrest_collector::http::router(collector, "/metrics");
//! # let _ = app; }
//! ```

pub mod collector;
pub mod command;
pub mod http;
pub mod info;
pub mod metrics;
