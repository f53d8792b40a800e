//! A test receiver that accepts exactly what Loki and VictoriaLogs accept, decoded on its own
//! (the Loki protobuf by hand from the wire format, not with the sender's types):
//!
//! - `POST /insert/jsonline`: VictoriaLogs JSON lines (gzip allowed), `VL-*` headers required,
//!   answers 200;
//! - `POST /loki/api/v1/push` and `POST /insert/loki/api/v1/push`: protobuf + snappy unless the
//!   Content-Type is exactly `application/json`; JSON timestamps must be strings; answers 204.
//!
//! A body whose `Content-Encoding` does not match it is refused with 400, as both stores do; for
//! protobuf only no encoding or `snappy` is taken (the sender never sends anything else, and the
//! two stores disagree on what `gzip` means there).
//!
//! It can be told to answer with a status (e.g. 503), to reject with 400 any request holding a
//! marker, to answer 413 to bodies over a size (decoded), or be stopped and restarted on the
//! same port (connection refused meanwhile). Every request is logged (path, query, encodings,
//! answer) so that tests can check what went over the wire, not only what was decoded. Error
//! answers end with the request's path and query, as a proxy may echo them.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// One record as the log store would store it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which API it came through.
    pub api: &'static str,
    /// Stream labels (Loki) or the VL-Stream-Fields values (jsonline).
    pub labels: BTreeMap<String, String>,
    /// Entry timestamp in ns (Loki), or `_time` parsed (jsonline).
    pub time_ns: i128,
    /// All fields: the JSON line's fields.
    pub fields: Value,
    /// Path and query of the request it came in (VictoriaLogs' Loki endpoint is told which
    /// field is the message by a query argument).
    pub path_and_query: String,
}

impl Received {
    /// The number after `seq=` that the tests' writers put at the start of each message.
    pub fn seq(&self) -> u64 {
        let m = self.message();
        m.strip_prefix("seq=")
            .and_then(|s| s.split([' ', '\n']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no seq in {m:?}"))
    }

    /// The `message` field.
    pub fn message(&self) -> &str {
        self.fields["message"].as_str().unwrap_or("")
    }
}

/// One request, as received and answered.
#[derive(Debug, Clone)]
pub struct Request {
    /// The path, without the query.
    pub path: String,
    /// The query string (empty when there is none).
    pub query: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// The status answered.
    pub status: u16,
    /// Records accepted from it.
    pub records: usize,
}

impl Request {
    /// `Content-Type`, if sent.
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// `Content-Encoding`, if sent.
    pub fn content_encoding(&self) -> Option<&str> {
        self.header("content-encoding")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query arguments, in order (no percent-decoding: the senders' values are plain).
    pub fn query_args(&self) -> Vec<(&str, &str)> {
        self.query
            .split('&')
            .filter(|a| !a.is_empty())
            .map(|a| a.split_once('=').unwrap_or((a, "")))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Inner {
    records: Vec<Received>,
    status: Option<u16>,
    reject_marker: Option<String>,
    requests: u64,
    rejected: u64,
    /// Bodies (decoded) over this get 413 Payload Too Large.
    max_body: Option<usize>,
    too_large: u64,
    /// Headers of every request, by path.
    /// Every request, in arrival order.
    log: Vec<Request>,
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Starts on 127.0.0.1 and a free port.
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let mut r = Receiver {
            inner,
            addr: "127.0.0.1:0".parse().unwrap(),
            shutdown: None,
            task: None,
        };
        r.serve().await;
        r
    }

    /// A receiver that serves nothing itself: serve [`Receiver::app`] elsewhere (e.g. over
    /// TLS) and give its URL to the sink.
    pub fn detached() -> Receiver {
        Receiver {
            inner: Arc::new(Mutex::new(Inner::default())),
            addr: "127.0.0.1:0".parse().unwrap(),
            shutdown: None,
            task: None,
        }
    }

    /// The receiver's routes.
    pub fn app(&self) -> Router {
        self.app_at("")
    }

    /// The receiver's routes under `prefix` (`/proxy`, as behind a reverse proxy), logged
    /// with it.
    pub fn app_at(&self, prefix: &str) -> Router {
        Router::new()
            .route(&format!("{prefix}/insert/jsonline"), post(jsonline))
            .route(&format!("{prefix}/loki/api/v1/push"), post(loki))
            .route(&format!("{prefix}/insert/loki/api/v1/push"), post(loki))
            .with_state(self.inner.clone())
    }

    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let app = self.app();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.shutdown = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        }));
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening (connections are refused).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        for _ in 0..50 {
            if tokio::net::TcpListener::bind(self.addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.serve().await;
    }

    /// Answers every request with `status` (None: normal operation).
    pub fn set_status(&self, status: Option<u16>) {
        self.inner.lock().unwrap().status = status;
    }

    /// Rejects with 400 every request that holds `marker`.
    pub fn reject_containing(&self, marker: &str) {
        self.inner.lock().unwrap().reject_marker = Some(marker.to_owned());
    }

    /// Answers 413 to every body (decoded) longer than `max` bytes.
    pub fn set_max_body(&self, max: Option<usize>) {
        self.inner.lock().unwrap().max_body = max;
    }

    /// Number of requests answered with 413.
    pub fn too_large(&self) -> u64 {
        self.inner.lock().unwrap().too_large
    }

    /// Everything received so far.
    pub fn records(&self) -> Vec<Received> {
        self.inner.lock().unwrap().records.clone()
    }

    /// How often each [`Received::seq`] arrived, among the records `keep` accepts.
    pub fn seq_counts(&self, keep: impl Fn(&Received) -> bool) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for r in self.records().iter().filter(|r| keep(r)) {
            *m.entry(r.seq()).or_insert(0) += 1;
        }
        m
    }

    /// Records received through `api`.
    pub fn records_of(&self, api: &str) -> Vec<Received> {
        self.records()
            .into_iter()
            .filter(|r| r.api == api)
            .collect()
    }

    /// A handle usable from other threads.
    pub fn handle(&self) -> ReceiverHandle {
        ReceiverHandle(self.inner.clone())
    }

    /// The headers of the requests made to `path`.
    pub fn headers_of(&self, path: &str) -> Vec<HeaderMap> {
        self.inner
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.headers.clone())
            .collect()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().log.clone()
    }

    /// Number of requests answered with 400.
    pub fn rejected(&self) -> u64 {
        self.inner.lock().unwrap().rejected
    }

    /// Waits until `pred` holds on the records, or panics after `secs`.
    pub async fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&[Received]) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if pred(&self.records()) {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; have {} records",
                    self.records().len()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Shares a receiver's records with a plain thread.
#[derive(Debug, Clone)]
pub struct ReceiverHandle(Arc<Mutex<Inner>>);

impl ReceiverHandle {
    /// Number of records received.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().records.len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, String> {
    match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("") | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("bad gzip: {e}"))?;
            Ok(out)
        }
        Some(other) => Err(format!("unsupported Content-Encoding {other}")),
    }
}

/// Common gate: forced status, reject marker. Returns Some(status) to answer with.
fn gate(inner: &Mutex<Inner>, body: &[u8]) -> Option<StatusCode> {
    let mut i = inner.lock().unwrap();
    i.requests += 1;
    if let Some(s) = i.status {
        return Some(StatusCode::from_u16(s).unwrap());
    }
    if i.max_body.is_some_and(|m| body.len() > m) {
        i.too_large += 1;
        return Some(StatusCode::PAYLOAD_TOO_LARGE);
    }
    if let Some(m) = &i.reject_marker
        && body.windows(m.len()).any(|w| w == m.as_bytes())
    {
        i.rejected += 1;
        return Some(StatusCode::BAD_REQUEST);
    }
    None
}

/// Logs a request and its answer, and keeps its records.
fn answer(
    inner: &Mutex<Inner>,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    (status, message, mut records): (StatusCode, String, Vec<Received>),
) -> (StatusCode, String) {
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    for r in &mut records {
        r.path_and_query.clone_from(&path_and_query);
    }
    // As a proxy may: an error answer echoes the request (credentials in it included).
    let message = if status.is_success() {
        message
    } else {
        format!("{message} (request {path_and_query})")
    };
    let mut i = inner.lock().unwrap();
    i.log.push(Request {
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers: headers.clone(),
        status: status.as_u16(),
        records: records.len(),
    });
    i.records.extend(records);
    (status, message)
}

async fn jsonline(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let outcome = jsonline_records(&inner, &headers, &body);
    answer(&inner, &uri, &headers, outcome)
}

/// What `/insert/jsonline` answers, with the records it accepts.
fn jsonline_records(
    inner: &Mutex<Inner>,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, String, Vec<Received>) {
    let fail = |s: StatusCode, m: String| (s, m, Vec::new());
    let body = match decode_body(headers, body) {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    if let Some(s) = gate(inner, &body) {
        return fail(s, "forced".into());
    }
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if h("VL-Msg-Field") != "message" || h("VL-Time-Field") != "_time" {
        return fail(
            StatusCode::BAD_REQUEST,
            "missing VL-Msg-Field/VL-Time-Field".into(),
        );
    }
    let stream_fields: Vec<String> = h("VL-Stream-Fields")
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut out = Vec::new();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = match serde_json::from_slice(line) {
            Ok(v @ Value::Object(_)) => v,
            _ => return fail(StatusCode::BAD_REQUEST, "invalid JSON line".into()),
        };
        let Some(t) = v["_time"].as_str() else {
            return fail(StatusCode::BAD_REQUEST, "no _time".into());
        };
        let Ok(ts) = t.parse::<jiff::Timestamp>() else {
            return fail(StatusCode::BAD_REQUEST, format!("bad _time {t}"));
        };
        if !v["message"].is_string() {
            return fail(StatusCode::BAD_REQUEST, "no message".into());
        }
        let labels = stream_fields
            .iter()
            .filter_map(|f| v[f.as_str()].as_str().map(|s| (f.clone(), s.to_owned())))
            .collect();
        out.push(Received {
            api: "jsonline",
            labels,
            time_ns: ts.as_nanosecond(),
            fields: v,
            path_and_query: String::new(),
        });
    }
    (StatusCode::OK, String::new(), out)
}

async fn loki(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let outcome = loki_records(&inner, &headers, &body);
    answer(&inner, &uri, &headers, outcome)
}

/// What the Loki push endpoints answer, with the records they accept.
fn loki_records(
    inner: &Mutex<Inner>,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, String, Vec<Received>) {
    let json =
        headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/json");
    let decoded = if json {
        decode_body(headers, body)
    } else {
        match headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
        {
            None | Some("") | Some("snappy") => snap::raw::Decoder::new()
                .decompress_vec(body)
                .map_err(|e| format!("bad snappy: {e}")),
            Some(other) => Err(format!("unexpected Content-Encoding {other} for protobuf")),
        }
    };
    let body = match decoded {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e, Vec::new()),
    };
    if let Some(s) = gate(inner, &body) {
        return (s, "forced".into(), Vec::new());
    }
    let parsed = if json {
        parse_loki_json(&body)
    } else {
        parse_loki_proto(&body)
    };
    match parsed {
        Ok(records) => (StatusCode::NO_CONTENT, String::new(), records),
        Err(e) => (StatusCode::BAD_REQUEST, e, Vec::new()),
    }
}

fn received(
    api: &'static str,
    labels: BTreeMap<String, String>,
    time_ns: i128,
    line: &str,
) -> Result<Received, String> {
    let mut fields: Value =
        serde_json::from_str(line).map_err(|e| format!("line is not JSON: {e}"))?;
    if let Value::Object(m) = &mut fields {
        for (k, v) in &labels {
            m.entry(k.clone())
                .or_insert_with(|| Value::String(v.clone()));
        }
    }
    Ok(Received {
        api,
        labels,
        time_ns,
        fields,
        path_and_query: String::new(),
    })
}

fn parse_loki_json(body: &[u8]) -> Result<Vec<Received>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for s in v["streams"].as_array().ok_or("no streams")? {
        let labels: BTreeMap<String, String> = s["stream"]
            .as_object()
            .ok_or("no stream")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
            .collect();
        if labels.is_empty() {
            return Err("stream without labels".into());
        }
        for value in s["values"].as_array().ok_or("no values")? {
            let arr = value.as_array().ok_or("value is not an array")?;
            if !(2..=3).contains(&arr.len()) {
                return Err("value must have 2 or 3 elements".into());
            }
            let ts: i128 = arr[0]
                .as_str()
                .ok_or("timestamp must be a string")?
                .parse()
                .map_err(|_| "bad timestamp")?;
            out.push(received(
                "loki_json",
                labels.clone(),
                ts,
                arr[1].as_str().ok_or("line must be a string")?,
            )?);
        }
    }
    Ok(out)
}

/// A minimal protobuf wire-format reader.
struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    /// Next (field number, wire type, payload for LEN or the varint value).
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wt) = (key >> 3, key & 7);
        let f = match wt {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.pos += 8;
                Field::Skip
            }
            2 => {
                let len = self.varint()? as usize;
                let end = self
                    .pos
                    .checked_add(len)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or("truncated LEN")?;
                let b = &self.buf[self.pos..end];
                self.pos = end;
                Field::Len(b)
            }
            5 => {
                self.pos += 4;
                Field::Skip
            }
            _ => return Err(format!("bad wire type {wt}")),
        };
        Ok(Some((field, f)))
    }
}

enum Field<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Skip,
}

/// Parses `{k="v", k2="v2"}` with Go string escapes, as Loki's label parser does.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("labels not in {}")?;
    let mut out = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("bad label {name}"));
        }
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!("invalid label name {name:?}"));
        }
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated label value")? {
                '"' => break,
                '\\' => match chars.next().ok_or("bad escape")? {
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    'r' => value.push('\r'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    c => return Err(format!("unknown escape \\{c}")),
                },
                c => value.push(c),
            }
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("duplicate label {name}"));
        }
    }
    if out.is_empty() {
        return Err("no labels".into());
    }
    Ok(out)
}

fn parse_loki_proto(body: &[u8]) -> Result<Vec<Received>, String> {
    let mut out = Vec::new();
    let mut req = Wire::new(body);
    while let Some((field, f)) = req.next()? {
        let (1, Field::Len(stream)) = (field, f) else {
            continue;
        };
        let mut labels = None;
        let mut entries = Vec::new();
        let mut s = Wire::new(stream);
        while let Some((field, f)) = s.next()? {
            match (field, f) {
                (1, Field::Len(b)) => {
                    labels = Some(parse_labels(
                        std::str::from_utf8(b).map_err(|e| e.to_string())?,
                    )?);
                }
                (2, Field::Len(b)) => entries.push(b),
                _ => {}
            }
        }
        let labels = labels.ok_or("stream without labels")?;
        for e in entries {
            let (mut secs, mut nanos, mut line) = (0i64, 0i64, None);
            let mut w = Wire::new(e);
            while let Some((field, f)) = w.next()? {
                match (field, f) {
                    (1, Field::Len(ts)) => {
                        let mut t = Wire::new(ts);
                        while let Some((field, f)) = t.next()? {
                            match (field, f) {
                                (1, Field::Varint(v)) => secs = v as i64,
                                (2, Field::Varint(v)) => nanos = v as i64,
                                _ => {}
                            }
                        }
                    }
                    (2, Field::Len(b)) => {
                        let text =
                            std::str::from_utf8(b).map_err(|e| format!("line not UTF-8: {e}"))?;
                        line = Some(text);
                    }
                    _ => {}
                }
            }
            let ts = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
            out.push(received(
                "loki_proto",
                labels.clone(),
                ts,
                line.ok_or("entry without line")?,
            )?);
        }
    }
    Ok(out)
}
