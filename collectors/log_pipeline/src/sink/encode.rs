//! Request bodies: VictoriaLogs JSON lines, Loki protobuf + snappy, Loki JSON.

use std::collections::BTreeMap;
use std::io::Write as _;

use prost::Message as _;

use super::loki_proto::{EntryAdapter, ProtoTimestamp, PushRequest, StreamAdapter};
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
    let mut pairs: Vec<(&str, &str)> = labels
        .iter()
        .filter_map(|l| r.field(l).map(|v| (l.as_str(), v)))
        .collect();
    pairs.sort_unstable();
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(k);
        s.push('=');
        push_label_value(&mut s, v);
    }
    s.push('}');
    s
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
                let mut s = String::with_capacity(records.iter().map(|r| r.estimated_size()).sum());
                for r in records {
                    r.write_json(&mut s, true);
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
                let mut streams: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
                for r in records {
                    streams.entry(label_string(r, labels)).or_default().push(r);
                }
                match encoding {
                    LokiEncoding::Protobuf => {
                        let req = PushRequest {
                            streams: streams
                                .into_iter()
                                .map(|(labels, rs)| StreamAdapter {
                                    labels,
                                    entries: rs
                                        .into_iter()
                                        .map(|r| {
                                            let mut line =
                                                String::with_capacity(r.estimated_size());
                                            r.write_json(&mut line, false);
                                            EntryAdapter {
                                                timestamp: Some(ProtoTimestamp {
                                                    seconds: r.time.as_second(),
                                                    nanos: r.time.subsec_nanosecond(),
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
                        let raw = req.encode_to_vec();
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
                        let mut s = String::from("{\"streams\":[");
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
                                s.push_str(&format!("[\"{}\",", r.time.as_nanosecond()));
                                let mut line = String::new();
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
