//! Following a config path on disk: which directories decide what it loads, and a watcher
//! that keeps inotify watches on exactly those.
//!
//! A config path can lead to its files through symlinks (a file linked from another
//! directory, a directory swapped by renaming a link over it as Kubernetes and Capistrano
//! do), and a watched directory can be replaced by a new one of the same name, whose inode
//! no watch follows. So the path is resolved like `realpath`, noting each directory whose
//! entries decide the result: the directory holding each symlink met, the directory holding
//! the config file or directory, the config directory itself (and the same for each of its
//! `*.yml`/`*.yaml` files that is a symlink). After each settled burst of changes in those
//! directories the path is resolved again, the watches follow the new resolution, and only
//! then the caller is told, so it reads the config through watches already in place.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::is_config_file_name;

/// Symlinks followed before a path counts as a loop (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// One directory whose entries decide what a config path loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Dir {
    /// Device and inode when resolved: a directory replaced under the same name is another
    /// inode, which needs a watch of its own.
    id: Option<(u64, u64)>,
    /// The names of the entries that matter.
    names: BTreeSet<OsString>,
    /// Whether this is the config directory, where every `*.yml`/`*.yaml` entry matters.
    config_files: bool,
}

/// The directories a config path depends on, as found now (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    dirs: BTreeMap<PathBuf, Dir>,
}

impl Resolution {
    /// Resolves `path` (relative to the working directory if relative).
    pub fn of(path: &Path) -> Self {
        let mut resolution = Resolution::default();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let target = resolution.trace(&path);
        if target.is_dir() {
            resolution.dir(&target).config_files = true;
            // A config file of the directory may be a symlink leading elsewhere.
            for entry in fs::read_dir(&target).into_iter().flatten().flatten() {
                let name = entry.file_name();
                if is_config_file_name(&name.to_string_lossy())
                    && entry.file_type().is_ok_and(|t| t.is_symlink())
                {
                    resolution.trace(&target.join(name));
                }
            }
        }
        for (path, dir) in &mut resolution.dirs {
            dir.id = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        }
        resolution
    }

    /// The watched directories.
    pub fn directories(&self) -> impl Iterator<Item = &Path> {
        self.dirs.keys().map(PathBuf::as_path)
    }

    /// Whether an event naming `path` may change what the config path loads: the path is
    /// an entry that matters of a watched directory, or a watched directory itself.
    pub fn concerns(&self, path: &Path) -> bool {
        if self.dirs.contains_key(path) {
            return true;
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        self.dirs.get(parent).is_some_and(|dir| {
            dir.names.contains(name)
                || (dir.config_files && is_config_file_name(&name.to_string_lossy()))
        })
    }

    fn dir(&mut self, path: &Path) -> &mut Dir {
        self.dirs.entry(path.to_path_buf()).or_default()
    }

    /// Notes that entry `name` of directory `dir` matters; for a directory that does not
    /// exist, the entry of its nearest existing ancestor that would lead to it.
    fn note(&mut self, dir: &Path, name: &OsStr) {
        let (mut dir, mut name) = (dir, name);
        while !dir.is_dir() {
            match (dir.parent(), dir.file_name()) {
                (Some(parent), Some(leading)) => (dir, name) = (parent, leading),
                _ => return,
            }
        }
        self.dir(dir).names.insert(name.to_owned());
    }

    /// Resolves the absolute `path` like `realpath`, noting the directory and name of each
    /// symlink met and of the final entry; returns the final path (what is left unresolved
    /// joined as written when a component is missing or the links loop).
    fn trace(&mut self, path: &Path) -> PathBuf {
        let mut resolved = PathBuf::from("/");
        // Components still to resolve, the next one last.
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, path);
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                resolved.pop();
                continue;
            }
            let next = resolved.join(&name);
            let link = fs::symlink_metadata(&next)
                .is_ok_and(|m| m.file_type().is_symlink())
                .then(|| fs::read_link(&next).ok())
                .flatten();
            match link {
                Some(target) if links < MAX_LINKS => {
                    links += 1;
                    self.note(&resolved, &name);
                    if target.is_absolute() {
                        resolved = PathBuf::from("/");
                    }
                    push_components(&mut pending, &target);
                }
                _ => resolved = next,
            }
        }
        if let (Some(parent), Some(name)) = (resolved.parent(), resolved.file_name()) {
            self.note(parent, name);
        }
        resolved
    }
}

/// Pushes the components of `path` (without the root and `.`) onto `pending`, the first
/// last, so they are popped in order.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let start = pending.len();
    for component in path.components() {
        match component {
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    pending[start..].reverse();
}

/// What the notify callback and the watching task share.
#[derive(Debug, Default)]
struct Shared {
    /// The resolution the watches follow, to filter events.
    resolution: Resolution,
    /// Watched directories that were removed or renamed: notify dropped their watch.
    gone: BTreeSet<PathBuf>,
}

/// Watches what the config `path` loads and calls `changed` after each burst of changes
/// (once nothing changed for `settle`), with the watches already following the path's new
/// resolution. `changed` decides whether the content really changed: events that leave the
/// content as it was (a `touch`, a rewrite with the same text) reach it too.
///
/// One inotify instance (one thread) for the life of the returned task, which owns it;
/// directories are watched and unwatched as the resolution changes.
pub fn watch(
    path: PathBuf,
    settle: Duration,
    changed: impl Fn() + Send + 'static,
) -> notify::Result<tokio::task::JoinHandle<()>> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut watcher = {
        let (shared, wake) = (shared.clone(), wake.clone());
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                // An error of the watcher (such as an overflowed queue): look again.
                wake.notify_one();
                return;
            };
            if event.kind.is_access() {
                // Reading the config (ours included) changes nothing.
                return;
            }
            let mut shared = shared.lock().expect("config watch lock");
            let relevant =
                event.need_rescan() || event.paths.iter().any(|p| shared.resolution.concerns(p));
            if matches!(
                event.kind,
                notify::EventKind::Remove(_)
                    | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
            ) {
                for p in &event.paths {
                    if shared.resolution.dirs.contains_key(p) {
                        shared.gone.insert(p.clone());
                    }
                }
            }
            drop(shared);
            if relevant {
                wake.notify_one();
            }
        })?
    };
    follow(&path, &mut watcher, &shared);
    Ok(tokio::spawn(async move {
        loop {
            wake.notified().await;
            // Let a burst of writes settle before reading the files.
            tokio::time::sleep(settle).await;
            let _ = futures_util::FutureExt::now_or_never(wake.notified());
            follow(&path, &mut watcher, &shared);
            changed();
        }
    }))
}

/// Resolves `path` again and moves the watches to the directories of the new resolution:
/// new directories and replaced ones (another inode, or removed or renamed since) are
/// watched anew, those no longer part of it are unwatched.
fn follow(path: &Path, watcher: &mut impl notify::Watcher, shared: &Mutex<Shared>) {
    // A change found while moving the watches is followed at once; links that keep
    // changing are left to the next event.
    for _ in 0..3 {
        let new = Resolution::of(path);
        let (old, gone) = {
            let mut shared = shared.lock().expect("config watch lock");
            if shared.resolution == new && shared.gone.is_empty() {
                return;
            }
            let old = std::mem::replace(&mut shared.resolution, new.clone());
            (old, std::mem::take(&mut shared.gone))
        };
        // A directory whose watch must go or be added again: no longer part of the
        // resolution, another inode under its name, or removed or renamed since.
        // (One that cannot be watched is tried again when it is replaced.)
        let moved = |dir: &&PathBuf| {
            gone.contains(*dir)
                || old.dirs.get(*dir).map(|d| d.id) != new.dirs.get(*dir).map(|d| d.id)
        };
        for dir in old.dirs.keys().filter(moved) {
            // Fails when notify already dropped it (removed or renamed directory).
            let _ = watcher.unwatch(dir);
        }
        for dir in new.dirs.keys().filter(moved) {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(
                    directory = %dir.display(),
                    error = %e,
                    "Cannot watch a directory of the config; its changes need SIGHUP or /reload."
                );
            }
        }
        tracing::debug!(
            path = %path.display(),
            directories = ?new.dirs.keys().collect::<Vec<_>>(),
            "Config watches follow the path."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dirs(r: &Resolution) -> Vec<PathBuf> {
        r.directories().map(Path::to_path_buf).collect()
    }

    fn names(r: &Resolution, dir: &Path) -> Vec<String> {
        r.dirs[dir]
            .names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_plain_file_needs_its_directory_for_its_name_only() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        fs::write(base.join("pg.yml"), "").unwrap();
        let r = Resolution::of(&base.join("pg.yml"));
        assert_eq!(dirs(&r), std::slice::from_ref(&base));
        assert_eq!(names(&r, &base), ["pg.yml"]);
        assert!(r.concerns(&base.join("pg.yml")));
        assert!(!r.concerns(&base.join("exporter.log")));
        assert!(!r.concerns(&base.join("other.yml")));
        assert!(r.concerns(&base), "the directory itself removed or renamed");
    }

    #[test]
    fn a_file_linked_from_another_directory_needs_both() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        for d in ["link", "real"] {
            fs::create_dir(base.join(d)).unwrap();
        }
        fs::write(base.join("real/pg.yml"), "").unwrap();
        symlink("../real/pg.yml", base.join("link/pg.yml")).unwrap();
        let r = Resolution::of(&base.join("link/pg.yml"));
        assert_eq!(dirs(&r), [base.join("link"), base.join("real")]);
        assert!(r.concerns(&base.join("real/pg.yml")));
        assert!(r.concerns(&base.join("link/pg.yml")));
        assert!(!r.concerns(&base.join("real/notes.txt")));

        // The link now points elsewhere: the old target's directory is no longer needed.
        fs::create_dir(base.join("other")).unwrap();
        fs::write(base.join("other/pg.yml"), "").unwrap();
        fs::remove_file(base.join("link/pg.yml")).unwrap();
        symlink(base.join("other/pg.yml"), base.join("link/pg.yml")).unwrap();
        let r = Resolution::of(&base.join("link/pg.yml"));
        assert_eq!(dirs(&r), [base.join("link"), base.join("other")]);
    }

    #[test]
    fn a_directory_swapped_through_a_link_and_links_on_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        fs::create_dir_all(base.join("releases/1")).unwrap();
        fs::write(base.join("releases/1/pg.yml"), "").unwrap();
        symlink("releases/1", base.join("current")).unwrap();

        // The link is the config directory.
        let r = Resolution::of(&base.join("current"));
        assert_eq!(
            dirs(&r),
            [base.clone(), base.join("releases"), base.join("releases/1")]
        );
        assert_eq!(names(&r, &base), ["current"]);
        assert_eq!(names(&r, &base.join("releases")), ["1"]);
        assert!(r.dirs[&base.join("releases/1")].config_files);
        assert!(r.concerns(&base.join("current")));
        assert!(r.concerns(&base.join("releases/1/any.yaml")));
        assert!(!r.concerns(&base.join("releases/1/any.txt")));

        // The link is a directory on the way to the config file.
        let r = Resolution::of(&base.join("current/./pg.yml"));
        assert_eq!(dirs(&r), [base.clone(), base.join("releases/1")]);
        assert_eq!(names(&r, &base.join("releases/1")), ["pg.yml"]);
    }

    #[test]
    fn kubernetes_config_map_layout() {
        // What the kubelet writes: the files link through `..data`, itself a link to the
        // current timestamped directory, swapped by renaming `..data_tmp` over it.
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let stamp = base.join("..2024_01_01_00_00_00.1");
        fs::create_dir(&stamp).unwrap();
        fs::write(stamp.join("pg.yml"), "").unwrap();
        symlink("..2024_01_01_00_00_00.1", base.join("..data")).unwrap();
        symlink("..data/pg.yml", base.join("pg.yml")).unwrap();

        let file = Resolution::of(&base.join("pg.yml"));
        assert_eq!(dirs(&file), [base.clone(), stamp.clone()]);
        assert_eq!(names(&file, &base), ["..data", "pg.yml"]);
        assert!(file.concerns(&base.join("..data")));
        assert!(!file.concerns(&base.join("..data_tmp")));

        let dir = Resolution::of(&base);
        assert_eq!(
            dirs(&dir),
            [base.parent().unwrap().to_path_buf(), base.clone(), stamp]
        );
        assert!(dir.concerns(&base.join("..data")));
    }

    #[test]
    fn a_missing_directory_is_watched_through_its_nearest_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let r = Resolution::of(&base.join("d/e/pg.yml"));
        assert_eq!(dirs(&r), std::slice::from_ref(&base));
        assert_eq!(names(&r, &base), ["d"]);
        assert!(r.concerns(&base.join("d")));
    }

    #[test]
    fn a_replaced_directory_resolves_to_another_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        fs::create_dir(base.join("d")).unwrap();
        let before = Resolution::of(&base.join("d"));
        // Keep the old inode alive so it cannot be reused.
        fs::rename(base.join("d"), base.join("d.old")).unwrap();
        fs::create_dir(base.join("d")).unwrap();
        let after = Resolution::of(&base.join("d"));
        assert_eq!(dirs(&before), dirs(&after));
        assert_ne!(before, after);
    }

    #[test]
    fn looping_links_end() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        symlink("b", base.join("a")).unwrap();
        symlink("a", base.join("b")).unwrap();
        let r = Resolution::of(&base.join("a"));
        assert_eq!(dirs(&r), std::slice::from_ref(&base));
        assert_eq!(names(&r, &base), ["a", "b"]);
    }
}
