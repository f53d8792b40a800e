//! From bytes to records: [`Framer`] cuts a file's bytes into raw records (multi-line aware),
//! [`Parser`] turns a raw record into a [`Record`] of the output schema.
//!
//! Framing by format:
//! - `postgres_csv`: a record ends at a newline outside double quotes (quoted fields may hold
//!   newlines); exact, no timeout needed;
//! - `postgres_json`, `plain`: one line, one record;
//! - `patroni`, `pgbouncer`, `pgbackrest`: a record starts with a line that looks like the start
//!   of an entry (a timestamp); following lines (tracebacks, tab continuations, dumps) belong to
//!   it. The last record of a file is complete when the next one starts, or after the source's
//!   `multiline_timeout`.
//!
//! A raw record over the size limit keeps its first bytes and is marked truncated; the rest of
//! it is skipped, never shipped as separate records. A record no parser understands is shipped
//! as plain text with a `parse_error` field.

mod csv;
mod postgres;
pub mod prefix;
mod text;
pub mod time;

use std::sync::Arc;

use agent_kit::redact::mask_passwords;
use jiff::Timestamp;

use crate::format::Format;
use crate::record::{Level, Origin, Record};
use prefix::LinePrefix;

pub use csv::{parse_csv_fields, write_csv_field};

/// How records are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Newline outside double quotes.
    Csv,
    /// Every line.
    Line,
    /// A start line plus continuation lines.
    Grouped(Format),
}

/// One record's bytes (without the final newline) and the file offset just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The bytes, at most the size limit.
    pub bytes: Vec<u8>,
    /// File offset after the record (its trailing newline included).
    pub end: u64,
    /// Whether bytes were cut off because the record exceeded the size limit.
    pub truncated: bool,
}

/// Cuts a byte stream into raw records; feed it with consecutive chunks of one file.
#[derive(Debug)]
pub struct Framer {
    mode: Mode,
    max: usize,
    /// The current, incomplete line (capped at `max`).
    line: Vec<u8>,
    line_truncated: bool,
    /// The record being assembled from complete lines (Csv and Grouped modes).
    rec: Vec<u8>,
    rec_truncated: bool,
    rec_open: bool,
    rec_end: u64,
    in_quotes: bool,
    /// File offset of the next byte to be fed.
    pos: u64,
    /// File offset after the last emitted record.
    committed: u64,
    /// `log_line_prefix` of `postgres_stderr`.
    prefix: Option<Arc<LinePrefix>>,
}

impl Framer {
    /// A framer for `format`, starting at file offset `start`, keeping at most `max` bytes of
    /// a record.
    pub fn new(format: Format, start: u64, max: usize) -> Framer {
        let mode = match format {
            Format::PostgresCsv => Mode::Csv,
            Format::PostgresJson | Format::Plain => Mode::Line,
            f => Mode::Grouped(f),
        };
        Framer {
            mode,
            max: max.max(1),
            line: Vec::new(),
            line_truncated: false,
            rec: Vec::new(),
            rec_truncated: false,
            rec_open: false,
            rec_end: start,
            in_quotes: false,
            pos: start,
            committed: start,
            prefix: None,
        }
    }

    /// Uses `prefix` to find where `postgres_stderr` events start.
    pub fn with_prefix(mut self, prefix: Option<Arc<LinePrefix>>) -> Framer {
        self.prefix = prefix;
        self
    }

    fn is_start(&self, format: Format, line: &[u8]) -> bool {
        match (format, &self.prefix) {
            (Format::PostgresStderr, Some(p)) => {
                let head = &line[..line.len().min(4096)];
                let s = match std::str::from_utf8(head) {
                    Ok(s) => s,
                    Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or(""),
                };
                p.is_event_start(s)
            }
            _ => text::is_record_start(format, line),
        }
    }

    /// File offset after the last emitted record: where reading must resume to lose nothing.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// File offset of the next byte to feed.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether a record is held back waiting for more lines (Grouped mode).
    pub fn has_pending(&self) -> bool {
        self.rec_open
    }

    /// Bytes buffered but not yet emitted.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.rec.len()
    }

    /// Feeds the next bytes of the file; complete records are appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<RawRecord>) {
        let mut rest = data;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let (part, tail) = rest.split_at(i);
                    if self.emit_whole_line(part, out) {
                        rest = &tail[1..];
                        continue;
                    }
                    self.push_line_bytes(part);
                    self.pos += part.len() as u64 + 1;
                    rest = &tail[1..];
                    self.complete_line(out);
                }
                None => {
                    self.push_line_bytes(rest);
                    self.pos += rest.len() as u64;
                    rest = &[];
                }
            }
        }
    }

    /// The common case, a complete line that is a whole record by itself (one-line csvlog
    /// record, JSON line, plain line) with nothing buffered before it: emitted straight from
    /// the input, copied once, exactly as the general path would emit it. Returns whether it
    /// did.
    fn emit_whole_line(&mut self, part: &[u8], out: &mut Vec<RawRecord>) -> bool {
        if !self.line.is_empty() || self.line_truncated || self.rec_open || part.len() > self.max {
            return false;
        }
        let bytes = match self.mode {
            // With no record open we are outside quotes; the line must not open one.
            Mode::Csv if memchr::memchr_iter(b'"', part).count().is_multiple_of(2) => part,
            Mode::Line => part.strip_suffix(b"\r").unwrap_or(part),
            _ => return false,
        };
        self.pos += part.len() as u64 + 1;
        self.rec_end = self.pos;
        self.emit_raw(bytes.to_vec(), false, self.pos, out);
        true
    }

    fn push_line_bytes(&mut self, part: &[u8]) {
        if self.mode == Mode::Csv {
            let quotes = memchr::memchr_iter(b'"', part).count();
            if quotes % 2 == 1 {
                self.in_quotes = !self.in_quotes;
            }
        }
        let room = self.max.saturating_sub(self.line.len());
        if part.len() > room {
            self.line.extend_from_slice(&part[..room]);
            self.line_truncated = true;
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn take_line(&mut self) -> (Vec<u8>, bool) {
        let truncated = std::mem::take(&mut self.line_truncated);
        (std::mem::take(&mut self.line), truncated)
    }

    fn complete_line(&mut self, out: &mut Vec<RawRecord>) {
        match self.mode {
            Mode::Line => {
                // Copy out (one exact allocation) and keep the buffer's capacity.
                let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                let bytes = line.to_vec();
                let truncated = std::mem::take(&mut self.line_truncated);
                self.line.clear();
                self.emit_raw(bytes, truncated, self.pos, out);
            }
            Mode::Csv => {
                let line = std::mem::take(&mut self.line);
                let truncated = std::mem::take(&mut self.line_truncated);
                self.append_to_rec(&line, truncated);
                self.line = line;
                self.line.clear();
                self.rec_end = self.pos;
                if !self.in_quotes {
                    self.emit_rec(out);
                }
            }
            Mode::Grouped(format) => {
                let line = std::mem::take(&mut self.line);
                let truncated = std::mem::take(&mut self.line_truncated);
                if self.is_start(format, &line) && self.rec_open {
                    self.emit_rec(out);
                }
                self.append_to_rec(&line, truncated);
                self.line = line;
                self.line.clear();
                self.rec_end = self.pos;
            }
        }
    }

    fn append_to_rec(&mut self, line: &[u8], truncated: bool) {
        if self.rec_open {
            if self.rec.len() < self.max {
                self.rec.push(b'\n');
            } else {
                self.rec_truncated = true;
            }
        }
        self.rec_open = true;
        let room = self.max.saturating_sub(self.rec.len());
        if line.len() > room {
            self.rec.extend_from_slice(&line[..room]);
            self.rec_truncated = true;
        } else {
            self.rec.extend_from_slice(line);
        }
        self.rec_truncated |= truncated;
    }

    fn emit_rec(&mut self, out: &mut Vec<RawRecord>) {
        if !self.rec_open {
            return;
        }
        // Copy out (one exact allocation) and keep the buffer's capacity.
        let bytes = self.rec.clone();
        self.rec.clear();
        let truncated = std::mem::take(&mut self.rec_truncated);
        self.rec_open = false;
        self.emit_raw(bytes, truncated, self.rec_end, out);
    }

    fn emit_raw(&mut self, bytes: Vec<u8>, truncated: bool, end: u64, out: &mut Vec<RawRecord>) {
        self.committed = end;
        // Blank lines carry nothing worth shipping, but their bytes are consumed.
        if bytes.iter().all(|b| b.is_ascii_whitespace()) && !truncated {
            return;
        }
        out.push(RawRecord {
            bytes,
            end,
            truncated,
        });
    }

    /// Emits a held-back multi-line record (the multi-line timeout fired).
    pub fn flush_pending(&mut self, out: &mut Vec<RawRecord>) {
        if matches!(self.mode, Mode::Grouped(_)) {
            self.emit_rec(out);
        }
    }

    /// The file is gone and fully read: emits everything, an unterminated last line included.
    pub fn finish(&mut self, out: &mut Vec<RawRecord>) {
        if !self.line.is_empty() || self.line_truncated {
            match self.mode {
                Mode::Line => {
                    let (bytes, truncated) = self.take_line();
                    self.emit_raw(bytes, truncated, self.pos, out);
                }
                _ => {
                    let (line, truncated) = self.take_line();
                    if let Mode::Grouped(f) = self.mode
                        && self.is_start(f, &line)
                    {
                        self.emit_rec(out);
                    }
                    self.append_to_rec(&line, truncated);
                    self.rec_end = self.pos;
                }
            }
        }
        self.emit_rec(out);
    }
}

/// What parsing one record ran into, for the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseFlags {
    /// Invalid UTF-8 was replaced with U+FFFD.
    pub invalid_utf8: bool,
    /// The record was over the size limit and truncated.
    pub truncated: bool,
    /// No parser understood it; shipped as plain with `parse_error`.
    pub parse_error: bool,
    /// `message` was cut at the configured length.
    pub message_cut: bool,
}

/// The marker appended to the message of a record truncated for being over the size limit.
pub const TRUNCATION_MARKER: &str = " …[truncated: record over the size limit]";

/// Turns raw records of one file into [`Record`]s.
#[derive(Debug, Clone)]
pub struct Parser {
    format: Format,
    origin: Arc<Origin>,
    message_max_length: usize,
    topic: Option<String>,
    prefix: Option<Arc<LinePrefix>>,
}

impl Parser {
    /// A parser for records of `format` read from `path`, with `origin`'s static fields.
    pub fn new(
        format: Format,
        origin: Arc<Origin>,
        message_max_length: usize,
        path: &std::path::Path,
    ) -> Parser {
        let topic = match format {
            Format::Pgbackrest => path
                .file_name()
                .map(|n| n.to_string_lossy())
                .map(|n| n.strip_suffix(".log").unwrap_or(&n).to_owned()),
            Format::Patroni => Some("main".to_owned()),
            _ => None,
        };
        Parser {
            format,
            origin,
            message_max_length,
            topic,
            prefix: None,
        }
    }

    /// Uses `prefix` to parse `postgres_stderr` lines.
    pub fn with_prefix(mut self, prefix: Option<Arc<LinePrefix>>) -> Parser {
        self.prefix = prefix;
        self
    }

    /// Parses one raw record. Never fails: what cannot be parsed ships as plain text.
    pub fn parse(&self, raw: &RawRecord) -> (Record, ParseFlags) {
        let mut flags = ParseFlags {
            truncated: raw.truncated,
            ..ParseFlags::default()
        };
        // `from_utf8` validates ASCII-heavy text much faster than `from_utf8_lossy`'s
        // chunking; the lossy copy is only for records that need it.
        let text = match std::str::from_utf8(&raw.bytes) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) => {
                flags.invalid_utf8 = true;
                String::from_utf8_lossy(&raw.bytes)
            }
        };
        let parsed = match self.format {
            Format::PostgresCsv => postgres::parse_csv(&text, &self.origin),
            Format::PostgresJson => postgres::parse_json(&text, &self.origin),
            Format::Patroni => text::parse_patroni(&text, &self.origin),
            Format::Pgbouncer => text::parse_pgbouncer(&text, &self.origin),
            Format::Pgbackrest => text::parse_pgbackrest(&text, &self.origin),
            Format::PostgresStderr => match &self.prefix {
                Some(p) => postgres::parse_stderr(&text, p, &self.origin),
                None => Ok(self.plain(&text, None)),
            },
            Format::Plain => Ok(self.plain(&text, None)),
        };
        let mut record = match parsed {
            Ok(r) => r,
            Err(e) => {
                flags.parse_error = true;
                self.plain(&text, Some(e))
            }
        };
        if record.topic.is_none() {
            record.topic.clone_from(&self.topic);
        }
        if cut_chars(&mut record.message, self.message_max_length) {
            flags.message_cut = true;
        }
        if raw.truncated {
            record.message.push_str(TRUNCATION_MARKER);
        }
        (record, flags)
    }

    fn plain(&self, text: &str, error: Option<String>) -> Record {
        Record {
            time: Timestamp::now(),
            origin: self.origin.clone(),
            level: if error.is_some() {
                None
            } else {
                Some(Level::Info)
            },
            message: mask_passwords(text.trim_end()).into_owned(),
            pg: None,
            topic: None,
            extra: Vec::new(),
            parse_error: error,
        }
    }
}

/// Cuts `s` to at most `max` characters; returns whether it cut.
pub fn cut_chars(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    match s.char_indices().nth(max) {
        Some((i, _)) => {
            s.truncate(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(format: Format, chunks: &[&[u8]], max: usize) -> (Vec<RawRecord>, Framer) {
        let mut f = Framer::new(format, 0, max);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        (out, f)
    }

    #[test]
    fn csv_records_span_lines_inside_quotes() {
        let data = b"a,\"x\ny\",b\nc,\"\"\"q\"\"\",d\npartial";
        for split in 0..data.len() {
            let (out, f) = frame(
                Format::PostgresCsv,
                &[&data[..split], &data[split..]],
                1 << 20,
            );
            assert_eq!(out.len(), 2, "split at {split}");
            assert_eq!(out[0].bytes, b"a,\"x\ny\",b");
            assert_eq!(out[0].end, 10);
            assert_eq!(out[1].bytes, b"c,\"\"\"q\"\"\",d");
            assert_eq!(f.committed(), 22);
            assert_eq!(f.position(), data.len() as u64);
        }
    }

    #[test]
    fn grouped_records_wait_for_the_next_start_or_a_flush() {
        let log = "2026-11-25 21:41:54,033 ERROR: get_postgresql_status\nTraceback (most recent call last):\n  File \"x\"\n\n2026-11-25 21:41:54,039 WARNING: Postgresql is not running.\n";
        let (mut out, mut f) = frame(Format::Patroni, &[log.as_bytes()], 1 << 20);
        assert_eq!(out.len(), 1);
        assert!(out[0].bytes.ends_with(b"  File \"x\"\n"));
        assert!(f.has_pending());
        f.flush_pending(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].end, log.len() as u64);
        assert_eq!(f.committed(), log.len() as u64);
    }

    #[test]
    fn oversize_records_are_cut_not_split() {
        let mut data = b"1,\"".to_vec();
        data.extend(std::iter::repeat_n(b'x', 5000));
        data.extend_from_slice(b"\ny\",2\n3,\"z\",4\n");
        let (out, _) = frame(Format::PostgresCsv, &[&data], 1024);
        assert_eq!(out.len(), 2);
        assert!(out[0].truncated);
        assert_eq!(out[0].bytes.len(), 1024);
        assert_eq!(out[1].bytes, b"3,\"z\",4");
        let (out, _) = frame(Format::Plain, &[&data], 1024);
        assert_eq!(out.len(), 3);
        assert!(out[0].truncated);
    }

    #[test]
    fn finish_emits_an_unterminated_line() {
        let (mut out, mut f) = frame(Format::Plain, &[b"a\nb"], 100);
        assert_eq!(out.len(), 1);
        f.finish(&mut out);
        assert_eq!(out[1].bytes, b"b");
        assert_eq!(f.committed(), 3);
    }

    #[test]
    fn unparsable_lines_ship_as_plain_with_an_error() {
        let origin = Arc::new(Origin {
            job: "patroni".into(),
            ins: String::new(),
            ip: String::new(),
            cls: String::new(),
        });
        let p = Parser::new(
            Format::Patroni,
            origin,
            10,
            std::path::Path::new("/x/patroni.log"),
        );
        let (r, flags) = p.parse(&RawRecord {
            bytes: b"garbage \xff line that is long".to_vec(),
            end: 1,
            truncated: true,
        });
        assert!(flags.parse_error && flags.invalid_utf8 && flags.truncated && flags.message_cut);
        assert_eq!(r.message, format!("garbage \u{fffd} {TRUNCATION_MARKER}"));
        assert!(r.parse_error.is_some());
        assert_eq!(r.topic.as_deref(), Some("main"));
    }
}
