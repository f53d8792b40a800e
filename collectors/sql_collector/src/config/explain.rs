//! Explain text and YAML re-serialization of collectors.

use std::fmt::Write as _;
use std::time::Duration;

use serde_norway::{Mapping, Number, Value};

use super::{CollectorConfig, CollectorSet, Column, DEFAULT_TIMEOUT, Usage};

/// The explain text of one collector: a `#`-commented header followed by its YAML.
pub(super) fn explain(c: &CollectorConfig) -> String {
    let mut out = String::new();
    let synopsis = if c.name == c.branch {
        format!("{}_*", c.name)
    } else {
        format!("{}.{}_*", c.name, c.branch)
    };
    let version = |v: u32, none: &str| {
        if v == 0 {
            none.to_owned()
        } else {
            v.to_string()
        }
    };
    let timeout = c.timeout.map_or_else(|| "none".to_owned(), go_duration);
    let _ = write!(
        out,
        "##\n\
         # SYNOPSIS\n\
         #       {synopsis}\n\
         #\n\
         # DESCRIPTION\n\
         #       {desc}\n\
         #\n\
         # OPTIONS\n\
         #       Tags       [{tags}]\n\
         #       TTL        {ttl}\n\
         #       Priority   {priority}\n\
         #       Timeout    {timeout}\n\
         #       Fatal      {fatal}\n\
         #       Version    {min} ~ {max}\n\
         #       Source     {source}\n\
         #\n\
         # METRICS\n",
        desc = comment_text(&c.desc),
        tags = c.tags.join(", "),
        ttl = c.ttl.as_secs_f64(),
        priority = c.priority,
        fatal = c.fatal,
        min = version(c.min_version, "lower"),
        max = version(c.max_version, "higher"),
        source = c.source,
    );
    for col in &c.columns {
        let rename = col
            .rename
            .as_deref()
            .map(|r| format!(" -> {r}"))
            .unwrap_or_default();
        let _ = writeln!(out, "#       {}{rename} ({})", col.column, col.usage);
        let _ = writeln!(out, "#           {}", comment_text(&col.description));
        if col.usage == Usage::Histogram {
            let _ = writeln!(out, "#           buckets [{}]", join_floats(&col.buckets));
        }
    }
    out.push_str("#\n");
    out.push_str(&branch_yaml(c));
    out
}

/// Multi-line text continued on comment lines; `N/A` when empty.
fn comment_text(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "N/A".to_owned();
    }
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n#       ")
}

fn join_floats(v: &[f64]) -> String {
    v.iter().map(f64::to_string).collect::<Vec<_>>().join(", ")
}

/// Go's `time.Duration` formatting (`100ms`, `1.5s`, `2m0s`), as upstream prints timeouts.
pub(super) fn go_duration(d: Duration) -> String {
    fn frac(n: u128, unit: u128, digits: usize) -> String {
        let (int, rem) = (n / unit, n % unit);
        if rem == 0 {
            int.to_string()
        } else {
            let f = format!("{rem:0digits$}");
            format!("{int}.{}", f.trim_end_matches('0'))
        }
    }
    let n = d.as_nanos();
    match n {
        0 => "0s".to_owned(),
        1..1_000 => format!("{n}ns"),
        1_000..1_000_000 => format!("{}µs", frac(n, 1_000, 3)),
        1_000_000..1_000_000_000 => format!("{}ms", frac(n, 1_000_000, 6)),
        _ => {
            let secs = n / 1_000_000_000;
            let (h, m) = (secs / 3600, secs % 3600 / 60);
            let s = frac(n % 60_000_000_000, 1_000_000_000, 9);
            if h > 0 {
                format!("{h}h{m}m{s}s")
            } else if m > 0 {
                format!("{m}m{s}s")
            } else {
                format!("{s}s")
            }
        }
    }
}

/// A float as a YAML number, written as an integer when it is one.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        Value::Number(Number::from(v as i64))
    } else {
        Value::Number(Number::from(v))
    }
}

fn seconds(d: Duration) -> Value {
    number(d.as_secs_f64())
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn column_value(col: &Column) -> Value {
    let mut m = Mapping::new();
    if col.column != col.key {
        m.insert(string("name"), string(&col.column));
    }
    m.insert(string("usage"), string(col.usage.as_str()));
    if let Some(r) = &col.rename {
        m.insert(string("rename"), string(r));
    }
    if let Some(s) = col.scale {
        m.insert(string("scale"), number(s));
    }
    if let Some(d) = col.default {
        m.insert(string("default"), number(d));
    }
    if !col.buckets.is_empty() {
        let b = col.buckets.iter().map(|b| number(*b)).collect();
        m.insert(string("bucket"), Value::Sequence(b));
    }
    if !col.description.is_empty() {
        m.insert(string("description"), string(&col.description));
    }
    let mut entry = Mapping::new();
    entry.insert(string(&col.key), Value::Mapping(m));
    Value::Mapping(entry)
}

/// The branch definition (the value under the branch key), with effective values.
fn branch_value(c: &CollectorConfig) -> Value {
    let mut m = Mapping::new();
    m.insert(string("name"), string(&c.name));
    if !c.desc.is_empty() {
        m.insert(string("desc"), string(&c.desc));
    }
    m.insert(string("query"), string(&c.query));
    m.insert(string("ttl"), seconds(c.ttl));
    // Negative timeout means "none" upstream; 0 would read back as the default.
    let timeout = c.timeout.map_or(Value::Number((-1).into()), seconds);
    if c.timeout != Some(DEFAULT_TIMEOUT) {
        m.insert(string("timeout"), timeout);
    }
    if c.priority != 0 {
        m.insert(string("priority"), Value::Number(c.priority.into()));
    }
    if c.min_version != 0 {
        m.insert(string("min_version"), Value::Number(c.min_version.into()));
    }
    if c.max_version != 0 {
        m.insert(string("max_version"), Value::Number(c.max_version.into()));
    }
    if c.fatal {
        m.insert(string("fatal"), Value::Bool(true));
    }
    if c.skip {
        m.insert(string("skip"), Value::Bool(true));
    }
    if !c.tags.is_empty() {
        let tags = c.tags.iter().map(|t| string(t)).collect();
        m.insert(string("tags"), Value::Sequence(tags));
    }
    if !c.predicate_queries.is_empty() {
        let list = c
            .predicate_queries
            .iter()
            .map(|p| {
                let mut pm = Mapping::new();
                if !p.name.is_empty() {
                    pm.insert(string("name"), string(&p.name));
                }
                pm.insert(string("predicate_query"), string(&p.query));
                if !p.ttl.is_zero() {
                    pm.insert(string("ttl"), seconds(p.ttl));
                }
                Value::Mapping(pm)
            })
            .collect();
        m.insert(string("predicate_queries"), Value::Sequence(list));
    }
    let metrics = c.columns.iter().map(column_value).collect();
    m.insert(string("metrics"), Value::Sequence(metrics));
    Value::Mapping(m)
}

/// `<branch>:` followed by the branch definition, as YAML text.
pub(super) fn branch_yaml(c: &CollectorConfig) -> String {
    let mut doc = Mapping::new();
    doc.insert(string(&c.branch), branch_value(c));
    serde_norway::to_string(&doc)
        .unwrap_or_else(|e| format!("# failed to serialize branch {}: {e}\n", c.branch))
}

/// The whole set as one YAML document, branches in set order, separated by blank lines.
pub(super) fn merged_yaml(set: &CollectorSet) -> String {
    let mut out = format!(
        "# {} collector(s) merged from {}\n",
        set.collectors.len(),
        set.source.display()
    );
    for c in &set.collectors {
        out.push('\n');
        let _ = writeln!(out, "# source: {}", c.source);
        out.push_str(&branch_yaml(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_like_go() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(100)), "100ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(1500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_nanos(15)), "15ns");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(2500)), "2.5s");
        assert_eq!(go_duration(ms(120_000)), "2m0s");
        assert_eq!(go_duration(ms(3_723_500)), "1h2m3.5s");
    }

    #[test]
    fn numbers_are_written_compactly() {
        assert_eq!(serde_norway::to_string(&number(10.0)).unwrap(), "10\n");
        assert_eq!(serde_norway::to_string(&number(0.1)).unwrap(), "0.1\n");
        let tiny: f64 =
            serde_norway::from_str(&serde_norway::to_string(&number(1e-6)).unwrap()).unwrap();
        assert_eq!(tiny, 1e-6);
    }
}
