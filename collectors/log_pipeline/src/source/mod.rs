//! Sources: what reads records and hands them to the sinks, in [`Chunk`](crate::chunk::Chunk)s
//! through bounded channels, registering every stream with the source's
//! [`SourceProgress`](crate::checkpoint::SourceProgress).
//!
//! - [`tailer`]: files found by globs, followed through rotation and truncation (a thread per
//!   source);
//! - [`journald`]: the systemd journal through `journalctl` (a task per source).
//!
//! Both count what parsing ran into and apply the level filter the same way ([`admit`]).

pub mod journald;
pub mod tailer;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::Sender;

use crate::checkpoint::SourceProgress;
use crate::chunk::Chunk;
use crate::config::Source;
use crate::parse::ParseFlags;
use crate::record::{Level, Record};
use crate::stats::{SourceCounters, Stats};

/// What every source needs, whatever it reads.
#[derive(Debug)]
pub struct SourceSetup {
    /// Index of the source in the config.
    pub index: usize,
    /// The source.
    pub source: Source,
    /// Shared with the sinks and the checkpointer.
    pub progress: Arc<SourceProgress>,
    /// One bounded channel per subscribed sink.
    pub outputs: Vec<Sender<Arc<Chunk>>>,
    /// Metrics.
    pub stats: Arc<Stats>,
}

/// What every source does with a parsed record before handing it to the sinks: counts what
/// parsing ran into (`flags`), and applies the level filter. Returns whether the record is
/// kept (counted as shipped) rather than dropped (counted as filtered).
pub fn admit(
    counters: &SourceCounters,
    min_level: Option<Level>,
    record: &Record,
    flags: ParseFlags,
) -> bool {
    let c = counters;
    if flags.invalid_utf8 {
        c.invalid_utf8.fetch_add(1, Ordering::Relaxed);
    }
    if flags.truncated {
        c.truncated.fetch_add(1, Ordering::Relaxed);
    }
    if flags.parse_error {
        c.parse_errors.fetch_add(1, Ordering::Relaxed);
    }
    if flags.message_cut {
        c.message_cut.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(min), Some(level)) = (min_level, record.level)
        && level > min
    {
        c.filtered.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    c.records.fetch_add(1, Ordering::Relaxed);
    true
}
