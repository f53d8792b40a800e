//! Lexer-level PromQL analysis: the metric names an expression selects
//! ([`metric_names`]) and the mutation the rule tests use ([`invert_first_comparison`]).
//!
//! Syntax itself is checked by promtool (see [`crate::promtool`]); this module only needs to
//! tell metric names apart from functions, keywords, label names and grouping labels, which
//! a token stream with a little context does exactly.

use std::collections::BTreeSet;

use thiserror::Error;

/// Why an expression could not be analysed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PromqlError {
    /// A string literal is not closed.
    #[error("unterminated string starting at byte {0}")]
    UnterminatedString(usize),
    /// A character no PromQL token starts with.
    #[error("unexpected character {ch:?} at byte {at}")]
    UnexpectedChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// `{__name__=~"..."}` and the like: the metric cannot be known statically.
    #[error("metric name selected by a regular expression or negation ({0}): name it instead")]
    DynamicName(String),
    /// Unbalanced `(`, `{` or `[`.
    #[error("unbalanced brackets")]
    Unbalanced,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Number,
    Op(String),
    Open(char),
    Close(char),
    Comma,
}

/// Keywords and operators that look like identifiers but never name a metric.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "Inf",
    "NaN",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn lex(expr: &str) -> Result<Vec<Tok>, PromqlError> {
    let chars: Vec<(usize, char)> = expr.char_indices().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i].1 != '\n' {
                    i += 1;
                }
            }
            '"' | '\'' | '`' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                loop {
                    let Some(&(_, ch)) = chars.get(i) else {
                        return Err(PromqlError::UnterminatedString(at));
                    };
                    i += 1;
                    if ch == quote {
                        break;
                    }
                    if ch == '\\' && quote != '`' {
                        if let Some(&(_, next)) = chars.get(i) {
                            value.push(next);
                            i += 1;
                        }
                        continue;
                    }
                    value.push(ch);
                }
                toks.push(Tok::Str(value));
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|(_, n)| n.is_ascii_digit())) =>
            {
                // Numbers, hex, exponents and durations (5m, 1h30m): one token.
                let mut prev = c;
                i += 1;
                while let Some(&(_, ch)) = chars.get(i) {
                    let exponent_sign = (ch == '+' || ch == '-') && (prev == 'e' || prev == 'E');
                    if ch.is_ascii_alphanumeric() || ch == '.' || ch == '_' || exponent_sign {
                        prev = ch;
                        i += 1;
                    } else {
                        break;
                    }
                }
                toks.push(Tok::Number);
            }
            c if is_ident_start(c) => {
                let mut name = String::new();
                while let Some(&(_, ch)) = chars.get(i) {
                    if is_ident_char(ch) {
                        name.push(ch);
                        i += 1;
                    } else {
                        break;
                    }
                }
                toks.push(Tok::Ident(name));
            }
            '(' | '{' | '[' => {
                toks.push(Tok::Open(c));
                i += 1;
            }
            ')' | '}' | ']' => {
                toks.push(Tok::Close(c));
                i += 1;
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1;
            }
            '=' | '!' | '<' | '>' | '~' | '+' | '-' | '*' | '/' | '%' | '^' | '@' | ':' => {
                let next = chars.get(i + 1).map(|(_, n)| *n);
                let two = matches!(
                    (c, next),
                    ('=' | '!', Some('=' | '~')) | ('<' | '>', Some('='))
                );
                let len = if two { 2 } else { 1 };
                toks.push(Tok::Op(
                    chars[i..i + len].iter().map(|(_, ch)| ch).collect(),
                ));
                i += len;
            }
            _ => return Err(PromqlError::UnexpectedChar { ch: c, at }),
        }
    }
    Ok(toks)
}

/// The metric names `expr` selects: every bare vector selector (`pg_up`, `pg:ins:lag_bytes`)
/// and every `{__name__="x"}` matcher. Function names, keywords, label names inside `{}` and
/// `by (...)`-style lists are not metric names.
///
/// ```
/// let names = dashboards::promql::metric_names(
///     r#"sum by (cls) (rate(pg_db_xact_commit{datname!~"template.*"}[1m])) / on (cls) group_left count(pg_up)"#,
/// ).unwrap();
/// assert_eq!(names.into_iter().collect::<Vec<_>>(), ["pg_db_xact_commit", "pg_up"]);
/// ```
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, PromqlError> {
    let toks = lex(expr)?;
    let mut names = BTreeSet::new();
    let mut stack: Vec<char> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Open('{') => {
                // Label matchers: only `__name__` matters.
                let start = i;
                let mut depth = 0usize;
                loop {
                    match toks.get(i) {
                        Some(Tok::Open('{')) => depth += 1,
                        Some(Tok::Close('}')) => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Some(_) => {}
                        None => return Err(PromqlError::Unbalanced),
                    }
                    i += 1;
                }
                let inner = &toks[start + 1..i];
                for (j, tok) in inner.iter().enumerate() {
                    if *tok == Tok::Ident("__name__".to_owned()) {
                        match (inner.get(j + 1), inner.get(j + 2)) {
                            (Some(Tok::Op(op)), Some(Tok::Str(value))) if op == "=" => {
                                names.insert(value.clone());
                            }
                            (Some(Tok::Op(op)), Some(Tok::Str(value))) => {
                                return Err(PromqlError::DynamicName(format!(
                                    "__name__{op}{value:?}"
                                )));
                            }
                            _ => return Err(PromqlError::Unbalanced),
                        }
                    }
                }
                i += 1;
            }
            Tok::Ident(word) => {
                let next = toks.get(i + 1);
                if LABEL_LIST_KEYWORDS.contains(&word.as_str()) && next == Some(&Tok::Open('(')) {
                    // Skip the label list.
                    i += 2;
                    while i < toks.len() && toks[i] != Tok::Close(')') {
                        i += 1;
                    }
                    if i == toks.len() {
                        return Err(PromqlError::Unbalanced);
                    }
                } else if next != Some(&Tok::Open('('))
                    && !KEYWORDS.contains(&word.as_str())
                    // `sum without (a) (x)`: an aggregation with its grouping first.
                    && !matches!(next, Some(Tok::Ident(n)) if n == "by" || n == "without")
                {
                    names.insert(word.clone());
                }
                i += 1;
            }
            Tok::Open('[') => {
                // Range or subquery: durations only.
                while i < toks.len() && toks[i] != Tok::Close(']') {
                    i += 1;
                }
                if i == toks.len() {
                    return Err(PromqlError::Unbalanced);
                }
                i += 1;
            }
            Tok::Open(c) => {
                stack.push(*c);
                i += 1;
            }
            Tok::Close(_) => {
                stack.pop().ok_or(PromqlError::Unbalanced)?;
                i += 1;
            }
            Tok::Str(_) | Tok::Number | Tok::Op(_) | Tok::Comma => i += 1,
        }
    }
    if stack.is_empty() {
        Ok(names)
    } else {
        Err(PromqlError::Unbalanced)
    }
}

/// `expr` with its first comparison operator outside label matchers and strings inverted
/// (`>` ↔ `<=`, `<` ↔ `>=`, `==` ↔ `!=`), or `None` when it has none. The rule tests use it to
/// show that every alert's unit tests notice a flipped threshold.
///
/// ```
/// assert_eq!(
///     dashboards::promql::invert_first_comparison(r#"pg_up{ins!="a"} < 1"#).as_deref(),
///     Some(r#"pg_up{ins!="a"} >= 1"#)
/// );
/// ```
pub fn invert_first_comparison(expr: &str) -> Option<String> {
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut braces = 0usize;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    if bytes[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'{' => braces += 1,
            b'}' => braces = braces.saturating_sub(1),
            b'>' | b'<' | b'=' | b'!' if braces == 0 => {
                let next = bytes.get(i + 1).copied();
                let (len, replacement) = match (c, next) {
                    (b'>', Some(b'=')) => (2, "<"),
                    (b'<', Some(b'=')) => (2, ">"),
                    (b'=', Some(b'=')) => (2, "!="),
                    (b'!', Some(b'=')) => (2, "=="),
                    (b'>', _) => (1, "<="),
                    (b'<', _) => (1, ">="),
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                return Some(format!("{}{replacement}{}", &expr[..i], &expr[i + len..]));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).unwrap().into_iter().collect()
    }

    #[test]
    fn selectors_functions_and_keywords() {
        assert_eq!(names("pg_up"), ["pg_up"]);
        assert_eq!(
            names("sum without (datname) (rate(pg_db_xact_commit[1m] offset 5m))"),
            ["pg_db_xact_commit"]
        );
        assert_eq!(
            names("max(pg:ins:lag_bytes) by (cls, ins) > bool 1e-3"),
            ["pg:ins:lag_bytes"]
        );
        assert_eq!(
            names("a / on (ins) group_left (cls, ip) b unless ignoring(x) c or d and e"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(
            names(r#"label_replace(up{job=~"pg.*"}, "x", "$1", "instance", "(.*):.*")"#),
            ["up"]
        );
        assert_eq!(
            names(r#"{__name__="pg_up", ins="a"} + max_over_time(b[1h:5m]) @ start()"#),
            ["b", "pg_up"]
        );
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) * 0x10 + 1.5e+3"),
            ["x_bucket"]
        );
        assert_eq!(names("time() - 60 * 60 * 24 * 7"), Vec::<String>::new());
        assert_eq!(names("vector(1) # comment pg_up"), Vec::<String>::new());
        assert_eq!(names("inf > nan"), Vec::<String>::new());
    }

    #[test]
    fn dynamic_names_and_broken_input_are_errors() {
        assert!(matches!(
            metric_names(r#"{__name__=~"pg_.*"}"#),
            Err(PromqlError::DynamicName(_))
        ));
        assert_eq!(metric_names("sum(pg_up"), Err(PromqlError::Unbalanced));
        assert_eq!(
            metric_names(r#"pg_up{ins="a}"#),
            Err(PromqlError::UnterminatedString(10))
        );
        assert!(matches!(
            metric_names("pg_up ? 1"),
            Err(PromqlError::UnexpectedChar { ch: '?', .. })
        ));
    }

    #[test]
    fn inversion_skips_matchers_and_strings() {
        assert_eq!(
            invert_first_comparison(r#"x{a!="1",b=~">"} > 0.8"#).unwrap(),
            r#"x{a!="1",b=~">"} <= 0.8"#
        );
        assert_eq!(invert_first_comparison("a >= 1").unwrap(), "a < 1");
        assert_eq!(invert_first_comparison("a <= 1").unwrap(), "a > 1");
        assert_eq!(invert_first_comparison("a == 0").unwrap(), "a != 0");
        assert_eq!(invert_first_comparison("a != 0").unwrap(), "a == 0");
        assert_eq!(
            invert_first_comparison("a < 1 or b > 2").unwrap(),
            "a >= 1 or b > 2"
        );
        assert_eq!(invert_first_comparison("rate(a[5m])"), None);
    }
}
