//! Column values as PostgreSQL sends them, and their conversion to metric values and label
//! strings with the rules of the Go pg_exporter.
//!
//! Queries run on the extended protocol, so every column arrives in binary with its type OID;
//! [`Value::decode`] turns that into a [`Value`]. Pgbouncer's admin console only speaks the
//! simple protocol, whose values are text without types; those become [`Value::Text`].
//!
//! Conversion (see `pg_exporter.md` §1 "Value conversion rules"):
//! - metric values: numbers × `scale`; booleans 1/0 and timestamps as Unix seconds, both
//!   unscaled; text parsed as a number; NULL → `default` × `scale`, else NaN. Text that is no
//!   number (or beyond ±1.8e308, which Go's `ParseFloat` refuses), and types without a
//!   numeric meaning, are NaN as upstream, reported as [`NotANumber`];
//! - labels: integers in decimal, floats as Go's `%v`, booleans `true`/`false`, timestamps as
//!   Unix seconds, NULL as the empty string.

use std::fmt::Write as _;

use tokio_postgres::types::{FromSql, Kind, Type};

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_SECS: f64 = 946_684_800.0;

/// One decoded column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer type (also OIDs, XIDs, `pg_lsn`).
    Int(i64),
    /// A floating-point or numeric value.
    Float(f64),
    /// A timestamp or date, as Unix seconds.
    Time(f64),
    /// Text, or a type rendered as text.
    Text(String),
    /// A type we do not decode; carries the type name for the warning.
    Unsupported(String),
}

/// Raw access to a column: any type, binary bytes or NULL.
#[derive(Debug)]
pub struct RawColumn<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawColumn<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawColumn(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawColumn(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Why a value column's value became NaN although it is not NULL: the value is no number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotANumber {
    /// Text that does not parse as a number, or whose number is beyond the range of `f64`;
    /// carries the text, passwords masked and cut to [`NotANumber::SHOWN`] characters.
    Text(String),
    /// A type without a numeric meaning; carries the type name.
    Type(String),
}

impl NotANumber {
    /// How many characters of the text are kept.
    pub const SHOWN: usize = 40;

    fn text(text: &str) -> Self {
        let masked = agent_kit::redact::mask_password(text);
        let mut shown: String = masked.chars().take(Self::SHOWN).collect();
        if shown.len() < masked.len() {
            shown.push('…');
        }
        NotANumber::Text(shown)
    }
}

impl std::fmt::Display for NotANumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotANumber::Text(text) => write!(f, "text {text:?} is no number"),
            NotANumber::Type(ty) => write!(f, "type {ty} has no numeric value"),
        }
    }
}

/// Parses text as Go's `strconv.ParseFloat` does for upstream (after trimming blanks): an
/// infinity only when spelled out (`Inf`, `+Infinity`, …); a number beyond `f64`'s range is
/// an error, not ±Inf.
fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    let v: f64 = text.parse().ok()?;
    if v.is_infinite() {
        let word = text.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if word != "inf" && word != "infinity" {
            return None;
        }
    }
    Some(v)
}

impl Value {
    /// Decodes a binary column value of type `ty`.
    pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Value {
        let Some(raw) = raw else {
            return Value::Null;
        };
        decode_binary(ty, raw).unwrap_or_else(|| Value::Unsupported(ty.name().to_owned()))
    }

    /// A text value from the simple protocol (Pgbouncer); NULL stays NULL.
    pub fn from_text(text: Option<&str>) -> Value {
        match text {
            None => Value::Null,
            Some(t) => Value::Text(t.to_owned()),
        }
    }

    /// The metric value with pg_exporter's rules: `scale` applies to numbers and parsed text,
    /// not to booleans and timestamps; NULL becomes `default` × `scale`, else NaN. A value
    /// that is no number is an error: upstream emits NaN for it.
    pub fn to_metric(&self, scale: Option<f64>, default: Option<f64>) -> Result<f64, NotANumber> {
        let scale = scale.unwrap_or(1.0);
        Ok(match self {
            Value::Null => default.map_or(f64::NAN, |d| d * scale),
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Int(i) => *i as f64 * scale,
            Value::Float(f) => *f * scale,
            Value::Time(t) => t.trunc(),
            Value::Text(t) => parse_number(t).ok_or_else(|| NotANumber::text(t))? * scale,
            Value::Unsupported(ty) => return Err(NotANumber::Type(ty.clone())),
        })
    }

    /// The label string with pg_exporter's rules.
    pub fn to_label(&self) -> String {
        match self {
            Value::Null | Value::Unsupported(_) => String::new(),
            Value::Bool(b) => if *b { "true" } else { "false" }.to_owned(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => go_format_float(*f),
            Value::Time(t) => (t.trunc() as i64).to_string(),
            Value::Text(t) => t.clone(),
        }
    }

    /// Whether this is a boolean (predicate queries must return one).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

fn be<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
    raw.get(..N)?.try_into().ok()
}

fn decode_binary(ty: &Type, raw: &[u8]) -> Option<Value> {
    if let Kind::Domain(inner) = ty.kind() {
        return decode_binary(inner, raw);
    }
    if let Kind::Enum(_) = ty.kind() {
        return Some(Value::Text(String::from_utf8_lossy(raw).into_owned()));
    }
    let v = match *ty {
        Type::BOOL => Value::Bool(*raw.first()? != 0),
        Type::INT2 => Value::Int(i16::from_be_bytes(be(raw)?).into()),
        Type::INT4 => Value::Int(i32::from_be_bytes(be(raw)?).into()),
        Type::INT8 => Value::Int(i64::from_be_bytes(be(raw)?)),
        Type::OID
        | Type::XID
        | Type::CID
        | Type::REGCLASS
        | Type::REGPROC
        | Type::REGTYPE
        | Type::REGNAMESPACE
        | Type::REGROLE
        | Type::REGPROCEDURE
        | Type::REGOPER
        | Type::REGOPERATOR
        | Type::REGCONFIG
        | Type::REGDICTIONARY => Value::Int(u32::from_be_bytes(be(raw)?).into()),
        Type::XID8 | Type::PG_LSN => Value::Float(u64::from_be_bytes(be(raw)?) as f64),
        Type::FLOAT4 => Value::Float(f32::from_be_bytes(be(raw)?).into()),
        Type::FLOAT8 => Value::Float(f64::from_be_bytes(be(raw)?)),
        // Beyond f64's range: the digits as text, which upstream (lib/pq) also gets and
        // cannot parse either.
        Type::NUMERIC => match decode_numeric(raw)? {
            Numeric::Float(f) => Value::Float(f),
            Numeric::OutOfRange(text) => Value::Text(text),
        },
        Type::MONEY => Value::Float(i64::from_be_bytes(be(raw)?) as f64 / 100.0),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::UNKNOWN
        | Type::JSON
        | Type::XML
        | Type::CHAR => Value::Text(String::from_utf8_lossy(raw).into_owned()),
        Type::JSONB => Value::Text(String::from_utf8_lossy(raw.get(1..)?).into_owned()),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(be(raw)?);
            Value::Time(match micros {
                i64::MAX => f64::INFINITY,
                i64::MIN => f64::NEG_INFINITY,
                m => PG_EPOCH_OFFSET_SECS + m as f64 / 1e6,
            })
        }
        Type::DATE => {
            let days = i32::from_be_bytes(be(raw)?);
            Value::Time(match days {
                i32::MAX => f64::INFINITY,
                i32::MIN => f64::NEG_INFINITY,
                d => PG_EPOCH_OFFSET_SECS + f64::from(d) * 86_400.0,
            })
        }
        Type::TIME => Value::Float(i64::from_be_bytes(be(raw)?) as f64 / 1e6),
        Type::INTERVAL => {
            // Months count as 30 days, as PostgreSQL's EXTRACT(EPOCH FROM interval) does.
            let micros = i64::from_be_bytes(be(raw)?);
            let days = i32::from_be_bytes(be(raw.get(8..)?)?);
            let months = i32::from_be_bytes(be(raw.get(12..)?)?);
            Value::Float(
                micros as f64 / 1e6 + f64::from(days) * 86_400.0 + f64::from(months) * 2_592_000.0,
            )
        }
        Type::UUID => {
            let b: [u8; 16] = be(raw)?;
            let mut s = String::with_capacity(36);
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                let _ = write!(s, "{byte:02x}");
            }
            Value::Text(s)
        }
        Type::INET | Type::CIDR => Value::Text(decode_inet(raw, *ty == Type::CIDR)?),
        Type::BYTEA => {
            let mut s = String::with_capacity(2 + raw.len() * 2);
            s.push_str("\\x");
            for byte in raw {
                let _ = write!(s, "{byte:02x}");
            }
            Value::Text(s)
        }
        _ => return None,
    };
    Some(v)
}

/// A decoded NUMERIC.
#[derive(Debug, PartialEq)]
enum Numeric {
    /// Within `f64`'s range (or NaN, ±Infinity).
    Float(f64),
    /// Finite but beyond `f64`'s range: its value as scientific text.
    OutOfRange(String),
}

/// PostgreSQL's binary NUMERIC: ndigits, weight, sign, dscale, then base-10000 digits.
fn decode_numeric(raw: &[u8]) -> Option<Numeric> {
    let ndigits = u16::from_be_bytes(be(raw)?) as usize;
    let weight = i16::from_be_bytes(be(raw.get(2..)?)?);
    let sign = u16::from_be_bytes(be(raw.get(4..)?)?);
    match sign {
        0xC000 => return Some(Numeric::Float(f64::NAN)),
        0xD000 => return Some(Numeric::Float(f64::INFINITY)),
        0xF000 => return Some(Numeric::Float(f64::NEG_INFINITY)),
        _ => {}
    }
    // Accumulate as decimal text and let the float parser round correctly.
    let mut text = String::with_capacity(ndigits * 4 + 8);
    if sign == 0x4000 {
        text.push('-');
    }
    text.push_str("0.");
    for i in 0..ndigits {
        let d = u16::from_be_bytes(be(raw.get(8 + 2 * i..)?)?);
        let _ = write!(text, "{d:04}");
    }
    let _ = write!(text, "e{}", (i32::from(weight) + 1) * 4);
    let f: f64 = text.parse().ok()?;
    Some(if f.is_finite() {
        Numeric::Float(f)
    } else {
        Numeric::OutOfRange(text)
    })
}

fn decode_inet(raw: &[u8], is_cidr: bool) -> Option<String> {
    let family = *raw.first()?;
    let bits = *raw.get(1)?;
    let addr = raw.get(4..)?;
    let (text, max_bits) = match family {
        2 => (
            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(addr.get(..4)?).ok()?).to_string(),
            32,
        ),
        3 => (
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr.get(..16)?).ok()?).to_string(),
            128,
        ),
        _ => return None,
    };
    Some(if is_cidr || bits != max_bits {
        format!("{text}/{bits}")
    } else {
        text
    })
}

/// Formats a float as Go's `%v` does (`strconv.FormatFloat(f, 'g', -1, 64)`): the shortest
/// round-trip digits, in exponent form (`1e+06`) when the decimal exponent is below -4 or at
/// least 6, the precision Go uses for that decision with shortest formatting.
pub fn go_format_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits: "1.234567e6".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_conversion_rules() {
        let metric = |v: Value, scale, default| v.to_metric(scale, default).unwrap();
        assert_eq!(metric(Value::Int(5), Some(1e-3), None), 0.005);
        assert_eq!(metric(Value::Bool(true), Some(1e-3), None), 1.0);
        assert_eq!(
            metric(Value::Time(1_700_000_000.7), Some(1e-3), None),
            1_700_000_000.0
        );
        assert!(metric(Value::Null, None, None).is_nan());
        assert_eq!(metric(Value::Null, Some(2.0), Some(3.0)), 6.0);
        assert_eq!(metric(Value::Text(" 12.5".into()), None, None), 12.5);
        assert_eq!(metric(Value::Text("1e3".into()), Some(2.0), None), 2000.0);
        assert!(metric(Value::Text("NaN".into()), None, None).is_nan());
        for inf in ["Inf", "+inf", "Infinity", "-INFINITY"] {
            assert!(
                metric(Value::Text(inf.into()), None, None).is_infinite(),
                "{inf}"
            );
        }
    }

    #[test]
    fn values_that_are_no_number() {
        let bad = |v: Value| v.to_metric(None, None).unwrap_err();
        assert_eq!(
            bad(Value::Text("0/3000060".into())),
            NotANumber::Text("0/3000060".into())
        );
        assert_eq!(
            bad(Value::Text("hello".into())).to_string(),
            "text \"hello\" is no number"
        );
        // Go's ParseFloat refuses what overflows f64, where Rust's gives ±Inf.
        assert_eq!(
            bad(Value::Text("1e400".into())),
            NotANumber::Text("1e400".into())
        );
        assert!(matches!(
            bad(Value::Text("-1e400".into())),
            NotANumber::Text(_)
        ));
        assert_eq!(
            bad(Value::Unsupported("tsvector".into())).to_string(),
            "type tsvector has no numeric value"
        );
        // Long text is cut, and a password in it masked.
        let NotANumber::Text(shown) = bad(Value::Text("x".repeat(100))) else {
            unreachable!()
        };
        assert_eq!(shown, format!("{}…", "x".repeat(NotANumber::SHOWN)));
        let shown = bad(Value::Text("host=h password=secret".into())).to_string();
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn label_conversion_rules() {
        assert_eq!(Value::Null.to_label(), "");
        assert_eq!(Value::Bool(false).to_label(), "false");
        assert_eq!(Value::Int(-42).to_label(), "-42");
        assert_eq!(Value::Float(1e6).to_label(), "1e+06");
        assert_eq!(Value::Time(1_700_000_000.9).to_label(), "1700000000");
    }

    #[test]
    fn go_float_formatting() {
        let cases = [
            (1e6, "1e+06"),
            (123456.0, "123456"),
            (0.5, "0.5"),
            (1234567.0, "1.234567e+06"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-2.5e21, "-2.5e+21"),
            (f64::INFINITY, "+Inf"),
        ];
        for (f, want) in cases {
            assert_eq!(go_format_float(f), want, "{f}");
        }
    }

    #[test]
    fn numeric_binary() {
        // 12345.678: ndigits 3, weight 1, sign +, dscale 3, digits 1 2345 6780.
        let raw = [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1A, 0x7C];
        assert_eq!(decode_numeric(&raw), Some(Numeric::Float(12345.678)));
        // -0.05: weight -1, digits 500.
        let raw = [0, 1, 0xFF, 0xFF, 0x40, 0, 0, 2, 0x01, 0xF4];
        assert_eq!(decode_numeric(&raw), Some(Numeric::Float(-0.05)));
        assert_eq!(
            decode_numeric(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Some(Numeric::Float(0.0))
        );
        assert!(matches!(
            decode_numeric(&[0, 0, 0, 0, 0xC0, 0, 0, 0]),
            Some(Numeric::Float(f)) if f.is_nan()
        ));
        // 1e400: weight 100, digit 1.
        let raw = [0, 1, 0, 100, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            decode_numeric(&raw),
            Some(Numeric::OutOfRange("0.0001e404".to_owned()))
        );
        assert!(
            Value::decode(&Type::NUMERIC, Some(&raw))
                .to_metric(None, None)
                .is_err()
        );
    }

    #[test]
    fn timestamps_and_intervals() {
        let epoch = Value::decode(&Type::TIMESTAMPTZ, Some(&0i64.to_be_bytes()));
        assert_eq!(epoch, Value::Time(946_684_800.0));
        let mut iv = Vec::new();
        iv.extend_from_slice(&1_500_000i64.to_be_bytes());
        iv.extend_from_slice(&1i32.to_be_bytes());
        iv.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            Value::decode(&Type::INTERVAL, Some(&iv)),
            Value::Float(86_401.5)
        );
    }
}
