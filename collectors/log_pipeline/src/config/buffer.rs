//! `sinks.<name>.buffer`: the chunks buffered in memory in front of a sink, and the optional
//! disk buffer behind them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::units::ByteSize;
use super::{ConfigError, invalid};

/// The largest `buffer.max_chunks` (each holds up to 128 KiB of input in memory).
pub const MAX_CHUNKS_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawBufferKind {
    #[default]
    Memory,
    Disk,
}

/// What a sink does with new records when its disk buffer is full (Vector's `when_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Reading pauses until the sink frees space (backpressure; the files are the buffer).
    #[default]
    Block,
    /// The records are dropped, counted and logged; reading goes on.
    DropNewest,
}

/// The smallest disk buffer accepted.
pub const DISK_BUFFER_MIN_SIZE: u64 = 64 * 1024;

/// An optional, size-bounded disk buffer in front of a sink: records count as acknowledged
/// by the sink once they are on disk (fsynced), so reading goes on through an outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBufferConfig {
    /// Its directory (default `<checkpoint_dir>/buffer/<sink>`).
    pub path: PathBuf,
    /// Disk space the buffer may use, in bytes.
    pub max_size: u64,
    /// What happens when it is full.
    pub when_full: WhenFull,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuffer {
    #[serde(rename = "type", default)]
    kind: RawBufferKind,
    max_chunks: Option<usize>,
    max_size: Option<ByteSize>,
    when_full: Option<WhenFull>,
    path: Option<PathBuf>,
}

pub(super) fn validate(
    name: &str,
    b: &RawBuffer,
    checkpoint_dir: &Path,
) -> Result<(usize, Option<DiskBufferConfig>), ConfigError> {
    let f = |k: &str| format!("sinks.{name}.buffer.{k}");
    let buffer_chunks = b.max_chunks.unwrap_or(16);
    if buffer_chunks == 0 {
        return Err(invalid(f("max_chunks"), "must be positive"));
    }
    if buffer_chunks > MAX_CHUNKS_MAX {
        return Err(invalid(
            f("max_chunks"),
            format!(
                "must be at most {MAX_CHUNKS_MAX} (each chunk holds up to 128KiB of input in memory)"
            ),
        ));
    }
    if b.kind == RawBufferKind::Memory {
        for (present, key) in [
            (b.max_size.is_some(), "max_size"),
            (b.when_full.is_some(), "when_full"),
            (b.path.is_some(), "path"),
        ] {
            if present {
                return Err(invalid(
                    f(key),
                    "only with type: disk (a memory buffer always blocks when full)",
                ));
            }
        }
        return Ok((buffer_chunks, None));
    }
    let max_size = b
        .max_size
        .ok_or_else(|| invalid(f("max_size"), "is required with type: disk"))?
        .0;
    if max_size < DISK_BUFFER_MIN_SIZE {
        return Err(invalid(
            f("max_size"),
            format!("must be at least 64KiB ({DISK_BUFFER_MIN_SIZE} bytes)"),
        ));
    }
    let path = match &b.path {
        Some(p) if !p.is_absolute() => {
            return Err(invalid(f("path"), "must be an absolute path"));
        }
        Some(p) => p.clone(),
        None => checkpoint_dir.join("buffer").join(name),
    };
    if path == checkpoint_dir {
        return Err(invalid(f("path"), "must not be the checkpoint_dir itself"));
    }
    Ok((
        buffer_chunks,
        Some(DiskBufferConfig {
            path,
            max_size,
            when_full: b.when_full.unwrap_or_default(),
        }),
    ))
}
