//! The metric-reference check: every metric a dashboard query or rule expression selects must
//! be recorded by our rules, emitted by our exporters (as seen in VictoriaMetrics), or on a
//! short reviewed allow-list with a reason.

use std::collections::{BTreeMap, BTreeSet};

use crate::promql::{PromqlError, metric_names};

/// One expression to check, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    /// Human-readable origin: `pgsql-overview: panel "TPS" target A`, `rules pgsql.yml: alert X`.
    pub origin: String,
    /// PromQL, Grafana variables already substituted.
    pub expr: String,
}

/// A problem the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A referenced metric nobody produces.
    Missing {
        /// Where it is referenced.
        origin: String,
        /// The metric name.
        metric: String,
    },
    /// The expression could not be analysed.
    Unreadable {
        /// Where.
        origin: String,
        /// Why.
        error: PromqlError,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Missing { origin, metric } => {
                write!(
                    f,
                    "{origin}: metric {metric} is neither recorded by our rules nor emitted by our exporters"
                )
            }
            Finding::Unreadable { origin, error } => write!(f, "{origin}: {error}"),
        }
    }
}

/// What is known to exist.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Names recorded by our recording rules.
    pub recorded: BTreeSet<String>,
    /// Names our exporters emitted against the harness cluster (scraped through
    /// VictoriaMetrics).
    pub emitted: BTreeSet<String>,
    /// Names the harness cannot produce, each with the reason it is accepted anyway.
    pub allowed: BTreeMap<String, String>,
}

impl Known {
    /// Whether `metric` is recorded, emitted or allowed.
    pub fn contains(&self, metric: &str) -> bool {
        self.recorded.contains(metric)
            || self.emitted.contains(metric)
            || self.allowed.contains_key(metric)
    }
}

/// Checks every expression against `known`; returns the findings (empty when all is well)
/// and the set of metric names referenced.
pub fn check(exprs: &[Expression], known: &Known) -> (Vec<Finding>, BTreeSet<String>) {
    let mut findings = Vec::new();
    let mut referenced = BTreeSet::new();
    for e in exprs {
        match metric_names(&e.expr) {
            Ok(names) => {
                for metric in names {
                    if !known.contains(&metric) {
                        findings.push(Finding::Missing {
                            origin: e.origin.clone(),
                            metric: metric.clone(),
                        });
                    }
                    referenced.insert(metric);
                }
            }
            Err(error) => findings.push(Finding::Unreadable {
                origin: e.origin.clone(),
                error,
            }),
        }
    }
    (findings, referenced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_metrics_are_reported_with_their_origin() {
        let known = Known {
            recorded: ["pg:ins:x".to_owned()].into(),
            emitted: ["pg_up".to_owned()].into(),
            allowed: [("ALERTS".to_owned(), "vmalert".to_owned())].into(),
        };
        let exprs = [
            Expression {
                origin: "a".into(),
                expr: "pg_up + pg:ins:x + count(ALERTS)".into(),
            },
            Expression {
                origin: "b".into(),
                expr: "rate(pg_gone[1m])".into(),
            },
            Expression {
                origin: "c".into(),
                expr: "sum(".into(),
            },
        ];
        let (findings, referenced) = check(&exprs, &known);
        assert_eq!(
            findings,
            [
                Finding::Missing {
                    origin: "b".into(),
                    metric: "pg_gone".into()
                },
                Finding::Unreadable {
                    origin: "c".into(),
                    error: PromqlError::Unbalanced
                }
            ]
        );
        assert_eq!(referenced.len(), 4);
    }
}
