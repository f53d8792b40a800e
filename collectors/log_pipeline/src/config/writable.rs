//! What the shipper writes to, and how it opens it: every directory the config names (and the
//! file in it it appends to), checked before a start, or by `--dry-run` without creating
//! anything, by [`Writable::check`]; and
//! [`open_append`], which opens an output file without ever blocking, and only a regular one
//! (a FIFO blocks an open for writing until a reader comes; a device swallows the records).

use std::fs::{File, FileType, OpenOptions};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// A directory the shipper writes to, and the file in it it appends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writable {
    /// The option that names it: `checkpoint_dir`, `dead_letter_dir`,
    /// `sinks.<name>.dead_letter_path`, `sinks.<name>.path`, `sinks.<name>.buffer.path`.
    pub field: String,
    /// The directory (created when missing).
    pub dir: PathBuf,
    /// The file appended to, if any.
    pub file: Option<PathBuf>,
}

impl Writable {
    /// Checks that the shipper can write here: the directory (created when missing and
    /// `create`; else only checked that it could be) can hold a new file (a probe file,
    /// removed at once), and the file, if it exists, is a regular file that can be appended
    /// to. The directory when it was missing (created, or what a start would create); the
    /// error names the path (the caller names the option).
    pub fn check(&self, create: bool) -> Result<Option<PathBuf>, String> {
        let dir = &self.dir;
        let missing = match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(format!("{} is not a directory", dir.display()));
            }
            Ok(_) => false,
            Err(_) if create => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                true
            }
            Err(_) => {
                could_create(dir)?;
                return Ok(Some(dir.clone()));
            }
        };
        probe(dir)?;
        if let Some(file) = &self.file
            && let Ok(meta) = std::fs::metadata(file)
        {
            if let Some(why) = not_regular(file, meta.file_type()) {
                return Err(why);
            }
            open_append(file, false)
                .map_err(|e| format!("cannot append to {}: {e}", file.display()))?;
        }
        Ok(missing.then(|| dir.clone()))
    }
}

/// A name in a directory no one can guess (a directory others can write to may hold a link
/// planted by a predictable name).
fn probe_name(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".log_shipper-probe-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ))
}

/// Checks, without creating it, that missing directory `dir` could be created: its nearest
/// existing ancestor is a directory in which a directory can be made (a probe directory,
/// removed at once).
fn could_create(dir: &Path) -> Result<(), String> {
    let cannot = |why: String| format!("cannot create {}: {why}", dir.display());
    let ancestor = dir
        .ancestors()
        .skip(1)
        .find(|a| a.symlink_metadata().is_ok())
        .unwrap_or(Path::new("/"));
    if !ancestor.is_dir() {
        return Err(cannot(format!("{} is not a directory", ancestor.display())));
    }
    let probe = probe_name(ancestor);
    std::fs::create_dir(&probe).map_err(|e| cannot(e.to_string()))?;
    std::fs::remove_dir(&probe).map_err(|e| format!("cannot remove {}: {e}", probe.display()))
}

/// Checks that a file can be written in `dir`: a probe file of a name no one can guess, made
/// new (never a file or link already there: a directory others can write to may hold a link
/// to a file of ours), written, and removed.
fn probe(dir: &Path) -> Result<(), String> {
    let probe = probe_name(dir);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let written = std::io::Write::write_all(&mut file, b"probe\n")
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()));
    drop(file);
    // Removed whether the write worked or not (a full disk).
    let removed =
        std::fs::remove_file(&probe).map_err(|e| format!("cannot remove {}: {e}", probe.display()));
    written.and(removed)
}

/// Why `path`, of type `kind`, cannot be an output file, if it cannot.
fn not_regular(path: &Path, kind: FileType) -> Option<String> {
    let what = if kind.is_file() {
        return None;
    } else if kind.is_dir() {
        return Some(format!("{} is a directory", path.display()));
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Some(format!("{} is {what}, not a regular file", path.display()))
}

/// Opens `path` to append to it (creating it when `create`), without blocking: a FIFO without
/// a reader fails at once, and anything but a regular file (a FIFO, a device, a socket) is
/// refused with an error naming it, even when it replaced the file after the checks.
pub fn open_append(path: &Path, create: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(create)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match std::fs::metadata(path) {
            // A FIFO without a reader: ENXIO says nothing useful.
            Ok(meta) => match not_regular(path, meta.file_type()) {
                Some(why) => std::io::Error::other(why),
                None => e,
            },
            Err(_) => e,
        })?;
    match not_regular(path, file.metadata()?.file_type()) {
        Some(why) => Err(std::io::Error::other(why)),
        None => Ok(file),
    }
}
