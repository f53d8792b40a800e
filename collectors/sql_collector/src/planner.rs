//! Planning: which collectors of the config run on one server, from the facts gathered on it
//! (version, role, database, user, schemas, extensions) and the exporter's `--tag`s.
//!
//! The rules are the Go pg_exporter's: version range `[min, max)`, `cluster`
//! only on the main connection, `primary`/`replica` and their aliases, `extension:`,
//! `schema:`, `dbname:`, `username:`, `not:` and free tags.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::CollectorConfig;

/// What kind of server a connection reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// A PostgreSQL server.
    Postgres,
    /// Pgbouncer's admin console (database `pgbouncer`).
    Pgbouncer,
}

/// Facts gathered on a server before each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `server_version_num`, or Pgbouncer's version as `major*10000 + minor*100 + patch`;
    /// 0 when unknown.
    pub version: u32,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The connected database.
    pub dbname: String,
    /// `current_user`.
    pub user: String,
    /// Databases that allow connections and are not templates (for auto-discovery).
    pub databases: Vec<String>,
    /// Those of `databases` a DBA's statement holds (or waits for) a lock on that a new
    /// session would wait behind (`DROP`, `ALTER DATABASE … RENAME` in progress): not
    /// connected to while it lasts.
    pub busy_databases: Vec<String>,
    /// Schemas of the connected database.
    pub schemas: BTreeSet<String>,
    /// Extensions installed in the connected database.
    pub extensions: BTreeSet<String>,
}

impl Facts {
    /// The part of the facts a plan depends on. A change re-plans the server: version, role,
    /// database and, beyond upstream, an extension or schema created or dropped.
    pub fn plan_key(&self) -> (u32, bool, &str, &str, &BTreeSet<String>, &BTreeSet<String>) {
        (
            self.version,
            self.in_recovery,
            &self.dbname,
            &self.user,
            &self.schemas,
            &self.extensions,
        )
    }
}

/// Where a plan is made.
#[derive(Debug, Clone, Copy)]
pub struct PlanTarget<'a> {
    /// The server's kind.
    pub kind: ServerKind,
    /// Whether this is an auto-discovered database (then `cluster` collectors are left out).
    pub forked: bool,
    /// The facts gathered on it.
    pub facts: &'a Facts,
    /// The exporter's `--tag` list.
    pub exporter_tags: &'a [String],
}

/// The collectors of `all` that run on `target`, in the order given (callers pass them
/// sorted by priority).
pub fn plan(all: &[Arc<CollectorConfig>], target: PlanTarget<'_>) -> Vec<Arc<CollectorConfig>> {
    all.iter()
        .filter(|c| compatible(c, target).is_ok())
        .cloned()
        .collect()
}

/// Whether `c` runs on `target`; `Err` says which rule excluded it (for `--explain`).
pub fn compatible(c: &CollectorConfig, target: PlanTarget<'_>) -> Result<(), String> {
    if c.skip {
        return Err("skip is set".into());
    }
    let pgbouncer_branch = c.tags.iter().any(|t| t == "pgbouncer");
    if pgbouncer_branch != (target.kind == ServerKind::Pgbouncer) {
        return Err("server kind does not match the pgbouncer tag".into());
    }
    let v = target.facts.version;
    if v != 0 {
        if c.min_version != 0 && v < c.min_version {
            return Err(format!(
                "server version {v} < min_version {}",
                c.min_version
            ));
        }
        if c.max_version != 0 && v >= c.max_version {
            return Err(format!(
                "server version {v} >= max_version {}",
                c.max_version
            ));
        }
    }
    for tag in &c.tags {
        if !tag_satisfied(tag, target) {
            return Err(format!("tag {tag:?} not satisfied"));
        }
    }
    Ok(())
}

fn tag_satisfied(tag: &str, target: PlanTarget<'_>) -> bool {
    let facts = target.facts;
    match tag {
        "cluster" => !target.forked,
        "primary" | "master" | "leader" => !facts.in_recovery,
        "replica" | "standby" | "slave" => facts.in_recovery,
        "pgbouncer" => true,
        _ => {
            if let Some(ext) = tag.strip_prefix("extension:") {
                facts.extensions.contains(ext)
            } else if let Some(schema) = tag.strip_prefix("schema:") {
                facts.schemas.contains(schema)
            } else if let Some(db) = tag.strip_prefix("dbname:") {
                facts.dbname == db
            } else if let Some(user) = tag.strip_prefix("username:") {
                facts.user == user
            } else if let Some(t) = tag.strip_prefix("not:") {
                !target.exporter_tags.iter().any(|e| e == t)
            } else {
                target.exporter_tags.iter().any(|e| e == tag)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn collectors(yaml: &str) -> Vec<Arc<CollectorConfig>> {
        parse_str(yaml, "test.yml")
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect()
    }

    fn planned(all: &[Arc<CollectorConfig>], target: PlanTarget<'_>) -> Vec<String> {
        plan(all, target).iter().map(|c| c.branch.clone()).collect()
    }

    const SET: &str = r#"
v13:   { query: "SELECT 1 AS v", min_version: 130000, max_version: 150000, metrics: [ { v: { usage: GAUGE } } ] }
v15:   { query: "SELECT 1 AS v", min_version: 150000, metrics: [ { v: { usage: GAUGE } } ] }
lead0: { query: "SELECT 1 AS v", min_version: 090600, max_version: 0140000, metrics: [ { v: { usage: GAUGE } } ] }
prim:  { query: "SELECT 1 AS v", tags: [cluster, primary], metrics: [ { v: { usage: GAUGE } } ] }
lead:  { query: "SELECT 1 AS v", tags: [leader], metrics: [ { v: { usage: GAUGE } } ] }
slave: { query: "SELECT 1 AS v", tags: [slave], metrics: [ { v: { usage: GAUGE } } ] }
ext:   { query: "SELECT 1 AS v", tags: ["extension:pg_stat_statements"], metrics: [ { v: { usage: GAUGE } } ] }
sch:   { query: "SELECT 1 AS v", tags: ["schema:monitor"], metrics: [ { v: { usage: GAUGE } } ] }
db:    { query: "SELECT 1 AS v", tags: ["dbname:app"], metrics: [ { v: { usage: GAUGE } } ] }
user:  { query: "SELECT 1 AS v", tags: ["username:dbuser_monitor"], metrics: [ { v: { usage: GAUGE } } ] }
free:  { query: "SELECT 1 AS v", tags: [mytag], metrics: [ { v: { usage: GAUGE } } ] }
not:   { query: "SELECT 1 AS v", tags: ["not:mytag"], metrics: [ { v: { usage: GAUGE } } ] }
skip:  { query: "SELECT 1 AS v", skip: true, metrics: [ { v: { usage: GAUGE } } ] }
bouncer: { query: "SHOW LISTS", tags: [pgbouncer], min_version: 10800, metrics: [ { items: { usage: GAUGE } } ] }
"#;

    #[test]
    fn versions_roles_and_tags() {
        let all = collectors(SET);
        let mut facts = Facts {
            version: 130005,
            dbname: "app".into(),
            user: "dbuser_monitor".into(),
            extensions: ["pg_stat_statements".to_owned()].into(),
            schemas: ["monitor".to_owned()].into(),
            ..Facts::default()
        };
        let tags = vec!["mytag".to_owned()];
        fn target<'a>(facts: &'a Facts, forked: bool, tags: &'a [String]) -> PlanTarget<'a> {
            PlanTarget {
                kind: ServerKind::Postgres,
                forked,
                facts,
                exporter_tags: tags,
            }
        }
        assert_eq!(
            planned(&all, target(&facts, false, &tags)),
            [
                "v13", "lead0", "prim", "lead", "ext", "sch", "db", "user", "free"
            ]
        );
        // A forked (discovered) database skips cluster collectors.
        assert!(!planned(&all, target(&facts, true, &tags)).contains(&"prim".to_owned()));
        // A replica of another version, another database, no extension.
        facts.version = 150002;
        facts.in_recovery = true;
        facts.dbname = "other".into();
        facts.extensions.clear();
        assert_eq!(
            planned(&all, target(&facts, false, &tags)),
            ["v15", "slave", "sch", "user", "free"]
        );
        // Unknown version: no gate applies.
        facts.version = 0;
        assert!(planned(&all, target(&facts, false, &tags)).contains(&"v13".to_owned()));
        // Without --tag mytag, `not:mytag` applies instead of `mytag`.
        let none: Vec<String> = Vec::new();
        let p = plan(
            &all,
            PlanTarget {
                kind: ServerKind::Postgres,
                forked: false,
                facts: &facts,
                exporter_tags: &none,
            },
        );
        let names: Vec<&str> = p.iter().map(|c| c.branch.as_str()).collect();
        assert!(names.contains(&"not") && !names.contains(&"free"));
    }

    #[test]
    fn pgbouncer_branches_only_on_pgbouncer() {
        let all = collectors(SET);
        let facts = Facts {
            version: 11800,
            dbname: "pgbouncer".into(),
            ..Facts::default()
        };
        let target = PlanTarget {
            kind: ServerKind::Pgbouncer,
            forked: false,
            facts: &facts,
            exporter_tags: &[],
        };
        assert_eq!(planned(&all, target), ["bouncer"]);
        let err = compatible(&all[0], target).unwrap_err();
        assert!(err.contains("pgbouncer"), "{err}");
    }

    #[test]
    fn leading_zero_versions_are_decimal() {
        let all = collectors(SET);
        let lead0 = all.iter().find(|c| c.branch == "lead0").unwrap();
        assert_eq!((lead0.min_version, lead0.max_version), (90600, 140000));
    }
}
