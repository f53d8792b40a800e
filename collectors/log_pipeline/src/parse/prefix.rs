//! PostgreSQL's `log_line_prefix`, compiled into a matcher for stderr log lines.
//!
//! Escapes with a value of known shape are read by that shape (`%m`, `%t`, `%s` timestamps,
//! `%n` epoch, numbers for `%p %P %l %x %Q %c`); any other escape takes the text up to the
//! next literal of the prefix (or the next space at its end). `%q` ends the prefix of lines
//! written by non-session processes. Padding (`%-10u`, `%5p`) is accepted.

use super::time::parse_civil;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(String),
    Esc(char),
}

/// A compiled `log_line_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinePrefix {
    tokens: Vec<Tok>,
    /// Index in `tokens` where `%q` stood.
    q_index: Option<usize>,
}

/// Severities that start a log event.
const MAIN: [&str; 12] = [
    "LOG", "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "INFO", "DEBUG1", "DEBUG2", "DEBUG3",
    "DEBUG4", "DEBUG5",
];
/// Labels of the lines that belong to the event before them.
pub(crate) const SECONDARY: [&str; 6] = [
    "DETAIL",
    "HINT",
    "CONTEXT",
    "STATEMENT",
    "QUERY",
    "LOCATION",
];

const KNOWN: &str = "abudrhpPtmnieclsvxqQ%";

/// The captured escapes of one line, e.g. `('u', "postgres")`.
pub type Captures<'a> = Vec<(char, &'a str)>;

impl LinePrefix {
    /// Compiles a `log_line_prefix` value.
    pub fn compile(prefix: &str) -> Result<LinePrefix, String> {
        let mut tokens = Vec::new();
        let mut q_index = None;
        let mut lit = String::new();
        let mut chars = prefix.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            // Padding: an optional '-' and digits.
            if chars.peek() == Some(&'-') {
                chars.next();
            }
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            let Some(e) = chars.next() else {
                return Err("ends with a lone %".to_owned());
            };
            if !KNOWN.contains(e) {
                return Err(format!("unknown escape %{e}"));
            }
            if e == '%' {
                lit.push('%');
                continue;
            }
            if !lit.is_empty() {
                tokens.push(Tok::Lit(std::mem::take(&mut lit)));
            }
            if e == 'q' {
                q_index = Some(tokens.len());
            } else {
                tokens.push(Tok::Esc(e));
            }
        }
        if !lit.is_empty() {
            tokens.push(Tok::Lit(lit));
        }
        Ok(LinePrefix { tokens, q_index })
    }

    /// Matches the prefix and a severity label at the start of `line`: the captures, the
    /// label (`LOG`, `DETAIL`, ...) and the byte offset of the text after `LABEL:  `.
    pub fn match_line<'a>(&self, line: &'a str) -> Option<(Captures<'a>, &'a str, usize)> {
        let attempt = |tokens: &[Tok]| -> Option<(Captures<'a>, &'a str, usize)> {
            let (caps, end) = match_tokens(tokens, line)?;
            let (label, text) = severity_at(&line[end..])?;
            Some((caps, label, end + text))
        };
        attempt(&self.tokens).or_else(|| self.q_index.and_then(|q| attempt(&self.tokens[..q])))
    }

    /// Whether `line` starts a new event (prefix plus a main severity).
    pub fn is_event_start(&self, line: &str) -> bool {
        self.match_line(line)
            .is_some_and(|(_, label, _)| MAIN.contains(&label))
    }
}

/// `LABEL:  text` → (label, offset of text).
fn severity_at(s: &str) -> Option<(&str, usize)> {
    let colon = s.find(':')?;
    let label = &s[..colon];
    if !(MAIN.contains(&label) || SECONDARY.contains(&label)) {
        return None;
    }
    // PostgreSQL writes "LABEL:  " (two spaces); anything after them is the text.
    let rest = &s[colon + 1..];
    let spaces = if rest.starts_with("  ") {
        2
    } else {
        usize::from(rest.starts_with(' '))
    };
    Some((label, colon + 1 + spaces))
}

fn match_tokens<'a>(tokens: &[Tok], line: &'a str) -> Option<(Captures<'a>, usize)> {
    let mut caps = Vec::new();
    let mut i = 0;
    for (k, tok) in tokens.iter().enumerate() {
        match tok {
            Tok::Lit(l) => {
                if !line[i..].starts_with(l.as_str()) {
                    return None;
                }
                i += l.len();
            }
            Tok::Esc(e) => {
                let rest = &line[i..];
                let len = match e {
                    'm' | 't' | 's' => {
                        let (_, used) = parse_civil(rest)?;
                        // The zone: a space and a word.
                        let after = &rest[used..];
                        match after.strip_prefix(' ') {
                            Some(z) => {
                                let zl = z.find(' ').unwrap_or(z.len());
                                let zone = &z[..zl];
                                if zone
                                    .chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "+-:/_".contains(c))
                                    && !zone.is_empty()
                                {
                                    used + 1 + zl
                                } else {
                                    used
                                }
                            }
                            None => used,
                        }
                    }
                    'n' => rest
                        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                        .unwrap_or(rest.len()),
                    'p' | 'P' | 'l' | 'x' | 'Q' => {
                        let sign = usize::from(rest.starts_with('-'));
                        sign + rest[sign..]
                            .find(|c: char| !c.is_ascii_digit())
                            .unwrap_or(rest.len() - sign)
                    }
                    _ => match tokens.get(k + 1) {
                        Some(Tok::Lit(next)) => rest.find(next.as_str())?,
                        _ => rest.find(' ').unwrap_or(rest.len()),
                    },
                };
                caps.push((*e, &rest[..len]));
                i += len;
            }
        }
    }
    Some((caps, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_debian_prefixes() {
        let p = LinePrefix::compile("%m [%p] ").unwrap();
        let (caps, label, at) = p
            .match_line("2024-01-01 12:00:00.123 UTC [1234] LOG:  database system is ready")
            .unwrap();
        assert_eq!(
            caps,
            vec![('m', "2024-01-01 12:00:00.123 UTC"), ('p', "1234")]
        );
        assert_eq!(label, "LOG");
        assert_eq!(at, 41);

        let deb = LinePrefix::compile("%m [%p] %q%u@%d ").unwrap();
        let (caps, label, _) = deb
            .match_line("2024-01-01 12:00:00.123 UTC [77] app@shop ERROR:  boom")
            .unwrap();
        assert_eq!(caps[2..], [('u', "app"), ('d', "shop")]);
        assert_eq!(label, "ERROR");
        let (caps, label, _) = deb
            .match_line("2024-01-01 12:00:00.123 UTC [5] LOG:  checkpoint starting: time")
            .unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(label, "LOG");
        assert!(deb.is_event_start("2024-01-01 12:00:00.123 UTC [5] LOG:  x"));
        assert!(
            !deb.is_event_start("2024-01-01 12:00:00.123 UTC [77] app@shop STATEMENT:  select")
        );
        assert!(!deb.is_event_start("\tcontinued"));

        let badger =
            LinePrefix::compile("%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ").unwrap();
        let (caps, _, _) = badger
            .match_line(
                "2024-01-01 12:00:00 UTC [9]: [3-1] user=u,db=d,app=psql 16,client=[local] LOG:  x",
            )
            .unwrap();
        assert!(caps.contains(&('a', "psql 16")));
        assert!(caps.contains(&('h', "[local]")));
        assert!(LinePrefix::compile("%Z").is_err());
    }
}
