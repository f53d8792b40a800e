//! YAML as the agents read their config files: `serde_norway`, guarded against input that
//! costs the parser quadratic time, with every error placed at a line and column.
//!
//! ```
//! use agent_kit::yaml;
//!
//! let value: serde_norway::Value = yaml::from_str("a: [1, 2]\n").unwrap();
//! assert_eq!(value["a"][1].as_u64(), Some(2));
//!
//! let e = yaml::from_str::<serde_norway::Value>("a: 1\nb: [\n").unwrap_err();
//! assert_eq!(e.line, 3);
//! assert!(yaml::from_str::<serde_norway::Value>(&"[".repeat(5000)).is_err());
//! ```

use serde::de::DeserializeOwned;

/// How deep `[` and `{` may nest, counted naively (in scalars and comments too): the YAML
/// parser's time grows with the square of the depth (a 200 KB line of brackets takes a
/// minute), while it refuses anything nested deeper than 128 levels anyway. No real config
/// comes close.
pub const MAX_FLOW_DEPTH: usize = 1000;

/// A YAML error with its place: 1-based line and column (0 when no place is known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", place(*line, *column))]
pub struct YamlError {
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column, 0 if unknown.
    pub column: usize,
    /// The parser's message without its place.
    pub message: String,
}

fn place(line: usize, column: usize) -> String {
    match (line, column) {
        (0, _) => String::new(),
        (l, 0) => format!(" at line {l}"),
        (l, c) => format!(" at line {l} column {c}"),
    }
}

/// Parses `text` as `T`: refused before parsing when brackets nest deeper than
/// [`MAX_FLOW_DEPTH`], and every error placed by [`locate`].
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    check_flow_depth(text)?;
    serde_norway::from_str(text).map_err(|e| locate(text, &e))
}

/// Refuses a text whose brackets nest deeper than [`MAX_FLOW_DEPTH`], at the bracket that
/// passes it, before the YAML parser spends its quadratic time on it.
pub fn check_flow_depth(text: &str) -> Result<(), YamlError> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        for (column, c) in line.chars().enumerate() {
            match c {
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => continue,
            }
            if depth > MAX_FLOW_DEPTH {
                return Err(YamlError {
                    line: i + 1,
                    column: column + 1,
                    message: format!(
                        "flow collections ([ and {{) nested deeper than {MAX_FLOW_DEPTH} levels"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The error `e` of parsing `text`, placed: the parser's own line and column (taken out of
/// its message), the byte position it gives instead for a character it refuses, and for a
/// second document, which it does not place, the line where that document starts.
pub fn locate(text: &str, e: &serde_norway::Error) -> YamlError {
    let (mut line, mut column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    let mut message = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    if let Some(stripped) = message.strip_suffix(&suffix) {
        message = stripped.to_owned();
    }
    const AT_POSITION: &str = " at position ";
    if let Some(i) = message.rfind(AT_POSITION)
        && let Ok(offset) = message[i + AT_POSITION.len()..].parse::<usize>()
    {
        let offset = (0..=offset.min(text.len()))
            .rev()
            .find(|&k| text.is_char_boundary(k))
            .unwrap_or(0);
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        line = before.matches('\n').count() + 1;
        column = before[line_start..].chars().count() + 1;
        message.truncate(i);
    }
    if line == 0 && message.contains("more than one document") {
        line = second_document_line(text);
    }
    YamlError {
        line,
        column,
        message,
    }
}

/// Whether the parser finds more than one document in `text`.
fn is_multi_document(text: &str) -> bool {
    serde_norway::from_str::<serde_norway::Value>(text)
        .is_err_and(|e| e.to_string().contains("more than one document"))
}

/// 1-based line where the second YAML document of `text` starts: the first line such that
/// the text up to it holds two documents (found by bisection; only on this error path). 0 if
/// not found.
fn second_document_line(text: &str) -> usize {
    let ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain((!text.ends_with('\n')).then_some(text.len()))
        .collect();
    // Invariant: the first `lo` lines hold one document, the first `hi` lines two.
    let (mut lo, mut hi) = (0, ends.len());
    if hi == 0 || !is_multi_document(text) {
        return 0;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if is_multi_document(&text[..ends[mid - 1]]) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    type V = serde_norway::Value;

    #[test]
    fn deep_brackets_are_refused_before_parsing_and_fast() {
        let text = format!("a: {}", "[".repeat(100_000));
        let t = std::time::Instant::now();
        let e = from_str::<V>(&text).unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!((e.line, e.column), (1, 4 + MAX_FLOW_DEPTH));
        assert!(
            e.to_string()
                .contains("nested deeper than 1000 levels at line 1")
        );
    }

    #[test]
    fn a_control_character_is_placed_where_it_is() {
        let e = from_str::<V>("a: 1\nb: x\u{7}y\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 5), "{e}");
        assert!(!e.message.contains("position"), "{e}");
    }

    #[test]
    fn a_second_document_is_placed_at_its_start() {
        let e = from_str::<V>("a: 1\nb: 2\n---\nc: 3\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn ordinary_errors_keep_the_parsers_place() {
        let e = from_str::<V>("a: 1\n  b: 2\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(
            e.to_string()
                .ends_with(&format!(" at line 2 column {}", e.column))
        );
    }
}
