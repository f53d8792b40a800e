//! Finding a source's files: the globs expanded within their limits, file events watched,
//! and for each new file where reading starts (its checkpoint, the end of the file it is a
//! copy of, its end with `read_from: end`, or its beginning).

use std::collections::HashSet;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::{COPY_WAIT, DeadFile, MAX_WARNED, PendingCopy, SETTLE, Stream, Tailer};
use crate::checkpoint::FilePosition;
use crate::config::ReadFrom;
use crate::expand::{Expansion, Found, Limit, Limits, PathError, open_regular};
use crate::identity::{FileId, HEAD_MAX, StreamId, file_id, next_stream_id, read_head};
use crate::parse::{Framer, Parser};

impl Tailer {
    /// Starts the file-event watcher: a creation, removal or rename asks for a new expansion,
    /// any event wakes the thread (without one, the rescans alone find new files).
    pub(super) fn start_watcher(&mut self) {
        let wake = self.wake_tx.clone();
        let rescan = self.rescan.clone();
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(e) = &event
                && (e.kind.is_create()
                    || e.kind.is_remove()
                    || matches!(
                        e.kind,
                        notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                    ))
            {
                rescan.store(true, Ordering::SeqCst);
            }
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                warn!(source = %self.source.name, error = %e, "No file notifications; polling only.");
            }
        }
    }

    /// Watches exactly the directories of the last expansion (each one non-recursively:
    /// loops and huge trees cost no more than the expansion itself).
    pub(super) fn watch_dirs(&mut self, dirs: Vec<PathBuf>) {
        use notify::Watcher as _;
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let wanted: HashSet<PathBuf> = dirs.into_iter().collect();
        for gone in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        self.watched.retain(|d| wanted.contains(d));
        for dir in wanted {
            // A literal file's directory may not exist yet: the rescans cover it.
            if self.watched.contains(&dir) || !dir.is_dir() {
                continue;
            }
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => debug!(dir = %dir.display(), error = %e, "Cannot watch directory."),
            }
        }
    }

    /// Expands the globs within the source's limits, and reports the limits reached.
    /// `None` when the tailer was told to stop meanwhile.
    fn expand(&mut self) -> Option<Expansion> {
        let limits = Limits {
            max_files: self.source.max_files,
            max_directories: self.source.max_directories,
        };
        let mut e = self.globs.expand(limits, &self.stop);
        if e.cancelled {
            return None;
        }
        for kind in PathError::ALL {
            self.counters.path_errors[kind.index()]
                .fetch_add(e.unusable_counts[kind.index()], Ordering::Relaxed);
        }
        for u in std::mem::take(&mut e.unusable) {
            self.warn_unusable(&u.path, u.kind, &u.error);
        }
        let c = &self.counters;
        let before = (
            c.glob_files.load(Ordering::Relaxed),
            c.glob_directories.load(Ordering::Relaxed),
        );
        if before != (e.files.len() as u64, e.dirs_listed as u64) {
            debug!(source = %self.source.name, files = e.files.len(), directories = e.dirs_listed, repeats = e.repeats, "Globs expanded.");
        }
        c.glob_files.store(e.files.len() as u64, Ordering::Relaxed);
        c.glob_directories
            .store(e.dirs_listed as u64, Ordering::Relaxed);
        if let Some(limit) = e.limit {
            c.glob_limit_hits.fetch_add(1, Ordering::Relaxed);
            if self.glob_limit != Some(limit) {
                let value = match limit {
                    Limit::Files => self.source.max_files,
                    Limit::Directories => self.source.max_directories,
                };
                let option = limit.option();
                warn!(source = %self.source.name, limit = option, value, files = e.files.len(), directories = e.dirs_listed, "The include globs reach more than {option}: what is past it is not read. Narrow the globs or raise sources.{}.{option}.", self.source.name);
            }
        } else if self.glob_limit.is_some() {
            info!(source = %self.source.name, files = e.files.len(), directories = e.dirs_listed, "The include globs are within their limits again.");
        }
        self.glob_limit = e.limit;
        Some(e)
    }

    /// Expands the globs and opens the new files; returns the directories to watch, or
    /// `None` when told to stop meanwhile.
    pub(super) fn discover(&mut self) -> Option<Vec<PathBuf>> {
        let expansion = self.expand()?;
        let mut present = HashSet::new();
        for Found { path, meta } in expansion.files {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let key = (meta.dev(), meta.ino());
            present.insert(key);
            if let Some(s) = self
                .streams
                .iter_mut()
                .find(|s| (s.fid.dev, s.fid.ino) == key)
            {
                s.gone_since = None;
                if s.path != path {
                    info!(source = %self.source.name, from = %s.path.display(), to = %path.display(), "File renamed.");
                    self.stats
                        .file_closed(&self.source.name, &s.path.to_string_lossy());
                    s.path.clone_from(&path);
                    self.progress.update(s.id, s.fid, &path);
                }
                continue;
            }
            if self
                .pending_copies
                .iter()
                .any(|c| (c.fid.dev, c.fid.ino) == key)
            {
                continue;
            }
            self.open_new(&path);
        }
        self.young.retain(|k, _| present.contains(k));
        let now = Instant::now();
        for s in &mut self.streams {
            if s.gone_since.is_none() && !present.contains(&(s.fid.dev, s.fid.ino)) {
                debug!(source = %self.source.name, path = %s.path.display(), "File left the globs; draining it.");
                s.gone_since = Some(now);
            }
        }
        if !self.scanned_once {
            self.scanned_once = true;
            self.find_renamed_known_files();
        }
        self.resolve_pending_copies();
        Some(expansion.dirs)
    }

    /// Opens a newly seen file and decides where to start reading it.
    fn open_new(&mut self, path: &Path) {
        let opened = open_regular(path).and_then(|(file, meta)| {
            let head = read_head(&file)?;
            Ok((file, meta, head))
        });
        let (file, meta, head) = match opened {
            Ok(f) => f,
            Err(e) => {
                // Not there any more, or no longer a regular file: the next expansion says.
                match PathError::of(&e).filter(|_| e.kind() != ErrorKind::InvalidInput) {
                    Some(kind) => {
                        self.counters.path_errors[kind.index()].fetch_add(1, Ordering::Relaxed);
                        self.warn_unusable(path, kind, &e.to_string());
                    }
                    None => debug!(path = %path.display(), error = %e, "Cannot open file."),
                }
                return;
            }
        };
        let fid = file_id(&meta, &head);
        let size = meta.len();
        // 1. Its own checkpoint.
        if let Some(i) = self
            .known
            .iter()
            .position(|(_, e)| (e.id.dev, e.id.ino) == (fid.dev, fid.ino))
        {
            let (id, e) = self.known.swap_remove(i);
            if e.id.head_matches(&head) && e.offset <= size {
                if e.read > e.offset {
                    self.counters
                        .replayed_bytes
                        .fetch_add(e.read.min(size) - e.offset, Ordering::Relaxed);
                }
                self.add_stream(id, file, path, fid, size, e.offset, "checkpoint");
            } else {
                self.count_lost(&e, "its inode now holds other content");
                self.add_stream(id, file, path, fid, size, 0, "inode reused or truncated");
            }
            return;
        }
        // 2. A file that ended here (it left the globs and was drained) and came back, as it
        // was or grown: on from where it ended.
        if let Some(i) = self.dead.iter().rposition(|d| {
            (d.fid.dev, d.fid.ino) == (fid.dev, fid.ino)
                && d.fid.head_matches(&head)
                && d.offset <= size
        }) {
            self.resume_ended(i, file, path, fid, size, "back in the globs");
            return;
        }
        // A file just created may still be written by `cp` (copytruncate): decide once its
        // head is complete, or once it has been seen for a moment.
        let key = (fid.dev, fid.ino);
        let first_seen = *self.young.entry(key).or_insert_with(Instant::now);
        let settled = !self.scanned_once || first_seen.elapsed() >= SETTLE;
        let full = head.len() == HEAD_MAX;
        // 3. A copy of a live file (copytruncate in progress): wait for the original's end.
        if let Some(orig) = self
            .streams
            .iter()
            .find(|s| s.fid.same_head(&fid) && (full || settled))
        {
            debug!(path = %path.display(), original = %orig.path.display(), "Copy of a live file; waiting for the original to be truncated.");
            self.young.remove(&key);
            self.pending_copies.push(PendingCopy {
                file,
                path: path.to_owned(),
                fid,
                original: orig.id,
                since: Instant::now(),
            });
            return;
        }
        // 4. A copy of an ended file: continue where it ended, once the copy got there.
        if let Some(i) = self
            .dead
            .iter()
            .position(|d| d.fid.same_head(&fid) && (full || settled))
        {
            if size < self.dead[i].offset && first_seen.elapsed() < COPY_WAIT {
                return;
            }
            self.resume_ended(i, file, path, fid, size, "copy of an ended file");
            return;
        }
        if !full && !settled {
            return;
        }
        self.young.remove(&key);
        // 5. read_from: end applies to files present at the very first start.
        if self.first_start && !self.scanned_once && self.source.read_from == ReadFrom::End {
            self.add_stream(
                next_stream_id(),
                file,
                path,
                fid,
                size,
                size,
                "read_from end",
            );
            return;
        }
        self.add_stream(next_stream_id(), file, path, fid, size, 0, "new file");
    }

    /// Warns that `path` cannot be used, once per path (until it is read): an unreadable
    /// directory or file, a path past `PATH_MAX`. Past [`MAX_WARNED`] paths, at debug level
    /// (the metric counts them all).
    fn warn_unusable(&mut self, path: &Path, kind: PathError, error: &str) {
        let source = &self.source.name;
        if self.warned.contains(path) {
            return;
        }
        if self.warned.len() >= MAX_WARNED {
            debug!(source = %source, path = %path.display(), kind = kind.label(), error, "Cannot read this path.");
            return;
        }
        self.warned.insert(path.to_owned());
        let why = match kind {
            PathError::Permission => {
                "permission denied: give the shipper's user access to it, or narrow the globs"
            }
            PathError::NameTooLong => "the path is longer than PATH_MAX (a very deep tree)",
            PathError::Other => "see the error",
        };
        warn!(source = %source, path = %path.display(), kind = kind.label(), error, "Cannot read this directory or file, nor what is below it: {why}. Warned once per path; log_shipper_source_path_errors_total counts every time.");
        if self.warned.len() == MAX_WARNED {
            warn!(source = %source, "{MAX_WARNED} paths warned about: further ones are logged at debug level only.");
        }
    }

    /// Reads `file` on as a new stream from where the ended file `dead[i]` (the same file back
    /// in the globs, or a copy of it) ended, at most its size, and forgets the ended file.
    fn resume_ended(
        &mut self,
        i: usize,
        file: File,
        path: &Path,
        fid: FileId,
        size: u64,
        why: &str,
    ) {
        let ended = self.dead.remove(i);
        self.young.remove(&(fid.dev, fid.ino));
        let start = ended.offset.min(size);
        self.add_stream(next_stream_id(), file, path, fid, size, start, why);
    }

    /// Starts reading `file` at `start` as stream `id` (a new one, or a checkpointed file's,
    /// registered when the tailer started).
    #[allow(clippy::too_many_arguments)]
    fn add_stream(
        &mut self,
        id: StreamId,
        file: File,
        path: &Path,
        fid: FileId,
        size: u64,
        start: u64,
        why: &str,
    ) {
        info!(source = %self.source.name, path = %path.display(), offset = start, reason = why, "Reading file.");
        self.warned.remove(path);
        self.progress.register(id, fid, path, start);
        self.counters.files_opened.fetch_add(1, Ordering::Relaxed);
        self.streams.push(Stream {
            id,
            file,
            path: path.to_owned(),
            fid,
            framer: Framer::new(
                self.source.format,
                start,
                self.source.record_max_bytes as usize,
            )
            .with_prefix(self.prefix.clone()),
            parser: Parser::new(
                self.source.format,
                self.origin.clone(),
                self.source.message_max_length,
                path,
            )
            .with_prefix(self.prefix.clone()),
            gone_since: None,
            last_data: Instant::now(),
            size,
            last_sent_end: start,
            suspect: false,
            mtime: None,
        });
    }

    /// Checkpointed files that no glob finds any more may have been renamed while we were
    /// down (rotation): look for their inode in their directory and drain them.
    fn find_renamed_known_files(&mut self) {
        let mut known = std::mem::take(&mut self.known).into_iter();
        while let Some((id, e)) = known.next() {
            let stop = &self.stop;
            let found = e.path.parent().and_then(|dir| {
                std::fs::read_dir(dir)
                    .ok()?
                    .flatten()
                    .take_while(|_| !stop.load(Ordering::Relaxed))
                    .find_map(|d| {
                        let meta = d.metadata().ok()?;
                        (meta.is_file() && meta.dev() == e.id.dev && meta.ino() == e.id.ino)
                            .then(|| d.path())
                    })
            });
            if self.stop.load(Ordering::Relaxed) {
                // Nothing concluded: their checkpoint entries stay as they were.
                self.known.push((id, e));
                self.known.extend(known);
                return;
            }
            let opened = found.and_then(|p| {
                let (file, meta) = open_regular(&p).ok()?;
                let head = read_head(&file).ok()?;
                (e.id.head_matches(&head) && e.offset <= meta.len())
                    .then(|| (p, file, file_id(&meta, &head), meta.len()))
            });
            match opened {
                Some((p, file, fid, size)) => {
                    self.add_stream(id, file, &p, fid, size, e.offset, "renamed while stopped");
                    if let Some(s) = self.streams.last_mut() {
                        s.gone_since = Some(Instant::now());
                    }
                }
                None => {
                    self.count_lost(&e, "it no longer exists");
                    self.progress.register_dead(
                        id,
                        &FilePosition {
                            dead: true,
                            ..e.clone()
                        },
                    );
                    self.remember_ended(DeadFile {
                        fid: e.id,
                        offset: e.offset,
                    });
                }
            }
        }
    }

    /// A checkpointed file is gone: what was read but never acknowledged is lost (and
    /// whatever it held past that, which cannot be known).
    fn count_lost(&self, e: &FilePosition, why: &str) {
        let lost = e.read.saturating_sub(e.offset);
        if lost > 0 {
            self.counters.lost_bytes.fetch_add(lost, Ordering::Relaxed);
            warn!(source = %self.source.name, path = %e.path.display(), lost_bytes = lost, reason = why, "File gone before it was read and acknowledged completely; data lost.");
        }
    }

    /// Decides where the copies waiting on their original start: where the original ended
    /// when it was truncated, at 0 when it is gone, at their end once they waited long enough
    /// (a plain copy).
    pub(super) fn resolve_pending_copies(&mut self) {
        if self.ended.len() > 1000 {
            let wanted: HashSet<StreamId> =
                self.pending_copies.iter().map(|c| c.original).collect();
            self.ended.retain(|id, _| wanted.contains(id));
        }
        let pending = std::mem::take(&mut self.pending_copies);
        for c in pending {
            let live = self.streams.iter().any(|s| s.id == c.original);
            let size = c.file.metadata().map(|m| m.len()).unwrap_or(0);
            if let Some(end) = self.ended.get(&c.original).copied() {
                self.add_stream(
                    next_stream_id(),
                    c.file,
                    &c.path,
                    c.fid,
                    size,
                    end.min(size),
                    "copy of a truncated file",
                );
            } else if !live {
                self.add_stream(
                    next_stream_id(),
                    c.file,
                    &c.path,
                    c.fid,
                    size,
                    0,
                    "copy whose original is gone",
                );
            } else if c.since.elapsed() > COPY_WAIT {
                // The original was not truncated: a plain copy; only new appends are new.
                self.add_stream(
                    next_stream_id(),
                    c.file,
                    &c.path,
                    c.fid,
                    size,
                    size,
                    "copy of a live file",
                );
            } else {
                self.pending_copies.push(c);
            }
        }
    }
}
