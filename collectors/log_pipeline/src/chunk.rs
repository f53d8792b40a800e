//! The data passed from a source to its sinks: a [`Chunk`] of records read in one turn, with
//! the offset its checkpoint may move to once every sink delivered it.

use crate::identity::StreamId;
use crate::record::Record;

/// Records read from one stream (a file, the journal) in one turn, with the offset the
/// checkpoint may move to once they are delivered (also when the level filter dropped them
/// all).
#[derive(Debug)]
pub struct Chunk {
    /// Index of the source in the config.
    pub source: usize,
    /// The stream (one file, one generation).
    pub stream: StreamId,
    /// Records with the file offset after each.
    pub records: Vec<(u64, Record)>,
    /// Offset after the last record consumed (shipped or filtered).
    pub end: u64,
    /// The hand-off's number ([`SourceProgress::sent`](crate::checkpoint::SourceProgress::sent)).
    pub sent: u64,
}
