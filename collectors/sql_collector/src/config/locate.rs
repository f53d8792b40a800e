//! Best-effort line numbers for validation errors.
//!
//! serde_norway's `Value` carries no positions, so the branch key and the fields within a
//! branch are found again by scanning the text's indentation structure. Block-style YAML (what
//! config files use) is located precisely; for flow style (`{usage: GAUGE}`) the line of the
//! enclosing key is returned. The result is never worse than the branch key's line.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

/// One step of a field path within a branch.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seg<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A list index (0-based).
    Index(usize),
}

/// Renders a path as `metrics[3].xact_commit.usage`.
pub(super) fn render(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

#[derive(Debug)]
struct LineInfo<'a> {
    /// Leading spaces.
    indent: usize,
    /// Column where the line's body starts, after any `- ` list markers.
    key_col: usize,
    /// The line starts a list item.
    dash: bool,
    /// Neither blank nor a comment.
    content: bool,
    /// The text from `key_col` on.
    body: &'a str,
}

impl<'a> LineInfo<'a> {
    fn new(line: &'a str) -> Self {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        let mut key_col = indent;
        let mut dash = false;
        while rest == "-" || rest.starts_with("- ") {
            dash = true;
            let after = rest[1..].trim_start_matches(' ');
            key_col += rest.len() - after.len();
            rest = after;
        }
        let content = dash || !(rest.trim().is_empty() || rest.starts_with('#'));
        LineInfo {
            indent,
            key_col,
            dash,
            content,
            body: rest,
        }
    }

    /// The mapping key this line starts with, unquoted.
    fn key(&self) -> Option<&'a str> {
        body_key(self.body)
    }
}

/// The key of a `key: value` line body (plain, single- or double-quoted key).
fn body_key(body: &str) -> Option<&str> {
    let (key, after) = if let Some(q) = body.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = body[1..].find(q)? + 1;
        (&body[1..end], &body[end + 1..])
    } else {
        let bytes = body.as_bytes();
        let idx = (0..bytes.len()).find(|&i| {
            bytes[i] == b':' && bytes.get(i + 1).is_none_or(|b| *b == b' ' || *b == b'\t')
        })?;
        let key = body[..idx].trim_end();
        if key.is_empty() || key.starts_with(['{', '[', '#']) {
            return None;
        }
        (key, &body[idx..])
    };
    after.trim_start().starts_with(':').then_some(key)
}

/// Finds lines of branches and of fields within them.
#[derive(Debug)]
pub(super) struct Locator<'a> {
    lines: Vec<LineInfo<'a>>,
    branches: HashMap<&'a str, usize>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let lines: Vec<_> = text.lines().map(LineInfo::new).collect();
        let mut branches = HashMap::new();
        for (i, l) in lines.iter().enumerate() {
            if l.content
                && l.indent == 0
                && !l.dash
                && let Some(k) = l.key()
            {
                branches.entry(k).or_insert(i);
            }
        }
        Locator { lines, branches }
    }

    /// 1-based line of the first content line (1 for an empty text).
    pub(super) fn first_content_line(&self) -> usize {
        self.lines.iter().position(|l| l.content).unwrap_or(0) + 1
    }

    /// 1-based line of a branch key at column 0, 0 if not found.
    pub(super) fn branch_line(&self, branch: &str) -> usize {
        self.branches.get(branch).map_or(0, |i| i + 1)
    }

    /// 1-based line of the deepest element of `path` that can be found within the branch
    /// (the branch key's line if none), 0 if the branch key itself is not found.
    pub(super) fn locate(&self, branch: &str, path: &[Seg<'_>]) -> usize {
        let Some(&start) = self.branches.get(branch) else {
            return 0;
        };
        let mut cur = start;
        let mut range = self.block_after(start);
        for seg in path {
            let found = match *seg {
                Seg::Key(k) => self
                    .find_key(range.clone(), k)
                    .map(|j| (j, self.block_after(j))),
                Seg::Index(n) => self.nth_item(range.clone(), n),
            };
            match found {
                Some((j, r)) => {
                    cur = j;
                    range = r;
                }
                None => break,
            }
        }
        cur + 1
    }

    /// 1-based line and column of the second occurrence of `key` in the block mapping that
    /// starts at 1-based `line` and `column` (where the parser reports duplicate keys).
    pub(super) fn duplicate_key(
        &self,
        line: usize,
        column: usize,
        key: &str,
    ) -> Option<(usize, usize)> {
        let (start, col) = (line.checked_sub(1)?, column.checked_sub(1)?);
        let mut seen = false;
        for j in start..self.lines.len() {
            let l = &self.lines[j];
            if !l.content {
                continue;
            }
            if j > start && (l.indent < col || (l.indent == col && l.dash && l.key_col != col)) {
                break;
            }
            if l.key_col == col && l.key() == Some(key) {
                if seen {
                    return Some((j + 1, column));
                }
                seen = true;
            }
        }
        None
    }

    /// The lines nested under the node starting at line `i`.
    fn block_after(&self, i: usize) -> Range<usize> {
        let col = self.lines[i].key_col;
        let end = (i + 1..self.lines.len())
            .find(|&j| {
                let l = &self.lines[j];
                l.content && (l.indent < col || (l.indent == col && !l.dash))
            })
            .unwrap_or(self.lines.len());
        i + 1..end
    }

    fn first_content(&self, range: Range<usize>) -> Option<usize> {
        range.into_iter().find(|&j| self.lines[j].content)
    }

    /// A key at the first nesting level of `range`.
    fn find_key(&self, range: Range<usize>, key: &str) -> Option<usize> {
        let col = self.lines[self.first_content(range.clone())?].key_col;
        range.into_iter().find(|&j| {
            let l = &self.lines[j];
            l.content && l.key_col == col && l.key() == Some(key)
        })
    }

    /// The `n`-th list item in `range`: its first line and its lines (including the first).
    fn nth_item(&self, range: Range<usize>, n: usize) -> Option<(usize, Range<usize>)> {
        let first = self.first_content(range.clone())?;
        let indent = self.lines[first].indent;
        if !self.lines[first].dash {
            return None;
        }
        let items: Vec<usize> = range
            .clone()
            .filter(|&j| {
                let l = &self.lines[j];
                l.content && l.dash && l.indent == indent
            })
            .collect();
        let start = *items.get(n)?;
        let end = items.get(n + 1).copied().unwrap_or(range.end);
        Some((start, start..end))
    }
}

#[cfg(test)]
mod tests {
    use super::Seg::{Index, Key};
    use super::*;

    const TEXT: &str = "\
# comment
pg_a:
  name: pg_a
  query: |
    SELECT 1 AS usage:
  ttl: 10
  metrics:
    - datname:
        usage: LABEL
    - value: { usage: GAUGE }
    - other:
        usage: COUNTER
        rename: o
  predicate_queries:
  - name: p1
    predicate_query: SELECT true
  - name: p2
    predicate_query: SELECT false
    ttl: 5

'pg_b':
  query: SELECT 2
";

    #[test]
    fn renders_paths() {
        assert_eq!(
            render(&[Key("metrics"), Index(3), Key("xact_commit"), Key("usage")]),
            "metrics[3].xact_commit.usage"
        );
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn finds_branches_and_fields() {
        let loc = Locator::new(TEXT);
        assert_eq!(loc.branch_line("pg_a"), 2);
        assert_eq!(loc.branch_line("pg_b"), 21);
        assert_eq!(loc.branch_line("nope"), 0);
        assert_eq!(loc.first_content_line(), 2);
        assert_eq!(loc.locate("pg_a", &[]), 2);
        assert_eq!(loc.locate("pg_a", &[Key("ttl")]), 6);
        assert_eq!(loc.locate("pg_a", &[Key("metrics")]), 7);
        let usage = |i, k| loc.locate("pg_a", &[Key("metrics"), Index(i), Key(k), Key("usage")]);
        assert_eq!(usage(0, "datname"), 9);
        // flow style: the line of the column key
        assert_eq!(usage(1, "value"), 10);
        assert_eq!(usage(2, "other"), 12);
        assert_eq!(
            loc.locate(
                "pg_a",
                &[Key("metrics"), Index(2), Key("other"), Key("rename")]
            ),
            13
        );
        // missing key: the deepest line found
        assert_eq!(
            loc.locate(
                "pg_a",
                &[Key("metrics"), Index(2), Key("other"), Key("scale")]
            ),
            11
        );
        assert_eq!(loc.locate("pg_a", &[Key("metrics"), Index(7)]), 7);
        let pq = |i, k| loc.locate("pg_a", &[Key("predicate_queries"), Index(i), Key(k)]);
        assert_eq!(pq(0, "predicate_query"), 16);
        assert_eq!(pq(1, "name"), 17);
        assert_eq!(pq(1, "ttl"), 19);
        assert_eq!(loc.locate("pg_b", &[Key("query")]), 22);
        assert_eq!(loc.locate("pg_a", &[Key("nope")]), 2);
    }

    #[test]
    fn finds_duplicate_keys() {
        let text = "a: 1\nb:\n  x: 1\n  y: 2\n  x: 3\na: 2\n";
        let loc = Locator::new(text);
        assert_eq!(loc.duplicate_key(1, 1, "a"), Some((6, 1)));
        assert_eq!(loc.duplicate_key(3, 3, "x"), Some((5, 3)));
        assert_eq!(loc.duplicate_key(3, 3, "y"), None);
        assert_eq!(loc.duplicate_key(0, 0, "a"), None);
    }

    #[test]
    fn parses_keys() {
        assert_eq!(body_key("a: b"), Some("a"));
        assert_eq!(body_key("a:"), Some("a"));
        assert_eq!(body_key("\"a b\": 1"), Some("a b"));
        assert_eq!(body_key("'x' :"), Some("x"));
        assert_eq!(body_key("a:b"), None);
        assert_eq!(body_key("{a: 1}"), None);
        assert_eq!(body_key("SELECT 1"), None);
    }
}
