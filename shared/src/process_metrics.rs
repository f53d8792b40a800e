//! Process self-metrics with the names and help texts of Go's process collector
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read from `/proc`.
//!
//! Dashboards built for the Go exporters chart these; [`encode`] writes them with
//! [`TextEncoder`](crate::exposition::TextEncoder).

use std::fs;

use crate::exposition::{MetricType, TextEncoder};

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every architecture the
/// kernel supports for its user ABI.
const USER_HZ: f64 = 100.0;

/// A snapshot of this process's resource use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_memory_bytes: f64,
    /// Virtual memory size, bytes.
    pub virtual_memory_bytes: f64,
    /// Address-space limit, bytes (-1 when unlimited, as Go reports it).
    pub virtual_memory_max_bytes: f64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// Soft limit of open file descriptors.
    pub max_fds: f64,
}

impl ProcessStats {
    /// Reads the current process's figures from `/proc/self`.
    pub fn read() -> std::io::Result<ProcessStats> {
        let stat = fs::read_to_string("/proc/self/stat")?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after_comm = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| std::io::Error::other("malformed /proc/self/stat"))?;
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // `fields[0]` is field 3 (state) of proc(5).
        let field = |n: usize| -> f64 {
            fields
                .get(n - 3)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let utime = field(14);
        let stime = field(15);
        let start_ticks = field(22);
        let vsize = field(23);

        let boot_time = fs::read_to_string("/proc/stat")?
            .lines()
            .find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);

        let rss_kib = fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);

        let limits = fs::read_to_string("/proc/self/limits")?;
        let soft_limit = |name: &str| -> f64 {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l[name.len()..].split_whitespace().next())
                .map(|v| {
                    if v == "unlimited" {
                        -1.0
                    } else {
                        v.parse().unwrap_or(-1.0)
                    }
                })
                .unwrap_or(-1.0)
        };

        let open_fds = fs::read_dir("/proc/self/fd")?.count() as f64;

        Ok(ProcessStats {
            cpu_seconds: (utime + stime) / USER_HZ,
            resident_memory_bytes: rss_kib * 1024.0,
            virtual_memory_bytes: vsize,
            virtual_memory_max_bytes: soft_limit("Max address space"),
            start_time_seconds: boot_time + start_ticks / USER_HZ,
            open_fds,
            max_fds: soft_limit("Max open files"),
        })
    }
}

/// Go's `GOARCH` name of the architecture this binary was built for (`amd64`, `arm64`, `386`,
/// `ppc64le`, …): the `goarch` label of every agent's `*_build_info`, as the Go exporters
/// report it.
pub fn goarch() -> &'static str {
    let little_endian = cfg!(target_endian = "little");
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "loongarch64" => "loong64",
        "powerpc64" if little_endian => "ppc64le",
        "powerpc64" => "ppc64",
        "powerpc" => "ppc",
        "mips" if little_endian => "mipsle",
        "mips64" if little_endian => "mips64le",
        // arm, riscv64, s390x, mips, mips64, sparc64, wasm32 …: the same word in Go.
        other => other,
    }
}

/// Writes the self-metrics every agent exposes: the `process_*` families of Go's process
/// collector, then the serving kit's `web_config_*` reload health
/// ([`encode_web_config_metrics`](crate::server::encode_web_config_metrics)). The `process_*`
/// families are left out if `/proc` cannot be read (the rest of the exposition must not fail
/// because of it).
pub fn encode(enc: &mut TextEncoder<'_>) {
    encode_process(enc);
    crate::server::encode_web_config_metrics(enc);
}

fn encode_process(enc: &mut TextEncoder<'_>) {
    let Ok(s) = ProcessStats::read() else {
        return;
    };
    let none: &[(&str, &str)] = &[];
    let families = [
        (
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            MetricType::Counter,
            s.cpu_seconds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            MetricType::Gauge,
            s.max_fds,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            MetricType::Gauge,
            s.open_fds,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            MetricType::Gauge,
            s.resident_memory_bytes,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            MetricType::Gauge,
            s.start_time_seconds,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            MetricType::Gauge,
            s.virtual_memory_bytes,
        ),
        (
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            MetricType::Gauge,
            s.virtual_memory_max_bytes,
        ),
    ];
    for (name, help, kind, value) in families {
        enc.family(name, help, kind).sample(none, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_plausible() {
        // Burn a little CPU so the counter is measurably positive.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = ProcessStats::read().unwrap();
        assert!(s.cpu_seconds > 0.0, "{s:?}");
        assert!(s.resident_memory_bytes > 1024.0 * 1024.0, "{s:?}");
        assert!(s.virtual_memory_bytes >= s.resident_memory_bytes, "{s:?}");
        assert!(s.open_fds >= 3.0 && s.open_fds <= s.max_fds, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 3600.0,
            "{s:?}"
        );
    }

    #[test]
    fn goarch_is_gos_name() {
        let want = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        assert_eq!(goarch(), want);
    }

    #[test]
    fn encodes_go_names() {
        let mut body = String::new();
        encode(&mut TextEncoder::new(&mut body));
        for name in [
            "# TYPE process_cpu_seconds_total counter",
            "\nprocess_resident_memory_bytes ",
            "\nprocess_start_time_seconds ",
            "\nprocess_open_fds ",
            "\nprocess_max_fds ",
            "# TYPE web_config_reload_failures_total counter\nweb_config_reload_failures_total 0\n",
            "# TYPE web_config_last_reload_successful gauge\nweb_config_last_reload_successful 1\n",
        ] {
            assert!(body.contains(name), "{name} missing in {body}");
        }
    }
}
