//! Expansion of a source's include globs, bounded under any directory tree, and opening of
//! the files found without blocking.
//!
//! - Loops: a directory is listed once per pattern step, whatever path leads to it (device +
//!   inode), so symlink loops (`ln -s . s1`) and links between branches cost one listing.
//! - One file, one path: a regular file reached by several paths (symlinks, hard links,
//!   symlinked directories) is reported once, under the first path in walk order whose last
//!   component is not a symlink (names sorted, so the choice is stable from one expansion to
//!   the next; directories keep the path they were first reached by, so `/pg/log`, a
//!   symlink to `/data/...`, stays as the config writes it).
//! - Limits: at most [`Limits::max_directories`] distinct directories listed and
//!   [`Limits::max_files`] files reported; what is past them is left out and
//!   [`Expansion::limit`] says which was reached. The work queue and the entries kept per
//!   directory are bounded by the same limits, so memory stays bounded too. Literal names
//!   after a wildcard (`/d/*/x.log`) are joined, not listed: they count as the files they
//!   name, not as directories.
//! - Excludes match the path as found and as resolved, so a symlinked directory or a link
//!   does not bring an excluded file back.
//! - Only regular files: FIFOs, sockets, devices (also behind a symlink) and directories are
//!   never reported, and [`open_regular`] opens with `O_NONBLOCK` and checks the type of what
//!   it opened, so a path swapped for a FIFO after the expansion does not block the reader.
//! - Cancellable: the walk checks a stop flag at every directory entry and returns at once
//!   when it is set ([`Expansion::cancelled`]).
//!
//! Pattern syntax is the `glob` crate's: `*`, `?`, `[...]` within one path component, and `**`
//! as a whole component for any number of directories (symlinked ones included); a trailing
//! `**` matches every file below.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::debug;

/// Bounds of one expansion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Regular files reported, at most.
    pub max_files: usize,
    /// Distinct directories listed, at most.
    pub max_directories: usize,
}

/// Which limit cut an expansion short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`Limits::max_files`].
    Files,
    /// [`Limits::max_directories`].
    Directories,
}

impl Limit {
    /// The config option that sets it.
    pub fn option(self) -> &'static str {
        match self {
            Limit::Files => "max_files",
            Limit::Directories => "max_directories",
        }
    }
}

/// Why a path the globs reach cannot be used (one that vanished, or whose parent is no
/// directory, is simply not there: no error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathError {
    /// Not allowed to list the directory, search it, or open the file (`EACCES`, `EPERM`).
    Permission,
    /// The path is longer than `PATH_MAX` (a very deep tree): it cannot be reached.
    NameTooLong,
    /// Anything else (a symlink loop, an I/O error).
    Other,
}

impl PathError {
    /// Every kind, in the order of [`PathError::index`].
    pub const ALL: [PathError; 3] = [
        PathError::Permission,
        PathError::NameTooLong,
        PathError::Other,
    ];

    /// What `error` means for a path the globs reach; `None` when the path is simply not
    /// there (gone meanwhile, or a component is a regular file).
    pub fn of(error: &std::io::Error) -> Option<PathError> {
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::NotFound | ErrorKind::NotADirectory => None,
            ErrorKind::PermissionDenied => Some(PathError::Permission),
            ErrorKind::InvalidFilename => Some(PathError::NameTooLong),
            _ => Some(PathError::Other),
        }
    }

    /// Its position in [`PathError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `kind` label of its metric.
    pub fn label(self) -> &'static str {
        match self {
            PathError::Permission => "permission",
            PathError::NameTooLong => "name_too_long",
            PathError::Other => "other",
        }
    }
}

/// A path the globs reach that cannot be used.
#[derive(Debug)]
pub struct Unusable {
    /// The directory or file.
    pub path: PathBuf,
    /// Why.
    pub kind: PathError,
    /// The error, as the system gave it.
    pub error: String,
}

/// At most this many [`Unusable`] paths are kept per expansion (all are counted).
pub const MAX_UNUSABLE: usize = 100;

/// A regular file found.
#[derive(Debug)]
pub struct Found {
    /// The path it was found under.
    pub path: PathBuf,
    /// Its metadata (symlinks followed).
    pub meta: Metadata,
}

/// What one expansion found.
#[derive(Debug, Default)]
pub struct Expansion {
    /// Regular files, one per device + inode, in walk order.
    pub files: Vec<Found>,
    /// Directories whose changes can change the result (listed ones, and those holding a
    /// literal file name), one path per directory: the ones to watch.
    pub dirs: Vec<PathBuf>,
    /// Distinct directories listed.
    pub dirs_listed: usize,
    /// Directories and files reached again through another path (loops, links), skipped.
    pub repeats: usize,
    /// The limit reached first, if any.
    pub limit: Option<Limit>,
    /// Directories and files that could not be listed or reached (the first
    /// [`MAX_UNUSABLE`]).
    pub unusable: Vec<Unusable>,
    /// All of them, by [`PathError::index`].
    pub unusable_counts: [u64; 3],
    /// The stop flag was raised: the result is incomplete and must not be used.
    pub cancelled: bool,
}

/// One component of a pattern after its literal prefix.
#[derive(Debug, Clone)]
enum Step {
    /// A name without wildcards: joined, not listed.
    Literal(OsString),
    /// A name pattern.
    Match(glob::Pattern),
    /// `**`: this directory and every directory below it.
    AnyDepth,
}

#[derive(Debug, Clone)]
struct Compiled {
    /// The literal directories before the first step.
    root: PathBuf,
    /// Never empty.
    steps: Vec<Step>,
    /// The first step of the literal names that end the pattern (`x.log` of `/d/*/x.log`;
    /// `steps.len()` when it ends with a wildcard): a path there is joined to a file's path,
    /// never listed.
    literal_tail: usize,
}

impl Compiled {
    /// Whether a path at step `i` is still to be listed (rather than joined to a file name).
    fn lists(&self, i: usize) -> bool {
        i < self.literal_tail
    }
}

fn compile(pattern: &str) -> Option<Compiled> {
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let mut root = PathBuf::from("/");
    let mut steps = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        if *c == "**" {
            steps.push(Step::AnyDepth);
            if last {
                steps.push(Step::Match(glob::Pattern::new("*").ok()?));
            }
        } else if c.contains(['*', '?', '[']) {
            steps.push(Step::Match(glob::Pattern::new(c).ok()?));
        } else if steps.is_empty() && !last {
            root.push(c);
        } else {
            steps.push(Step::Literal(OsString::from(c)));
        }
    }
    let literal_tail = steps
        .iter()
        .rposition(|s| !matches!(s, Step::Literal(_)))
        .map_or(0, |i| i + 1);
    (!steps.is_empty()).then_some(Compiled {
        root,
        steps,
        literal_tail,
    })
}

/// A source's include and exclude patterns, compiled once.
#[derive(Debug, Clone)]
pub struct Globs {
    includes: Vec<Compiled>,
    excludes: Vec<glob::Pattern>,
}

impl Globs {
    /// Compiles the patterns (invalid ones, refused by the config check, are left out).
    pub fn new(include: &[String], exclude: &[String]) -> Globs {
        Globs {
            includes: include.iter().filter_map(|p| compile(p)).collect(),
            excludes: exclude
                .iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect(),
        }
    }

    /// Whether an exclude pattern matches `path` as found or as resolved (symlinks followed),
    /// so that an excluded file is not read through a symlinked directory or a link to it.
    fn excluded(&self, path: &Path) -> bool {
        let x = &self.excludes;
        !x.is_empty()
            && (x.iter().any(|p| p.matches_path(path))
                || std::fs::canonicalize(path)
                    .is_ok_and(|real| real != path && x.iter().any(|p| p.matches_path(&real))))
    }

    /// Expands the include patterns within `limits`; returns early, with
    /// [`Expansion::cancelled`] set, once `stop` is raised.
    pub fn expand(&self, limits: Limits, stop: &AtomicBool) -> Expansion {
        let mut walk = Walk {
            globs: self,
            limits,
            stop,
            out: Expansion::default(),
            listed: HashSet::new(),
            dir_ids: HashSet::new(),
            watched: HashSet::new(),
            file_ids: HashMap::new(),
            files_full: false,
        };
        for (pi, pattern) in self.includes.iter().enumerate() {
            walk.pattern(pi, pattern);
            if walk.out.cancelled || walk.files_full {
                break;
            }
        }
        walk.out.dirs_listed = walk.dir_ids.len();
        walk.out
    }
}

struct Walk<'a> {
    globs: &'a Globs,
    limits: Limits,
    stop: &'a AtomicBool,
    out: Expansion,
    /// (device, inode, pattern, step) of every listing done.
    listed: HashSet<(u64, u64, usize, usize)>,
    /// Distinct directories listed (what `max_directories` counts).
    dir_ids: HashSet<(u64, u64)>,
    watched: HashSet<PathBuf>,
    /// (device, inode) → index in `out.files`.
    file_ids: HashMap<(u64, u64), usize>,
    files_full: bool,
}

impl Walk<'_> {
    fn stopped(&mut self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            self.out.cancelled = true;
        }
        self.out.cancelled || self.files_full
    }

    fn reach(&mut self, limit: Limit) {
        self.out.limit.get_or_insert(limit);
        if limit == Limit::Files {
            self.files_full = true;
        }
    }

    fn pattern(&mut self, pi: usize, pattern: &Compiled) {
        // Pending (directory, step), depth first. The directories still to be listed are
        // bounded here, since every listing pushes its entries. The paths of a literal tail
        // are not: they only ever come from the one listing just done (each one is a file
        // name to try, pushing nothing), which kept at most `max_files + max_directories`.
        let max_pending = self.limits.max_directories.saturating_mul(4).max(64);
        let mut pending: Vec<(PathBuf, usize)> = vec![(pattern.root.clone(), 0)];
        let mut to_list = usize::from(pattern.lists(0));
        while let Some((dir, i)) = pending.pop() {
            if self.stopped() {
                return;
            }
            if pattern.lists(i) {
                to_list -= 1;
            }
            let last = i + 1 == pattern.steps.len();
            match &pattern.steps[i] {
                Step::Literal(name) => {
                    let path = dir.join(name);
                    if last {
                        self.watch(&dir);
                        self.candidate(path);
                    } else {
                        to_list += usize::from(pattern.lists(i + 1));
                        pending.push((path, i + 1));
                    }
                }
                Step::AnyDepth => {
                    let keep = |_: &OsStr, ft: &std::fs::FileType| may_be_dir(ft);
                    let Some(entries) = self.list(pi, i, &dir, &keep, Limit::Directories) else {
                        continue;
                    };
                    // Depth first, in name order: this directory's next step, then each
                    // subdirectory.
                    for (name, _) in entries.into_iter().rev() {
                        if to_list >= max_pending {
                            self.reach(Limit::Directories);
                            break;
                        }
                        to_list += 1;
                        pending.push((dir.join(name), i));
                    }
                    to_list += usize::from(pattern.lists(i + 1));
                    pending.push((dir, i + 1));
                }
                Step::Match(p) => {
                    let next_lists = pattern.lists(i + 1);
                    // Before a literal tail, only the entries where it names a regular file:
                    // what is kept (and cut at the limits) is then files, not directories
                    // that may hold none.
                    let tail: PathBuf = pattern.steps[(i + 1).min(pattern.steps.len())..]
                        .iter()
                        .filter_map(|s| match s {
                            Step::Literal(n) => Some(n.as_os_str()),
                            _ => None,
                        })
                        .collect();
                    let keep = |name: &OsStr, ft: &std::fs::FileType| {
                        p.matches(&name.to_string_lossy())
                            && (last
                                || may_be_dir(ft)
                                    && (next_lists || is_file(&dir.join(name).join(&tail))))
                    };
                    let cut = if next_lists {
                        Limit::Directories
                    } else {
                        Limit::Files
                    };
                    let Some(entries) = self.list(pi, i, &dir, &keep, cut) else {
                        continue;
                    };
                    if last {
                        for (name, _) in entries {
                            if self.stopped() {
                                return;
                            }
                            self.candidate(dir.join(name));
                        }
                    } else {
                        for (name, _) in entries.into_iter().rev() {
                            if next_lists {
                                if to_list >= max_pending {
                                    self.reach(Limit::Directories);
                                    break;
                                }
                                to_list += 1;
                            }
                            pending.push((dir.join(name), i + 1));
                        }
                    }
                }
            }
        }
    }

    /// Notes that `path` could not be used because of `error` (unless it is simply not
    /// there).
    fn unusable(&mut self, path: &Path, error: &std::io::Error) {
        let Some(kind) = PathError::of(error) else {
            return;
        };
        self.out.unusable_counts[kind.index()] += 1;
        if self.out.unusable.len() < MAX_UNUSABLE {
            self.out.unusable.push(Unusable {
                path: path.to_owned(),
                kind,
                error: error.to_string(),
            });
        }
    }

    fn watch(&mut self, dir: &Path) {
        if self.watched.insert(dir.to_owned()) {
            self.out.dirs.push(dir.to_owned());
        }
    }

    /// Lists `dir` for step `step` of pattern `pi`, keeping the entries `keep` accepts, sorted
    /// by name; `None` when it is no directory, was listed for this step already (a loop or
    /// another path to it), or is past the directory limit. Entries past what both limits
    /// together can use are left out, and limit `cut` reached.
    fn list(
        &mut self,
        pi: usize,
        step: usize,
        dir: &Path,
        keep: &dyn Fn(&OsStr, &std::fs::FileType) -> bool,
        cut: Limit,
    ) -> Option<Vec<(OsString, std::fs::FileType)>> {
        let meta = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return None,
            Err(e) => {
                self.unusable(dir, &e);
                return None;
            }
        };
        let id = (meta.dev(), meta.ino());
        if !self.listed.insert((id.0, id.1, pi, step)) {
            self.out.repeats += 1;
            debug!(dir = %dir.display(), "Directory reached again (a loop or another path); listed once.");
            return None;
        }
        if !self.dir_ids.contains(&id) {
            if self.dir_ids.len() >= self.limits.max_directories {
                self.reach(Limit::Directories);
                return None;
            }
            self.dir_ids.insert(id);
            self.watch(dir);
        }
        let read = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) => {
                self.unusable(dir, &e);
                return None;
            }
        };
        // More entries than both limits together can never all be used.
        let max_kept = self
            .limits
            .max_files
            .saturating_add(self.limits.max_directories);
        let mut kept = Vec::new();
        for entry in read {
            if self.stopped() {
                return None;
            }
            let Ok(entry) = entry else { continue };
            let Ok(ft) = entry.file_type() else { continue };
            let name = entry.file_name();
            if !keep(&name, &ft) {
                continue;
            }
            if kept.len() >= max_kept {
                // Noted, without ending the walk: the entries kept are still used.
                self.out.limit.get_or_insert(cut);
                break;
            }
            kept.push((name, ft));
        }
        kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(kept)
    }

    /// A path the pattern matched: reported if it is a regular file not reported yet.
    fn candidate(&mut self, path: PathBuf) {
        if self.globs.excluded(&path) {
            return;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                self.unusable(&path, &e);
                return;
            }
        };
        if !meta.is_file() {
            if !meta.is_dir() {
                debug!(path = %path.display(), "Not a regular file (FIFO, socket or device); not read.");
            }
            return;
        }
        let id = (meta.dev(), meta.ino());
        if let Some(&i) = self.file_ids.get(&id) {
            self.out.repeats += 1;
            // Prefer a name that is not a symlink (`current.csv`): the one the writer
            // renames.
            let known = &mut self.out.files[i];
            if is_symlink(&known.path) && !is_symlink(&path) {
                known.path = path;
            }
            return;
        }
        if self.out.files.len() >= self.limits.max_files {
            self.reach(Limit::Files);
            return;
        }
        self.file_ids.insert(id, self.out.files.len());
        self.out.files.push(Found { path, meta });
    }
}

fn may_be_dir(ft: &std::fs::FileType) -> bool {
    ft.is_dir() || ft.is_symlink()
}

fn is_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Opens `path` for reading if it is a regular file: `O_NONBLOCK` so that a FIFO or a device
/// put in its place cannot block the open, and the type checked on the descriptor opened.
pub fn open_regular(path: &Path) -> std::io::Result<(File, Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const LIMITS: Limits = Limits {
        max_files: 1000,
        max_directories: 1000,
    };

    fn expand(include: &[String], limits: Limits) -> Expansion {
        Globs::new(include, &[]).expand(limits, &AtomicBool::new(false))
    }

    fn names(e: &Expansion, root: &Path) -> Vec<String> {
        e.files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x\n").unwrap();
    }

    #[test]
    fn patterns_compile_to_a_literal_root_and_steps() {
        let c = compile("/pg/log/postgres/*.csv").unwrap();
        assert_eq!(c.root, PathBuf::from("/pg/log/postgres"));
        assert!(matches!(c.steps.as_slice(), [Step::Match(_)]));
        let c = compile("/pg/log/patroni/patroni.log").unwrap();
        assert_eq!(c.root, PathBuf::from("/pg/log/patroni"));
        assert!(matches!(c.steps.as_slice(), [Step::Literal(_)]));
        let c = compile("/var/**/x/*.log").unwrap();
        assert_eq!(c.root, PathBuf::from("/var"));
        assert!(matches!(
            c.steps.as_slice(),
            [Step::AnyDepth, Step::Literal(_), Step::Match(_)]
        ));
        let c = compile("/var/log/**").unwrap();
        assert!(matches!(
            c.steps.as_slice(),
            [Step::AnyDepth, Step::Match(_)]
        ));
        assert!(compile("/").is_none());
    }

    #[test]
    fn matches_like_the_glob_crate_on_an_ordinary_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "a.log",
            "b.csv",
            ".hidden.log",
            "sub/c.log",
            "sub/deep/d.log",
            "sub/deep/e.txt",
            "other/f.log",
        ] {
            touch(&root.join(f));
        }
        for pattern in [
            "*.log",
            "**/*.log",
            "*/*.log",
            "sub/**/*.log",
            "s?b/deep/[d]*",
        ] {
            let full = format!("{}/{pattern}", root.display());
            let ours = names(&expand(std::slice::from_ref(&full), LIMITS), root);
            let mut theirs: Vec<String> = glob::glob(&full)
                .unwrap()
                .flatten()
                .filter(|p| p.is_file())
                .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
                .collect();
            let mut sorted = ours.clone();
            sorted.sort();
            theirs.sort();
            assert_eq!(sorted, theirs, "{pattern}");
        }
        let e = expand(&[format!("{}/**", root.display())], LIMITS);
        assert_eq!(e.files.len(), 7);
        assert_eq!(e.dirs_listed, 4);
    }

    #[test]
    fn symlink_loops_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("in/a.log"));
        symlink(".", root.join("in/s1")).unwrap();
        symlink(".", root.join("in/s2")).unwrap();
        symlink("..", root.join("in/up")).unwrap();
        let e = expand(&[format!("{}/in/**/*.log", root.display())], LIMITS);
        assert_eq!(names(&e, root), ["in/a.log"]);
        assert!(e.limit.is_none());
        assert!(e.repeats > 0);
        assert!(e.dirs_listed <= 2, "{}", e.dirs_listed);
    }

    #[test]
    fn an_exponential_fan_of_links_costs_one_listing_per_directory() {
        // d0 → {a, b} → d1 → {a, b} → ... : 2^40 paths, 40 directories.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..40 {
            let d = root.join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            touch(&d.join(format!("f{i}.log")));
            if i > 0 {
                symlink(&d, root.join(format!("d{}/a", i - 1))).unwrap();
                symlink(&d, root.join(format!("d{}/b", i - 1))).unwrap();
            }
        }
        let t = std::time::Instant::now();
        let e = expand(&[format!("{}/d0/**/*.log", root.display())], LIMITS);
        assert_eq!(e.files.len(), 40);
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_file_reached_by_several_paths_is_found_once_under_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("real/pg.csv"));
        symlink(root.join("real"), root.join("alias")).unwrap();
        // "current.csv" sorts first but is a symlink: the file's own name is reported, in the
        // directory as first reached ("alias" sorts before "real").
        symlink("pg.csv", root.join("real/current.csv")).unwrap();
        std::fs::hard_link(root.join("real/pg.csv"), root.join("real/zz.csv")).unwrap();
        let e = expand(
            &[
                format!("{}/*/*.csv", root.display()),
                format!("{}/real/pg.csv", root.display()),
            ],
            LIMITS,
        );
        assert_eq!(names(&e, root), ["alias/pg.csv"]);
        assert_eq!(e.dirs_listed, 2, "root and real, listed once through alias");
    }

    #[test]
    fn fifos_sockets_and_devices_are_never_reported_nor_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("real.log"));
        let fifo = root.join("fifo.log");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let _socket = std::os::unix::net::UnixListener::bind(root.join("sock.log")).unwrap();
        symlink("/dev/null", root.join("null.log")).unwrap();
        symlink(&fifo, root.join("fifo-link.log")).unwrap();
        let e = expand(&[format!("{}/*.log", root.display())], LIMITS);
        assert_eq!(names(&e, root), ["real.log"]);
        // Opening a FIFO for reading would block until a writer comes: never here.
        let t = std::time::Instant::now();
        for p in ["fifo.log", "fifo-link.log", "null.log", "sock.log"] {
            assert!(open_regular(&root.join(p)).is_err(), "{p}");
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(open_regular(&root.join("real.log")).is_ok());
    }

    #[test]
    fn limits_cut_the_expansion_and_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..50 {
            touch(&root.join(format!("d{i:02}/f.log")));
        }
        let limits = Limits {
            max_files: 10,
            max_directories: 1000,
        };
        let e = expand(&[format!("{}/**/*.log", root.display())], limits);
        assert_eq!(e.files.len(), 10);
        assert_eq!(e.limit, Some(Limit::Files));
        assert_eq!(e.files[0].path, root.join("d00/f.log"));
        let limits = Limits {
            max_files: 1000,
            max_directories: 5,
        };
        let e = expand(&[format!("{}/**/*.log", root.display())], limits);
        assert_eq!(e.limit, Some(Limit::Directories));
        assert_eq!(e.dirs_listed, 5);
        assert_eq!(e.files.len(), 4, "root and 4 subdirectories");
    }

    /// An excluded file is left out whatever path reaches it: a symlinked directory, a
    /// symlink to the file.
    #[test]
    fn an_excluded_file_is_left_out_through_symlinks_too() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("in/real/app.log"));
        touch(&root.join("in/real/secret.log"));
        symlink("real", root.join("in/alias")).unwrap();
        symlink("real/secret.log", root.join("in/link.log")).unwrap();
        let globs = Globs::new(
            &[format!("{}/in/**/*.log", root.display())],
            &[format!("{}/in/real/secret.log", root.display())],
        );
        let e = globs.expand(LIMITS, &AtomicBool::new(false));
        assert_eq!(names(&e, root), ["in/alias/app.log"]);
    }

    /// A tree deeper than `PATH_MAX`: what is past it is reported, not silently skipped;
    /// a vanished path is no error, a denied one is.
    #[test]
    fn paths_past_path_max_are_reported_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("top.log"));
        let name = "d".repeat(250);
        let made = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "cd '{}' && for i in $(seq 20); do mkdir {name} && cd {name} || exit 1; done && echo x > deep.log",
                root.display()
            ))
            .status()
            .unwrap();
        assert!(made.success());
        let e = expand(&[format!("{}/**/*.log", root.display())], LIMITS);
        assert_eq!(names(&e, root), ["top.log"]);
        assert_eq!(e.unusable_counts, [0, 1, 0]);
        assert_eq!(e.unusable[0].kind, PathError::NameTooLong);
        assert!(e.unusable[0].path.as_os_str().len() > 4096);

        let io = std::io::Error::from_raw_os_error;
        assert_eq!(PathError::of(&io(libc::ENOENT)), None);
        assert_eq!(PathError::of(&io(libc::ENOTDIR)), None);
        assert_eq!(
            PathError::of(&io(libc::EACCES)),
            Some(PathError::Permission)
        );
        assert_eq!(
            PathError::of(&io(libc::ENAMETOOLONG)),
            Some(PathError::NameTooLong)
        );
        assert_eq!(PathError::of(&io(libc::ELOOP)), Some(PathError::Other));
    }

    fn limits(max_files: usize, max_directories: usize) -> Limits {
        Limits {
            max_files,
            max_directories,
        }
    }

    /// A literal name after a wildcard (`*/x.log`): the directories it goes through are never
    /// listed and count against no directory limit; the files it names count against
    /// `max_files`, exactly.
    #[test]
    fn a_literal_name_after_a_wildcard_counts_files_not_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..300 {
            touch(&root.join(format!("lit/d{i:03}/x.log")));
        }
        for i in 0..100 {
            std::fs::create_dir_all(root.join(format!("lit/empty{i:03}"))).unwrap();
        }
        let pattern = [format!("{}/lit/*/x.log", root.display())];
        for (files, dirs, found, limit) in [
            (1000, 1, 300, None),
            (300, 1, 300, None),
            (299, 1, 299, Some(Limit::Files)),
            (10, 1, 10, Some(Limit::Files)),
        ] {
            let e = expand(&pattern, limits(files, dirs));
            let what = format!("max_files {files}, max_directories {dirs}");
            assert_eq!(e.files.len(), found, "{what}");
            assert_eq!(e.limit, limit, "{what}");
            assert_eq!(e.dirs_listed, 1, "{what}");
        }
        let e = expand(&pattern, limits(1000, 1));
        assert_eq!(e.files[0].path, root.join("lit/d000/x.log"));
        assert_eq!(e.files[299].path, root.join("lit/d299/x.log"));
        // Through a literal directory too (`*/sub/x.log`).
        touch(&root.join("lit/d000/sub/x.log"));
        touch(&root.join("lit/d001/sub/x.log"));
        let e = expand(
            &[format!("{}/lit/*/sub/x.log", root.display())],
            limits(2, 1),
        );
        assert_eq!((e.files.len(), e.limit), (2, None));
    }

    /// `max_directories` and `max_files` exactly at what a tree holds, and one under.
    #[test]
    fn limits_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..20 {
            touch(&root.join(format!("tree/d{i:02}/t.log")));
        }
        let tree = [format!("{}/tree/**/*.log", root.display())];
        let e = expand(&tree, limits(1000, 21));
        assert_eq!((e.files.len(), e.dirs_listed, e.limit), (20, 21, None));
        let e = expand(&tree, limits(1000, 20));
        assert_eq!((e.files.len(), e.dirs_listed), (19, 20));
        assert_eq!(e.limit, Some(Limit::Directories));
        let e = expand(&tree, limits(20, 21));
        assert_eq!((e.files.len(), e.limit), (20, None));
        let e = expand(&tree, limits(19, 21));
        assert_eq!((e.files.len(), e.limit), (19, Some(Limit::Files)));
    }

    #[test]
    fn a_raised_stop_flag_ends_the_walk_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..20 {
            touch(&root.join(format!("d{i}/f.log")));
        }
        let globs = Globs::new(&[format!("{}/**/*.log", root.display())], &[]);
        let e = globs.expand(LIMITS, &AtomicBool::new(true));
        assert!(e.cancelled);
        assert!(e.files.is_empty());
    }
}
