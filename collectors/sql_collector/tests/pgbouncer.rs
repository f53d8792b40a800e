//! Pgbouncer mode of the engine with the built-in collectors (`config/09*-pgbouncer_*.yml`).
//!
//! Two kinds of target:
//! - a scripted admin console ([`fake`]) speaking Pgbouncer's wire protocol on loopback, which
//!   answers `SHOW VERSION` as a row or, like Pgbouncer before 1.12, as a NOTICE, and serves
//!   `SHOW` results with the column sets of 1.8/1.11 (NOTICE), 1.15, 1.16, 1.18 (the recorded
//!   fixtures in `tests/fixtures/pgbouncer/`), 1.21, 1.23, 1.24, 1.25 and an unreleased version,
//!   built after the column table of `pgbouncer_and_pgbackrest_exporters.md` A7. Like the real
//!   console it rejects the extended protocol and anything that is not a command it knows,
//!   and it records the startup parameters and statements it received;
//! - the harness's real Pgbouncer 1.18 under `pgbench` traffic (the `live_*` tests), whose
//!   `SHOW` output the test reads itself right before and right after each scrape.
//!
//! Both are checked against [`upstream`]: the Go pg_exporter's metric name, label and scale for
//! every column of every `SHOW` command, written down here independently of the YAML files.
//! Every value column of every row must be exported exactly once with its value, and nothing
//! else may be exported under the collectors' prefixes.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sql_collector::config::CollectorSet;
use sql_collector::conninfo::ConnInfo;
use sql_collector::default_config;
use sql_collector::exporter::{Exporter, ExporterSettings, Health};
use sql_collector::planner::ServerKind;
use tokio_postgres::{Client, SimpleQueryMessage};

// =============================================================================================
// What upstream exports for each column
// =============================================================================================

mod upstream {
    /// The admin commands the four collectors run.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub(crate) enum Show {
        Lists,
        Databases,
        Stats,
        Pools,
    }

    impl Show {
        pub(crate) const ALL: [Show; 4] = [Show::Lists, Show::Databases, Show::Stats, Show::Pools];

        pub(crate) fn command(self) -> &'static str {
            match self {
                Show::Lists => "SHOW LISTS",
                Show::Databases => "SHOW DATABASES",
                Show::Stats => "SHOW STATS",
                Show::Pools => "SHOW POOLS",
            }
        }

        /// The metric-name prefix of the collector that runs the command.
        pub(crate) fn prefix(self) -> &'static str {
            match self {
                Show::Lists => "pgbouncer_list_",
                Show::Databases => "pgbouncer_database_",
                Show::Stats => "pgbouncer_stat_",
                Show::Pools => "pgbouncer_pool_",
            }
        }
    }

    /// What becomes of one result column.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Role {
        /// A label with this name.
        Label(&'static str),
        /// A sample of this metric, the value multiplied by the factor.
        Value(String, f64),
        /// Not exported.
        Ignored,
    }

    /// Upstream's mapping (pg_exporter's `09*-pgbouncer_*.yml`, reference A3): by column
    /// name, the same in every version that has the column. Panics on a column it does not
    /// know, so that a new Pgbouncer column is a decision, not an accident.
    pub(crate) fn role(show: Show, column: &str) -> Role {
        let value = |metric: &str| Role::Value(metric.to_owned(), 1.0);
        match show {
            Show::Lists => match column {
                "list" => Role::Label("list"),
                "items" => value("pgbouncer_list_items"),
                other => panic!("SHOW LISTS column {other} is not mapped"),
            },
            Show::Databases => match column {
                "name" => Role::Label("datname"),
                "host" => Role::Label("host"),
                "port" => Role::Label("port"),
                "database" => Role::Label("real_datname"),
                "force_user" | "pool_mode" | "load_balance_hosts" => Role::Ignored,
                // Renamed in 1.24; upstream keeps the old metric name.
                "reserve_pool" | "reserve_pool_size" => value("pgbouncer_database_reserve_pool"),
                "pool_size"
                | "min_pool_size"
                | "server_lifetime"
                | "max_connections"
                | "current_connections"
                | "max_client_connections"
                | "current_client_connections"
                | "paused"
                | "disabled" => value(&format!("pgbouncer_database_{column}")),
                other => panic!("SHOW DATABASES column {other} is not mapped"),
            },
            Show::Stats => match column {
                "database" => Role::Label("datname"),
                // Not in any released Pgbouncer yet (after 1.25.2): not collected upstream.
                "total_client_login_count" | "avg_client_login_count" => Role::Ignored,
                c if c.starts_with("total_") || c.starts_with("avg_") => {
                    // Times arrive in microseconds and are exported in seconds.
                    let scale = if c.ends_with("_time") { 1e-6 } else { 1.0 };
                    Role::Value(format!("pgbouncer_stat_{c}"), scale)
                }
                other => panic!("SHOW STATS column {other} is not mapped"),
            },
            Show::Pools => {
                let suffix = match column {
                    "database" => return Role::Label("datname"),
                    "user" => return Role::Label("user"),
                    "pool_mode" => return Role::Label("pool_mode"),
                    "load_balance_hosts" => return Role::Label("load_balance_hosts"),
                    "cl_active" => "active_clients",
                    "cl_waiting" => "waiting_clients",
                    "cl_cancel_req" | "cl_waiting_cancel_req" => "cancel_clients",
                    "cl_active_cancel_req" => "active_cancel_clients",
                    "sv_active" => "active_servers",
                    "sv_active_cancel" => "active_cancel_servers",
                    "sv_being_canceled" => "cancel_servers",
                    "sv_idle" => "idle_servers",
                    "sv_used" => "used_servers",
                    "sv_tested" => "tested_servers",
                    "sv_login" => "login_servers",
                    "maxwait" => "maxwait",
                    "maxwait_us" => "maxwait_us",
                    other => panic!("SHOW POOLS column {other} is not mapped"),
                };
                value(&format!("pgbouncer_pool_{suffix}"))
            }
        }
    }
}

use upstream::{Role, Show, role};

// =============================================================================================
// Tables, series and their comparison
// =============================================================================================

/// One `SHOW` result: column names and text values (NULL as `None`).
#[derive(Debug, Clone, Default, PartialEq)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Table {
        for row in &rows {
            assert_eq!(row.len(), columns.len(), "row width of {columns:?}");
        }
        Table {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows,
        }
    }
}

/// A sample's identity: metric name and labels (order-free).
type SeriesKey = (String, BTreeMap<String, String>);

/// The series upstream exports from `table`, the result of `show`.
fn expected_series(show: Show, table: &Table) -> BTreeMap<SeriesKey, f64> {
    let roles: Vec<Role> = table.columns.iter().map(|c| role(show, c)).collect();
    let mut out = BTreeMap::new();
    for row in &table.rows {
        let labels: BTreeMap<String, String> = roles
            .iter()
            .zip(row)
            .filter_map(|(r, v)| match r {
                Role::Label(l) => Some(((*l).to_owned(), v.clone().unwrap_or_default())),
                _ => None,
            })
            .collect();
        for (r, v) in roles.iter().zip(row) {
            if let Role::Value(metric, scale) = r {
                let value = v
                    .as_deref()
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .map_or(f64::NAN, |x| x * scale);
                let previous = out.insert((metric.clone(), labels.clone()), value);
                assert!(
                    previous.is_none(),
                    "two rows of {show:?} give {metric} {labels:?}"
                );
            }
        }
    }
    out
}

/// Parses one sample line of the text format.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series.to_owned(), BTreeMap::new(), value));
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut val = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                (i, '"') => break i,
                (_, c) => val.push(c),
            }
        };
        labels.insert(key.to_owned(), val);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name.to_owned(), labels, value))
}

/// The samples of a scrape whose names start with `prefix`.
fn exported_series(body: &str, prefix: &str) -> BTreeMap<SeriesKey, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with(prefix)) {
        let (name, labels, value) =
            parse_sample(line).unwrap_or_else(|| panic!("unparsable sample line {line:?}"));
        let previous = out.insert((name, labels), value);
        assert!(previous.is_none(), "duplicate series: {line}");
    }
    out
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn show_key((name, labels): &SeriesKey) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Differences between what upstream would export from `before` and `after` (two reads of
/// the same command around the scrape) and what the scrape exported: a series missing or
/// extra, or a value outside the range the two reads span.
fn disagreements(show: Show, before: &Table, after: &Table, body: &str) -> Vec<String> {
    let (lo, hi) = (expected_series(show, before), expected_series(show, after));
    let got = exported_series(body, show.prefix());
    let mut out = Vec::new();
    let wanted: BTreeSet<&SeriesKey> = lo.keys().chain(hi.keys()).collect();
    for key in &wanted {
        let (Some(&a), Some(&b)) = (lo.get(key), hi.get(key)) else {
            // The series came or went between the two reads: any answer is right.
            continue;
        };
        match got.get(key) {
            None => out.push(format!("{}: missing", show_key(key))),
            Some(&v) => {
                let inside = same(v, a) || same(v, b) || (v >= a.min(b) && v <= a.max(b));
                if !inside {
                    out.push(format!(
                        "{}: exported {v}, SHOW said {a} before and {b} after",
                        show_key(key)
                    ));
                }
            }
        }
    }
    for key in got.keys() {
        if !wanted.contains(key) {
            out.push(format!(
                "{}: exported but not in SHOW output",
                show_key(key)
            ));
        }
    }
    out
}

/// The sample value of the series `name{labels}` (labels in any order).
fn value_of(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    exported_series(body, name)
        .into_iter()
        .find(|((n, l), _)| n == name && *l == want)
        .map(|(_, v)| v)
}

// =============================================================================================
// The exporter under test
// =============================================================================================

/// An exporter on the built-in collector set, as `pgbouncer_exporter` builds it for `url`.
fn new_exporter(url: &str, disable_cache: bool) -> Arc<Exporter> {
    let mut settings = ExporterSettings {
        namespace: "pgbouncer".into(),
        auto_discovery: false,
        ..ExporterSettings::default()
    };
    settings.engine.connect_timeout = Duration::from_secs(5);
    settings.engine.disable_cache = disable_cache;
    let set: CollectorSet = default_config::load().expect("built-in set loads");
    let info = ConnInfo::parse(url).expect("URL parses");
    let exporter = Exporter::new(settings, set, info);
    assert_eq!(exporter.kind(), ServerKind::Pgbouncer);
    exporter
}

/// The branches planned on the exporter's server, sorted.
fn planned(exporter: &Exporter) -> Vec<String> {
    let mut v: Vec<String> = exporter
        .main_server()
        .plan()
        .collectors
        .iter()
        .map(|c| c.config.branch.clone())
        .collect();
    v.sort();
    v
}

/// Every planned collector's last execution succeeded.
fn assert_no_collector_failed(exporter: &Exporter) {
    for planned in &exporter.main_server().plan().collectors {
        let last = planned.last.lock().unwrap().clone();
        let outcome = last.unwrap_or_else(|| panic!("{} never ran", planned.config.branch));
        assert!(
            outcome.error.is_none() && outcome.duplicate_rows == 0,
            "{}: {:?}, {} duplicate rows",
            planned.config.branch,
            outcome.error,
            outcome.duplicate_rows
        );
    }
}

// =============================================================================================
// A scripted admin console
// =============================================================================================

mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, PoisonError};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::Table;

    /// How `SHOW VERSION` is answered.
    #[derive(Debug, Clone)]
    pub(crate) enum Version {
        /// A row with column `version` (1.12 and later).
        Row(String),
        /// A NOTICE and no row (before 1.12).
        Notice(String),
    }

    /// What the console received.
    #[derive(Debug, Default)]
    pub(crate) struct Log {
        /// Startup parameters of every connection.
        pub(crate) startups: Vec<BTreeMap<String, String>>,
        /// Simple-protocol statements, in order.
        pub(crate) queries: Vec<String>,
        /// Messages other than Query and Terminate (the real console refuses them).
        pub(crate) refused: Vec<char>,
    }

    /// The console: a listener on 127.0.0.1 answering from `tables`.
    #[derive(Debug)]
    pub(crate) struct Console {
        pub(crate) port: u16,
        pub(crate) log: Arc<Mutex<Log>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Console {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Console {
        /// Starts answering `SHOW VERSION` with `version` and `SHOW <X>` with `tables["SHOW X"]`.
        pub(crate) async fn start(version: Version, tables: BTreeMap<String, Table>) -> Console {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let log = Arc::new(Mutex::new(Log::default()));
            let shared = Arc::new((version, tables));
            let task_log = log.clone();
            let task = tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let (shared, log) = (shared.clone(), task_log.clone());
                    tokio::spawn(async move {
                        let _ = serve(socket, &shared.0, &shared.1, &log).await;
                    });
                }
            });
            Console { port, log, task }
        }

        /// `postgresql://<user>@127.0.0.1:<port>/pgbouncer?sslmode=disable`.
        pub(crate) fn url(&self, user: &str) -> String {
            format!(
                "postgresql://{user}@127.0.0.1:{}/pgbouncer?sslmode=disable",
                self.port
            )
        }

        pub(crate) fn log(&self) -> std::sync::MutexGuard<'_, Log> {
            self.log.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn fields(pairs: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (code, text) in pairs {
            body.push(*code);
            cstr(&mut body, text);
        }
        body.push(0);
        body
    }

    fn error(code: &str, text: &str) -> Vec<u8> {
        message(
            b'E',
            &fields(&[(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', text)]),
        )
    }

    fn parameter(name: &str, value: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, name);
        cstr(&mut body, value);
        message(b'S', &body)
    }

    /// RowDescription (every column text, as the values are sent as text anyway), DataRows and
    /// CommandComplete.
    fn result(table: &Table) -> Vec<u8> {
        let mut out = Vec::new();
        let mut desc = (table.columns.len() as i16).to_be_bytes().to_vec();
        for name in &table.columns {
            cstr(&mut desc, name);
            desc.extend_from_slice(&0i32.to_be_bytes()); // table OID
            desc.extend_from_slice(&0i16.to_be_bytes()); // attribute number
            desc.extend_from_slice(&25i32.to_be_bytes()); // type: text
            desc.extend_from_slice(&(-1i16).to_be_bytes()); // typlen
            desc.extend_from_slice(&(-1i32).to_be_bytes()); // typmod
            desc.extend_from_slice(&0i16.to_be_bytes()); // text format
        }
        out.extend(message(b'T', &desc));
        for row in &table.rows {
            let mut data = (row.len() as i16).to_be_bytes().to_vec();
            for value in row {
                match value {
                    None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        data.extend_from_slice(v.as_bytes());
                    }
                }
            }
            out.extend(message(b'D', &data));
        }
        let mut done = Vec::new();
        cstr(&mut done, "SHOW");
        out.extend(message(b'C', &done));
        out
    }

    async fn serve(
        mut socket: TcpStream,
        version: &Version,
        tables: &BTreeMap<String, Table>,
        log: &Mutex<Log>,
    ) -> std::io::Result<()> {
        let log = |f: &mut dyn FnMut(&mut Log)| {
            f(&mut log.lock().unwrap_or_else(PoisonError::into_inner));
        };
        // Startup, after an optional SSLRequest (refused, as a console without TLS does).
        let params = loop {
            let len = socket.read_i32().await? as usize;
            let mut body = vec![0; len - 4];
            socket.read_exact(&mut body).await?;
            let code = i32::from_be_bytes(body[..4].try_into().unwrap());
            match code {
                80_877_103 | 80_877_104 => socket.write_all(b"N").await?,
                196_608 => break body[4..].to_vec(),
                // A cancel request, or anything else: hang up.
                _ => return Ok(()),
            }
        };
        let mut startup = BTreeMap::new();
        let mut parts = params
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            if k.is_empty() {
                break;
            }
            startup.insert(k, v);
        }
        log(&mut |l| l.startups.push(startup.clone()));
        let mut out = message(b'R', &0i32.to_be_bytes());
        let server_version = match version {
            Version::Row(v) | Version::Notice(v) => v.rsplit(' ').next().unwrap_or("").to_owned(),
        };
        out.extend(parameter(
            "server_version",
            &format!("{server_version}/bouncer"),
        ));
        out.extend(parameter("client_encoding", "UTF8"));
        let mut key = 4242i32.to_be_bytes().to_vec();
        key.extend_from_slice(&77i32.to_be_bytes());
        out.extend(message(b'K', &key));
        out.extend(message(b'Z', b"I"));
        socket.write_all(&out).await?;

        loop {
            let tag = socket.read_u8().await?;
            let len = socket.read_i32().await? as usize;
            let mut body = vec![0; len - 4];
            socket.read_exact(&mut body).await?;
            match tag {
                b'X' => return Ok(()),
                b'Q' => {}
                other => {
                    // Pgbouncer's admin console: error, then a fatal "bad packet".
                    log(&mut |l| l.refused.push(char::from(other)));
                    let mut out = error(
                        "08P01",
                        "extended query protocol not supported by admin console",
                    );
                    out.extend(message(
                        b'E',
                        &fields(&[
                            (b'S', "FATAL"),
                            (b'V', "FATAL"),
                            (b'C', "08P01"),
                            (b'M', "bad packet"),
                        ]),
                    ));
                    socket.write_all(&out).await?;
                    return Ok(());
                }
            }
            let sql =
                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
            log(&mut |l| l.queries.push(sql.clone()));
            let command = sql.trim().trim_end_matches(';').trim().to_uppercase();
            let mut out = Vec::new();
            if command == "SHOW VERSION" {
                match version {
                    Version::Row(v) => out.extend(result(&Table::new(
                        &["version"],
                        vec![vec![Some(v.clone())]],
                    ))),
                    Version::Notice(v) => {
                        out.extend(message(
                            b'N',
                            &fields(&[
                                (b'S', "NOTICE"),
                                (b'V', "NOTICE"),
                                (b'C', "00000"),
                                (b'M', v),
                            ]),
                        ));
                        let mut done = Vec::new();
                        cstr(&mut done, "SHOW");
                        out.extend(message(b'C', &done));
                    }
                }
            } else if let Some(table) = tables.get(&command) {
                out.extend(result(table));
            } else {
                out.extend(error(
                    "08P01",
                    &format!("invalid command '{sql}', use SHOW HELP;"),
                ));
            }
            out.extend(message(b'Z', b"I"));
            socket.write_all(&out).await?;
        }
    }
}

// =============================================================================================
// Column sets by version (reference A7) and the recorded 1.18 fixtures
// =============================================================================================

/// Columns of one `SHOW` command on Pgbouncer `version` (`major*10000 + minor*100 + patch`).
fn columns(show: Show, version: u32) -> Vec<&'static str> {
    match show {
        Show::Lists => vec!["list", "items"],
        Show::Databases => {
            let mut c = vec![
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
            ];
            if version >= 11600 {
                c.push("min_pool_size");
            }
            c.push(if version >= 12400 {
                "reserve_pool_size"
            } else {
                "reserve_pool"
            });
            if version >= 12300 {
                c.push("server_lifetime");
            }
            c.push("pool_mode");
            if version >= 12400 {
                c.push("load_balance_hosts");
            }
            c.extend(["max_connections", "current_connections"]);
            if version >= 12400 {
                c.extend(["max_client_connections", "current_client_connections"]);
            }
            c.extend(["paused", "disabled"]);
            c
        }
        Show::Stats => {
            let mut c = vec!["database"];
            if version >= 12300 {
                c.push("total_server_assignment_count");
            }
            c.extend([
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
            ]);
            if version >= 12400 {
                c.extend([
                    "total_client_parse_count",
                    "total_server_parse_count",
                    "total_bind_count",
                ]);
            }
            if version >= 12600 {
                c.push("total_client_login_count");
            }
            if version >= 12300 {
                c.push("avg_server_assignment_count");
            }
            c.extend([
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
            ]);
            if version >= 12400 {
                c.extend([
                    "avg_client_parse_count",
                    "avg_server_parse_count",
                    "avg_bind_count",
                ]);
            }
            if version >= 12600 {
                c.push("avg_client_login_count");
            }
            c
        }
        Show::Pools => {
            let mut c = vec!["database", "user", "cl_active", "cl_waiting"];
            if (11600..11800).contains(&version) {
                c.push("cl_cancel_req");
            }
            if version >= 11800 {
                c.extend(["cl_active_cancel_req", "cl_waiting_cancel_req"]);
            }
            c.push("sv_active");
            if version >= 11800 {
                c.extend(["sv_active_cancel", "sv_being_canceled"]);
            }
            c.extend([
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
            ]);
            if version >= 12400 {
                c.push("load_balance_hosts");
            }
            c
        }
    }
}

/// A synthetic result of `show` on `version`: three databases (`app`, `pgbouncer` with NULL
/// host, `reporting`), distinct numbers in every cell (times in microseconds with a fraction
/// of a second), so a column read into the wrong metric shows.
fn synthetic(show: Show, version: u32) -> Table {
    let cols = columns(show, version);
    let text = |s: &str| Some(s.to_owned());
    let rows: Vec<Vec<Option<String>>> = match show {
        Show::Lists => {
            let mut lists = vec![
                "databases",
                "users",
                "pools",
                "free_clients",
                "used_clients",
                "login_clients",
                "free_servers",
                "used_servers",
                "dns_names",
                "dns_zones",
                "dns_queries",
                "dns_pending",
            ];
            if version >= 11900 {
                lists.extend(["peers", "peer_pools"]);
            }
            lists
                .iter()
                .enumerate()
                .map(|(i, l)| vec![text(l), Some((i * 7 + 1).to_string())])
                .collect()
        }
        _ => ["app", "pgbouncer", "reporting"]
            .iter()
            .enumerate()
            .map(|(r, db)| {
                cols.iter()
                    .enumerate()
                    .map(|(i, c)| match *c {
                        "database" if show == Show::Databases => {
                            text(if *db == "reporting" { "reports" } else { db })
                        }
                        "name" | "database" => text(db),
                        "host" => (*db != "pgbouncer").then(|| "10.0.0.5".to_owned()),
                        "port" => text("5432"),
                        "user" => text(if *db == "pgbouncer" {
                            "pgbouncer"
                        } else {
                            "dbuser_app"
                        }),
                        "force_user" => None,
                        "pool_mode" => text(if *db == "pgbouncer" {
                            "statement"
                        } else {
                            "transaction"
                        }),
                        "load_balance_hosts" => {
                            text(if r == 2 { "round-robin" } else { "disable" })
                        }
                        c if c.ends_with("_time") => {
                            Some(format!("{}{:06}", r * 10 + i, 123_457 + i))
                        }
                        _ => Some((r * 1000 + i * 10 + 3).to_string()),
                    })
                    .collect()
            })
            .collect(),
    };
    Table::new(&cols, rows)
}

/// The four tables of a version, keyed by command.
fn synthetic_tables(version: u32) -> BTreeMap<String, Table> {
    Show::ALL
        .iter()
        .map(|&s| (s.command().to_owned(), synthetic(s, version)))
        .collect()
}

/// The recorded `SHOW` outputs of a fixture file (`{"SHOW POOLS;": {"columns": [{"name":
/// ...}], "rows": [[...]]}}`), keyed by command without the semicolon. JSON is YAML.
fn fixture(file: &str) -> BTreeMap<String, Table> {
    #[derive(serde::Deserialize)]
    struct Column {
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct Recorded {
        #[serde(default)]
        columns: Vec<Column>,
        #[serde(default)]
        rows: Vec<Vec<Option<String>>>,
    }
    let path = format!(
        "{}/tests/fixtures/pgbouncer/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let recorded: BTreeMap<String, Recorded> = serde_norway::from_str(&text).unwrap();
    recorded
        .into_iter()
        .map(|(command, r)| {
            let command = command.trim_end_matches(';').to_owned();
            let table = Table {
                columns: r.columns.into_iter().map(|c| c.name).collect(),
                rows: r.rows,
            };
            (command, table)
        })
        .collect()
}

/// Scrapes a console serving `tables` and checks every collector against [`upstream`];
/// returns the body.
async fn scrape_console(
    version: fake::Version,
    tables: &BTreeMap<String, Table>,
    expected_branches: &[&str],
    expected_version: f64,
) -> String {
    let console = fake::Console::start(version, tables.clone()).await;
    let exporter = new_exporter(&console.url("dbuser_monitor"), false);
    let body = exporter.scrape(None).await;
    let mut branches = expected_branches.to_vec();
    branches.sort_unstable();
    assert_eq!(planned(&exporter), branches, "{body}");
    assert_no_collector_failed(&exporter);
    assert_eq!(value_of(&body, "pgbouncer_up", &[]), Some(1.0), "{body}");
    assert_eq!(
        value_of(&body, "pgbouncer_version", &[]),
        Some(expected_version)
    );
    for show in Show::ALL {
        let table = &tables[show.command()];
        let problems = disagreements(show, table, table, &body);
        assert!(
            problems.is_empty(),
            "{expected_version}: {show:?}:\n  {}\n{body}",
            problems.join("\n  ")
        );
    }
    // Nothing but simple-protocol SHOW commands, and no startup parameter Pgbouncer refuses.
    let log = console.log();
    assert!(log.refused.is_empty(), "refused messages {:?}", log.refused);
    assert!(
        log.queries.iter().all(|q| q.starts_with("SHOW ")),
        "{:?}",
        log.queries
    );
    for startup in &log.startups {
        for key in startup.keys() {
            assert!(
                ["user", "database", "client_encoding", "application_name"].contains(&key.as_str()),
                "startup parameter {key} sent: {startup:?}"
            );
        }
    }
    body
}

// =============================================================================================
// Version variants, without those versions installed
// =============================================================================================

#[tokio::test]
async fn pgbouncer_1_18_fixtures_render_with_upstream_names() {
    // The waiting-clients capture has no SHOW STATS: the one recorded after pgbench stands in.
    let after_pgbench = fixture("show-1.18-after-pgbench.json");
    let mut tables = fixture("show-1.18-waiting-clients.json");
    tables.insert("SHOW STATS".into(), after_pgbench["SHOW STATS"].clone());
    let body = scrape_console(
        fake::Version::Row("PgBouncer 1.18.0".into()),
        &tables,
        &[
            "pgbouncer_list",
            "pgbouncer_database_116",
            "pgbouncer_stat_108",
            "pgbouncer_pool_118",
        ],
        11800.0,
    )
    .await;
    // Byte for byte as the Go exporter writes them (label order included).
    for line in [
        "pgbouncer_pool_waiting_clients{datname=\"tiny\",user=\"postgres\",pool_mode=\"transaction\"} 2",
        "pgbouncer_pool_maxwait{datname=\"tiny\",user=\"postgres\",pool_mode=\"transaction\"} 2",
        "pgbouncer_pool_maxwait_us{datname=\"tiny\",user=\"postgres\",pool_mode=\"transaction\"} 51461",
        "pgbouncer_database_pool_size{datname=\"tiny\",host=\"127.0.0.1\",port=\"55432\",real_datname=\"postgres\"} 1",
        "pgbouncer_list_items{list=\"used_clients\"} 4",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing line {line}\n{body}"
        );
    }
    // The pseudo database: NULL host as an empty label.
    assert!(
        body.contains("pgbouncer_database_pool_size{datname=\"pgbouncer\",host=\"\",port="),
        "{body}"
    );
    for (family, kind) in [
        ("pgbouncer_stat_total_query_count", "counter"),
        ("pgbouncer_stat_avg_query_count", "gauge"),
        ("pgbouncer_pool_active_clients", "gauge"),
        ("pgbouncer_database_pool_size", "gauge"),
        ("pgbouncer_list_items", "gauge"),
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} {kind}"
        );
    }

    // After pgbench: microseconds become seconds.
    let tables = after_pgbench;
    let body = scrape_console(
        fake::Version::Row("PgBouncer 1.18.0".into()),
        &tables,
        &[
            "pgbouncer_list",
            "pgbouncer_database_116",
            "pgbouncer_stat_108",
            "pgbouncer_pool_118",
        ],
        11800.0,
    )
    .await;
    let total = value_of(
        &body,
        "pgbouncer_stat_total_query_time",
        &[("datname", "appdb")],
    )
    .unwrap();
    assert!((total - 18.858223).abs() < 1e-9, "{total}");
    assert_eq!(
        value_of(
            &body,
            "pgbouncer_stat_total_query_count",
            &[("datname", "appdb")]
        ),
        Some(238_657.0)
    );
}

#[tokio::test]
async fn column_sets_of_every_version_map_to_upstream_names() {
    // (SHOW VERSION answer, parsed version, branches planned)
    let row = |v: &str| fake::Version::Row(v.to_owned());
    let cases: [(fake::Version, u32, [&str; 4]); 9] = [
        (
            fake::Version::Notice("pgbouncer version 1.8.1".into()),
            10801,
            [
                "pgbouncer_list",
                "pgbouncer_database_108",
                "pgbouncer_stat_108",
                "pgbouncer_pool_108",
            ],
        ),
        (
            fake::Version::Notice("PgBouncer 1.11.0".into()),
            11100,
            [
                "pgbouncer_list",
                "pgbouncer_database_108",
                "pgbouncer_stat_108",
                "pgbouncer_pool_108",
            ],
        ),
        (
            row("PgBouncer 1.15.0"),
            11500,
            [
                "pgbouncer_list",
                "pgbouncer_database_108",
                "pgbouncer_stat_108",
                "pgbouncer_pool_108",
            ],
        ),
        (
            row("PgBouncer 1.16.1"),
            11601,
            [
                "pgbouncer_list",
                "pgbouncer_database_116",
                "pgbouncer_stat_108",
                "pgbouncer_pool_116",
            ],
        ),
        (
            row("PgBouncer 1.21.0"),
            12100,
            [
                "pgbouncer_list",
                "pgbouncer_database_116",
                "pgbouncer_stat_108",
                "pgbouncer_pool_118",
            ],
        ),
        (
            row("PgBouncer 1.23.1"),
            12301,
            [
                "pgbouncer_list",
                "pgbouncer_database_123",
                "pgbouncer_stat_123",
                "pgbouncer_pool_118",
            ],
        ),
        (
            row("PgBouncer 1.24.1"),
            12401,
            [
                "pgbouncer_list",
                "pgbouncer_database_124",
                "pgbouncer_stat_124",
                "pgbouncer_pool_124",
            ],
        ),
        (
            row("PgBouncer 1.25.2"),
            12502,
            [
                "pgbouncer_list",
                "pgbouncer_database_124",
                "pgbouncer_stat_124",
                "pgbouncer_pool_124",
            ],
        ),
        // Unreleased: a new SHOW STATS column is ignored, everything else still exported.
        (
            row("PgBouncer 1.26.0"),
            12600,
            [
                "pgbouncer_list",
                "pgbouncer_database_124",
                "pgbouncer_stat_124",
                "pgbouncer_pool_124",
            ],
        ),
    ];
    for (answer, version, branches) in cases {
        let tables = synthetic_tables(version);
        let body = scrape_console(answer, &tables, &branches, f64::from(version)).await;
        let has = |name: &str| body.contains(&format!("# TYPE {name} "));
        // The column changes of the reference, one by one.
        assert_eq!(
            has("pgbouncer_database_min_pool_size"),
            version >= 11600,
            "{version}"
        );
        assert_eq!(
            has("pgbouncer_database_server_lifetime"),
            version >= 12300,
            "{version}"
        );
        assert!(has("pgbouncer_database_reserve_pool"), "{version}");
        assert_eq!(
            has("pgbouncer_database_max_client_connections"),
            version >= 12400
        );
        assert_eq!(
            has("pgbouncer_stat_total_server_assignment_count"),
            version >= 12300
        );
        assert_eq!(has("pgbouncer_stat_avg_bind_count"), version >= 12400);
        assert!(!has("pgbouncer_stat_total_client_login_count"));
        assert_eq!(has("pgbouncer_pool_cancel_clients"), version >= 11600);
        assert_eq!(
            has("pgbouncer_pool_active_cancel_clients"),
            version >= 11800
        );
        assert_eq!(has("pgbouncer_pool_cancel_servers"), version >= 11800);
        let lbh = body.lines().any(|l| {
            l.starts_with("pgbouncer_pool_active_clients{") && l.contains(",load_balance_hosts=\"")
        });
        assert_eq!(lbh, version >= 12400, "{version}");
        assert_eq!(
            value_of(&body, "pgbouncer_list_items", &[("list", "peers")]).is_some(),
            version >= 11900
        );
    }
}

#[tokio::test]
async fn version_handshake_failures_mark_pgbouncer_down() {
    // No row and no NOTICE: the version is unknown, so nothing is planned (every branch at
    // once would export duplicate series) and pgbouncer_up is 0.
    let console = fake::Console::start(
        fake::Version::Notice(String::new()),
        synthetic_tables(11800),
    )
    .await;
    let exporter = new_exporter(&console.url("postgres"), false);
    let body = exporter.scrape(None).await;
    assert_eq!(value_of(&body, "pgbouncer_up", &[]), Some(0.0), "{body}");
    assert!(!body.contains("pgbouncer_list_items"), "{body}");
    assert_eq!(exporter.health(), Health::Down);

    // The fatal collector fails: down, and nothing of the others is exported.
    let mut tables = synthetic_tables(11800);
    tables.remove("SHOW LISTS");
    let console = fake::Console::start(fake::Version::Row("PgBouncer 1.18.0".into()), tables).await;
    let exporter = new_exporter(&console.url("postgres"), false);
    let body = exporter.scrape(None).await;
    assert_eq!(value_of(&body, "pgbouncer_up", &[]), Some(0.0), "{body}");
    assert!(!body.contains("pgbouncer_pool_"), "{body}");

    // A non-fatal one fails: still up, the error counted.
    let mut tables = synthetic_tables(11800);
    tables.remove("SHOW STATS");
    let console = fake::Console::start(fake::Version::Row("PgBouncer 1.18.0".into()), tables).await;
    let exporter = new_exporter(&console.url("postgres"), false);
    let body = exporter.scrape(None).await;
    assert_eq!(value_of(&body, "pgbouncer_up", &[]), Some(1.0), "{body}");
    assert_eq!(
        value_of(
            &body,
            "pgbouncer_exporter_query_scrape_error_count",
            &[("datname", "pgbouncer"), ("query", "pgbouncer_stat")]
        ),
        Some(1.0),
        "{body}"
    );
    assert!(body.contains("pgbouncer_pool_active_clients{"), "{body}");
}

#[tokio::test]
async fn notice_versions_are_probed_and_replanned() {
    // The health probe accepts a NOTICE answer (no rows) as up.
    let console = fake::Console::start(
        fake::Version::Notice("pgbouncer version 1.9.0".into()),
        synthetic_tables(10900),
    )
    .await;
    let exporter = new_exporter(&console.url("postgres"), false);
    exporter.probe().await;
    assert_eq!(exporter.health(), Health::Primary);
    let body = exporter.scrape(None).await;
    assert_eq!(value_of(&body, "pgbouncer_version", &[]), Some(10900.0));
    assert_eq!(value_of(&body, "pgbouncer_in_recovery", &[]), Some(0.0));
}

#[test]
fn mapping_and_parsing_helpers() {
    let t = synthetic(Show::Stats, 12401);
    let e = expected_series(Show::Stats, &t);
    let key = (
        "pgbouncer_stat_total_query_time".to_owned(),
        BTreeMap::from([("datname".to_owned(), "app".to_owned())]),
    );
    // "<r*10+i><123457+i>" µs with r = 0, i = 7 (column 7 of the 1.24 set).
    assert_eq!(t.columns[7], "total_query_time");
    assert!((e[&key] - 7.123_464).abs() < 1e-9, "{}", e[&key]);
    let (name, labels, v) = parse_sample(r#"m{a="x,y",b="q\"z"} 1.5"#).unwrap();
    assert_eq!((name.as_str(), v), ("m", 1.5));
    assert_eq!(labels["a"], "x,y");
    assert_eq!(labels["b"], "q\"z");
    // A value outside the range of the two reads is reported, one inside is not.
    let before = Table::new(
        &["list", "items"],
        vec![vec![Some("pools".into()), Some("3".into())]],
    );
    let after = Table::new(
        &["list", "items"],
        vec![vec![Some("pools".into()), Some("5".into())]],
    );
    assert!(
        disagreements(
            Show::Lists,
            &before,
            &after,
            "pgbouncer_list_items{list=\"pools\"} 4\n"
        )
        .is_empty()
    );
    let bad = disagreements(
        Show::Lists,
        &before,
        &after,
        "pgbouncer_list_items{list=\"pools\"} 6\n",
    );
    assert_eq!(bad.len(), 1, "{bad:?}");
    let extra = disagreements(
        Show::Lists,
        &before,
        &after,
        "pgbouncer_list_items{list=\"pools\"} 4\npgbouncer_list_items{list=\"x\"} 1\n",
    );
    assert_eq!(extra.len(), 1, "{extra:?}");
}

// =============================================================================================
// The real Pgbouncer 1.18
// =============================================================================================

/// One PostgreSQL 15 with Pgbouncer in front for the live tests, which take turns (they
/// compare exact client counts, and one restarts Pgbouncer). Never dropped: the harness's
/// reaper stops it when the test process exits.
async fn live() -> (
    &'static test_harness::Cluster,
    tokio::sync::MutexGuard<'static, ()>,
) {
    static CLUSTER: OnceLock<test_harness::Cluster> = OnceLock::new();
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    let cluster = tokio::task::block_in_place(|| {
        CLUSTER.get_or_init(|| {
            let cluster = test_harness::ClusterBuilder::new(test_harness::PgVersion::V15)
                .pgbouncer()
                .start()
                .expect("PostgreSQL 15 and Pgbouncer start");
            let out = cluster
                .primary()
                .pgbench_command("postgres")
                .unwrap()
                .args(["-i", "-s", "1", "-q"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pgbench -i: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cluster
        })
    });
    (cluster, turn)
}

/// `pgbench` through Pgbouncer on database `db`, running in the background.
struct Pgbench(Child);

impl Pgbench {
    fn start(cluster: &test_harness::Cluster, db: &str, args: &[&str]) -> Pgbench {
        let child = cluster
            .primary()
            .pgbench_command(db)
            .unwrap()
            .env("PGPORT", cluster.pgbouncer().port().to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pgbench starts");
        Pgbench(child)
    }

    fn finish(mut self) {
        let status = self.0.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "pgbench failed: {status}\n{err}");
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A connection of the test's own to the admin console (simple protocol, as `psql` would).
async fn console(url: &str) -> Client {
    let info = ConnInfo::parse(&format!("{url}?sslmode=disable")).unwrap();
    let (client, _task) = info.connect(Duration::from_secs(10)).await.unwrap();
    client
}

/// One `SHOW` command's result, read by the test.
async fn read(client: &Client, show: Show) -> Table {
    let mut table = Table::default();
    for message in client.simple_query(show.command()).await.unwrap() {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                table.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                table.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    table
}

async fn read_all(client: &Client) -> BTreeMap<Show, Table> {
    let mut out = BTreeMap::new();
    for show in Show::ALL {
        out.insert(show, read(client, show).await);
    }
    out
}

/// Reads every command, scrapes, reads again; returns the disagreements (values checked only
/// for series whose metric passes `check_value`; the series sets always) and the body.
async fn scrape_between_reads(
    exporter: &Exporter,
    client: &Client,
    check_value: impl Fn(&str) -> bool,
) -> (Vec<String>, String) {
    let before = read_all(client).await;
    let body = exporter.scrape(None).await;
    let after = read_all(client).await;
    let mut problems = Vec::new();
    for show in Show::ALL {
        for p in disagreements(show, &before[&show], &after[&show], &body) {
            let metric = p.split('{').next().unwrap_or("");
            if p.ends_with(": missing")
                || p.ends_with(": exported but not in SHOW output")
                || check_value(metric)
            {
                problems.push(p);
            }
        }
    }
    (problems, body)
}

/// The branches planned on 1.18, sorted.
const BRANCHES_1_18: [&str; 4] = [
    "pgbouncer_database_116",
    "pgbouncer_list",
    "pgbouncer_pool_118",
    "pgbouncer_stat_108",
];

/// Starts a stopped Pgbouncer again when dropped, so a failed test leaves it running for
/// the next.
struct KeepRunning<'a>(&'a test_harness::Pgbouncer);

impl Drop for KeepRunning<'_> {
    fn drop(&mut self) {
        if self.0.pid().is_none() {
            let _ = self.0.restart();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_collectors_agree_with_show_output_under_pgbench() {
    let (cluster, _turn) = live().await;
    let bouncer = cluster.pgbouncer();
    let exporter = new_exporter(&bouncer.admin_url(), true);
    let client = console(&bouncer.admin_url()).await;
    // The exporter's connection is part of what SHOW reports: open it first.
    let body = exporter.scrape(None).await;
    assert_eq!(value_of(&body, "pgbouncer_up", &[]), Some(1.0), "{body}");
    assert_eq!(value_of(&body, "pgbouncer_version", &[]), Some(11800.0));
    assert_eq!(planned(&exporter), BRANCHES_1_18);

    let start = read(&client, Show::Stats).await;
    let bench = Pgbench::start(
        cluster,
        "postgres",
        &["-n", "-S", "-c", "4", "-j", "2", "-T", "6"],
    );
    // While it runs: counters lie between the reads around the scrape, series sets match.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut rounds = 0;
    while Instant::now() < deadline {
        let (problems, body) = scrape_between_reads(&exporter, &client, |m| {
            m.starts_with("pgbouncer_stat_total_")
        })
        .await;
        assert!(
            problems.is_empty(),
            "under traffic:\n  {}\n{body}",
            problems.join("\n  ")
        );
        assert_no_collector_failed(&exporter);
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(rounds >= 3, "only {rounds} rounds under traffic");
    bench.finish();

    // Quiescent: every value of every collector agrees.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (problems, body) = scrape_between_reads(&exporter, &client, |_| true).await;
    assert!(
        problems.is_empty(),
        "after traffic:\n  {}\n{body}",
        problems.join("\n  ")
    );
    assert_no_collector_failed(&exporter);
    // The traffic is there, in seconds where Pgbouncer says microseconds.
    let xacts = value_of(
        &body,
        "pgbouncer_stat_total_xact_count",
        &[("datname", "postgres")],
    )
    .unwrap();
    let before = expected_series(Show::Stats, &start)
        .get(&(
            "pgbouncer_stat_total_xact_count".to_owned(),
            BTreeMap::from([("datname".to_owned(), "postgres".to_owned())]),
        ))
        .copied()
        .unwrap_or(0.0);
    assert!(
        xacts - before > 1000.0,
        "pgbench transactions: {before} -> {xacts}"
    );
    let query_time = value_of(
        &body,
        "pgbouncer_stat_total_query_time",
        &[("datname", "postgres")],
    )
    .unwrap();
    assert!(
        query_time > 0.0 && query_time < 60.0,
        "total_query_time {query_time} s"
    );
    for family in [
        "pgbouncer_list_items",
        "pgbouncer_database_pool_size",
        "pgbouncer_database_min_pool_size",
        "pgbouncer_database_reserve_pool",
        "pgbouncer_database_current_connections",
        "pgbouncer_stat_total_xact_count",
        "pgbouncer_stat_avg_query_time",
        "pgbouncer_pool_active_clients",
        "pgbouncer_pool_waiting_clients",
        "pgbouncer_pool_cancel_servers",
        "pgbouncer_pool_maxwait_us",
    ] {
        assert!(
            body.contains(&format!("\n{family}{{")),
            "no {family}\n{body}"
        );
    }
    assert!(
        body.contains("pgbouncer_pool_active_clients{datname=\"postgres\",user=\"postgres\",pool_mode=\"transaction\"} "),
        "{body}"
    );
    for query in [
        "pgbouncer_list",
        "pgbouncer_database",
        "pgbouncer_stat",
        "pgbouncer_pool",
    ] {
        assert_eq!(
            value_of(
                &body,
                "pgbouncer_exporter_query_scrape_error_count",
                &[("datname", "pgbouncer"), ("query", query)]
            ),
            Some(0.0),
            "{query}"
        );
    }
    let log = std::fs::read_to_string(bouncer.log_path()).unwrap_or_default();
    for refusal in [
        "unsupported startup parameter",
        "extended query protocol",
        "invalid command",
    ] {
        assert!(
            !log.contains(refusal),
            "Pgbouncer log has {refusal:?}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_waiting_clients_show_in_cl_waiting_and_maxwait() {
    let (cluster, _turn) = live().await;
    let bouncer = cluster.pgbouncer();
    let exporter = new_exporter(&bouncer.admin_url(), true);
    let client = console(&bouncer.admin_url()).await;
    let _ = exporter.scrape(None).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sleep.sql");
    std::fs::write(&script, "SELECT pg_sleep(1.5);\n").unwrap();
    let script = script.display().to_string();
    // Three sessions on a pool of one server connection: one runs, two wait.
    let single = test_harness::pgbouncer::SINGLE_POOL_DB;
    let _bench = Pgbench::start(
        cluster,
        single,
        &["-n", "-c", "3", "-j", "3", "-T", "8", "-f", script.as_str()],
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let labels = [
        ("datname", single),
        ("user", "postgres"),
        ("pool_mode", "transaction"),
    ];
    // The oldest waiting client changes every 1.5 s; retry a round that straddled a change.
    let mut last = String::new();
    for _ in 0..10 {
        let (problems, body) = scrape_between_reads(&exporter, &client, |_| true).await;
        let waiting = value_of(&body, "pgbouncer_pool_waiting_clients", &labels);
        let active = value_of(&body, "pgbouncer_pool_active_clients", &labels);
        let wait = value_of(&body, "pgbouncer_pool_maxwait", &labels).unwrap_or(0.0)
            + value_of(&body, "pgbouncer_pool_maxwait_us", &labels).unwrap_or(0.0) / 1e6;
        if problems.is_empty() && waiting == Some(2.0) && active == Some(1.0) && wait > 0.1 {
            assert!(wait < 5.0, "maxwait {wait} s");
            assert_no_collector_failed(&exporter);
            return;
        }
        last = format!(
            "waiting {waiting:?}, active {active:?}, maxwait {wait} s, disagreements:\n  {}\n{body}",
            problems.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no round showed the waiting clients: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stats_only_user_and_unix_socket() {
    let (cluster, _turn) = live().await;
    let bouncer = cluster.pgbouncer();
    let socket_url = format!(
        "postgres://{}@:{}/pgbouncer?host={}",
        test_harness::pgbouncer::STATS_USER,
        bouncer.port(),
        bouncer.socket_dir().display()
    );
    for url in [bouncer.stats_url(), socket_url] {
        let exporter = new_exporter(&url, true);
        let client = console(&bouncer.stats_url()).await;
        let _ = exporter.scrape(None).await;
        let (problems, body) = scrape_between_reads(&exporter, &client, |_| true).await;
        assert!(
            problems.is_empty(),
            "{url}:\n  {}\n{body}",
            problems.join("\n  ")
        );
        assert_eq!(
            value_of(&body, "pgbouncer_up", &[]),
            Some(1.0),
            "{url}\n{body}"
        );
        assert_eq!(planned(&exporter), BRANCHES_1_18, "{url}");
        assert_no_collector_failed(&exporter);
        exporter.probe().await;
        assert_eq!(exporter.health(), Health::Primary, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_exporter_recovers_after_pgbouncer_restart() {
    let (cluster, _turn) = live().await;
    let bouncer = cluster.pgbouncer();
    // As deployed: with the TTL cache, and a startup parameter Pgbouncer accepts.
    let exporter = new_exporter(
        &format!(
            "{}?application_name=pgbouncer_exporter",
            bouncer.admin_url()
        ),
        false,
    );
    let body = exporter.scrape(None).await;
    assert_eq!(value_of(&body, "pgbouncer_up", &[]), Some(1.0), "{body}");

    let _keep = KeepRunning(bouncer);
    bouncer.stop();
    // Past the window in which concurrent scrapes share the pre-check's facts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = exporter.scrape(None).await;
    assert_eq!(value_of(&body, "pgbouncer_up", &[]), Some(0.0), "{body}");
    assert!(!body.contains("pgbouncer_list_items"), "{body}");
    exporter.probe().await;
    assert_eq!(exporter.health(), Health::Down);

    bouncer.restart().expect("Pgbouncer restarts");
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let body = exporter.scrape(None).await;
        if value_of(&body, "pgbouncer_up", &[]) == Some(1.0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "still down after the restart:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(value_of(&body, "pgbouncer_version", &[]), Some(11800.0));
    assert!(
        body.contains("pgbouncer_list_items{list=\"databases\"}"),
        "{body}"
    );
    assert!(
        value_of(&body, "pgbouncer_exporter_scrape_error_count", &[]) >= Some(1.0),
        "{body}"
    );
    exporter.probe().await;
    assert_eq!(exporter.health(), Health::Primary);
    // A fresh exporter agrees with the restarted Pgbouncer.
    let fresh = new_exporter(&bouncer.admin_url(), true);
    let client = console(&bouncer.admin_url()).await;
    let _ = fresh.scrape(None).await;
    let (problems, body) = scrape_between_reads(&fresh, &client, |_| true).await;
    assert!(problems.is_empty(), "{}\n{body}", problems.join("\n  "));
}
