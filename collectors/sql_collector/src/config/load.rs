//! Loading a config file or directory, merging, and finding the config path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::{CollectorConfig, CollectorSet, ConfigError, LoadMode, parse_str};

/// Environment variable naming the config path when `--config` is not given.
pub const CONFIG_ENV: &str = "PG_EXPORTER_CONFIG";

/// Paths tried, in order, when neither `--config` nor [`CONFIG_ENV`] is set.
pub const DEFAULT_CONFIG_CANDIDATES: [&str; 3] = [
    "pg_exporter.yml",
    "/etc/pg_exporter.yml",
    "/etc/pg_exporter",
];

/// [`CollectorSet::source`] of the set built by [`from_embedded`].
pub const EMBEDDED_SOURCE: &str = "<embedded>";

/// The config path to load: `--config`, else env `PG_EXPORTER_CONFIG`, else the first of
/// `./pg_exporter.yml`, `/etc/pg_exporter.yml`, `/etc/pg_exporter` (a directory) that exists.
///
/// A path given by flag or environment is returned as is, even if it does not exist (loading
/// then reports it). `None` means nothing was found: the caller uses the embedded default set.
pub fn resolve_config_path(flag: Option<&Path>) -> Option<PathBuf> {
    let env = std::env::var_os(CONFIG_ENV);
    resolve_config_path_from(
        flag,
        env.as_deref(),
        &DEFAULT_CONFIG_CANDIDATES.map(Path::new),
    )
}

/// [`resolve_config_path`] with the environment value and the candidate list as parameters
/// (empty flag or environment values count as unset).
pub fn resolve_config_path_from(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    candidates: &[&Path],
) -> Option<PathBuf> {
    if let Some(flag) = flag.filter(|p| !p.as_os_str().is_empty()) {
        tracing::debug!(path = %flag.display(), "config path from --config");
        return Some(flag.to_path_buf());
    }
    if let Some(env) = env.filter(|e| !e.is_empty()) {
        tracing::debug!(path = %Path::new(env).display(), "config path from {CONFIG_ENV}");
        return Some(PathBuf::from(env));
    }
    let found = candidates.iter().find(|p| p.exists())?;
    tracing::debug!(path = %found.display(), "config path from the default search list");
    Some(found.to_path_buf())
}

/// Loads a config file or directory.
///
/// A directory is read non-recursively: only `*.yml`/`*.yaml` files, in lexical file-name
/// order; a later file's branch replaces an earlier one with the same key. Branches without a
/// priority get `100 + ordinal` of their file among the successfully loaded files (comment-only
/// files count). An empty directory yields an empty set. Invalid files are handled per `mode`.
/// A single file keeps its priorities as written.
pub fn load(path: &Path, mode: LoadMode) -> Result<CollectorSet, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        return load_dir(path, mode);
    }
    let text = fs::read_to_string(path).map_err(io)?;
    let name = path
        .file_name()
        .map_or_else(|| path.to_string_lossy(), OsStr::to_string_lossy);
    let collectors = parse_str(&text, &name)?;
    tracing::debug!(path = %path.display(), count = collectors.len(), "loaded config file");
    Ok(CollectorSet::from_collectors(path, collectors))
}

fn load_dir(dir: &Path, mode: LoadMode) -> Result<CollectorSet, ConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Io { path, source }
    };
    let inputs = config_files(dir)
        .map_err(io(dir))?
        .into_iter()
        .map(|(name, path)| {
            let text = fs::read_to_string(&path).map_err(io(&path));
            (name, text)
        });
    merge(dir.to_path_buf(), inputs, mode)
}

/// The config files of a directory: its `*.yml`/`*.yaml` files (symlinks followed;
/// subdirectories and dangling links left out), as `(file name, path)` in lexical order.
fn config_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_config_file_name(&name) {
            continue;
        }
        let path = entry.path();
        if path.is_file() {
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Whether a file name is one a config directory loads (`*.yml`, `*.yaml`).
pub fn is_config_file_name(name: &str) -> bool {
    name.ends_with(".yml") || name.ends_with(".yaml")
}

/// A hash of what [`load`] would read from `path`: the file's bytes, or the names and bytes
/// of a directory's config files; a missing or unreadable path hashes its error kind. Equal
/// fingerprints mean an unchanged config (the watcher reloads only when it changes).
pub fn fingerprint(path: &Path) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    let mut file = |name: &str, path: &Path| {
        name.hash(&mut hasher);
        match fs::read(path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => format!("{:?}", e.kind()).hash(&mut hasher),
        }
    };
    if path.is_dir() {
        match config_files(path) {
            Ok(files) => files.iter().for_each(|(name, p)| file(name, p)),
            Err(e) => file(&format!("{:?}", e.kind()), path),
        }
    } else {
        file("", path);
    }
    hasher.finish()
}

/// Merges the built-in default set: `(file name, text)` pairs, in the given order, as a
/// directory would be merged, in [`LoadMode::Strict`] mode (an invalid text is an error).
pub fn from_embedded(files: &[(&str, &str)]) -> Result<CollectorSet, ConfigError> {
    let inputs = files
        .iter()
        .map(|(name, text)| ((*name).to_owned(), Ok((*text).to_owned())));
    merge(PathBuf::from(EMBEDDED_SOURCE), inputs, LoadMode::Strict)
}

/// Directory merge semantics over `(file name, text or read error)` pairs.
fn merge(
    source: PathBuf,
    files: impl IntoIterator<Item = (String, Result<String, ConfigError>)>,
    mode: LoadMode,
) -> Result<CollectorSet, ConfigError> {
    let mut merged: HashMap<String, CollectorConfig> = HashMap::new();
    let mut skipped = Vec::new();
    let mut loaded: i64 = 0;
    let mut defined = 0usize;
    for (name, text) in files {
        let branches = match text.and_then(|t| parse_str(&t, &name)) {
            Ok(branches) => branches,
            Err(e) if mode == LoadMode::Lenient => {
                tracing::warn!(file = %name, error = %e, "skipping invalid config file");
                skipped.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        loaded += 1;
        defined += branches.len();
        for mut c in branches {
            if c.priority == 0 {
                c.priority = 100 + loaded;
            }
            if let Some(old) = merged.insert(c.branch.clone(), c) {
                tracing::debug!(
                    branch = %old.branch,
                    replaced = %old.source,
                    file = %name,
                    "branch redefined by a later file"
                );
            }
        }
    }
    if merged.is_empty() && !skipped.is_empty() {
        return Err(ConfigError::NoValidBranch {
            path: source,
            skipped,
        });
    }
    tracing::debug!(
        source = %source.display(),
        files = loaded,
        defined,
        collectors = merged.len(),
        skipped = skipped.len(),
        "merged config"
    );
    let mut set = CollectorSet::from_collectors(source, merged.into_values().collect());
    set.skipped_files = skipped;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a:\n  query: SELECT 1\n  metrics:\n    - v: {usage: GAUGE}\n";
    const B: &str = "b:\n  query: SELECT 2\n  priority: 7\n  metrics:\n    - v: {usage: GAUGE}\n";

    #[test]
    fn embedded_merge_assigns_priorities_and_replaces() {
        let set = from_embedded(&[
            ("0000-doc.yml", "# doc only\n"),
            ("0100-a.yml", A),
            ("0200-b.yml", B),
            ("0300-a.yml", &A.replace("SELECT 1", "SELECT 3")),
        ])
        .unwrap();
        assert_eq!(set.source, Path::new(EMBEDDED_SOURCE));
        let got: Vec<_> = set
            .collectors
            .iter()
            .map(|c| {
                (
                    c.branch.as_str(),
                    c.priority,
                    c.query.as_str(),
                    c.source.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("b", 7, "SELECT 2", "0200-b.yml"),
                ("a", 104, "SELECT 3", "0300-a.yml")
            ]
        );
        let err = from_embedded(&[("x.yml", "a: ~\n")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yml:1: branch a: branch is null (expected a mapping with at least `query` and `metrics`)"
        );
    }

    #[test]
    fn lenient_merge_needs_one_branch_only_if_something_failed() {
        let bad = || ("bad.yml".to_owned(), Ok("a: ~\n".to_owned()));
        let doc = || ("doc.yml".to_owned(), Ok("# nothing\n".to_owned()));
        let e = merge(PathBuf::from("d"), [bad(), doc()], LoadMode::Lenient).unwrap_err();
        assert!(matches!(&e, ConfigError::NoValidBranch { skipped, .. } if skipped.len() == 1));
        assert!(e.to_string().starts_with("d: no collector branch could be loaded, 1 config file(s) invalid: bad.yml:1: branch a:"), "{e}");
        let set = merge(PathBuf::from("d"), [doc()], LoadMode::Lenient).unwrap();
        assert!(set.is_empty() && set.skipped_files.is_empty());
    }

    #[test]
    fn search_order() {
        let none: &[&Path] = &[];
        let flag = Path::new("/f.yml");
        let env = OsStr::new("/e.yml");
        assert_eq!(
            resolve_config_path_from(Some(flag), Some(env), none),
            Some(flag.to_path_buf())
        );
        assert_eq!(
            resolve_config_path_from(Some(Path::new("")), Some(env), none),
            Some(PathBuf::from("/e.yml"))
        );
        assert_eq!(
            resolve_config_path_from(None, Some(OsStr::new("")), none),
            None
        );
        assert_eq!(
            resolve_config_path(Some(flag)),
            Some(flag.to_path_buf()),
            "the flag wins over everything"
        );
    }
}
