//! What identifies what a source reads: a file by device, inode and a hash of its first bytes
//! ([`FileId`]), so that a reused inode is a new file and a truncated or rewritten file is
//! recognised; and one generation of a file, or a journal, within the process ([`StreamId`]).

use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// How many head bytes identify a file.
pub const HEAD_MAX: usize = 256;

/// FNV-1a, 64 bits: the head hash.
pub fn head_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Bytes hashed (at most [`HEAD_MAX`]; fewer while the file is shorter).
    pub head_len: u32,
    /// FNV-1a of those bytes.
    pub head_hash: u64,
}

impl FileId {
    /// Whether `head` (the file's current first bytes) starts with the bytes this id hashed.
    pub fn head_matches(&self, head: &[u8]) -> bool {
        let n = self.head_len as usize;
        head.len() >= n && head_hash(&head[..n]) == self.head_hash
    }

    /// Whether `other` hashes the same non-empty head, of the same length.
    pub fn same_head(&self, other: &FileId) -> bool {
        self.head_len > 0 && self.head_len == other.head_len && self.head_hash == other.head_hash
    }
}

/// The head of `file`: its first bytes, at most [`HEAD_MAX`].
pub fn read_head(file: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut n = 0;
    while n < HEAD_MAX {
        let r = file.read_at(&mut buf[n..], n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    Ok(buf)
}

/// The identity of the file with metadata `meta` and head `head`.
pub fn file_id(meta: &std::fs::Metadata, head: &[u8]) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        head_len: head.len() as u32,
        head_hash: head_hash(head),
    }
}

/// A stream: one generation of one file (a truncation starts the next), or a journal. Ids are
/// unique within the process.
pub type StreamId = u64;

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// A new stream id.
pub fn next_stream_id() -> StreamId {
    NEXT_STREAM.fetch_add(1, Ordering::Relaxed)
}
