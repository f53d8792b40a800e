//! The Debian packages, end to end on this machine (as root, like the rest of the suite's live
//! tests): builds them with `scripts/package` from the dev-profile binaries `cargo test
//! --workspace` builds anyway (no LTO, nothing compiled twice), installs them with dpkg, checks
//! every file landed where packaging/README.md promises with the promised owner and mode, runs
//! each installed agent the way its systemd unit would (user, environment file, `$…_OPTS`) with
//! `--version` and in `--dry-run` mode (pgbackrest_exporter, which has no check mode, is started
//! and scraped on loopback), runs `systemd-analyze verify` on each unit, upgrades keeping local
//! edits of the conffiles, purges everything, and finally replaces a stand-in of upstream's
//! pg-exporter package. Meanwhile lintian checks the packages: an error or a warning fails the
//! test.
//!
//! Packages of ours left installed by an aborted run are purged first; a package of the same
//! name from anywhere else makes the test fail without touching it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use packaging::{parse_environment_file, split_exec_words};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Maintainer field `scripts/package` writes: how the test recognises our packages.
const MAINTAINER: &str = "pgsql-monitoring-suite maintainers <pgsuite@example.invalid>";
/// The Maintainer of the stand-in for upstream's pg-exporter.
const STAND_IN_MAINTAINER: &str = "upstream stand-in (packaging test) <test@example.invalid>";
const DASHBOARDS_PKG: &str = "pgsuite-dashboards";
const DASHBOARDS_DIR: &str = "/usr/share/pgsuite-dashboards";

/// One agent's package, as packaging/README.md describes it.
#[derive(Debug)]
struct Agent {
    bin: &'static str,
    pkg: &'static str,
    /// `User=` of the unit.
    user: &'static str,
    /// Mode of `/etc/default/<bin>`.
    default_mode: u32,
}

const AGENTS: [Agent; 4] = [
    Agent {
        bin: "pg_exporter",
        pkg: "pg-exporter",
        user: "prometheus",
        default_mode: 0o600,
    },
    Agent {
        bin: "pgbouncer_exporter",
        pkg: "pgbouncer-exporter",
        user: "prometheus",
        default_mode: 0o600,
    },
    Agent {
        bin: "pgbackrest_exporter",
        pkg: "pgbackrest-exporter",
        user: "postgres",
        default_mode: 0o644,
    },
    Agent {
        bin: "log_shipper",
        pkg: "log-shipper",
        user: "postgres",
        default_mode: 0o644,
    },
];

fn all_packages() -> Vec<&'static str> {
    AGENTS
        .iter()
        .map(|a| a.pkg)
        .chain([DASHBOARDS_PKG])
        .collect()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `<target>/debug/deps/packages-…` → `<target>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned()
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdin closed, so dpkg can never wait at a conffile prompt) and returns its
/// output; panics with both streams when it fails.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", describe(cmd)));
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dpkg(args: &[&str]) -> Output {
    ok(Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// (Maintainer, Version) of `pkg` when dpkg knows it installed or with config files left.
fn installed(pkg: &str) -> Option<(String, String)> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}|${Maintainer}|${Version}", pkg])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let out = text(&out.stdout);
    let mut parts = out.splitn(3, '|');
    let (status, maintainer, version) = (parts.next()?, parts.next()?, parts.next()?);
    (status != "not-installed").then(|| (maintainer.to_owned(), version.to_owned()))
}

/// Purges every package of ours (or the upstream stand-in) dpkg knows; `strict` panics on a
/// package of the same name from elsewhere instead of skipping it.
fn purge_ours(strict: bool) {
    for pkg in all_packages() {
        match installed(pkg) {
            Some((m, _)) if m == MAINTAINER || m == STAND_IN_MAINTAINER => {
                let out = Command::new("dpkg")
                    .args(["--purge", pkg])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                if !out.status.success() {
                    eprintln!("dpkg --purge {pkg}: {}", text(&out.stderr));
                }
            }
            Some((m, v)) if strict => panic!(
                "{pkg} {v} from {m} is installed; this test installs and purges its own \
                 packages and will not touch that one"
            ),
            _ => {}
        }
    }
}

/// Purges our packages however the test ends.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        purge_ours(false);
    }
}

// ---------------------------------------------------------------------------------------------
// What the packages promise
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Promised {
    /// Installed path.
    path: PathBuf,
    mode: u32,
    /// The repository file it is a copy of, when it is a plain copy.
    source: Option<PathBuf>,
}

fn file(path: impl Into<PathBuf>, mode: u32, source: Option<PathBuf>) -> Promised {
    Promised {
        path: path.into(),
        mode,
        source,
    }
}

fn yml_files(dir: &Path, filter: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml") && filter(n))
        .collect();
    names.sort();
    names
}

fn promised_files(agent: &Agent) -> Vec<Promised> {
    let ws = workspace();
    let (bin, pkg) = (agent.bin, agent.pkg);
    let mut files = vec![
        file(format!("/usr/bin/{bin}"), 0o755, None),
        file(
            format!("/lib/systemd/system/{bin}.service"),
            0o644,
            Some(ws.join(format!("packaging/{pkg}/{bin}.service"))),
        ),
        file(
            format!("/etc/default/{bin}"),
            agent.default_mode,
            Some(ws.join(format!("packaging/{pkg}/{bin}.default"))),
        ),
        file(format!("/usr/share/man/man1/{bin}.1.gz"), 0o644, None),
        file(
            format!("/usr/share/bash-completion/completions/{bin}"),
            0o644,
            None,
        ),
        file(
            format!("/usr/share/zsh/vendor-completions/_{bin}"),
            0o644,
            None,
        ),
        file(
            format!("/usr/share/fish/vendor_completions.d/{bin}.fish"),
            0o644,
            None,
        ),
        file(format!("/usr/share/doc/{pkg}/copyright"), 0o644, None),
        file(format!("/usr/share/doc/{pkg}/changelog.gz"), 0o644, None),
        file(
            format!("/usr/share/lintian/overrides/{pkg}"),
            0o644,
            Some(ws.join(format!("packaging/{pkg}/lintian-overrides"))),
        ),
    ];
    let collectors = ws.join("collectors/sql_collector/config");
    match bin {
        "pg_exporter" => {
            for name in yml_files(&collectors, |_| true) {
                files.push(file(
                    format!("/etc/pg_exporter/{name}"),
                    0o644,
                    Some(collectors.join(&name)),
                ));
            }
        }
        "pgbouncer_exporter" => {
            for name in yml_files(&collectors, |n| n.contains("-pgbouncer_")) {
                files.push(file(
                    format!("/etc/pgbouncer_exporter/{name}"),
                    0o644,
                    Some(collectors.join(&name)),
                ));
            }
        }
        "log_shipper" => files.push(file(
            "/etc/log_shipper.yml",
            0o644,
            Some(ws.join("packaging/log-shipper/log_shipper.yml")),
        )),
        _ => {}
    }
    files.sort();
    files
}

/// Every JSON and YAML file of dashboards/ outside its Rust crate's own directories.
fn dashboard_sources(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = rel.join(&name);
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            let top_level_code = rel.components().count() == 1
                && ["src", "tests", "benches", "examples", "target"].contains(&name.as_str());
            if !top_level_code {
                dashboard_sources(dir, &rel, out);
            }
        } else if [".json", ".yml", ".yaml"].iter().any(|e| name.ends_with(e)) {
            out.push(rel);
        }
    }
}

fn promised_dashboards() -> Vec<Promised> {
    let src = workspace().join("dashboards");
    let mut rels = Vec::new();
    dashboard_sources(&src, Path::new(""), &mut rels);
    let mut files: Vec<Promised> = rels
        .into_iter()
        .map(|rel| {
            file(
                Path::new(DASHBOARDS_DIR).join(&rel),
                0o644,
                Some(src.join(rel)),
            )
        })
        .collect();
    if src.join("README.md").is_file() {
        files.push(file(
            format!("/usr/share/doc/{DASHBOARDS_PKG}/README.md"),
            0o644,
            Some(src.join("README.md")),
        ));
    }
    for doc in ["copyright", "changelog.gz"] {
        files.push(file(
            format!("/usr/share/doc/{DASHBOARDS_PKG}/{doc}"),
            0o644,
            None,
        ));
    }
    files.sort();
    files
}

/// The regular files dpkg lists for `pkg` (directories left out).
fn dpkg_files(pkg: &str) -> BTreeSet<PathBuf> {
    text(&dpkg(&["-L", pkg]).stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| !p.is_dir() && p != Path::new("/."))
        .collect()
}

fn conffiles(pkg: &str) -> BTreeSet<PathBuf> {
    let out = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", pkg]));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .collect()
}

fn check_landed(pkg: &str, promised: &[Promised]) {
    let listed = dpkg_files(pkg);
    let expected: BTreeSet<PathBuf> = promised.iter().map(|p| p.path.clone()).collect();
    assert_eq!(listed, expected, "{pkg}: files dpkg installed vs promised");
    for p in promised {
        let meta = fs::metadata(&p.path)
            .unwrap_or_else(|e| panic!("{pkg}: {} did not land: {e}", p.path.display()));
        assert!(meta.is_file(), "{}", p.path.display());
        assert_eq!(
            meta.mode() & 0o7777,
            p.mode,
            "{pkg}: mode of {}",
            p.path.display()
        );
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "{pkg}: owner of {}",
            p.path.display()
        );
        if let Some(src) = &p.source {
            assert!(
                fs::read(&p.path).unwrap() == fs::read(src).unwrap(),
                "{pkg}: {} differs from {}",
                p.path.display(),
                src.display()
            );
        }
    }
    // Every file under /etc is a conffile, so upgrades keep local edits.
    let etc: BTreeSet<PathBuf> = expected
        .into_iter()
        .filter(|p| p.starts_with("/etc"))
        .collect();
    assert_eq!(conffiles(pkg), etc, "{pkg}: conffiles");
}

// ---------------------------------------------------------------------------------------------
// Running the installed agents as their units do
// ---------------------------------------------------------------------------------------------

/// What the test takes from a unit's [Service] section.
#[derive(Debug, Default)]
struct Unit {
    user: String,
    exec_start: Vec<String>,
    environment: Vec<(String, String)>,
    environment_files: Vec<String>,
    settings: Vec<(String, String)>,
}

fn read_unit(path: &Path) -> Unit {
    let mut unit = Unit::default();
    let mut in_service = false;
    for line in fs::read_to_string(path).unwrap().lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        match k {
            "User" => v.clone_into(&mut unit.user),
            "ExecStart" => unit.exec_start = v.split_whitespace().map(str::to_owned).collect(),
            "Environment" => {
                let (ek, ev) = v.split_once('=').unwrap();
                unit.environment.push((ek.to_owned(), ev.to_owned()));
            }
            "EnvironmentFile" => unit
                .environment_files
                .push(v.trim_start_matches('-').to_owned()),
            _ => {}
        }
        unit.settings.push((k.to_owned(), v.to_owned()));
    }
    unit
}

fn home_of(user: &str) -> String {
    let out = ok(Command::new("getent").args(["passwd", user]));
    text(&out.stdout)
        .trim()
        .split(':')
        .nth(5)
        .unwrap()
        .to_owned()
}

/// The command the unit of `agent` runs (its user, environment and expanded `ExecStart=`),
/// with `edit` applied to the arguments; systemd's default working directory `/`.
fn unit_command(agent: &Agent, edit: impl FnOnce(Vec<String>) -> Vec<String>) -> Command {
    let unit = read_unit(&PathBuf::from(format!(
        "/lib/systemd/system/{}.service",
        agent.bin
    )));
    let mut env = unit.environment.clone();
    for f in &unit.environment_files {
        let parsed = parse_environment_file(&fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        env.extend(parsed);
    }
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut words = unit.exec_start.iter();
    let program = words.next().unwrap().clone();
    let mut args = Vec::new();
    for w in words {
        match w.strip_prefix('$') {
            Some(var) => args.extend(split_exec_words(&lookup(var))),
            None => args.push(w.clone()),
        }
    }
    let args = edit(args);
    let home = home_of(&unit.user);
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={}", unit.user),
        &format!("--regid={}", unit.user),
        "--init-groups",
        "--",
        &program,
    ])
    .args(&args)
    .current_dir("/")
    .env_clear()
    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    .env("HOME", home)
    .env("USER", &unit.user)
    .env("LOGNAME", &unit.user);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    cmd
}

/// The top-level keys (collector branches) of a YAML collector file.
fn branches(path: &Path) -> Vec<String> {
    let value: serde_norway::Value =
        serde_norway::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    value
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn check_dry_run(agent: &Agent, config: &str, expected_branches: &[String]) -> String {
    let out = ok(&mut unit_command(agent, |mut a| {
        a.push("--dry-run".to_owned());
        a
    }));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    match agent.bin {
        "pg_exporter" | "pgbouncer_exporter" => {
            assert!(
                stderr.contains(&format!("path={config} "))
                    || stderr.contains(&format!("path={config}\n")),
                "{}: the unit's dry run did not use {config}:\n{stderr}",
                agent.bin
            );
            for b in expected_branches {
                assert!(
                    stdout.contains(&format!("{b}:")),
                    "{}: dry run lacks collector {b}",
                    agent.bin
                );
            }
        }
        "log_shipper" => {
            assert!(
                stdout.starts_with(&format!("{config}: "))
                    && stdout.contains("checkpoints in /var/lib/log_shipper"),
                "log_shipper dry run: {stdout}"
            );
        }
        other => unreachable!("{other} has no dry run"),
    }
    stdout
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pgbackrest_exporter has no check mode: start it as its unit would, on a loopback port
/// instead of the configured one, scrape it, and stop it with SIGTERM.
fn check_pgbackrest_exporter_runs(agent: &Agent) {
    let port = free_port();
    let mut cmd = unit_command(agent, |args| {
        let mut kept = Vec::new();
        let mut skip_next = false;
        for a in args {
            if skip_next {
                skip_next = false;
            } else if a == "--web.listen-address" {
                skip_next = true;
            } else if !a.starts_with("--web.listen-address=") {
                kept.push(a);
            }
        }
        kept.push(format!("--web.listen-address=127.0.0.1:{port}"));
        kept
    });
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match http_get(port, "/metrics") {
            Some(r) if r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200") => {
                break r;
            }
            _ if Instant::now() < deadline && child.try_wait().unwrap().is_none() => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("pgbackrest_exporter did not serve /metrics ({other:?}):\n{err}");
            }
        }
    };
    assert!(
        body.contains("pgbackrest_exporter_build_info{"),
        "no build info in:\n{body}"
    );
    ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(
        status.success(),
        "pgbackrest_exporter after SIGTERM: {status}"
    );
}

fn check_unit(agent: &Agent) {
    let path = PathBuf::from(format!("/lib/systemd/system/{}.service", agent.bin));
    let unit = read_unit(&path);
    assert_eq!(unit.user, agent.user, "{}: User=", agent.bin);
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("Restart", "on-failure"),
    ] {
        assert!(
            unit.settings.iter().any(|(uk, uv)| uk == k && uv == v),
            "{}: {k}={v} missing",
            agent.bin
        );
    }
    if agent.bin == "log_shipper" {
        assert!(
            unit.settings
                .iter()
                .any(|(k, v)| k == "StateDirectory" && v == "log_shipper")
        );
    }
    assert_eq!(
        unit.environment_files,
        [format!("/etc/default/{}", agent.bin)]
    );
    // Unknown keys and bad values are only warnings for systemd-analyze: any line naming the
    // unit fails the test too.
    let out =
        ok(Command::new("systemd-analyze").args(["verify", "--man=no", path.to_str().unwrap()]));
    let stderr = text(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("{}.service", agent.bin)))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify {}:\n{stderr}",
        path.display()
    );
}

/// The man page documents every flag `--help` lists; completions exist for the three shells.
fn check_docs(agent: &Agent) {
    let bin = agent.bin;
    let help = text(&ok(Command::new(format!("/usr/bin/{bin}")).arg("--help")).stdout);
    let man = ok(Command::new("gzip").args(["-dc", &format!("/usr/share/man/man1/{bin}.1.gz")]));
    let man = text(&man.stdout).replace("\\-", "-");
    assert!(
        man.starts_with(".ie") || man.contains(".TH"),
        "{bin}: not a man page"
    );
    let flags: BTreeSet<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric()))
                .to_owned()
        })
        .collect();
    assert!(flags.len() > 5, "{bin}: flags in --help: {flags:?}");
    for f in &flags {
        assert!(man.contains(f.as_str()), "{bin}: man page lacks {f}");
    }
    let bash = fs::read_to_string(format!("/usr/share/bash-completion/completions/{bin}")).unwrap();
    assert!(
        bash.contains(&format!("complete -F _{bin}")),
        "{bin}: bash completion"
    );
    let zsh = fs::read_to_string(format!("/usr/share/zsh/vendor-completions/_{bin}")).unwrap();
    assert!(
        zsh.starts_with(&format!("#compdef {bin}")),
        "{bin}: zsh completion"
    );
    let fish =
        fs::read_to_string(format!("/usr/share/fish/vendor_completions.d/{bin}.fish")).unwrap();
    assert!(
        fish.contains(&format!("complete -c {bin}")),
        "{bin}: fish completion"
    );
}

/// Everything a fresh install promises.
fn check_installed(debs_version_of: impl Fn(&str) -> String) {
    for agent in &AGENTS {
        let (maintainer, version) = installed(agent.pkg).unwrap();
        assert_eq!(maintainer, MAINTAINER);
        assert_eq!(version, debs_version_of(agent.pkg));
        check_landed(agent.pkg, &promised_files(agent));
        let out = ok(Command::new(format!("/usr/bin/{}", agent.bin)).arg("--version"));
        assert_eq!(text(&out.stdout), format!("{} {VERSION}\n", agent.bin));
        check_unit(agent);
        check_docs(agent);
        assert!(
            Command::new("getent")
                .args(["passwd", agent.user])
                .output()
                .unwrap()
                .status
                .success(),
            "user {} missing",
            agent.user
        );
    }
    check_landed(DASHBOARDS_PKG, &promised_dashboards());

    let collectors = |dir: &str| -> Vec<String> {
        yml_files(Path::new(dir), |_| true)
            .iter()
            .flat_map(|n| branches(&Path::new(dir).join(n)))
            .collect()
    };
    check_dry_run(
        &AGENTS[0],
        "/etc/pg_exporter",
        &collectors("/etc/pg_exporter"),
    );
    check_dry_run(
        &AGENTS[1],
        "/etc/pgbouncer_exporter",
        &collectors("/etc/pgbouncer_exporter"),
    );
    check_pgbackrest_exporter_runs(&AGENTS[2]);
    check_dry_run(&AGENTS[3], "/etc/log_shipper.yml", &[]);
    let state = fs::metadata("/var/lib/log_shipper").unwrap();
    assert!(state.is_dir());
    assert_eq!(state.mode() & 0o7777, 0o750);
    assert_eq!(
        (state.uid(), state.gid()),
        (uid_of("postgres"), gid_of("postgres"))
    );
}

fn passwd_field(user: &str, field: usize) -> u32 {
    let out = ok(Command::new("getent").args(["passwd", user]));
    text(&out.stdout)
        .split(':')
        .nth(field)
        .unwrap()
        .parse()
        .unwrap()
}

fn uid_of(user: &str) -> u32 {
    passwd_field(user, 2)
}

fn gid_of(user: &str) -> u32 {
    passwd_field(user, 3)
}

fn deb_path(dir: &Path, pkg: &str) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{pkg}_"))
        })
        .unwrap_or_else(|| panic!("no {pkg} package in {}", dir.display()))
}

/// The same package with `+1` appended to its version: an upgrade whose conffiles did not change.
fn repack_newer(deb: &Path, out_dir: &Path) -> PathBuf {
    let tree = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(tree.path()));
    let control_path = tree.path().join("DEBIAN/control");
    let control = fs::read_to_string(&control_path).unwrap();
    let bumped: String = control
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+1\n"),
            None => format!("{l}\n"),
        })
        .collect();
    fs::write(&control_path, bumped).unwrap();
    let out = out_dir.join(deb.file_name().unwrap());
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(tree.path())
        .arg(&out));
    out
}

/// A minimal stand-in for upstream's pg-exporter 1.0.3 package: its files, conffiles and
/// default environment file.
fn stand_in_upstream(dir: &Path) -> PathBuf {
    let root = dir.join("upstream");
    for d in ["DEBIAN", "usr/bin", "etc/default", "lib/systemd/system"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("usr/bin/pg_exporter"),
        "#!/bin/sh\necho upstream\n",
    )
    .unwrap();
    ok(Command::new("chmod")
        .arg("0755")
        .arg(root.join("usr/bin/pg_exporter")));
    fs::write(
        root.join("etc/pg_exporter.yml"),
        "upstream_collector:\n  name: upstream\n  query: SELECT 1 AS up\n  metrics:\n    - up: {usage: GAUGE}\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/default/pg_exporter"),
        "PG_EXPORTER_URL='postgres://:5432/postgres?sslmode=disable'\nPG_EXPORTER_CONFIG=/etc/pg_exporter.yml\nPG_EXPORTER_OPTS='--log.level=info'\n",
    )
    .unwrap();
    fs::write(
        root.join("lib/systemd/system/pg_exporter.service"),
        "[Service]\nEnvironmentFile=-/etc/default/pg_exporter\nUser=prometheus\nExecStart=/usr/bin/pg_exporter $PG_EXPORTER_OPTS\n",
    )
    .unwrap();
    fs::write(
        root.join("DEBIAN/conffiles"),
        "/etc/pg_exporter.yml\n/etc/default/pg_exporter\n",
    )
    .unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: pg-exporter\nVersion: 1.0.3\nArchitecture: all\nMaintainer: {STAND_IN_MAINTAINER}\nDescription: stand-in for upstream's pg-exporter\n"
        ),
    )
    .unwrap();
    let deb = dir.join("pg-exporter_1.0.3_all.deb");
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb));
    deb
}

/// lintian running on the packages, killed if the test ends before [`check_lintian`].
struct Lintian(Option<Child>);

impl Drop for Lintian {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts lintian on the packages (it takes about 20 s, so it runs while the packages are
/// installed, upgraded and purged); [`check_lintian`] waits for it.
fn start_lintian(packages: &[PathBuf]) -> Lintian {
    let child = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
        .args(packages)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lintian (Debian package lintian; scripts/setup installs it)");
    Lintian(Some(child))
}

/// Lintian's verdict: no error and no warning. What does not apply to these packages is
/// overridden with its reason in `packaging/<package>/lintian-overrides`; every other tag is
/// fixed in the packaging.
fn check_lintian(mut lintian: Lintian) {
    let out = lintian.0.take().unwrap().wait_with_output().unwrap();
    let report = text(&out.stdout);
    for line in report.lines() {
        eprintln!("lintian: {line}");
    }
    let failing: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        out.status.success() && failing.is_empty(),
        "lintian ({}) reports errors or warnings:\n{report}\n{}",
        out.status,
        text(&out.stderr)
    );
}

/// What deb-systemd-helper keeps about `unit`: its state files and the mask or enable links.
fn systemd_traces(unit: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![
        PathBuf::from("/var/lib/systemd/deb-systemd-helper-enabled"),
        PathBuf::from("/var/lib/systemd/deb-systemd-helper-masked"),
        PathBuf::from("/etc/systemd/system"),
    ];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else if entry.file_name().to_string_lossy().starts_with(unit) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn append(path: &str, line: &str) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "{line}").unwrap();
}

#[test]
fn packages_build_install_run_upgrade_and_purge() {
    assert_eq!(
        text(&ok(Command::new("id").arg("-u")).stdout).trim(),
        "0",
        "this test installs packages with dpkg: run it as root (as the suite's CI does)"
    );
    let started = Instant::now();
    purge_ours(true);
    let _purge = PurgeOnDrop;
    let ws = workspace();
    let target = target_dir();

    // The dev-profile binaries, built exactly as `cargo test --workspace` builds them (same
    // features), so this is a no-op inside that run.
    let t = Instant::now();
    ok(Command::new(env!("CARGO")).current_dir(&ws).args([
        "test",
        "--workspace",
        "--locked",
        "--no-run",
        "--quiet",
    ]));
    let cargo_time = t.elapsed();

    let t = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let debs = work.path().join("debs");
    ok(Command::new(ws.join("scripts/package"))
        .args([
            "--profile",
            "dev",
            "--no-build",
            "--compression",
            "gzip",
            "--out",
        ])
        .arg(&debs)
        .env("CARGO_TARGET_DIR", &target));
    let package_time = t.elapsed();
    let packages: Vec<PathBuf> = all_packages().iter().map(|p| deb_path(&debs, p)).collect();
    let lintian = start_lintian(&packages);
    let version_of = |pkg: &str, suffix: &str| {
        if pkg == "pg-exporter" {
            format!("1:{VERSION}{suffix}")
        } else {
            format!("{VERSION}{suffix}")
        }
    };

    // 1. Fresh install.
    let t = Instant::now();
    let mut install = vec!["-i"];
    install.extend(packages.iter().map(|p| p.to_str().unwrap()));
    dpkg(&install);
    check_installed(|pkg| version_of(pkg, ""));
    // The maintainer scripts record each unit with deb-systemd-helper, as debhelper's do, so
    // that the purge removes whatever links `systemctl enable` made.
    for agent in &AGENTS {
        let unit = format!("{}.service", agent.bin);
        assert!(
            Path::new("/var/lib/systemd/deb-systemd-helper-enabled")
                .join(format!("{unit}.dsh-also"))
                .exists(),
            "{unit} not recorded by deb-systemd-helper: {:?}",
            systemd_traces(&unit)
        );
    }
    let install_time = t.elapsed();

    // 2. Upgrade: local edits of conffiles stay (no prompt: stdin is closed), and so do the log
    //    shipper's checkpoints.
    let t = Instant::now();
    let newer_dir = work.path().join("newer");
    fs::create_dir_all(&newer_dir).unwrap();
    let newer: Vec<PathBuf> = packages
        .iter()
        .map(|p| repack_newer(p, &newer_dir))
        .collect();
    let edits = [
        "/etc/default/pg_exporter",
        "/etc/pg_exporter/0110-pg.yml",
        "/etc/default/pgbouncer_exporter",
        "/etc/pgbouncer_exporter/0910-pgbouncer_list.yml",
        "/etc/default/pgbackrest_exporter",
        "/etc/default/log_shipper",
        "/etc/log_shipper.yml",
    ];
    for path in edits {
        append(path, "# local edit (packaging test)");
    }
    fs::write("/var/lib/log_shipper/postgres.json", "{}").unwrap();
    let mut upgrade = vec!["-i"];
    upgrade.extend(newer.iter().map(|p| p.to_str().unwrap()));
    dpkg(&upgrade);
    for pkg in all_packages() {
        assert_eq!(installed(pkg).unwrap().1, version_of(pkg, "+1"));
    }
    for path in edits {
        assert!(
            fs::read_to_string(path)
                .unwrap()
                .ends_with("# local edit (packaging test)\n"),
            "the upgrade lost the local edit of {path}"
        );
    }
    assert!(Path::new("/var/lib/log_shipper/postgres.json").exists());
    check_dry_run(&AGENTS[3], "/etc/log_shipper.yml", &[]);
    let upgrade_time = t.elapsed();

    // 3. Purge: nothing of ours stays (the prometheus and postgres users do, by Debian custom).
    let t = Instant::now();
    let mut everything: Vec<Promised> = AGENTS.iter().flat_map(promised_files).collect();
    everything.extend(promised_dashboards());
    let mut purge = vec!["--purge"];
    purge.extend(all_packages());
    dpkg(&purge);
    for pkg in all_packages() {
        assert_eq!(installed(pkg), None, "{pkg} still known to dpkg");
    }
    for p in &everything {
        assert!(!p.path.exists(), "{} survived the purge", p.path.display());
    }
    for dir in [
        "/etc/pg_exporter",
        "/etc/pgbouncer_exporter",
        "/var/lib/log_shipper",
        DASHBOARDS_DIR,
    ] {
        assert!(!Path::new(dir).exists(), "{dir} survived the purge");
    }
    for agent in &AGENTS {
        let traces = systemd_traces(&format!("{}.service", agent.bin));
        assert!(traces.is_empty(), "survived the purge: {traces:?}");
    }
    let purge_time = t.elapsed();

    // 4. Over upstream's package: ours installs as an upgrade (epoch), replaces its files and
    //    keeps using its collector file /etc/pg_exporter.yml, first in the search order.
    let t = Instant::now();
    let upstream = stand_in_upstream(work.path());
    dpkg(&["-i", upstream.to_str().unwrap()]);
    assert_eq!(installed("pg-exporter").unwrap().1, "1.0.3");
    dpkg(&["-i", packages[0].to_str().unwrap()]);
    assert_eq!(
        installed("pg-exporter").unwrap(),
        (MAINTAINER.to_owned(), version_of("pg-exporter", ""))
    );
    let out = ok(Command::new("/usr/bin/pg_exporter").arg("--version"));
    assert_eq!(text(&out.stdout), format!("pg_exporter {VERSION}\n"));
    check_dry_run(
        &AGENTS[0],
        "/etc/pg_exporter.yml",
        &["upstream_collector".to_owned()],
    );
    dpkg(&["--purge", "pg-exporter"]);
    assert!(!Path::new("/etc/pg_exporter.yml").exists());
    assert!(!Path::new("/usr/bin/pg_exporter").exists());
    let upstream_time = t.elapsed();

    let t = Instant::now();
    check_lintian(lintian);
    let lintian_wait = t.elapsed();

    eprintln!(
        "packaging test: cargo {cargo_time:.1?}, scripts/package {package_time:.1?}, \
         install+checks {install_time:.1?}, upgrade {upgrade_time:.1?}, purge {purge_time:.1?}, \
         over upstream {upstream_time:.1?}, lintian (waited for at the end) {lintian_wait:.1?}, \
         total {:.1?}",
        started.elapsed()
    );
}
