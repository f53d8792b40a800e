//! What of a Patroni cluster still runs or is left on disk.

use std::fs;
use std::path::PathBuf;

use anyhow::Result;

/// What identifies the processes and files of one [`PatroniCluster`]: its directories (in
/// the command lines of Patroni, the postmasters and etcd) and its scope (PostgreSQL's
/// `cluster_name`, in every backend's process title `postgres: <scope>: …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// The cluster's directory and etcd's.
    pub dirs: Vec<PathBuf>,
    /// The scope.
    pub scope: String,
}

impl Footprint {
    /// Live processes (not zombies) belonging to the cluster: PID and command line.
    pub fn processes(&self) -> Vec<(u32, String)> {
        let title = format!("postgres: {}: ", self.scope);
        let mut found = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || !pid_alive(pid) {
                continue;
            }
            let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let ours = cmdline.starts_with(&title)
                || self
                    .dirs
                    .iter()
                    .any(|d| cmdline.contains(d.to_string_lossy().as_ref()));
            if ours {
                found.push((pid, cmdline.trim_end().to_owned()));
            }
        }
        found
    }

    /// The directories that still exist.
    pub fn leftover_dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().filter(|d| d.exists()).cloned().collect()
    }

    /// True when no process runs and no directory is left.
    pub fn is_gone(&self) -> bool {
        self.processes().is_empty() && self.leftover_dirs().is_empty()
    }
}

/// True while `pid` exists and is not a zombie.
pub(super) fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}
