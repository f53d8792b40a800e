//! Every fixture of `tests/fixtures/` (real `pgbackrest info --output=json` outputs of
//! pgBackRest 2.45, see its README) rendered into metrics and compared with a golden file in
//! `tests/golden/`, plus explicit checks of the values that matter (status codes 1, 2, 3, 4, 6,
//! 99, block incremental, two repositories, page checksum errors, a running backup, the "last
//! backup" rule, ages at scrape time).
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test -p pgbackrest-collector --test
//! golden` and review the diff.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgbackrest_collector::info;
use pgbackrest_collector::metrics::render_pgbackrest;
use pgbackrest_collector::settings::{ALL_STANZAS, Settings};
use pgbackrest_collector::state::{State, collected, databases_in};

/// Scrape time of the golden files: a while after the newest fixture backup (1795640071).
const NOW: u64 = 1_795_700_000;
/// When the fixture was "collected".
const COLLECTED: u64 = NOW - 30;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders `fixture` as one successful all-stanzas collection.
fn render(name: &str, settings: &Settings) -> String {
    let parsed = info::parse(&fixture(name)).unwrap();
    assert!(parsed.problems.is_empty(), "{name}: {:?}", parsed.problems);
    let db_count = databases_in(&parsed);
    let mut stanzas = collected(parsed);
    if settings.database_count {
        for s in &mut stanzas {
            for b in &s.stanza.backups {
                s.databases.insert(b.label.clone(), db_count);
            }
        }
    }
    let mut state = State::new(settings);
    state.version_info = Some(0);
    state.collections_total = 1;
    state.last_duration = Some(Duration::from_millis(250));
    state.record_info(ALL_STANZAS, stanzas, None, at(COLLECTED));
    let text = render_pgbackrest(&state, settings, at(NOW));
    // The build info names the build machine's architecture and our version.
    text.lines()
        .map(|l| {
            if l.starts_with("pgbackrest_exporter_build_info{") {
                "pgbackrest_exporter_build_info{...} 1"
            } else {
                l
            }
        })
        .fold(String::new(), |mut acc, l| {
            acc.push_str(l);
            acc.push('\n');
            acc
        })
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.prom"))
}

fn check_golden(golden: &str, text: &str) {
    let path = golden_path(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("-{a}\n+{b}"))
            .collect();
        panic!(
            "{golden}: rendered metrics differ from {} ({} vs {} lines):\n{}",
            path.display(),
            want.lines().count(),
            text.lines().count(),
            diff.join("\n")
        );
    }
}

/// Settings of the golden files: upstream defaults, UTC for the time labels.
fn defaults() -> Settings {
    Settings::default()
}

/// The value of the series `name{labels...}` (labels given as a subset), if exactly one matches.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matches: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        matches.len() <= 1,
        "{name}{labels:?} matches {} series",
        matches.len()
    );
    matches.first().copied()
}

fn count(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .count()
}

const FIXTURES: [&str; 16] = [
    "info-2.45-all-stanzas",
    "info-2.45-backup-not-found",
    "info-2.45-backup-running",
    "info-2.45-error-other",
    "info-2.45-full-incr-diff",
    "info-2.45-full-incr",
    "info-2.45-missing-stanza-data",
    "info-2.45-missing-stanza-path",
    "info-2.45-mixed-repos",
    "info-2.45-multi-repo-block-incr",
    "info-2.45-no-backups",
    "info-2.45-page-checksum-error",
    "info-2.45-set-block-incr",
    "info-2.45-set-incr",
    "info-2.45-set-page-checksum-error",
    "info-2.45-type-full",
];

#[test]
fn every_fixture_matches_its_golden_file() {
    let on_disk = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .count();
    assert_eq!(on_disk, FIXTURES.len(), "a fixture has no golden test");
    for name in FIXTURES {
        check_golden(name, &render(&format!("{name}.json"), &defaults()));
    }
}

#[test]
fn optional_flags_match_their_golden_files() {
    let all = Settings {
        reference_count: true,
        verbose_wal: true,
        database_count: true,
        database_count_latest: true,
        ..defaults()
    };
    check_golden(
        "info-2.45-full-incr-diff.all-flags",
        &render("info-2.45-full-incr-diff.json", &all),
    );
    check_golden(
        "info-2.45-set-incr.database-count",
        &render("info-2.45-set-incr.json", &all),
    );
    let limited = Settings {
        backup_limit: 1,
        ..defaults()
    };
    check_golden(
        "info-2.45-page-checksum-error.backup-limit-1",
        &render("info-2.45-page-checksum-error.json", &limited),
    );
}

#[test]
fn worked_example_of_the_reference() {
    let t = render("info-2.45-full-incr.json", &defaults());
    let demo = ("stanza", "demo");
    assert_eq!(value(&t, "pgbackrest_stanza_status", &[demo]), Some(0.0));
    assert_eq!(
        value(&t, "pgbackrest_stanza_backup_lock_status", &[demo]),
        Some(0.0)
    );
    assert_eq!(
        value(&t, "pgbackrest_stanza_lock_status", &[demo]),
        Some(0.0)
    );
    for bytes in [
        "pgbackrest_stanza_backup_total_bytes",
        "pgbackrest_stanza_backup_complete_bytes",
        "pgbackrest_stanza_restore_total_bytes",
        "pgbackrest_stanza_restore_complete_bytes",
    ] {
        assert_eq!(value(&t, bytes, &[demo]), Some(0.0), "{bytes}");
    }
    assert!(
        t.contains("pgbackrest_repo_status{cipher=\"none\",repo_key=\"1\",stanza=\"demo\"} 0\n")
    );
    assert!(t.contains(
        "pgbackrest_wal_archive_status{database_id=\"1\",pg_version=\"15\",repo_key=\"1\",stanza=\"demo\",wal_max=\"\",wal_min=\"\"} 1\n"
    ));
    assert!(t.contains(
        "pgbackrest_backup_info{backrest_ver=\"2.45\",backup_name=\"20261125-204938F\",backup_type=\"full\",block_incr=\"n\",database_id=\"1\",lsn_start=\"0/3000028\",lsn_stop=\"0/4003288\",pg_version=\"15\",prior=\"\",repo_key=\"1\",stanza=\"demo\",wal_start=\"000000010000000000000003\",wal_stop=\"000000010000000000000004\"} 1\n"
    ));
    assert!(t.contains(
        "pgbackrest_backup_duration_seconds{backup_name=\"20261125-204938F\",backup_type=\"full\",block_incr=\"n\",database_id=\"1\",repo_key=\"1\",stanza=\"demo\",start_time=\"2026-11-25 20:49:38\",stop_time=\"2026-11-25 20:49:41\"} 3\n"
    ));
    let full = [("backup_name", "20261125-204938F")];
    let incr = [("backup_name", "20261125-204938F_20261125-204947I")];
    for (name, f, i) in [
        ("pgbackrest_backup_size_bytes", 54_761_288.0, 64_117_066.0),
        ("pgbackrest_backup_delta_bytes", 54_761_288.0, 41_837_324.0),
        (
            "pgbackrest_backup_repo_size_bytes",
            4_750_905.0,
            6_303_771.0,
        ),
        (
            "pgbackrest_backup_repo_delta_bytes",
            4_750_905.0,
            3_349_100.0,
        ),
        ("pgbackrest_backup_repo_size_map_bytes", 0.0, 0.0),
        ("pgbackrest_backup_repo_delta_map_bytes", 0.0, 0.0),
        ("pgbackrest_backup_error_status", 0.0, 0.0),
        ("pgbackrest_backup_annotations", 0.0, 0.0),
        ("pgbackrest_backup_duration_seconds", 3.0, 3.0),
    ] {
        assert_eq!(value(&t, name, &full), Some(f), "{name} full");
        assert_eq!(value(&t, name, &incr), Some(i), "{name} incr");
    }
    assert!(t.contains("prior=\"20261125-204938F\""));
    // Last backups: full slot = full, diff slot = full (no diff yet), incr slot = incr.
    let last = |kind: &str, name: &str| value(&t, name, &[("backup_type", kind), demo]);
    assert_eq!(
        last("full", "pgbackrest_backup_last_size_bytes"),
        Some(54_761_288.0)
    );
    assert_eq!(
        last("diff", "pgbackrest_backup_last_size_bytes"),
        Some(54_761_288.0)
    );
    assert_eq!(
        last("incr", "pgbackrest_backup_last_size_bytes"),
        Some(64_117_066.0)
    );
    let since = |kind: &str| last(kind, "pgbackrest_backup_since_last_completion_seconds");
    assert_eq!(since("full"), Some((NOW - 1_795_639_781) as f64));
    assert_eq!(since("diff"), Some((NOW - 1_795_639_781) as f64));
    assert_eq!(since("incr"), Some((NOW - 1_795_639_790) as f64));
    let refs = |kind: &str, r: &str| {
        value(
            &t,
            "pgbackrest_backup_last_references",
            &[("backup_type", kind), ("ref_backup", r)],
        )
    };
    assert_eq!(refs("incr", "full"), Some(1.0));
    for (kind, r) in [
        ("incr", "diff"),
        ("incr", "incr"),
        ("full", "full"),
        ("diff", "full"),
        ("diff", "incr"),
    ] {
        assert_eq!(refs(kind, r), Some(0.0), "{kind} {r}");
    }
    // Per-backup references only with --backrest.reference-count.
    assert_eq!(count(&t, "pgbackrest_backup_references"), 0);
    assert_eq!(
        value(
            &t,
            "pgbackrest_exporter_status",
            &[("stanza", "all-stanzas")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&t, "pgbackrest_version_info", &[]), Some(0.0));
    assert_eq!(
        value(&t, "pgbackrest_exporter_data_age_seconds", &[]),
        Some(30.0)
    );
    assert_eq!(
        value(
            &t,
            "pgbackrest_exporter_last_success_timestamp_seconds",
            &[]
        ),
        Some(COLLECTED as f64)
    );
}

#[test]
fn status_codes() {
    for (fixture, stanza, code) in [
        ("info-2.45-missing-stanza-path.json", "ghost", 1.0),
        ("info-2.45-no-backups.json", "empty", 2.0),
        ("info-2.45-missing-stanza-data.json", "nodata", 3.0),
        ("info-2.45-mixed-repos.json", "demo", 4.0),
        ("info-2.45-backup-not-found.json", "demo", 6.0),
        ("info-2.45-error-other.json", "broken", 99.0),
    ] {
        let t = render(fixture, &defaults());
        assert_eq!(
            value(&t, "pgbackrest_stanza_status", &[("stanza", stanza)]),
            Some(code),
            "{fixture}"
        );
        // pgBackRest exits 0 for these: the collection itself succeeded.
        assert_eq!(
            value(&t, "pgbackrest_exporter_status", &[]),
            Some(1.0),
            "{fixture}"
        );
    }
    let t = render("info-2.45-mixed-repos.json", &defaults());
    assert_eq!(
        value(&t, "pgbackrest_repo_status", &[("repo_key", "1")]),
        Some(0.0)
    );
    assert_eq!(
        value(&t, "pgbackrest_repo_status", &[("repo_key", "2")]),
        Some(1.0)
    );
    let t = render("info-2.45-error-other.json", &defaults());
    assert_eq!(
        value(&t, "pgbackrest_repo_status", &[("repo_key", "1")]),
        Some(99.0)
    );
    assert_eq!(count(&t, "pgbackrest_backup_info"), 0);
    // No valid backups: archive status 0 (min/max null), no "last" metrics.
    let t = render("info-2.45-no-backups.json", &defaults());
    assert_eq!(
        value(&t, "pgbackrest_wal_archive_status", &[("stanza", "empty")]),
        Some(0.0)
    );
    assert_eq!(
        count(&t, "pgbackrest_backup_since_last_completion_seconds"),
        0
    );
    assert_eq!(count(&t, "pgbackrest_backup_last_size_bytes"), 0);
    // All stanzas in one call: each with its own code.
    let t = render("info-2.45-all-stanzas.json", &defaults());
    for (stanza, code) in [
        ("broken", 99.0),
        ("demo", 0.0),
        ("empty", 2.0),
        ("nodata", 3.0),
    ] {
        assert_eq!(
            value(&t, "pgbackrest_stanza_status", &[("stanza", stanza)]),
            Some(code)
        );
    }
    assert_eq!(count(&t, "pgbackrest_backup_info"), 3);
}

#[test]
fn block_incremental_two_repositories_and_annotations() {
    let t = render("info-2.45-multi-repo-block-incr.json", &defaults());
    let f2 = [("backup_name", "20261125-205333F")];
    assert!(t.contains("backup_name=\"20261125-205333F\",backup_type=\"full\",block_incr=\"y\",database_id=\"1\",repo_key=\"2\""));
    assert_eq!(
        value(&t, "pgbackrest_backup_repo_size_bytes", &f2),
        Some(0.0)
    );
    assert_eq!(
        value(&t, "pgbackrest_backup_repo_size_map_bytes", &f2),
        Some(68_321.0)
    );
    assert_eq!(
        value(&t, "pgbackrest_backup_repo_delta_map_bytes", &f2),
        Some(68_321.0)
    );
    let i2 = [("backup_name", "20261125-205333F_20261125-205344I")];
    assert_eq!(
        value(&t, "pgbackrest_backup_repo_size_map_bytes", &i2),
        Some(69_696.0)
    );
    assert_eq!(
        value(&t, "pgbackrest_backup_repo_delta_map_bytes", &i2),
        Some(31_005.0)
    );
    let f1 = [("backup_name", "20261125-204938F")];
    assert_eq!(value(&t, "pgbackrest_backup_annotations", &f1), Some(2.0));
    assert!(t.contains("backup_name=\"20261125-204938F\",backup_type=\"full\",block_incr=\"n\""));
    assert_eq!(count(&t, "pgbackrest_repo_status"), 2);
    assert_eq!(count(&t, "pgbackrest_wal_archive_status"), 2);
    assert_eq!(count(&t, "pgbackrest_backup_info"), 5);
    // The newest full is repo2's block-incremental one; it fills the diff slot too (it stopped
    // after repo1's diff); the incr slot is repo2's incr.
    let last = |kind: &str| {
        value(
            &t,
            "pgbackrest_backup_last_size_bytes",
            &[("backup_type", kind)],
        )
    };
    assert_eq!(last("full"), Some(200_833_357.0));
    assert_eq!(last("diff"), Some(200_833_357.0));
    assert_eq!(last("incr"), Some(203_561_293.0));
    assert!(t.contains("pgbackrest_backup_last_repo_size_map_bytes{backup_type=\"full\",block_incr=\"y\",stanza=\"demo\"} 68321\n"));
    assert_eq!(
        value(
            &t,
            "pgbackrest_backup_last_annotations",
            &[("backup_type", "full")]
        ),
        Some(0.0)
    );
}

#[test]
fn page_checksum_errors_and_a_running_backup() {
    let t = render("info-2.45-page-checksum-error.json", &defaults());
    assert_eq!(
        value(
            &t,
            "pgbackrest_backup_error_status",
            &[("backup_name", "20261125-205423F")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            "pgbackrest_backup_error_status",
            &[("backup_name", "20261125-204938F")]
        ),
        Some(0.0)
    );
    for kind in ["full", "diff", "incr"] {
        assert_eq!(
            value(
                &t,
                "pgbackrest_backup_last_error_status",
                &[("backup_type", kind)]
            ),
            Some(1.0),
            "{kind}"
        );
    }
    let t = render("info-2.45-backup-running.json", &defaults());
    assert_eq!(
        value(&t, "pgbackrest_stanza_backup_lock_status", &[]),
        Some(1.0)
    );
    assert_eq!(value(&t, "pgbackrest_stanza_lock_status", &[]), Some(1.0));
    // 2.45 reports no progress bytes.
    assert_eq!(
        value(&t, "pgbackrest_stanza_backup_total_bytes", &[]),
        Some(0.0)
    );
}

#[test]
fn full_diff_incr_and_type_filter() {
    let t = render("info-2.45-full-incr-diff.json", &defaults());
    let name = |kind: &str| {
        t.lines()
            .find(|l| {
                l.starts_with("pgbackrest_backup_last_duration_seconds{")
                    && l.contains(&format!("backup_type=\"{kind}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    // diff took 29 s; incr slot = the diff (newer than the incr).
    assert_eq!(name("full").as_deref(), Some("3"));
    assert_eq!(name("diff").as_deref(), Some("29"));
    assert_eq!(name("incr").as_deref(), Some("29"));
    let t = render("info-2.45-type-full.json", &defaults());
    assert_eq!(count(&t, "pgbackrest_backup_info"), 1);
    assert_eq!(
        count(&t, "pgbackrest_backup_since_last_completion_seconds"),
        3
    );
}

#[test]
fn optional_flags() {
    let all = Settings {
        reference_count: true,
        verbose_wal: true,
        database_count: true,
        database_count_latest: true,
        ..defaults()
    };
    let t = render("info-2.45-full-incr-diff.json", &all);
    assert!(t.contains(
        "wal_max=\"000000010000000000000016\",wal_min=\"000000010000000000000001\"} 1\n"
    ));
    assert_eq!(count(&t, "pgbackrest_backup_references"), 9);
    assert_eq!(
        value(
            &t,
            "pgbackrest_backup_references",
            &[
                ("backup_name", "20261125-204938F_20261125-205107D"),
                ("ref_backup", "full")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(count(&t, "pgbackrest_backup_databases"), 3);
    assert_eq!(count(&t, "pgbackrest_backup_last_databases"), 3);
    let t = render("info-2.45-set-page-checksum-error.json", &all);
    assert_eq!(value(&t, "pgbackrest_backup_databases", &[]), Some(2.0));
    let limited = Settings {
        backup_limit: 1,
        ..defaults()
    };
    let t = render("info-2.45-page-checksum-error.json", &limited);
    // One backup per repository keeps per-backup series; the "last" metrics still see all.
    assert_eq!(count(&t, "pgbackrest_backup_info"), 2);
    assert_eq!(count(&t, "pgbackrest_backup_last_size_bytes"), 3);
}

#[test]
fn format_is_sorted_like_go() {
    let t = render("info-2.45-all-stanzas.json", &defaults());
    let families: Vec<&str> = t
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut sorted = families.clone();
    sorted.sort_unstable();
    assert_eq!(families, sorted);
    let stanzas: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("pgbackrest_stanza_status{"))
        .collect();
    assert_eq!(stanzas.len(), 4);
    assert!(stanzas.windows(2).all(|w| w[0] < w[1]));
}
