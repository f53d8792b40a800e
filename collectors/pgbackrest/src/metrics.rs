//! Rendering the stored [`State`] in the text format, with the names, labels and help texts of
//! woblerr/pgbackrest_exporter v0.23, plus our additions.
//!
//! As Go's registry does, families come sorted by name, each series' labels sorted by name and
//! the series of a family sorted by label values; families without series are left out. Ages
//! (`pgbackrest_backup_since_last_completion_seconds`, the WAL and data ages) are computed from
//! `now`, the scrape time, so that they keep growing while pgBackRest fails.
//!
//! Our additions (names not used upstream):
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `pgbackrest_stanza_lock_status` | stanza | the pre-v0.23 name of `pgbackrest_stanza_backup_lock_status` (Pigsty's dashboard reads it) |
//! | `pgbackrest_wal_last_archived_timestamp_seconds` | database_id, pg_version, repo_key, stanza | modification time of the newest archived WAL segment (newest archive of each repository) |
//! | `pgbackrest_wal_since_last_archived_seconds` | same | seconds since then, at scrape time |
//! | `pgbackrest_exporter_last_success_timestamp_seconds` | stanza | end of the last collection with status 1 |
//! | `pgbackrest_exporter_data_age_seconds` | stanza | age of the data served (grows while collections fail) |
//! | `pgbackrest_exporter_collections_total` | – | collection runs completed |
//! | `pgbackrest_exporter_collect_duration_seconds` | – | duration of the last collection run |
//! | `pgbackrest_exporter_timeouts_total` | – | pgbackrest runs killed after `--collect.timeout` |
//! | `pgbackrest_exporter_collect_timeout_seconds` | – | `--collect.timeout` |

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use agent_kit::exposition::{MetricType, write_header, write_sample};

use crate::info::Backup;
use crate::settings::Settings;
use crate::state::{CollectedStanza, LastBackups, State, limited_backups, pg_version};

/// Help text of `pgbackrest_exporter_build_info` (Go's version collector).
const BUILD_INFO_HELP: &str = "A metric with a constant '1' value labeled by version, revision, branch, goversion from which pgbackrest_exporter was built, and the goos and goarch for the build.";

type Labels = Vec<(&'static str, String)>;

/// Families being assembled.
#[derive(Debug, Default)]
struct Families {
    map: BTreeMap<&'static str, Family>,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: MetricType,
    label_names: Vec<&'static str>,
    samples: BTreeMap<Vec<String>, f64>,
}

impl Families {
    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, MetricType::Gauge, labels, value);
    }

    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        mut labels: Labels,
        value: f64,
    ) {
        labels.sort_by_key(|(k, _)| *k);
        let family = self.map.entry(name).or_insert_with(|| Family {
            help,
            kind,
            label_names: labels.iter().map(|(k, _)| *k).collect(),
            samples: BTreeMap::new(),
        });
        // A later duplicate replaces the earlier, as setting a Go gauge twice does.
        family
            .samples
            .insert(labels.into_iter().map(|(_, v)| v).collect(), value);
    }

    fn write(&self, out: &mut String) {
        for (name, family) in &self.map {
            write_header(out, name, family.help, family.kind);
            for (values, value) in &family.samples {
                let pairs = family
                    .label_names
                    .iter()
                    .zip(values)
                    .map(|(k, v)| (*k, v.as_str()));
                write_sample(out, name, "", pairs, *value);
            }
        }
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_millis() as f64) / 1000.0,
        Err(e) => -((e.duration().as_millis() as f64) / 1000.0),
    }
}

/// `now - then` in seconds with millisecond precision (negative if `then` is later).
fn age_seconds(then: SystemTime, now: SystemTime) -> f64 {
    match now.duration_since(then) {
        Ok(d) => (d.as_millis() as f64) / 1000.0,
        Err(e) => -((e.duration().as_millis() as f64) / 1000.0),
    }
}

fn whole_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in `tz`, as Go's `time.Unix(s, 0).Format("2006-01-02 15:04:05")` in
/// the local zone.
pub fn format_time(unix: i64, tz: &jiff::tz::TimeZone) -> String {
    match jiff::Timestamp::from_second(unix) {
        Ok(ts) => tz.to_datetime(ts).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => String::new(),
    }
}

/// Renders `state` as of `now`, followed by the process metrics.
pub fn render(state: &State, settings: &Settings, now: SystemTime) -> String {
    let mut out = render_pgbackrest(state, settings, now);
    // `process_*` sorts after every `pgbackrest_*` family.
    let mut enc = agent_kit::exposition::TextEncoder::new(&mut out);
    agent_kit::process_metrics::encode(&mut enc);
    out
}

/// Only the pgBackRest families (no process metrics): what the golden tests compare.
pub fn render_pgbackrest(state: &State, settings: &Settings, now: SystemTime) -> String {
    let mut f = Families::default();
    exporter_metrics(&mut f, state, settings, now);
    for inv in &state.invocations {
        if let Some(data) = &inv.data {
            for stanza in &data.stanzas {
                stanza_metrics(&mut f, stanza, settings, now);
            }
        }
    }
    let mut out = String::new();
    f.write(&mut out);
    out
}

fn exporter_metrics(f: &mut Families, state: &State, settings: &Settings, now: SystemTime) {
    f.gauge(
        "pgbackrest_exporter_build_info",
        BUILD_INFO_HELP,
        vec![
            ("branch", String::new()),
            ("goarch", agent_kit::process_metrics::goarch().to_owned()),
            ("goos", std::env::consts::OS.to_owned()),
            ("goversion", "rust".to_owned()),
            ("revision", "unknown".to_owned()),
            ("tags", "unknown".to_owned()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ],
        1.0,
    );
    if let Some(v) = state.version_info {
        f.gauge(
            "pgbackrest_version_info",
            "Information about pgBackRest version.",
            Vec::new(),
            v as f64,
        );
    }
    for inv in &state.invocations {
        let stanza = || vec![("stanza", inv.label.clone())];
        if let Some(ok) = inv.status {
            f.gauge(
                "pgbackrest_exporter_status",
                "pgBackRest exporter get data status.",
                stanza(),
                if ok { 1.0 } else { 0.0 },
            );
        }
        if let Some(t) = inv.last_success {
            f.gauge(
                "pgbackrest_exporter_last_success_timestamp_seconds",
                "Unix time of the end of the last pgBackRest collection with pgbackrest_exporter_status 1.",
                stanza(),
                unix_seconds(t),
            );
        }
        if let Some(data) = &inv.data {
            f.gauge(
                "pgbackrest_exporter_data_age_seconds",
                "Seconds since the pgBackRest data served was collected; grows while collections fail.",
                stanza(),
                age_seconds(data.collected_at, now),
            );
        }
    }
    f.add(
        "pgbackrest_exporter_collections_total",
        "Completed pgBackRest collection runs.",
        MetricType::Counter,
        Vec::new(),
        state.collections_total as f64,
    );
    if let Some(d) = state.last_duration {
        f.gauge(
            "pgbackrest_exporter_collect_duration_seconds",
            "Duration of the last pgBackRest collection run.",
            Vec::new(),
            (d.as_millis() as f64) / 1000.0,
        );
    }
    f.add(
        "pgbackrest_exporter_timeouts_total",
        "pgbackrest runs killed, with their process group, after --collect.timeout.",
        MetricType::Counter,
        Vec::new(),
        state.timeouts_total as f64,
    );
    f.gauge(
        "pgbackrest_exporter_collect_timeout_seconds",
        "Timeout of each pgbackrest run (--collect.timeout).",
        Vec::new(),
        settings.timeout.as_secs_f64(),
    );
}

fn stanza_metrics(f: &mut Families, cs: &CollectedStanza, settings: &Settings, now: SystemTime) {
    let s = &cs.stanza;
    let name = || ("stanza", s.name.clone());
    let now_s = whole_seconds(now);

    if let Some(st) = &s.status {
        let bool_value = |b: bool| if b { 1.0 } else { 0.0 };
        let bytes = |v: Option<u64>| v.unwrap_or(0) as f64;
        f.gauge(
            "pgbackrest_stanza_status",
            "Current stanza status.",
            vec![name()],
            st.code as f64,
        );
        f.gauge(
            "pgbackrest_stanza_backup_lock_status",
            "Current stanza backup lock status.",
            vec![name()],
            bool_value(st.lock.backup.held),
        );
        f.gauge(
            "pgbackrest_stanza_lock_status",
            "Current stanza lock status.",
            vec![name()],
            bool_value(st.lock.backup.held),
        );
        f.gauge(
            "pgbackrest_stanza_backup_total_bytes",
            "Total size for backup in progress.",
            vec![name()],
            bytes(st.lock.backup.size),
        );
        f.gauge(
            "pgbackrest_stanza_backup_complete_bytes",
            "Completed size for backup in progress.",
            vec![name()],
            bytes(st.lock.backup.size_cplt),
        );
        f.gauge(
            "pgbackrest_stanza_restore_lock_status",
            "Current stanza restore lock status.",
            vec![name()],
            bool_value(st.lock.restore.held),
        );
        f.gauge(
            "pgbackrest_stanza_restore_total_bytes",
            "Total size for restore in progress.",
            vec![name()],
            bytes(st.lock.restore.size),
        );
        f.gauge(
            "pgbackrest_stanza_restore_complete_bytes",
            "Completed size for restore in progress.",
            vec![name()],
            bytes(st.lock.restore.size_cplt),
        );
    }

    const REPO_HELP: &str = "Current repository status.";
    match &s.repos {
        Some(repos) => {
            for r in repos {
                f.gauge(
                    "pgbackrest_repo_status",
                    REPO_HELP,
                    vec![
                        ("cipher", r.cipher.clone()),
                        ("repo_key", r.key.to_string()),
                        name(),
                    ],
                    r.status.code as f64,
                );
            }
        }
        // pgBackRest < 2.32 has no repo list.
        None => f.gauge(
            "pgbackrest_repo_status",
            REPO_HELP,
            vec![
                ("cipher", "none".to_owned()),
                ("repo_key", "0".to_owned()),
                name(),
            ],
            0.0,
        ),
    }

    for a in &s.archives {
        let min = a.min.clone().unwrap_or_default();
        let max = a.max.clone().unwrap_or_default();
        let ok = !min.is_empty() && !max.is_empty();
        let (wal_min, wal_max) = if ok && settings.verbose_wal {
            (min, max)
        } else {
            (String::new(), String::new())
        };
        f.gauge(
            "pgbackrest_wal_archive_status",
            "Current WAL archive status.",
            vec![
                ("database_id", a.database.id.to_string()),
                (
                    "pg_version",
                    pg_version(s, a.database.id, a.database.repo_key),
                ),
                ("repo_key", a.database.repo_key.to_string()),
                name(),
                ("wal_max", wal_max),
                ("wal_min", wal_min),
            ],
            if ok { 1.0 } else { 0.0 },
        );
    }

    for w in &cs.wal_archived {
        let labels = || {
            vec![
                ("database_id", w.database_id.to_string()),
                ("pg_version", w.pg_version.clone()),
                ("repo_key", w.repo_key.to_string()),
                name(),
            ]
        };
        f.gauge(
            "pgbackrest_wal_last_archived_timestamp_seconds",
            "Unix time the newest archived WAL segment was written to the repository.",
            labels(),
            w.timestamp as f64,
        );
        f.gauge(
            "pgbackrest_wal_since_last_archived_seconds",
            "Seconds since the newest archived WAL segment was written to the repository.",
            labels(),
            now_s.saturating_sub(w.timestamp) as f64,
        );
    }

    for b in limited_backups(&s.backups, settings.backup_limit) {
        backup_metrics(f, cs, b, settings);
    }

    if let Some(slots) = LastBackups::of(&s.backups).slots() {
        for (kind, b) in slots {
            last_backup_metrics(f, cs, kind, b, settings, now_s);
        }
    }
}

fn block_incr(b: &Backup) -> String {
    if b.block_incr() { "y" } else { "n" }.to_owned()
}

/// Upstream's `convertEmptyLSNValueLabel`: `-` for an empty LSN (pgBackRest < 2.38).
fn lsn(v: &str) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.to_owned()
    }
}

/// Counts of `reference` entries ending in F, D and I; counting stops at the first other
/// entry, as upstream's does.
fn reference_counts(b: &Backup) -> [(&'static str, u64); 3] {
    let (mut full, mut diff, mut incr) = (0, 0, 0);
    for r in b.reference.as_deref().unwrap_or_default() {
        match r.chars().last() {
            Some('F') => full += 1,
            Some('D') => diff += 1,
            Some('I') => incr += 1,
            _ => break,
        }
    }
    [("diff", diff), ("full", full), ("incr", incr)]
}

fn backup_metrics(f: &mut Families, cs: &CollectedStanza, b: &Backup, settings: &Settings) {
    let s = &cs.stanza;
    let common = || {
        vec![
            ("backup_name", b.label.clone()),
            ("backup_type", b.kind.clone()),
            ("block_incr", block_incr(b)),
            ("database_id", b.database.id.to_string()),
            ("repo_key", b.database.repo_key.to_string()),
            ("stanza", s.name.clone()),
        ]
    };
    let mut info = common();
    info.extend([
        ("backrest_ver", b.backrest.version.clone()),
        ("lsn_start", lsn(&b.lsn.start)),
        ("lsn_stop", lsn(&b.lsn.stop)),
        (
            "pg_version",
            pg_version(s, b.database.id, b.database.repo_key),
        ),
        ("prior", b.prior.clone().unwrap_or_default()),
        ("wal_start", b.archive.start.clone()),
        ("wal_stop", b.archive.stop.clone()),
    ]);
    f.gauge("pgbackrest_backup_info", "Backup info.", info, 1.0);
    let mut duration = common();
    duration.extend([
        (
            "start_time",
            format_time(b.timestamp.start, &settings.time_zone),
        ),
        (
            "stop_time",
            format_time(b.timestamp.stop, &settings.time_zone),
        ),
    ]);
    f.gauge(
        "pgbackrest_backup_duration_seconds",
        "Backup duration.",
        duration,
        b.duration_seconds() as f64,
    );
    let repo = &b.info.repository;
    let sizes: [(&'static str, &'static str, f64); 8] = [
        (
            "pgbackrest_backup_size_bytes",
            "Full uncompressed size of the database.",
            b.info.size as f64,
        ),
        (
            "pgbackrest_backup_delta_bytes",
            "Amount of data in the database to actually backup.",
            b.info.delta as f64,
        ),
        (
            "pgbackrest_backup_repo_size_bytes",
            "Full compressed files size to restore the database from backup.",
            repo.size.unwrap_or(0) as f64,
        ),
        (
            "pgbackrest_backup_repo_delta_bytes",
            "Compressed files size in backup.",
            repo.delta as f64,
        ),
        (
            "pgbackrest_backup_repo_size_map_bytes",
            "Size of block incremental map.",
            repo.size_map.unwrap_or(0) as f64,
        ),
        (
            "pgbackrest_backup_repo_delta_map_bytes",
            "Size of block incremental delta map.",
            repo.delta_map.unwrap_or(0) as f64,
        ),
        (
            "pgbackrest_backup_error_status",
            "Backup error status.",
            if b.error == Some(true) { 1.0 } else { 0.0 },
        ),
        (
            "pgbackrest_backup_annotations",
            "Number of annotations in backup.",
            b.annotation.as_ref().map_or(0, BTreeMap::len) as f64,
        ),
    ];
    for (name, help, value) in sizes {
        f.gauge(name, help, common(), value);
    }
    if settings.reference_count {
        for (ref_backup, n) in reference_counts(b) {
            let mut labels = common();
            labels.push(("ref_backup", ref_backup.to_owned()));
            f.gauge(
                "pgbackrest_backup_references",
                "Number of references to another backup (backup reference list).",
                labels,
                n as f64,
            );
        }
    }
    if settings.database_count {
        f.gauge(
            "pgbackrest_backup_databases",
            "Number of databases in backup.",
            common(),
            cs.databases.get(&b.label).copied().unwrap_or(0) as f64,
        );
    }
}

fn last_backup_metrics(
    f: &mut Families,
    cs: &CollectedStanza,
    kind: &'static str,
    b: &Backup,
    settings: &Settings,
    now_s: i64,
) {
    let labels = || {
        vec![
            ("backup_type", kind.to_owned()),
            ("block_incr", block_incr(b)),
            ("stanza", cs.stanza.name.clone()),
        ]
    };
    let repo = &b.info.repository;
    let values: [(&'static str, &'static str, f64); 10] = [
        (
            "pgbackrest_backup_since_last_completion_seconds",
            "Seconds since the last completed full, differential or incremental backup.",
            now_s.saturating_sub(b.timestamp.stop) as f64,
        ),
        (
            "pgbackrest_backup_last_duration_seconds",
            "Backup duration for the last full, differential or incremental backup.",
            b.duration_seconds() as f64,
        ),
        (
            "pgbackrest_backup_last_size_bytes",
            "Full uncompressed size of the database in the last full, differential or incremental backup.",
            b.info.size as f64,
        ),
        (
            "pgbackrest_backup_last_delta_bytes",
            "Amount of data in the database to actually backup in the last full, differential or incremental backup.",
            b.info.delta as f64,
        ),
        (
            "pgbackrest_backup_last_repo_size_bytes",
            "Full compressed files size to restore the database from the last full, differential or incremental backup.",
            repo.size.unwrap_or(0) as f64,
        ),
        (
            "pgbackrest_backup_last_repo_delta_bytes",
            "Compressed files size in the last full, differential or incremental backup.",
            repo.delta as f64,
        ),
        (
            "pgbackrest_backup_last_repo_size_map_bytes",
            "Size of block incremental map in the last full, differential or incremental backup.",
            repo.size_map.unwrap_or(0) as f64,
        ),
        (
            "pgbackrest_backup_last_repo_delta_map_bytes",
            "Size of block incremental delta map in the last full, differential or incremental backup.",
            repo.delta_map.unwrap_or(0) as f64,
        ),
        (
            "pgbackrest_backup_last_error_status",
            "Error status in the last full, differential or incremental backup.",
            if b.error == Some(true) { 1.0 } else { 0.0 },
        ),
        (
            "pgbackrest_backup_last_annotations",
            "Number of annotations in the last full, differential or incremental backup.",
            b.annotation.as_ref().map_or(0, BTreeMap::len) as f64,
        ),
    ];
    for (name, help, value) in values {
        f.gauge(name, help, labels(), value);
    }
    for (ref_backup, n) in reference_counts(b) {
        let mut l = labels();
        l.push(("ref_backup", ref_backup.to_owned()));
        f.gauge(
            "pgbackrest_backup_last_references",
            "Number of references to another backup (backup reference list) in the last full, differential or incremental backup.",
            l,
            n as f64,
        );
    }
    if settings.database_count_latest {
        f.gauge(
            "pgbackrest_backup_last_databases",
            "Number of databases in the last full, differential or incremental backup.",
            labels(),
            cs.last_databases.get(&b.label).copied().unwrap_or(0) as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_layout_in_the_given_zone() {
        let utc = jiff::tz::TimeZone::UTC;
        assert_eq!(format_time(1_795_639_778, &utc), "2026-11-25 20:49:38");
        let berlin = jiff::tz::TimeZone::fixed(jiff::tz::offset(1));
        assert_eq!(format_time(1_795_639_778, &berlin), "2026-11-25 21:49:38");
    }

    #[test]
    fn references_count_by_suffix() {
        let b = Backup {
            reference: Some(vec!["F".into(), "F_D".into(), "F_I".into(), "F_I".into()]),
            ..Backup::default()
        };
        assert_eq!(
            reference_counts(&b),
            [("diff", 1), ("full", 1), ("incr", 2)]
        );
        let bad = Backup {
            reference: Some(vec!["F".into(), "weird".into(), "X_I".into()]),
            ..Backup::default()
        };
        assert_eq!(
            reference_counts(&bad),
            [("diff", 0), ("full", 1), ("incr", 0)]
        );
    }
}
