//! Prometheus text exposition format 0.0.4, written by hand so that metric names stay
//! byte-identical to the Go exporters we replace.
//!
//! `prometheus-client` only writes OpenMetrics, where every counter gains a `_total` suffix
//! (`pg_db_xact_commit` would become `pg_db_xact_commit_total`) and `# EOF` ends the body; the
//! dashboards and alert rules of our users read the Go names. [`TextEncoder`] writes families
//! exactly as named, as Go's promhttp does, and [`metrics_response`] serves them with the
//! 0.0.4 content type and gzip when asked.
//!
//! ```
//! use agent_kit::exposition::{MetricType, TextEncoder};
//! let mut body = String::new();
//! let mut enc = TextEncoder::new(&mut body);
//! let mut fam = enc.family("pg_db_xact_commit", "transactions committed", MetricType::Counter);
//! fam.sample(&[("datname", "app")], 42.0);
//! assert_eq!(
//!     body,
//!     concat!(
//!         "# HELP pg_db_xact_commit transactions committed\n",
//!         "# TYPE pg_db_xact_commit counter\n",
//!         "pg_db_xact_commit{datname=\"app\"} 42\n",
//!     )
//! );
//! ```

use std::fmt::Write as _;
use std::io::Write as _;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Content type of the text format 0.0.4, as Go's promhttp sends it.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `# TYPE` of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonically increasing value.
    Counter,
    /// A value that can go up and down.
    Gauge,
    /// Cumulative buckets with `_bucket`, `_sum` and `_count` samples.
    Histogram,
    /// Quantiles with `_sum` and `_count` samples.
    Summary,
    /// No type information.
    Untyped,
}

impl MetricType {
    /// The word used on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }
}

/// Writes metric families in the text format 0.0.4 into a `String`.
///
/// Constant labels (e.g. pg_exporter's `--label`) are appended to every sample. The caller
/// groups samples of one family together, as the format requires.
#[derive(Debug)]
pub struct TextEncoder<'a> {
    out: &'a mut String,
    const_labels: &'a [(String, String)],
}

impl<'a> TextEncoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut String) -> Self {
        TextEncoder {
            out,
            const_labels: &[],
        }
    }

    /// An encoder appending `const_labels` to every sample it writes.
    pub fn with_const_labels(out: &'a mut String, const_labels: &'a [(String, String)]) -> Self {
        TextEncoder { out, const_labels }
    }

    /// Starts a family: writes its `# HELP` and `# TYPE` lines and returns a writer for its
    /// samples.
    pub fn family(&mut self, name: &str, help: &str, kind: MetricType) -> FamilyWriter<'_> {
        write_header(self.out, name, help, kind);
        FamilyWriter {
            out: self.out,
            const_labels: self.const_labels,
            name: name.to_owned(),
        }
    }
}

/// Writes the samples of one family; see [`TextEncoder::family`].
#[derive(Debug)]
pub struct FamilyWriter<'a> {
    out: &'a mut String,
    const_labels: &'a [(String, String)],
    name: String,
}

impl FamilyWriter<'_> {
    /// Writes one sample named after the family.
    pub fn sample<K: AsRef<str>, V: AsRef<str>>(&mut self, labels: &[(K, V)], value: f64) {
        self.sample_with_suffix("", labels, value);
    }

    /// Writes one sample whose name is the family name plus `suffix` (`_bucket`, `_sum`,
    /// `_count`).
    pub fn sample_with_suffix<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        suffix: &str,
        labels: &[(K, V)],
        value: f64,
    ) {
        let pairs = labels.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).chain(
            self.const_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        write_sample(self.out, &self.name, suffix, pairs, value);
    }

    /// Writes one histogram series: a `_bucket` sample per upper bound of `bounds` and for
    /// `+Inf`, with an `le` label after `labels`, counting cumulatively the observations of
    /// `counts` (one per bucket, not cumulative, the last for `+Inf`), then `_sum` and
    /// `_count`.
    pub fn histogram<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        labels: &[(K, V)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        debug_assert_eq!(
            counts.len(),
            bounds.len() + 1,
            "a count per bucket and +Inf"
        );
        let les = bounds
            .iter()
            .map(f64::to_string)
            .chain(std::iter::once("+Inf".to_owned()));
        let mut cumulative = 0u64;
        for (le, n) in les.zip(counts) {
            cumulative += n;
            let pairs = labels
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_ref()))
                .chain(std::iter::once(("le", le.as_str())))
                .chain(
                    self.const_labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                );
            write_sample(self.out, &self.name, "_bucket", pairs, cumulative as f64);
        }
        self.sample_with_suffix("_sum", labels, sum);
        self.sample_with_suffix("_count", labels, cumulative as f64);
    }
}

/// Appends the `# HELP` and `# TYPE` lines of a family.
pub fn write_header(out: &mut String, name: &str, help: &str, kind: MetricType) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(out, help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind.as_str());
    out.push('\n');
}

/// Appends one sample line `name<suffix>{labels} value`. Engines that cache rendered samples
/// use this directly and add the family header once per scrape with [`write_header`].
pub fn write_sample<'l>(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    out.push('{');
    let start = out.len();
    write_labels(out, labels);
    if out.len() == start {
        out.pop();
    } else {
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// Appends a label set as a sample line holds it between its braces: `k="v",k2="v2"`, the
/// values escaped; nothing for no labels. Engines that keep one label set for several samples
/// render it once with this and write each sample with [`write_sample_with_labels`].
pub fn write_labels<'l>(out: &mut String, labels: impl IntoIterator<Item = (&'l str, &'l str)>) {
    let mut first = true;
    for (k, v) in labels {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
}

/// Appends one sample line `name{labels} value` whose `labels` were rendered by
/// [`write_labels`] (no braces when empty).
pub fn write_sample_with_labels(out: &mut String, name: &str, labels: &str, value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// Appends `v` as the text format spells numbers: integers without a fraction, `NaN`, `+Inf`,
/// `-Inf`, and otherwise the shortest representation that round-trips.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Exact: every integer below 2^53 is representable.
        let _ = write!(out, "{}", v as i64);
    } else if v.abs() >= 1e-4 && v.abs() < 1e15 {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Whether `name` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`,
/// which Prometheus reserves): the one rule of the suite, for collector labels, constant
/// labels and log_shipper's source and sink names alike (Go's client_golang applies the same
/// to pg_exporter's collector labels).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Serves an exposition `body` in the text format 0.0.4, gzip-compressed when the request's
/// `Accept-Encoding` allows gzip (as Prometheus and VictoriaMetrics send it).
pub fn metrics_response(body: String, request_headers: &HeaderMap) -> Response {
    let content_type = HeaderValue::from_static(TEXT_CONTENT_TYPE);
    if accepts_gzip(request_headers) {
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        if gz.write_all(body.as_bytes()).is_ok()
            && let Ok(compressed) = gz.finish()
        {
            return (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                ],
                compressed,
            )
                .into_response();
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Serves an exposition produced in `chunks` as the response body is sent, in the text format
/// 0.0.4, gzip-compressed chunk by chunk when the request's `Accept-Encoding` allows gzip: the
/// whole body is never held, neither plain nor compressed. A chunk is produced when the
/// connection is ready for more, so a slow client paces the producer.
pub fn metrics_response_stream<I>(chunks: I, request_headers: &HeaderMap) -> Response
where
    I: Iterator<Item = String> + Send + 'static,
{
    let content_type = HeaderValue::from_static(TEXT_CONTENT_TYPE);
    let ok = |chunk| Ok::<_, std::convert::Infallible>(chunk);
    if accepts_gzip(request_headers) {
        let body = axum::body::Body::from_stream(futures_util::stream::iter(
            GzipChunks::new(chunks).map(ok),
        ));
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            ],
            body,
        )
            .into_response();
    }
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        chunks
            .filter(|c| !c.is_empty())
            .map(String::into_bytes)
            .map(ok),
    ));
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Text chunks compressed into one gzip stream, handed on once [`GzipChunks::SEND_AT`] bytes
/// of it are ready (and the rest at the end).
struct GzipChunks<I> {
    chunks: I,
    gz: Option<flate2::write::GzEncoder<Vec<u8>>>,
}

impl<I> GzipChunks<I> {
    const SEND_AT: usize = 32 * 1024;

    fn new(chunks: I) -> Self {
        GzipChunks {
            chunks,
            gz: Some(flate2::write::GzEncoder::new(
                Vec::with_capacity(Self::SEND_AT * 2),
                flate2::Compression::fast(),
            )),
        }
    }
}

impl<I: Iterator<Item = String>> Iterator for GzipChunks<I> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            let gz = self.gz.as_mut()?;
            match self.chunks.next() {
                Some(chunk) => {
                    // Writing into a Vec cannot fail.
                    let _ = gz.write_all(chunk.as_bytes());
                    if gz.get_ref().len() >= Self::SEND_AT {
                        let ready =
                            std::mem::replace(gz.get_mut(), Vec::with_capacity(Self::SEND_AT * 2));
                        return Some(ready);
                    }
                }
                None => {
                    let rest = self.gz.take()?.finish().unwrap_or_default();
                    return Some(rest);
                }
            }
        }
    }
}

/// Whether `Accept-Encoding` lists gzip with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let zero_q = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero_q
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn golden_families() {
        let consts = vec![("cls".to_owned(), "pg-test".to_owned())];
        let mut body = String::new();
        let mut enc = TextEncoder::with_const_labels(&mut body, &consts);
        enc.family(
            "pg_up",
            "last scrape was able to connect to the server",
            MetricType::Gauge,
        )
        .sample::<&str, &str>(&[], 1.0);
        let mut f = enc.family(
            "pg_exporter_scrape_total_count",
            "times exporter was scraped",
            MetricType::Counter,
        );
        f.sample::<&str, &str>(&[], 1234.0);
        let mut h = enc.family(
            "pg_query_duration",
            "a \\ help\nline",
            MetricType::Histogram,
        );
        h.sample_with_suffix("_bucket", &[("le", "0.1")], 3.0);
        h.sample_with_suffix("_bucket", &[("le", "+Inf")], 4.0);
        h.sample_with_suffix::<&str, &str>("_sum", &[], 0.25);
        h.sample_with_suffix::<&str, &str>("_count", &[], 4.0);
        enc.family("pg_setting", "s", MetricType::Gauge)
            .sample(&[("name", "a\"b\\c\nd"), ("unit", "")], f64::NAN);
        let want = "\
# HELP pg_up last scrape was able to connect to the server
# TYPE pg_up gauge
pg_up{cls=\"pg-test\"} 1
# HELP pg_exporter_scrape_total_count times exporter was scraped
# TYPE pg_exporter_scrape_total_count counter
pg_exporter_scrape_total_count{cls=\"pg-test\"} 1234
# HELP pg_query_duration a \\\\ help\\nline
# TYPE pg_query_duration histogram
pg_query_duration_bucket{le=\"0.1\",cls=\"pg-test\"} 3
pg_query_duration_bucket{le=\"+Inf\",cls=\"pg-test\"} 4
pg_query_duration_sum{cls=\"pg-test\"} 0.25
pg_query_duration_count{cls=\"pg-test\"} 4
# HELP pg_setting s
# TYPE pg_setting gauge
pg_setting{name=\"a\\\"b\\\\c\\nd\",unit=\"\",cls=\"pg-test\"} NaN
";
        assert_eq!(body, want);
    }

    #[test]
    fn a_histogram_series() {
        let consts = vec![("cls".to_owned(), "pg-test".to_owned())];
        let mut body = String::new();
        let mut enc = TextEncoder::with_const_labels(&mut body, &consts);
        enc.family("d_seconds", "d", MetricType::Histogram)
            .histogram(&[("db", "app")], &[0.005, 1.0, 2.5], &[1, 0, 2, 3], 7.25);
        let want = "\
# HELP d_seconds d
# TYPE d_seconds histogram
d_seconds_bucket{db=\"app\",le=\"0.005\",cls=\"pg-test\"} 1
d_seconds_bucket{db=\"app\",le=\"1\",cls=\"pg-test\"} 1
d_seconds_bucket{db=\"app\",le=\"2.5\",cls=\"pg-test\"} 3
d_seconds_bucket{db=\"app\",le=\"+Inf\",cls=\"pg-test\"} 6
d_seconds_sum{db=\"app\",cls=\"pg-test\"} 7.25
d_seconds_count{db=\"app\",cls=\"pg-test\"} 6
";
        assert_eq!(body, want);
    }

    #[test]
    fn values() {
        let cases = [
            (0.0, "0"),
            (-3.0, "-3"),
            (1e6, "1000000"),
            (0.5, "0.5"),
            (1.5e-7, "1.5e-7"),
            (1.7e308, "1.7e308"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (1234567.125, "1234567.125"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            write_value(&mut s, v);
            assert_eq!(s, want);
            if v.is_finite() {
                assert_eq!(s.parse::<f64>().unwrap(), v, "round trip of {s}");
            }
        }
    }

    #[test]
    fn names() {
        assert!(is_valid_metric_name("pg_stat_bgwriter:rate1m"));
        assert!(!is_valid_metric_name("1abc"));
        assert!(!is_valid_metric_name("a-b"));
        assert!(is_valid_label_name("datname"));
        assert!(is_valid_label_name("_a1"));
        assert!(!is_valid_label_name("__name__"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name("1a"));
        assert!(!is_valid_label_name(""));
    }

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("deflate, gzip;q=0.9"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!accepts_gzip(&h));
    }

    #[tokio::test]
    async fn gzip_body_decodes_to_the_text() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let text = "# TYPE a gauge\na 1\n".repeat(100);
        let resp = metrics_response(text.clone(), &h);
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, text);

        let plain = metrics_response(text.clone(), &HeaderMap::new());
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[tokio::test]
    async fn streamed_chunks_arrive_whole_plain_and_gzipped() {
        // Enough text for several compressed pieces, in chunks of uneven sizes, empty ones too.
        let chunks: Vec<String> = (0..300u64)
            .map(|i| {
                (0..i % 7 * 40)
                    .map(|j| {
                        format!(
                            "a{{n=\"{i}\"}} {}\n",
                            (i * 1000 + j) * 2_654_435_761 % 1_000_000_007
                        )
                    })
                    .collect()
            })
            .collect();
        let text: String = chunks.concat();
        // Compressed pieces are handed on as they fill, not all at the end.
        assert!(GzipChunks::new(chunks.clone().into_iter()).count() > 3);
        let mut gz = HeaderMap::new();
        gz.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let resp = metrics_response_stream(chunks.clone().into_iter(), &gz);
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, text);

        let plain = metrics_response_stream(chunks.into_iter(), &HeaderMap::new());
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let bytes = axum::body::to_bytes(plain.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(bytes, text.as_bytes());

        // Nothing at all is still a valid gzip stream.
        let resp = metrics_response_stream(std::iter::empty(), &gz);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert!(decoded.is_empty());
    }

    #[test]
    fn labels_rendered_once_write_the_same_lines() {
        let pairs = [("name", "a\"b\\c\nd"), ("unit", "")];
        let mut line = String::new();
        write_sample(&mut line, "pg_setting", "", pairs, 1.5);
        let mut labels = String::new();
        write_labels(&mut labels, pairs);
        let mut again = String::new();
        write_sample_with_labels(&mut again, "pg_setting", &labels, 1.5);
        assert_eq!(again, line);
        let mut bare = String::new();
        write_sample_with_labels(&mut bare, "pg_up", "", 1.0);
        let mut want = String::new();
        write_sample(&mut want, "pg_up", "", [], 1.0);
        assert_eq!(bare, want);
        assert_eq!(bare, "pg_up 1\n");
    }
}
