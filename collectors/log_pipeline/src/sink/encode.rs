//! Request bodies: VictoriaLogs JSON lines, Loki protobuf + snappy, Loki JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use crate::config::{Compression, LokiEncoding, Sink, SinkKind, VlApi};
use crate::record::{Record, write_json_string};

/// An encoded request body with its headers.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The body.
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Content-Encoding`, if any.
    pub content_encoding: Option<&'static str>,
    /// Per-format headers (VictoriaLogs field headers).
    pub headers: Vec<(String, String)>,
}

/// How a sink encodes a batch.
#[derive(Debug, Clone)]
pub enum Encoder {
    /// VictoriaLogs `/insert/jsonline`.
    Jsonline {
        /// `VL-Stream-Fields`.
        stream_fields: Vec<String>,
        /// Gzip the body.
        gzip: bool,
    },
    /// Loki push API (Loki itself, or VictoriaLogs' Loki endpoint).
    Loki {
        /// Fields sent as labels.
        labels: Vec<String>,
        /// Protobuf or JSON.
        encoding: LokiEncoding,
        /// Gzip a JSON body.
        gzip: bool,
        /// URL path (with VictoriaLogs' query arguments).
        path: String,
    },
    /// The file sink: one JSON object per line.
    File,
}

/// Escapes a label value the way LogQL's label parser reads Go strings.
fn push_label_value(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The label set of `r` for `labels`, as Loki's `{k="v", ...}` string (keys sorted).
pub fn label_string(r: &Record, labels: &[String]) -> String {
    let mut s = String::new();
    write_label_string(&mut s, r, &sorted_labels(labels));
    s
}

/// The label names in the order they appear in a label string.
fn sorted_labels(labels: &[String]) -> Vec<&str> {
    let mut sorted: Vec<&str> = labels.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted
}

/// Appends the label string of `r`; `sorted` comes from [`sorted_labels`]. Keys are sorted
/// once per batch rather than per record: pairs sort by key first, and equal keys name the
/// same field, so this is the same order as sorting the pairs.
fn write_label_string(s: &mut String, r: &Record, sorted: &[&str]) {
    s.push('{');
    let mut first = true;
    for k in sorted {
        if let Some(v) = r.field(k) {
            if !first {
                s.push_str(", ");
            }
            first = false;
            s.push_str(k);
            s.push('=');
            push_label_value(s, v);
        }
    }
    s.push('}');
}

/// Groups records by label string, keeping their order within a stream; the map iterates in
/// label-string order.
fn group_streams<'r>(
    records: &[&'r Record],
    labels: &[String],
) -> BTreeMap<String, Vec<&'r Record>> {
    let sorted = sorted_labels(labels);
    // With only the source's static fields as labels, records of one origin share a stream.
    let origin_only = sorted
        .iter()
        .all(|k| matches!(*k, "job" | "ins" | "ip" | "cls"));
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    let mut prev: Option<(&Record, usize)> = None;
    // One reused buffer: a lookup allocates only for a new stream.
    let mut key = String::new();
    for r in records {
        // Consecutive records mostly share their labels: no label string for those.
        if let Some((p, g)) = prev
            && ((origin_only && Arc::ptr_eq(&p.origin, &r.origin))
                || sorted.iter().all(|k| p.field(k) == r.field(k)))
        {
            groups[g].push(r);
            continue;
        }
        key.clear();
        write_label_string(&mut key, r, &sorted);
        let g = match index.get(key.as_str()) {
            Some(&g) => g,
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Vec::new());
                groups.len() - 1
            }
        };
        groups[g].push(r);
        prev = Some((r, g));
    }
    index
        .into_iter()
        .map(|(k, g)| (k, std::mem::take(&mut groups[g])))
        .collect()
}

/// Protobuf varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A LEN field: key, length, payload.
fn put_len_field(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// `logproto.PushRequest` written straight from the records, byte for byte what prost writes
/// for Loki's `logproto.PushRequest` messages (as the test's prost messages check) (fields in tag order, zero values left out). Every
/// entry's JSON line is written into one buffer first; with every length known, the body is
/// then written once at its exact size, each line copied once (nesting the messages in
/// buffers of their own copied each line twice and regrew the body as it went).
fn loki_push_request(streams: &BTreeMap<String, Vec<&Record>>) -> Vec<u8> {
    let mut lines = String::new();
    let mut ends = Vec::with_capacity(streams.values().map(Vec::len).sum());
    for r in streams.values().flatten() {
        r.write_json(&mut lines, false);
        ends.push(lines.len());
    }
    // Lengths: google.protobuf.Timestamp { int64 seconds = 1; int32 nanos = 2; },
    // EntryAdapter { timestamp = 1; line = 2; }, StreamAdapter { labels = 1; entries = 2; }.
    // A Timestamp's nanos count forward from its (floored) second, also before 1970, where
    // jiff's fraction counts backwards.
    let seconds_nanos = |r: &Record| {
        let ns = r.time.as_nanosecond();
        let (secs, nanos) = (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
        (secs as i64 as u64, nanos as u64)
    };
    let timestamp_len = |(secs, nanos): (u64, u64)| {
        usize::from(secs != 0) * (1 + varint_len(secs))
            + usize::from(nanos != 0) * (1 + varint_len(nanos))
    };
    let field_len = |payload: usize| 1 + varint_len(payload as u64) + payload;
    let entry_len = |r: &Record, line: usize| {
        field_len(timestamp_len(seconds_nanos(r))) + if line == 0 { 0 } else { field_len(line) }
    };
    let mut stream_lens = Vec::with_capacity(streams.len());
    let mut start = 0;
    let mut k = 0;
    for (labels, rs) in streams {
        let mut len = if labels.is_empty() {
            0
        } else {
            field_len(labels.len())
        };
        for r in rs {
            len += field_len(entry_len(r, ends[k] - start));
            start = ends[k];
            k += 1;
        }
        stream_lens.push(len);
    }
    let total = stream_lens.iter().map(|l| field_len(*l)).sum();
    let mut body = Vec::with_capacity(total);
    let (mut start, mut k) = (0, 0);
    for ((labels, rs), stream_len) in streams.iter().zip(stream_lens) {
        put_varint(&mut body, 1 << 3 | 2);
        put_varint(&mut body, stream_len as u64);
        if !labels.is_empty() {
            put_len_field(&mut body, 1, labels.as_bytes());
        }
        for r in rs {
            let line = &lines.as_bytes()[start..ends[k]];
            start = ends[k];
            k += 1;
            let (secs, nanos) = seconds_nanos(r);
            put_varint(&mut body, 2 << 3 | 2);
            put_varint(&mut body, entry_len(r, line.len()) as u64);
            put_varint(&mut body, 1 << 3 | 2);
            put_varint(&mut body, timestamp_len((secs, nanos)) as u64);
            if secs != 0 {
                body.push(1 << 3);
                put_varint(&mut body, secs);
            }
            if nanos != 0 {
                body.push(2 << 3);
                put_varint(&mut body, nanos);
            }
            if !line.is_empty() {
                put_len_field(&mut body, 2, line);
            }
        }
    }
    debug_assert_eq!(body.len(), total);
    body
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

impl Encoder {
    /// The encoder of a sink.
    pub fn for_sink(config: &Sink) -> Encoder {
        let gzip = config
            .http
            .as_ref()
            .is_some_and(|h| h.compression == Compression::Gzip);
        match &config.kind {
            SinkKind::File { .. } => Encoder::File,
            SinkKind::VictoriaLogs {
                api: VlApi::Jsonline,
                stream_fields,
                ..
            } => Encoder::Jsonline {
                stream_fields: stream_fields.clone(),
                gzip,
            },
            SinkKind::VictoriaLogs {
                api: VlApi::Loki,
                stream_fields,
                encoding,
            } => Encoder::Loki {
                labels: stream_fields.clone(),
                encoding: *encoding,
                gzip,
                path: "/insert/loki/api/v1/push?_msg_field=message".to_owned(),
            },
            SinkKind::Loki { encoding, labels } => Encoder::Loki {
                labels: labels.clone(),
                encoding: *encoding,
                gzip,
                path: "/loki/api/v1/push".to_owned(),
            },
        }
    }

    /// A record's share of `batch.max_bytes`, which bounds the body as sent: for an
    /// uncompressed JSON body, the record's JSON size, so that a full batch is not split and
    /// encoded again on the sender's critical path; for compressed bodies (always, for Loki's
    /// snappy protobuf), the smaller estimate, which keeps batches large.
    pub fn batch_size(&self, record: &Record) -> u64 {
        let json = match self {
            Encoder::File => true,
            Encoder::Jsonline { gzip, .. } => !gzip,
            Encoder::Loki { encoding, gzip, .. } => *encoding == LokiEncoding::Json && !gzip,
        };
        if json {
            record.json_size() as u64
        } else {
            record.estimated_size() as u64
        }
    }

    /// The URL path appended to the endpoint.
    pub fn path(&self) -> &str {
        match self {
            Encoder::Jsonline { .. } => "/insert/jsonline",
            Encoder::Loki { path, .. } => path,
            Encoder::File => "",
        }
    }

    /// Encodes a batch.
    pub fn encode(&self, records: &[&Record]) -> Encoded {
        match self {
            Encoder::File | Encoder::Jsonline { .. } => {
                // A record's JSON is about `estimated_size` + 128 bytes: sized so that the
                // body is not reallocated (and copied) while it grows.
                let mut s =
                    String::with_capacity(records.iter().map(|r| r.estimated_size() + 128).sum());
                // Each record is written into a small buffer that stays in cache, then
                // appended in one copy.
                let mut line = String::new();
                for r in records {
                    line.clear();
                    r.write_json(&mut line, true);
                    s.push_str(&line);
                    s.push('\n');
                }
                let (body, content_encoding, headers) = match self {
                    Encoder::Jsonline {
                        stream_fields,
                        gzip: gz,
                    } => (
                        if *gz {
                            gzip(s.as_bytes())
                        } else {
                            s.into_bytes()
                        },
                        gz.then_some("gzip"),
                        vec![
                            ("VL-Stream-Fields".to_owned(), stream_fields.join(",")),
                            ("VL-Msg-Field".to_owned(), "message".to_owned()),
                            ("VL-Time-Field".to_owned(), "_time".to_owned()),
                        ],
                    ),
                    _ => (s.into_bytes(), None, Vec::new()),
                };
                Encoded {
                    body,
                    content_type: "application/stream+json",
                    content_encoding,
                    headers,
                }
            }
            Encoder::Loki {
                labels,
                encoding,
                gzip: gz,
                ..
            } => {
                let streams = group_streams(records, labels);
                match encoding {
                    LokiEncoding::Protobuf => {
                        let raw = loki_push_request(&streams);
                        let body = snap::raw::Encoder::new()
                            .compress_vec(&raw)
                            .unwrap_or_default();
                        Encoded {
                            body,
                            content_type: "application/x-protobuf",
                            content_encoding: None,
                            headers: Vec::new(),
                        }
                    }
                    LokiEncoding::Json => {
                        let mut s = String::with_capacity(
                            records.iter().map(|r| r.estimated_size() + 64).sum(),
                        );
                        s.push_str("{\"streams\":[");
                        let mut line = String::new();
                        for (si, (_, rs)) in streams.iter().enumerate() {
                            if si > 0 {
                                s.push(',');
                            }
                            s.push_str("{\"stream\":{");
                            let mut pairs: Vec<(&str, &str)> = labels
                                .iter()
                                .filter_map(|l| rs[0].field(l).map(|v| (l.as_str(), v)))
                                .collect();
                            pairs.sort_unstable();
                            for (i, (k, v)) in pairs.iter().enumerate() {
                                if i > 0 {
                                    s.push(',');
                                }
                                write_json_string(&mut s, k);
                                s.push(':');
                                write_json_string(&mut s, v);
                            }
                            s.push_str("},\"values\":[");
                            for (i, r) in rs.iter().enumerate() {
                                if i > 0 {
                                    s.push(',');
                                }
                                let _ = write!(s, "[\"{}\",", r.time.as_nanosecond());
                                line.clear();
                                r.write_json(&mut line, false);
                                write_json_string(&mut s, &line);
                                s.push(']');
                            }
                            s.push_str("]}");
                        }
                        s.push_str("]}");
                        Encoded {
                            body: if *gz {
                                gzip(s.as_bytes())
                            } else {
                                s.into_bytes()
                            },
                            content_type: "application/json",
                            content_encoding: gz.then_some("gzip"),
                            headers: Vec::new(),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{Level, Origin};

    // Loki's `logproto.PushRequest` (`pkg/push/push.proto`), written by hand with prost's derive
    // macros (no protoc needed); the test below checks the hand-written encoder against them.
    //
    // message PushRequest      { repeated StreamAdapter streams = 1; }
    // message StreamAdapter    { string labels = 1; repeated EntryAdapter entries = 2; uint64 hash = 3; }
    // message EntryAdapter     { google.protobuf.Timestamp timestamp = 1; string line = 2;
    //                            repeated LabelPairAdapter structuredMetadata = 3;
    //                            repeated LabelPairAdapter parsed = 4; }
    // message LabelPairAdapter { string name = 1; string value = 2; }

    /// `logproto.PushRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct PushRequest {
        /// The streams.
        #[prost(message, repeated, tag = "1")]
        streams: Vec<StreamAdapter>,
    }

    /// `logproto.StreamAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct StreamAdapter {
        /// `{k="v", ...}` label set.
        #[prost(string, tag = "1")]
        labels: String,
        /// Entries.
        #[prost(message, repeated, tag = "2")]
        entries: Vec<EntryAdapter>,
        /// Ignored by Loki.
        #[prost(uint64, tag = "3")]
        hash: u64,
    }

    /// `logproto.EntryAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct EntryAdapter {
        /// Entry timestamp.
        #[prost(message, optional, tag = "1")]
        timestamp: Option<ProtoTimestamp>,
        /// The log line.
        #[prost(string, tag = "2")]
        line: String,
        /// Structured metadata.
        #[prost(message, repeated, tag = "3")]
        structured_metadata: Vec<LabelPairAdapter>,
    }

    /// `logproto.LabelPairAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct LabelPairAdapter {
        /// Name.
        #[prost(string, tag = "1")]
        name: String,
        /// Value.
        #[prost(string, tag = "2")]
        value: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    struct ProtoTimestamp {
        /// Seconds since the epoch.
        #[prost(int64, tag = "1")]
        seconds: i64,
        /// Nanoseconds within the second.
        #[prost(int32, tag = "2")]
        nanos: i32,
    }

    fn rec(msg: &str, ins: &str) -> Record {
        Record {
            time: "2024-01-01T00:00:01.5Z".parse().unwrap(),
            origin: Arc::new(Origin {
                job: "postgres".into(),
                ins: ins.into(),
                ip: "1.2.3.4".into(),
                cls: "pg\"x".into(),
            }),
            level: Some(Level::Info),
            message: msg.into(),
            pg: None,
            topic: None,
            extra: Vec::new(),
            parse_error: None,
        }
    }

    #[test]
    fn labels_are_sorted_and_escaped() {
        let labels = vec!["job".to_owned(), "cls".to_owned(), "topic".to_owned()];
        assert_eq!(
            label_string(&rec("m", "a"), &labels),
            r#"{cls="pg\"x", job="postgres"}"#
        );
    }

    #[test]
    fn loki_protobuf_is_what_prost_writes() {
        for labels in [
            vec!["ins".to_owned(), "job".to_owned(), "level".to_owned()],
            vec!["job".to_owned(), "ins".to_owned()],
        ] {
            loki_protobuf_for(labels);
        }
    }

    #[allow(clippy::needless_pass_by_value)]
    fn loki_protobuf_for(labels: Vec<String>) {
        use prost::Message as _;

        let origin_only = labels.len() == 2;
        let mut records: Vec<Record> = (0..300)
            .map(|i| {
                let mut r = rec(&"x\"y".repeat(i * 7), ["a", "b", "c"][i % 3]);
                r.time =
                    jiff::Timestamp::new(1_700_000_000 + i as i64 * 977, (i as i32) * 3_333_333)
                        .unwrap();
                r
            })
            .collect();
        records[1].time = jiff::Timestamp::new(-5, -250_000_000).unwrap();
        records[2].time = jiff::Timestamp::UNIX_EPOCH;
        records[4].level = None;
        // Records sharing one origin, then others with equal values in another.
        let shared = records[10].origin.clone();
        for r in &mut records[10..20] {
            r.origin = shared.clone();
        }
        let refs: Vec<&Record> = records.iter().collect();
        // The request as prost writes it from its messages, built the straightforward way.
        let mut streams: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
        for r in &refs {
            streams.entry(label_string(r, &labels)).or_default().push(r);
        }
        let want = PushRequest {
            streams: streams
                .into_iter()
                .map(|(labels, rs)| StreamAdapter {
                    labels,
                    entries: rs
                        .into_iter()
                        .map(|r| {
                            let mut line = String::new();
                            r.write_json(&mut line, false);
                            EntryAdapter {
                                // Nanos count forward from the floored second
                                // (google.protobuf.Timestamp), also before 1970.
                                timestamp: Some(ProtoTimestamp {
                                    seconds: r.time.as_nanosecond().div_euclid(1_000_000_000)
                                        as i64,
                                    nanos: r.time.as_nanosecond().rem_euclid(1_000_000_000) as i32,
                                }),
                                line,
                                structured_metadata: Vec::new(),
                            }
                        })
                        .collect(),
                    hash: 0,
                })
                .collect(),
        };
        assert_eq!(want.streams.len(), if origin_only { 3 } else { 4 });
        let e = Encoder::Loki {
            labels,
            encoding: LokiEncoding::Protobuf,
            gzip: false,
            path: String::new(),
        };
        let out = e.encode(&refs);
        let raw = snap::raw::Decoder::new().decompress_vec(&out.body).unwrap();
        assert_eq!(raw, want.encode_to_vec());
        assert_eq!(PushRequest::decode(raw.as_slice()).unwrap(), want);
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn loki_json_groups_streams() {
        let e = Encoder::Loki {
            labels: vec!["ins".into()],
            encoding: LokiEncoding::Json,
            gzip: false,
            path: String::new(),
        };
        let (a, b, c) = (rec("1", "a"), rec("2", "b"), rec("3", "a"));
        let out = e.encode(&[&a, &b, &c]);
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["streams"][0]["stream"]["ins"], "a");
        assert_eq!(v["streams"][0]["values"][1][0], "1704067201500000000");
        let line: serde_json::Value =
            serde_json::from_str(v["streams"][0]["values"][1][1].as_str().unwrap()).unwrap();
        assert_eq!(line["message"], "3");
        assert_eq!(out.content_type, "application/json");
    }
}
