//! Acknowledgements: a sink acknowledges what it delivered (or buffered on disk) to the
//! sources' progress, and before it sends more it waits for the checkpoints to cover that.

use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{Covered, SourceProgress};
use crate::chunk::Chunk;

/// The longest a batch waits for the checkpoint of the previous one.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);
/// Per source, what its checkpoint must cover before the next send.
pub(super) type Unpersisted = Vec<(usize, Covered)>;

fn want(unpersisted: &mut Unpersisted, source: usize, raise: impl FnOnce(&mut Covered)) {
    match unpersisted.iter_mut().find(|(s, _)| *s == source) {
        Some((_, c)) => raise(c),
        None => {
            let mut c = Covered::default();
            raise(&mut c);
            unpersisted.push((source, c));
        }
    }
}

/// Acknowledges `offset` of `stream` for sink `index`, remembering the acknowledgement to
/// wait for its checkpoint.
pub(super) fn ack(
    index: usize,
    progress: &[Option<Arc<SourceProgress>>],
    unpersisted: &mut Unpersisted,
    source: usize,
    stream: u64,
    offset: u64,
) {
    if let Some(Some(p)) = progress.get(source) {
        let n = p.ack(index, stream, offset);
        want(unpersisted, source, |c| {
            c.acks = c.acks.max(n);
        });
    }
}

/// Waits until the checkpoints cover the acknowledgements so far, so that a crash re-sends
/// no more than what is about to go out, and the hand-off of the `chunks` about to go out,
/// so that a restart counts all of it as read again.
pub(super) async fn wait_checkpoints<'c>(
    progress: &[Option<Arc<SourceProgress>>],
    unpersisted: &mut Unpersisted,
    chunks: impl Iterator<Item = &'c Chunk>,
) {
    for chunk in chunks {
        want(unpersisted, chunk.source, |c| {
            c.sends = c.sends.max(chunk.sent);
        });
    }
    for (source, covered) in std::mem::take(unpersisted) {
        if let Some(Some(p)) = progress.get(source) {
            p.wait_persisted(covered, CHECKPOINT_WAIT).await;
        }
    }
}
