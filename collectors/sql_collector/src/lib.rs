//! The SQL collector engine shared by pg_exporter and pgbouncer_exporter: collectors defined
//! in YAML (the Go pg_exporter's format), planned per server from its facts, executed with
//! timeouts and a TTL cache, across auto-discovered databases.
//!
//! - [`config`]: the YAML model, validation and loading;
//! - [`conninfo`]: libpq-compatible connection strings, environment and `.pgpass`, TLS;
//! - [`planner`]: which collectors run where;
//! - [`collector`] and [`connection`]: one execution and its conversion into samples;
//! - [`server`]: pre-check, plan and cached scrape of one database connection;
//! - [`exporter`]: the whole instance with discovery, self-metrics and health.

pub mod app;
pub mod collector;
pub mod config;
pub mod connection;
pub mod conninfo;
pub mod exporter;
pub mod pgbouncer;
pub mod planner;
pub mod server;
pub mod value;

/// The collector set compiled into the binaries, used when no config file is found.
pub mod default_config {
    include!(concat!(env!("OUT_DIR"), "/default_config.rs"));

    /// The built-in set, merged as a config directory would be.
    pub fn load() -> Result<crate::config::CollectorSet, crate::config::ConfigError> {
        crate::config::from_embedded(FILES)
    }
}
