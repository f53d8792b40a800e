//! Command-line conventions shared by every agent: the `--web.*` and `--log.*` flags of the
//! Prometheus exporters we replace, with the same spellings and defaults.
//!
//! Binaries flatten [`WebArgs`] and [`LogArgs`] into their own clap parser and pick their
//! default port with [`WebArgs::listen_addresses_or`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

/// The `--web.*` flags of the Prometheus exporter toolkit.
#[derive(Debug, Clone, Args)]
pub struct WebArgs {
    /// Addresses on which to expose metrics and the web interface; repeatable.
    /// Go forms are accepted: `:9630`, `0.0.0.0:9630`, `127.0.0.1:9630`, `[::1]:9630`,
    /// `localhost:9630`.
    #[arg(long = "web.listen-address", value_name = "ADDRESS")]
    pub listen_addresses: Vec<ListenAddress>,

    /// Path under which to expose metrics.
    #[arg(
        long = "web.telemetry-path",
        value_name = "PATH",
        default_value = "/metrics"
    )]
    pub telemetry_path: String,

    /// Path to a web configuration file (exporter-toolkit format) enabling TLS and/or
    /// basic authentication.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Use systemd socket activation listeners instead of port listeners (Linux only).
    #[arg(long = "web.systemd-socket")]
    pub systemd_socket: bool,
}

impl WebArgs {
    /// The addresses to listen on: those given on the command line, else `default`
    /// (each binary has its own port, e.g. `:9630`).
    pub fn listen_addresses_or(&self, default: &str) -> Vec<ListenAddress> {
        if self.listen_addresses.is_empty() {
            vec![
                default
                    .parse()
                    .expect("built-in default listen address is valid"),
            ]
        } else {
            self.listen_addresses.clone()
        }
    }

    /// Checks `--web.telemetry-path` as the Go pg_exporter does: absolute, canonical, without
    /// query, fragment or braces, and not shadowing one of the binary's own `reserved` routes.
    pub fn validate_telemetry_path(&self, reserved: &[&str]) -> Result<(), String> {
        let path = self.telemetry_path.as_str();
        if !path.starts_with('/') {
            return Err(format!("telemetry path {path:?} must start with '/'"));
        }
        if path.contains(['?', '#', '{', '}']) {
            return Err(format!(
                "telemetry path {path:?} must not contain '?', '#', '{{' or '}}'"
            ));
        }
        let canonical_segments = path
            .split('/')
            .skip(1)
            .enumerate()
            .all(|(i, s)| s != "." && s != ".." && (!s.is_empty() || (i == 0 && path == "/")));
        if !canonical_segments || path == "/" {
            return Err(format!(
                "telemetry path {path:?} is not a canonical path (no '//', '.', '..', trailing '/', or bare '/')"
            ));
        }
        if reserved.contains(&path) {
            return Err(format!(
                "telemetry path {path:?} clashes with a built-in endpoint"
            ));
        }
        Ok(())
    }
}

/// The `--log.*` flags of the Prometheus exporters.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_name = "LEVEL", default_value = "info",
          value_parser = ["debug", "info", "warn", "error"])]
    pub level: String,

    /// Output format of log messages.
    #[arg(long = "log.format", value_name = "FORMAT", default_value = "logfmt",
          value_parser = ["logfmt", "json"])]
    pub format: String,
}

/// One `--web.listen-address` value.
///
/// Go's `net.Listen` accepts `host:port` where the host may be empty (all interfaces), an IPv4
/// or bracketed IPv6 literal, or a name to resolve; this type keeps that meaning.
///
/// ```
/// use agent_kit::cli::ListenAddress;
/// let all: ListenAddress = ":9630".parse().unwrap();
/// assert_eq!(all.port(), 9630);
/// assert!("[::1]:9630".parse::<ListenAddress>().is_ok());
/// assert!("9630".parse::<ListenAddress>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `:port`: every interface, IPv6 and IPv4 when the host supports dual-stack sockets.
    AllInterfaces(u16),
    /// A literal address.
    Socket(SocketAddr),
    /// A host name resolved when binding.
    Host(String, u16),
}

impl ListenAddress {
    /// The port part.
    pub fn port(&self) -> u16 {
        match self {
            ListenAddress::AllInterfaces(p) | ListenAddress::Host(_, p) => *p,
            ListenAddress::Socket(s) => s.port(),
        }
    }

    /// Candidate socket addresses to bind, in order of preference.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok(match self {
            ListenAddress::AllInterfaces(p) => vec![
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *p),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *p),
            ],
            ListenAddress::Socket(s) => vec![*s],
            ListenAddress::Host(h, p) => tokio::net::lookup_host((h.as_str(), *p)).await?.collect(),
        })
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::AllInterfaces(p) => write!(f, ":{p}"),
            ListenAddress::Socket(s) => write!(f, "{s}"),
            ListenAddress::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("listen address {s:?} lacks a port (use host:port or :port)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("listen address {s:?} has an invalid port {port:?}"))?;
        if host.is_empty() {
            return Ok(ListenAddress::AllInterfaces(port));
        }
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: Ipv6Addr = v6
                .parse()
                .map_err(|_| format!("listen address {s:?} has an invalid IPv6 address"))?;
            return Ok(ListenAddress::Socket(SocketAddr::new(IpAddr::V6(ip), port)));
        }
        if host.contains(':') {
            return Err(format!(
                "listen address {s:?}: IPv6 addresses must be written in brackets, e.g. [::1]:{port}"
            ));
        }
        match host.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(ListenAddress::Socket(SocketAddr::new(IpAddr::V4(ip), port))),
            Err(_) => Ok(ListenAddress::Host(host.to_owned(), port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        web: WebArgs,
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn listen_address_forms_of_go_exporters() {
        assert_eq!(
            ":9630".parse::<ListenAddress>().unwrap(),
            ListenAddress::AllInterfaces(9630)
        );
        assert_eq!(
            "0.0.0.0:9630".parse::<ListenAddress>().unwrap(),
            ListenAddress::Socket("0.0.0.0:9630".parse().unwrap())
        );
        assert_eq!(
            "127.0.0.1:9630".parse::<ListenAddress>().unwrap(),
            ListenAddress::Socket("127.0.0.1:9630".parse().unwrap())
        );
        assert_eq!(
            "[::1]:9630".parse::<ListenAddress>().unwrap(),
            ListenAddress::Socket("[::1]:9630".parse().unwrap())
        );
        assert_eq!(
            "localhost:9630".parse::<ListenAddress>().unwrap(),
            ListenAddress::Host("localhost".into(), 9630)
        );
        for bad in ["9630", ":99999", "::1:9630", "[::zz]:1", "host:port"] {
            assert!(bad.parse::<ListenAddress>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn flags_parse_with_defaults_and_repeats() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.web.telemetry_path, "/metrics");
        assert_eq!(
            cli.web.listen_addresses_or(":9630"),
            vec![ListenAddress::AllInterfaces(9630)]
        );
        assert_eq!(cli.log.level, "info");
        assert_eq!(cli.log.format, "logfmt");

        let cli = Cli::parse_from([
            "x",
            "--web.listen-address=127.0.0.1:1",
            "--web.listen-address",
            "[::1]:2",
            "--log.format=json",
            "--log.level=debug",
        ]);
        assert_eq!(cli.web.listen_addresses_or(":9630").len(), 2);
        assert_eq!(cli.log.format, "json");
        assert!(Cli::try_parse_from(["x", "--log.format=xml"]).is_err());
    }

    #[test]
    fn telemetry_path_validation() {
        let mut cli = Cli::parse_from(["x"]);
        assert!(cli.web.validate_telemetry_path(&["/up"]).is_ok());
        for bad in ["metrics", "/a//b", "/a/", "/a?x", "/", "/up", "/a/../b"] {
            cli.web.telemetry_path = bad.into();
            assert!(
                cli.web.validate_telemetry_path(&["/up"]).is_err(),
                "{bad} accepted"
            );
        }
        cli.web.telemetry_path = "/x/metrics".into();
        assert!(cli.web.validate_telemetry_path(&["/up"]).is_ok());
    }
}
