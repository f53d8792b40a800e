//! The JSON of `pgbackrest info --output=json`, parsed leniently.
//!
//! pgBackRest keeps this JSON stable, but newer versions add fields and status codes, older ones
//! lack some (`repo` before 2.32, `error` before 2.36, `lsn` before 2.38, `annotation` before
//! 2.41, `size-map`/`delta-map` before 2.44, lock sizes before 2.48, `restore` before 2.56).
//! So:
//!
//! - unknown fields are ignored and unknown status codes are kept as numbers;
//! - every field may be absent or `null` (it then reads as empty / zero / absent);
//! - every number is an integer (`u64` for sizes, `i64` for codes, keys and timestamps):
//!   `system-id` exceeds 2^53, so nothing goes through `f64`;
//! - each part (the stanza status, each `repo[]`, `db[]`, `archive[]` and `backup[]` element) is
//!   parsed on its own: a part that does not parse is dropped and reported as a [`Problem`],
//!   the rest of its stanza and the other stanzas are kept. Only output that is not a JSON
//!   array at all is an [`InfoError`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Why the output of `pgbackrest info` could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// Not JSON (garbage, truncated or empty output).
    #[error("invalid JSON from pgbackrest info: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not the array of stanzas pgBackRest prints.
    #[error("pgbackrest info printed JSON that is not an array of stanzas (found {0})")]
    NotArray(&'static str),
}

/// A part of the output that could not be parsed and was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The stanza it belongs to, when known.
    pub stanza: Option<String>,
    /// Where in the stanza, e.g. `backup[2]` (empty for a whole stanza).
    pub part: String,
    /// The parser's message.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.stanza, self.part.is_empty()) {
            (Some(s), false) => write!(f, "stanza {s:?} {}: {}", self.part, self.message),
            (Some(s), true) => write!(f, "stanza {s:?}: {}", self.message),
            (None, _) => write!(f, "{}: {}", self.part, self.message),
        }
    }
}

/// The parsed output: the stanzas, and the parts left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    /// Stanzas in output order (pgBackRest sorts them by name).
    pub stanzas: Vec<Stanza>,
    /// Parts that could not be parsed.
    pub problems: Vec<Problem>,
}

/// One stanza.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stanza {
    /// `name`.
    pub name: String,
    /// `cipher`.
    pub cipher: String,
    /// `status`; `None` when absent or unparseable.
    pub status: Option<StanzaStatus>,
    /// `repo[]`; `None` when the key is absent (pgBackRest < 2.32).
    pub repos: Option<Vec<Repo>>,
    /// `db[]`.
    pub dbs: Vec<Db>,
    /// `archive[]`.
    pub archives: Vec<Archive>,
    /// `backup[]`, oldest first as pgBackRest prints them.
    pub backups: Vec<Backup>,
}

/// `status` of a stanza.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StanzaStatus {
    /// 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza data, 4 different
    /// across repos, 5 database mismatch across repos, 6 requested backup not found, 99 other;
    /// newer codes are kept as they are.
    #[serde(deserialize_with = "nullable")]
    pub code: i64,
    /// Fixed text per code.
    #[serde(deserialize_with = "nullable")]
    pub message: String,
    /// Locks held on this host.
    #[serde(deserialize_with = "nullable")]
    pub lock: Locks,
}

/// `status.lock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Locks {
    /// Backup, expire or stanza-* lock.
    #[serde(deserialize_with = "nullable")]
    pub backup: Lock,
    /// Restore lock (pgBackRest >= 2.56).
    #[serde(deserialize_with = "nullable")]
    pub restore: Lock,
}

/// One lock with its progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Lock {
    /// Whether the lock is held.
    #[serde(deserialize_with = "nullable")]
    pub held: bool,
    /// Total bytes of the operation in progress (pgBackRest >= 2.48).
    pub size: Option<u64>,
    /// Bytes done so far (pgBackRest >= 2.48).
    #[serde(rename = "size-cplt")]
    pub size_cplt: Option<u64>,
}

/// One `repo[]` element.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Repo {
    /// `cipher`.
    #[serde(deserialize_with = "nullable")]
    pub cipher: String,
    /// `key` (the repo number).
    #[serde(deserialize_with = "nullable")]
    pub key: i64,
    /// `status`.
    #[serde(deserialize_with = "nullable")]
    pub status: RepoStatus,
}

/// `repo[].status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RepoStatus {
    /// Same codes as the stanza's.
    #[serde(deserialize_with = "nullable")]
    pub code: i64,
    /// For code 99 the full error text.
    #[serde(deserialize_with = "nullable")]
    pub message: String,
}

/// One `db[]` element: a PostgreSQL history entry of one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Db {
    /// `id`.
    #[serde(deserialize_with = "nullable")]
    pub id: i64,
    /// `repo-key`.
    #[serde(rename = "repo-key", deserialize_with = "nullable")]
    pub repo_key: i64,
    /// `system-id` (does not fit an `f64`).
    #[serde(rename = "system-id")]
    pub system_id: Option<u64>,
    /// `version`, e.g. `15`.
    #[serde(deserialize_with = "nullable")]
    pub version: String,
}

/// A `{id, repo-key}` reference to a `db[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DbRef {
    /// `id`.
    #[serde(deserialize_with = "nullable")]
    pub id: i64,
    /// `repo-key`.
    #[serde(rename = "repo-key", deserialize_with = "nullable")]
    pub repo_key: i64,
}

/// One `archive[]` element.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Archive {
    /// The `db[]` entry.
    #[serde(deserialize_with = "nullable")]
    pub database: DbRef,
    /// Archive id, e.g. `15-1`.
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// Oldest WAL segment, `None` when nothing is archived.
    pub min: Option<String>,
    /// Newest WAL segment, `None` when nothing is archived.
    pub max: Option<String>,
}

/// One `backup[]` element.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Backup {
    /// `label`, e.g. `20261125-204938F`.
    #[serde(deserialize_with = "nullable")]
    pub label: String,
    /// `full`, `diff` or `incr`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// Label of the prior backup.
    pub prior: Option<String>,
    /// Labels of every backup this one needs.
    pub reference: Option<Vec<String>>,
    /// Start and stop times.
    #[serde(deserialize_with = "nullable")]
    pub timestamp: Times,
    /// First and last WAL segment.
    #[serde(deserialize_with = "nullable")]
    pub archive: WalRange,
    /// Start and stop LSN (pgBackRest >= 2.38).
    #[serde(deserialize_with = "nullable")]
    pub lsn: WalRange,
    /// The pgBackRest that made it.
    #[serde(deserialize_with = "nullable")]
    pub backrest: Backrest,
    /// The `db[]` entry.
    #[serde(deserialize_with = "nullable")]
    pub database: DbRef,
    /// Page checksum errors found (pgBackRest >= 2.36).
    pub error: Option<bool>,
    /// Sizes.
    #[serde(deserialize_with = "nullable")]
    pub info: BackupSizes,
    /// `annotation` (pgBackRest >= 2.41): only its size matters here.
    pub annotation: Option<BTreeMap<String, Value>>,
    /// `database-ref` (only with `--set`).
    #[serde(rename = "database-ref")]
    pub database_ref: Option<Vec<Value>>,
}

impl Backup {
    /// Whether the backup uses block incremental (`size-map` and `delta-map` both present), as
    /// the `block_incr` label says.
    pub fn block_incr(&self) -> bool {
        self.info.repository.size_map.is_some() && self.info.repository.delta_map.is_some()
    }

    /// Stop minus start, seconds.
    pub fn duration_seconds(&self) -> i64 {
        self.timestamp.stop.saturating_sub(self.timestamp.start)
    }
}

/// `timestamp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Times {
    /// Unix seconds.
    #[serde(deserialize_with = "nullable")]
    pub start: i64,
    /// Unix seconds.
    #[serde(deserialize_with = "nullable")]
    pub stop: i64,
}

/// A `{start, stop}` pair of strings (`archive`, `lsn`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct WalRange {
    /// `start`.
    #[serde(deserialize_with = "nullable")]
    pub start: String,
    /// `stop`.
    #[serde(deserialize_with = "nullable")]
    pub stop: String,
}

/// `backrest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Backrest {
    /// Repository format.
    pub format: Option<u64>,
    /// pgBackRest version, e.g. `2.45`.
    #[serde(deserialize_with = "nullable")]
    pub version: String,
}

/// `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BackupSizes {
    /// Uncompressed size of the database.
    #[serde(deserialize_with = "nullable")]
    pub size: u64,
    /// Uncompressed bytes this backup copied.
    #[serde(deserialize_with = "nullable")]
    pub delta: u64,
    /// Sizes in the repository.
    #[serde(deserialize_with = "nullable")]
    pub repository: RepoSizes,
}

/// `info.repository`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RepoSizes {
    /// Backup set size (absent for block incremental backups).
    pub size: Option<u64>,
    /// Bytes stored by this backup.
    #[serde(deserialize_with = "nullable")]
    pub delta: u64,
    /// Block map size (pgBackRest >= 2.44, block incremental only).
    #[serde(rename = "size-map")]
    pub size_map: Option<u64>,
    /// Block delta map size (pgBackRest >= 2.44, block incremental only).
    #[serde(rename = "delta-map")]
    pub delta_map: Option<u64>,
}

/// Reads `null` as the type's default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses the standard output of `pgbackrest info --output=json`.
pub fn parse(output: &[u8]) -> Result<Info, InfoError> {
    let value: Value = serde_json::from_slice(output)?;
    let Value::Array(items) = value else {
        return Err(InfoError::NotArray(json_kind(&value)));
    };
    let mut info = Info::default();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::Object(map) => {
                if let Some(stanza) = parse_stanza(map, i, &mut info.problems) {
                    info.stanzas.push(stanza);
                }
            }
            other => info.problems.push(Problem {
                stanza: None,
                part: format!("element [{i}]"),
                message: format!("expected a stanza object, found {}", json_kind(&other)),
            }),
        }
    }
    Ok(info)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_stanza(
    mut map: Map<String, Value>,
    index: usize,
    problems: &mut Vec<Problem>,
) -> Option<Stanza> {
    let name = match map.remove("name") {
        Some(Value::String(s)) => s,
        other => {
            problems.push(Problem {
                stanza: None,
                part: format!("element [{index}]"),
                message: format!(
                    "stanza without a string \"name\" (found {})",
                    other.as_ref().map_or("nothing", json_kind)
                ),
            });
            return None;
        }
    };
    let mut problem = |part: String, message: String| {
        problems.push(Problem {
            stanza: Some(name.clone()),
            part,
            message,
        });
    };
    let cipher = match map.remove("cipher") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => String::new(),
        Some(other) => {
            problem(
                "cipher".into(),
                format!("expected a string, found {}", json_kind(&other)),
            );
            String::new()
        }
    };
    let status = match map.remove("status") {
        None | Some(Value::Null) => None,
        Some(v) => match StanzaStatus::deserialize(v) {
            Ok(s) => Some(s),
            Err(e) => {
                problem("status".into(), e.to_string());
                None
            }
        },
    };
    let repos = match map.remove("repo") {
        None => None,
        Some(v) => Some(parse_list::<Repo>(v, "repo", &mut problem)),
    };
    let dbs = map
        .remove("db")
        .map(|v| parse_list::<Db>(v, "db", &mut problem))
        .unwrap_or_default();
    let archives = map
        .remove("archive")
        .map(|v| parse_list::<Archive>(v, "archive", &mut problem))
        .unwrap_or_default();
    let backups = map
        .remove("backup")
        .map(|v| parse_list::<Backup>(v, "backup", &mut problem))
        .unwrap_or_default();
    Some(Stanza {
        name,
        cipher,
        status,
        repos,
        dbs,
        archives,
        backups,
    })
}

/// Parses each element of an array on its own, reporting those that fail.
fn parse_list<T>(value: Value, key: &str, problem: &mut impl FnMut(String, String)) -> Vec<T>
where
    T: for<'de> Deserialize<'de>,
{
    match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| match T::deserialize(item) {
                Ok(v) => Some(v),
                Err(e) => {
                    problem(format!("{key}[{i}]"), e.to_string());
                    None
                }
            })
            .collect(),
        other => {
            problem(
                key.to_owned(),
                format!("expected an array, found {}", json_kind(&other)),
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_id_above_2_pow_53_is_exact() {
        let info = parse(
            br#"[{"name":"s","db":[{"id":1,"repo-key":1,"system-id":7712213868974602271,"version":"15"}]}]"#,
        )
        .unwrap();
        assert_eq!(
            info.stanzas[0].dbs[0].system_id,
            Some(7_712_213_868_974_602_271)
        );
        assert!(info.problems.is_empty());
    }

    #[test]
    fn nulls_unknown_fields_and_codes_are_tolerated() {
        let info = parse(
            br#"[{"name":"s","cipher":null,"future":{"x":1},
                  "status":{"code":42,"message":"from the future","lock":{"backup":{"held":true,"size":10,"size-cplt":5,"repo":[{"key":1}]},"other":{}}},
                  "repo":[{"cipher":"none","key":1,"status":{"code":77,"message":"new"},"extra":true}],
                  "archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":null,"min":null}],
                  "backup":[{"label":"L","type":"full","prior":null,"reference":null,"lsn":null,
                             "timestamp":{"start":1,"stop":4},"info":{"size":1,"delta":1,"repository":{"delta":1}},"new":[1,2]}]}]"#,
        )
        .unwrap();
        assert!(info.problems.is_empty(), "{:?}", info.problems);
        let s = &info.stanzas[0];
        let status = s.status.as_ref().unwrap();
        assert_eq!(status.code, 42);
        assert!(status.lock.backup.held);
        assert_eq!(status.lock.backup.size, Some(10));
        assert_eq!(s.repos.as_ref().unwrap()[0].status.code, 77);
        assert_eq!(s.archives[0].max, None);
        assert_eq!(s.backups[0].duration_seconds(), 3);
        assert_eq!(s.backups[0].lsn.start, "");
        assert!(!s.backups[0].block_incr());
    }

    #[test]
    fn a_bad_part_is_dropped_and_reported_the_rest_kept() {
        let info = parse(
            br#"[{"name":"a","backup":[{"label":"ok","type":"full"},{"label":"bad","info":{"size":-5}}],"db":"nope"},
                 "junk",
                 {"cipher":"none"},
                 {"name":"b","status":{"code":"zero"},"repo":[{"key":1}]}]"#,
        )
        .unwrap();
        let names: Vec<&str> = info.stanzas.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(info.stanzas[0].backups.len(), 1);
        assert_eq!(info.stanzas[0].backups[0].label, "ok");
        assert!(info.stanzas[1].status.is_none());
        assert_eq!(info.stanzas[1].repos.as_ref().unwrap().len(), 1);
        let text: Vec<String> = info.problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 5, "{text:?}");
        assert!(
            text[0].starts_with("stanza \"a\" db: expected an array"),
            "{text:?}"
        );
        assert!(text[1].starts_with("stanza \"a\" backup[1]:"), "{text:?}");
        assert!(
            text[2].starts_with("element [1]: expected a stanza object"),
            "{text:?}"
        );
        assert!(
            text[3].starts_with("element [2]: stanza without"),
            "{text:?}"
        );
        assert!(text[4].starts_with("stanza \"b\" status:"), "{text:?}");
    }

    #[test]
    fn garbage_truncated_and_non_arrays_are_errors() {
        assert!(matches!(parse(b"garbage"), Err(InfoError::Json(_))));
        assert!(matches!(parse(b""), Err(InfoError::Json(_))));
        assert!(matches!(
            parse(br#"[{"name":"s","backup":[{"#),
            Err(InfoError::Json(_))
        ));
        assert!(matches!(
            parse(br#"{"name":"s"}"#),
            Err(InfoError::NotArray("an object"))
        ));
        assert_eq!(parse(b"[]").unwrap(), Info::default());
    }
}
