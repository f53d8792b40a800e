//! What a collection keeps and a scrape renders: the [`State`] of every invocation (last good
//! data, status, failures), the stanzas with what the extra calls found, and the rules that
//! read them (upstream's "last backup" slots, the backup limit, the `pg_version` label).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use crate::info::{Backup, Info, Stanza};
use crate::settings::Settings;

/// The newest archived WAL segment of one repository, as `repo-ls` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalArchived {
    /// `repo-key` of the archive.
    pub repo_key: i64,
    /// `database.id` of the archive (the newest in that repository).
    pub database_id: i64,
    /// PostgreSQL version of that database.
    pub pg_version: String,
    /// Modification time of the segment file, Unix seconds.
    pub timestamp: i64,
}

/// A stanza with what the extra calls found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectedStanza {
    /// The parsed `info` of the stanza.
    pub stanza: Stanza,
    /// `--backrest.database-count`: databases per backup label (0 where `--set` failed).
    pub databases: HashMap<String, u64>,
    /// `--backrest.database-count-latest`: databases per label of the "last" backups.
    pub last_databases: HashMap<String, u64>,
    /// Newest archived WAL per repository.
    pub wal_archived: Vec<WalArchived>,
}

/// The data of one invocation's last successful `info` call.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationData {
    /// When the `info` call finished.
    pub collected_at: SystemTime,
    /// The stanzas, excluded ones removed.
    pub stanzas: Vec<CollectedStanza>,
}

/// One entry of the include list (or the single all-stanzas call).
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationState {
    /// The `stanza` label of `pgbackrest_exporter_status`.
    pub label: String,
    /// `pgbackrest_exporter_status` of the last run; `None` before the first.
    pub status: Option<bool>,
    /// The end of the last run with status 1.
    pub last_success: Option<SystemTime>,
    /// The data served: from the last run whose output parsed.
    pub data: Option<InvocationData>,
    /// Why the last run failed, if it did.
    pub last_error: Option<String>,
}

/// Everything a scrape renders.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// `pgbackrest_version_info` (0 when `version --output num` gives no number, as upstream).
    pub version_info: Option<u64>,
    /// Per invocation, in include-list order.
    pub invocations: Vec<InvocationState>,
    /// Completed collection runs.
    pub collections_total: u64,
    /// Duration of the last collection run.
    pub last_duration: Option<Duration>,
    /// pgbackrest runs killed after the timeout.
    pub timeouts_total: u64,
}

impl State {
    /// The state before the first run.
    pub fn new(settings: &Settings) -> State {
        let invocations = if settings.collect_info {
            settings
                .invocations()
                .iter()
                .map(|inv| InvocationState {
                    label: settings.status_label(inv),
                    status: None,
                    last_success: None,
                    data: None,
                    last_error: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        State {
            version_info: None,
            invocations,
            collections_total: 0,
            last_duration: None,
            timeouts_total: 0,
        }
    }

    /// Records a parsed `info` output for the invocation labelled `label` (used by the
    /// collector, and by tests to render fixtures).
    /// `problems` names the parts left out (status 0), `None` for a clean run.
    pub fn record_info(
        &mut self,
        label: &str,
        stanzas: Vec<CollectedStanza>,
        problems: Option<String>,
        at: SystemTime,
    ) {
        let inv = self.invocation_mut(label);
        inv.status = Some(problems.is_none());
        if problems.is_none() {
            inv.last_success = Some(at);
        }
        inv.last_error = problems;
        inv.data = Some(InvocationData {
            collected_at: at,
            stanzas,
        });
    }

    /// Records a failed run: status 0, the last good data kept.
    pub fn record_failure(&mut self, label: &str, cause: String) {
        let inv = self.invocation_mut(label);
        inv.status = Some(false);
        inv.last_error = Some(cause);
    }

    fn invocation_mut(&mut self, label: &str) -> &mut InvocationState {
        if let Some(i) = self.invocations.iter().position(|i| i.label == label) {
            return &mut self.invocations[i];
        }
        self.invocations.push(InvocationState {
            label: label.to_owned(),
            status: None,
            last_success: None,
            data: None,
            last_error: None,
        });
        self.invocations.last_mut().expect("just pushed")
    }
}

/// The three "last backup" slots of a stanza: full; full or diff; any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastBackups<'a> {
    /// Newest full backup.
    pub full: Option<&'a Backup>,
    /// Newest full or differential backup.
    pub diff: Option<&'a Backup>,
    /// Newest backup of any type.
    pub incr: Option<&'a Backup>,
}

impl<'a> LastBackups<'a> {
    /// Upstream's rule: walking the backups, a full updates all three slots if it stopped
    /// later, a diff the diff and incr slots, an incr the incr slot.
    pub fn of(backups: &'a [Backup]) -> LastBackups<'a> {
        let mut last = LastBackups::default();
        let newer = |slot: &Option<&Backup>, b: &Backup| {
            slot.is_none_or(|s| b.timestamp.stop > s.timestamp.stop)
        };
        for b in backups {
            let (full, diff, incr) = match b.kind.as_str() {
                "full" => (true, true, true),
                "diff" => (false, true, true),
                "incr" => (false, false, true),
                _ => (false, false, false),
            };
            if full && newer(&last.full, b) {
                last.full = Some(b);
            }
            if diff && newer(&last.diff, b) {
                last.diff = Some(b);
            }
            if incr && newer(&last.incr, b) {
                last.incr = Some(b);
            }
        }
        last
    }

    /// `(backup_type, backup)` for the three slots, if a full backup exists (upstream emits the
    /// `*_last_*` metrics only then).
    pub fn slots(&self) -> Option<[(&'static str, &'a Backup); 3]> {
        let full = self.full?;
        Some([
            ("full", full),
            ("diff", self.diff.unwrap_or(full)),
            ("incr", self.incr.unwrap_or(full)),
        ])
    }
}

/// The backups that get per-backup series: all, or the newest `limit` per repository.
pub fn limited_backups(backups: &[Backup], limit: usize) -> Vec<&Backup> {
    if limit == 0 {
        return backups.iter().collect();
    }
    let mut keep = vec![false; backups.len()];
    let mut by_repo: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, b) in backups.iter().enumerate() {
        by_repo.entry(b.database.repo_key).or_default().push(i);
    }
    for list in by_repo.values_mut() {
        list.sort_by(|&a, &b| {
            let (a, b) = (&backups[a], &backups[b]);
            (b.timestamp.stop, &b.label).cmp(&(a.timestamp.stop, &a.label))
        });
        for &i in list.iter().take(limit) {
            keep[i] = true;
        }
    }
    // Output order stays pgBackRest's.
    backups
        .iter()
        .zip(keep)
        .filter_map(|(b, k)| k.then_some(b))
        .collect()
}

/// `pg_version` label: the `db[]` entry with that id and repo key, else empty.
pub fn pg_version(stanza: &Stanza, id: i64, repo_key: i64) -> String {
    stanza
        .dbs
        .iter()
        .find(|d| d.id == id && d.repo_key == repo_key)
        .map(|d| d.version.clone())
        .unwrap_or_default()
}

/// The length of `database-ref` of the backup in an `info --set` output, 0 when absent (as
/// upstream).
pub fn databases_in(info: &Info) -> u64 {
    info.stanzas
        .first()
        .and_then(|s| s.backups.first())
        .and_then(|b| b.database_ref.as_ref())
        .map_or(0, |d| d.len() as u64)
}

/// For tests and callers that render without running anything: wraps parsed stanzas.
pub fn collected(info: Info) -> Vec<CollectedStanza> {
    info.stanzas
        .into_iter()
        .map(|stanza| CollectedStanza {
            stanza,
            ..CollectedStanza::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(label: &str, kind: &str, stop: i64, repo: i64) -> Backup {
        let mut b = Backup {
            label: label.into(),
            kind: kind.into(),
            ..Backup::default()
        };
        b.timestamp.stop = stop;
        b.database.repo_key = repo;
        b
    }

    #[test]
    fn last_backup_rule_of_upstream() {
        let list = [
            backup("F1", "full", 10, 1),
            backup("I1", "incr", 20, 1),
            backup("D1", "diff", 30, 1),
        ];
        let last = LastBackups::of(&list);
        let slots = last.slots().unwrap();
        assert_eq!(
            slots.map(|(t, b)| (t, b.label.as_str())),
            [("full", "F1"), ("diff", "D1"), ("incr", "D1")]
        );
        // Only a full: all three are the full.
        let only = [backup("F1", "full", 10, 1)];
        let slots = LastBackups::of(&only).slots().unwrap();
        assert!(slots.iter().all(|(_, b)| b.label == "F1"));
        // No full: no slots.
        assert!(
            LastBackups::of(&[backup("I", "incr", 1, 1)])
                .slots()
                .is_none()
        );
    }

    #[test]
    fn backup_limit_keeps_the_newest_per_repository() {
        let list = [
            backup("a", "full", 1, 1),
            backup("b", "incr", 2, 1),
            backup("c", "full", 3, 2),
            backup("d", "incr", 4, 1),
            backup("e", "incr", 5, 2),
        ];
        let kept: Vec<&str> = limited_backups(&list, 2)
            .iter()
            .map(|b| b.label.as_str())
            .collect();
        assert_eq!(kept, ["b", "c", "d", "e"]);
        assert_eq!(limited_backups(&list, 0).len(), 5);
    }
}
