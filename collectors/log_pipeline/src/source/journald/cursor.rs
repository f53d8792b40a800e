//! The cursor file of a journald source, `<checkpoint_dir>/<source>.journal.json`: the cursor
//! of the last record every sink acknowledged, written atomically as the file checkpoints are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agent_kit::sync::lock;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::checkpoint::{self, CheckpointError, CheckpointWriter, FilePosition, SourceProgress};
use crate::identity::StreamId;

/// The cursor file of journald source `name`.
pub fn checkpoint_path(dir: &Path, source: &str) -> PathBuf {
    dir.join(format!("{source}.journal.json"))
}

#[derive(Debug, Serialize, Deserialize)]
struct CursorFile {
    version: u32,
    /// `None`: started, nothing acknowledged yet, and the journal is read from its beginning.
    cursor: Option<String>,
}

/// Where a journald source starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No cursor file: the very first start (`read_from` applies).
    First,
    /// After this cursor (`None`: from the beginning).
    After(Option<String>),
}

/// Loads the cursor file; a corrupt one is logged and the journal is read from its beginning
/// (nothing is lost; what was shipped before is shipped again).
pub fn load(path: &Path) -> Result<Start, CheckpointError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Start::First),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    match serde_json::from_str::<CursorFile>(&text) {
        Ok(f) if f.version == 1 => Ok(Start::After(f.cursor)),
        Ok(f) => {
            warn!(path = %path.display(), version = f.version, "Unknown journal cursor file version ignored; reading the journal from its beginning.");
            Ok(Start::After(None))
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "Corrupt journal cursor file ignored; reading the journal from its beginning.");
            Ok(Start::After(None))
        }
    }
}

/// Writes the cursor file atomically.
pub fn store(path: &Path, cursor: Option<&str>) -> Result<(), CheckpointError> {
    let body = serde_json::to_vec(&CursorFile {
        version: 1,
        cursor: cursor.map(str::to_owned),
    })
    .map_err(|e| CheckpointError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    checkpoint::write_atomic(path, &body)
}

/// Cursors by record sequence number, from the oldest not yet acknowledged by every sink.
pub(super) type Cursors = Arc<Mutex<BTreeMap<u64, String>>>;

/// The checkpoint of a journald source: the cursor of the last record every sink
/// acknowledged, in its cursor file, written by the source's [`checkpoint::run_checkpointer`]
/// as file positions are.
#[derive(Debug)]
pub struct CursorCheckpoint {
    path: PathBuf,
    stream: StreamId,
    cursors: Cursors,
    written: Option<String>,
}

impl CursorCheckpoint {
    /// The checkpoint of the journal read as `stream`, in `path`, from the `cursors` its
    /// reader records.
    pub(super) fn new(path: PathBuf, stream: StreamId, cursors: Cursors) -> CursorCheckpoint {
        CursorCheckpoint {
            path,
            stream,
            cursors,
            written: None,
        }
    }
}

impl CheckpointWriter for CursorCheckpoint {
    fn write(
        &mut self,
        progress: &SourceProgress,
        _positions: Vec<FilePosition>,
    ) -> Result<(), CheckpointError> {
        let acked = progress.acked_offset(self.stream).unwrap_or(0);
        let cursor = {
            let mut map = lock(&self.cursors);
            match map
                .range(..=acked)
                .next_back()
                .map(|(k, c)| (*k, c.clone()))
            {
                Some((k, c)) => {
                    // Older cursors are never needed again.
                    *map = map.split_off(&k);
                    Some(c)
                }
                None => None,
            }
        };
        match cursor {
            Some(c) if self.written.as_ref() != Some(&c) => {
                store(&self.path, Some(&c))?;
                debug!(path = %self.path.display(), sequence = acked, "Journal cursor written.");
                self.written = Some(c);
                Ok(())
            }
            // Nothing new acknowledged (or nothing with a cursor): the file on disk covers it.
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path(), "syslog");
        assert_eq!(load(&path).unwrap(), Start::First);
        store(&path, None).unwrap();
        assert_eq!(load(&path).unwrap(), Start::After(None));
        store(&path, Some("s=abc;i=5")).unwrap();
        assert_eq!(load(&path).unwrap(), Start::After(Some("s=abc;i=5".into())));
        std::fs::write(&path, "{").unwrap();
        assert_eq!(load(&path).unwrap(), Start::After(None));
    }
}
