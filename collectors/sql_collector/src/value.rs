//! Column values as PostgreSQL sends them, and their conversion to metric values and label
//! strings with the rules of the Go pg_exporter.
//!
//! Queries run on the extended protocol, so every column arrives in binary with its type OID;
//! [`Value::decode`] turns that into a [`Value`]. Pgbouncer's admin console only speaks the
//! simple protocol, whose values are text without types; those become [`Value::Text`].
//!
//! Conversion, by the Go pg_exporter's rules (stated here in full; the tests in this file pin
//! them):
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

/// Parses text as Go's `strconv.ParseFloat(text, 64)`, which upstream applies to text
/// values:
/// - the whole text is the number: no blank before or after it;
/// - an optional sign, then decimal digits with an optional `.` and `e` exponent, or after
///   `0x` hexadecimal digits with an optional `.` and a **required** `p` exponent (a
///   decimal power of two): `0x1p4` is 16, `0x1` is no number;
/// - `_` may group digits (`1_000`, `0x_1p4`): only between two digits, or between the
///   `0x` prefix and a digit;
/// - `inf`, `infinity` (signed or not) and `nan` (unsigned) in any case;
/// - beyond `f64`'s range is an error, not ±Inf; below it rounds to 0.
fn parse_number(text: &str) -> Option<f64> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let sign = |v: f64| if negative { -v } else { v };
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity") {
        return Some(sign(f64::INFINITY));
    }
    if text.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    if text.contains('_') && !underscores_group_digits(unsigned) {
        return None;
    }
    let v = match unsigned.as_bytes() {
        [b'0', b'x' | b'X', _, ..] => parse_hex(&unsigned[2..])?,
        _ => {
            // Rust's grammar for decimals is Go's once the words (above) and the grouping
            // underscores are out of the way.
            let digits = if unsigned.contains('_') {
                std::borrow::Cow::Owned(unsigned.replace('_', ""))
            } else {
                std::borrow::Cow::Borrowed(unsigned)
            };
            if !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                return None;
            }
            digits.parse::<f64>().ok()?
        }
    };
    v.is_finite().then(|| sign(v))
}

/// Go's rule for `_` in a number (after its sign): each one between two digits, or between
/// a `0x`/`0o`/`0b` prefix and a digit (hexadecimal digits count after `0x`).
fn underscores_group_digits(unsigned: &str) -> bool {
    let bytes = unsigned.as_bytes();
    let (hex, body, mut after_digit) = match bytes {
        [b'0', p, ..] if matches!(p.to_ascii_lowercase(), b'x' | b'o' | b'b') => {
            (p.eq_ignore_ascii_case(&b'x'), &bytes[2..], true)
        }
        _ => (false, bytes, false),
    };
    let mut after_underscore = false;
    for &c in body {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            (after_digit, after_underscore) = (true, false);
        } else if c == b'_' {
            if !after_digit {
                return false;
            }
            (after_digit, after_underscore) = (false, true);
        } else if after_underscore {
            return false;
        } else {
            after_digit = false;
        }
    }
    !after_underscore
}

/// A hexadecimal float after its `0x` (grouping underscores already checked): digits with at
/// most one `.`, then `p`, an optional sign and decimal digits; rounded to nearest, ties to
/// even; `None` if malformed or beyond `f64`'s range.
fn parse_hex(text: &str) -> Option<f64> {
    let (mantissa, exponent) = text.split_once(['p', 'P'])?;
    let exponent = exponent.replace('_', "");
    let (exp_negative, exp_digits) = match exponent.as_bytes().first()? {
        b'+' => (false, &exponent[1..]),
        b'-' => (true, &exponent[1..]),
        _ => (false, exponent.as_str()),
    };
    if exp_digits.is_empty() || !exp_digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // Beyond ±100000 the result is 0 or out of range whatever the mantissa's 64 bits.
    let exp2 = exp_digits
        .bytes()
        .fold(0i64, |e, c| (e * 10 + i64::from(c - b'0')).min(100_000));
    let exp2 = if exp_negative { -exp2 } else { exp2 };

    // The first 60-odd significant bits, exactly; `sticky` if a later digit is not 0.
    let (mut bits, mut scale, mut sticky) = (0u64, exp2, false);
    let (mut dot, mut any_digit) = (false, false);
    for c in mantissa.chars().filter(|&c| c != '_') {
        if c == '.' && !dot {
            dot = true;
            continue;
        }
        let d = u64::from(c.to_digit(16)?);
        any_digit = true;
        if bits >> 60 == 0 {
            bits = bits << 4 | d;
            if dot {
                scale -= 4;
            }
        } else {
            sticky |= d != 0;
            if !dot {
                scale += 4;
            }
        }
    }
    if !any_digit {
        return None;
    }
    round_binary(bits, sticky, scale)
}

/// `bits × 2^scale` (plus less than one unit of `bits` when `sticky`) rounded to the nearest
/// `f64`, ties to even, subnormals included; `None` beyond `f64::MAX`.
fn round_binary(bits: u64, sticky: bool, scale: i64) -> Option<f64> {
    if bits == 0 {
        return Some(0.0);
    }
    let shift = bits.leading_zeros();
    let bits = bits << shift;
    let scale = scale - i64::from(shift);
    // The value is in [2^top, 2^(top+1)).
    let top = scale + 63;
    if top > 1023 {
        return None;
    }
    // Significant bits kept: 53, fewer for a subnormal; none left means below half of the
    // smallest subnormal, which rounds to 0.
    let keep = 53 - (-1022 - top).max(0);
    if keep < 0 {
        return Some(0.0);
    }
    let dropped = 64 - keep as u32;
    let wide = u128::from(bits);
    let kept = (wide >> dropped) as u64;
    let rest = wide & ((1u128 << dropped) - 1);
    let half = 1u128 << (dropped - 1);
    let up = rest > half || (rest == half && (sticky || kept & 1 == 1));
    let kept = kept + u64::from(up);
    // Exact: `kept` has at most 54 bits and the result is representable (or overflows).
    let exponent = scale + i64::from(dropped);
    let v = if exponent < -1022 {
        kept as f64 * pow2(exponent + 64) * pow2(-64)
    } else {
        kept as f64 * pow2(exponent)
    };
    v.is_finite().then_some(v)
}

/// 2^`e` for `e` in the normal range, -1022 ..= 1023.
fn pow2(e: i64) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
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
        self.label().into_owned()
    }

    /// The label string with pg_exporter's rules, borrowed when the value is text.
    pub fn label(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Value::Null | Value::Unsupported(_) => Cow::Borrowed(""),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Float(f) => Cow::Owned(go_format_float(*f)),
            Value::Time(t) => Cow::Owned((t.trunc() as i64).to_string()),
            Value::Text(t) => Cow::Borrowed(t),
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
        assert_eq!(metric(Value::Text("12.5".into()), None, None), 12.5);
        assert_eq!(metric(Value::Text("0x1p4".into()), Some(2.0), None), 32.0);
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

    /// `parse_number` against Go's `strconv.ParseFloat(s, 64)`: `Some(v)` where Go returns
    /// `v` without error, `None` where it returns an error (upstream's NaN). The expected
    /// values are those of Go's own test table.
    fn go_parse_float(cases: &[(&str, Option<f64>)]) {
        for &(text, want) in cases {
            let got = parse_number(text);
            let same = match (got, want) {
                (Some(g), Some(w)) => g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                (None, None) => true,
                _ => false,
            };
            assert!(same, "{text:?}: got {got:?}, Go gives {want:?}");
        }
    }

    #[test]
    fn go_decimal_numbers() {
        go_parse_float(&[
            ("1", Some(1.0)),
            ("+1", Some(1.0)),
            ("-0.1", Some(-0.1)),
            ("-0", Some(-0.0)),
            ("1e23", Some(1e23)),
            ("1E23", Some(1e23)),
            ("625e-3", Some(0.625)),
            ("1.", Some(1.0)),
            (".5", Some(0.5)),
            ("+.5", Some(0.5)),
            ("0e+01234567890123456789", Some(0.0)),
            ("-0.00e-01234567890123456789", Some(-0.0)),
            ("1.7976931348623157e308", Some(f64::MAX)),
            ("5e-324", Some(5e-324)),
            ("2e-324", Some(0.0)),
            ("1e-18446744073709551616", Some(0.0)),
            ("2.2250738585072012e-308", Some(2.2250738585072014e-308)),
            ("", None),
            (".", None),
            ("1x", None),
            ("1.1.", None),
            ("1e", None),
            ("1e-", None),
            (".e-1", None),
            ("1\x00.2", None),
            ("1p2", None),
            ("e5", None),
            ("+-1", None),
            ("0b1", None),
            ("0o17", None),
        ]);
    }

    #[test]
    fn go_out_of_range_is_an_error_not_an_infinity() {
        go_parse_float(&[
            ("1.7976931348623159e308", None),
            ("-1.7976931348623159e308", None),
            ("1e309", None),
            ("1e400", None),
            ("-1e400", None),
            ("1e+18446744073709551616", None),
            ("0x1p1024", None),
            ("-0x1p1024", None),
            ("0x1.fffffffffffff8p1023", None),
            ("0x1p+18446744073709551616", None),
        ]);
    }

    #[test]
    fn go_words() {
        go_parse_float(&[
            ("inf", Some(f64::INFINITY)),
            ("-Inf", Some(f64::NEG_INFINITY)),
            ("+INF", Some(f64::INFINITY)),
            ("Infinity", Some(f64::INFINITY)),
            ("-Infinity", Some(f64::NEG_INFINITY)),
            ("+INFINITY", Some(f64::INFINITY)),
            ("nan", Some(f64::NAN)),
            ("NaN", Some(f64::NAN)),
            ("NAN", Some(f64::NAN)),
            // NaN takes no sign; a word is whole or nothing.
            ("+nan", None),
            ("-NaN", None),
            ("infin", None),
            ("infinityy", None),
            ("nan(1)", None),
            ("in_f", None),
        ]);
    }

    #[test]
    fn go_hexadecimal_numbers_need_a_binary_exponent() {
        go_parse_float(&[
            ("0x1p4", Some(16.0)),
            ("0X1P4", Some(16.0)),
            ("+0x1p4", Some(16.0)),
            ("0x1p0", Some(1.0)),
            ("0x1p-1", Some(0.5)),
            ("0x1ep-1", Some(15.0)),
            ("-0x1ep-1", Some(-15.0)),
            ("0x1p-200", Some(6.223015277861142e-61)),
            ("0x1p200", Some(1.6069380442589903e60)),
            ("0x1fFe2.p0", Some(131042.0)),
            ("0x1fFe2.P0", Some(131042.0)),
            ("-0x2p3", Some(-16.0)),
            ("0x0.fp4", Some(15.0)),
            ("0x0.fp0", Some(0.9375)),
            ("0x1p+2", Some(4.0)),
            ("0x.1p+2", Some(0.25)),
            ("0x.1p-2", Some(0.015625)),
            ("-0x0p+01234567890123456789", Some(-0.0)),
            ("0x0.00p-01234567890123456789", Some(0.0)),
            ("0x1.fffffffffffffp1023", Some(f64::MAX)),
            ("0x1fffffffffffffp+971", Some(f64::MAX)),
            ("0x.1fffffffffffffp1027", Some(f64::MAX)),
            ("0x1.fffffffffffff7fffp1023", Some(f64::MAX)),
            ("0x1.1111111111111p222", Some(7.18931911124017e66)),
            ("0x1p-4294967296", Some(0.0)),
            // No `p` exponent, no digit, or no exponent digit: no number.
            ("0x1e2", None),
            ("0x1", None),
            ("0x", None),
            ("0x.", None),
            ("0x.1", None),
            ("0x1p", None),
            ("0x.1p", None),
            ("0x1p+", None),
            ("0x1p-", None),
            ("0xp4", None),
            ("0x1.2.3p4", None),
            ("0x1g", None),
            ("0x-1p4", None),
        ]);
    }

    #[test]
    fn go_hexadecimal_rounding_and_subnormals() {
        let next_after_one = f64::from_bits(1f64.to_bits() + 1);
        go_parse_float(&[
            // Halfway: ties to even; anything beyond half rounds up.
            ("0x1.00000000000008p0", Some(1.0)),
            ("0x1.00000000000007Fp0", Some(1.0)),
            ("0x1.000000000000081p0", Some(next_after_one)),
            ("0x1.00000000000009p0", Some(next_after_one)),
            (
                "0x1.00000000000018p0",
                Some(f64::from_bits(1f64.to_bits() + 2)),
            ),
            ("0x2.00000000000000p-1010", Some(1.8227805048890994e-304)),
            ("0x1.fffffffffffff7p-1010", Some(1.8227805048890992e-304)),
            ("0x1.fffffffffffff8p-1010", Some(1.8227805048890994e-304)),
            ("0x1.00000000000000p-1022", Some(2.2250738585072014e-308)),
            ("0x0.fffffffffffff0p-1022", Some(2.225073858507201e-308)),
            ("0x0.ffffffffffffe7p-1022", Some(2.2250738585072004e-308)),
            ("0x1.ffffffffffffe8p-1023", Some(2.225073858507201e-308)),
            ("0x0.00000003456788p-1022", Some(1.694649e-317)),
            ("0x0.00000003456789p-1022", Some(1.6946496e-317)),
            (
                "0x0.0000000345678800000000000000000000000001p-1022",
                Some(1.6946496e-317),
            ),
            ("0x0.00000000000058p-1022", Some(3e-323)),
            ("0x0.00000000000057p-1022", Some(2.5e-323)),
            ("0x0.00000000000010p-1022", Some(5e-324)),
            ("0x0.000000000000081p-1022", Some(5e-324)),
            ("0x0.00000000000008p-1022", Some(0.0)),
            ("0x0.00000000000007fp-1022", Some(0.0)),
        ]);
        let long = format!("0x1.00000000000008{}1p0", "0".repeat(10_000));
        go_parse_float(&[(&long, Some(next_after_one))]);
        let long = format!("0x2.{}p221", "2".repeat(4000));
        go_parse_float(&[(&long, Some(7.18931911124017e66))]);
    }

    #[test]
    fn go_underscores_only_between_digits() {
        go_parse_float(&[
            ("1_000", Some(1000.0)),
            ("1_23.50_0_0e+1_2", Some(1.235e14)),
            ("0x_1_2.3_4_5p+1_2", Some(74565.0)),
            ("-0x1_ep-1", Some(-15.0)),
            ("0x_1p4", Some(16.0)),
            ("-_123.5e+12", None),
            ("+_123.5e+12", None),
            ("_123.5e+12", None),
            ("1__23.5e+12", None),
            ("123_.5e+12", None),
            ("123._5e+12", None),
            ("123.5_e+12", None),
            ("123.5__0e+12", None),
            ("123.5e_+12", None),
            ("123.5e+_12", None),
            ("123.5e-_12", None),
            ("123.5e+1__2", None),
            ("123.5e+12_", None),
            ("-_0x12.345p+12", None),
            ("_0x12.345p+12", None),
            ("0x__12.345p+12", None),
            ("0x1__2.345p+12", None),
            ("0x12_.345p+12", None),
            ("0x12._345p+12", None),
            ("0x12.345_p+12", None),
            ("0x12.345p_+12", None),
            ("0x12.345p+_12", None),
            ("0x12.345p+12_", None),
        ]);
    }

    #[test]
    fn go_takes_no_blank_around_a_number() {
        // Upstream hands the text to ParseFloat as it is, so a padded number is no number.
        go_parse_float(&[
            (" 12.5", None),
            ("12.5 ", None),
            (" 0x1p4 ", None),
            ("\t1", None),
            ("1\n", None),
            ("1 000", None),
            (" inf", None),
            ("nan ", None),
        ]);
        assert_eq!(
            Value::Text(" 0x1p4 ".into()).to_metric(None, None),
            Err(NotANumber::Text(" 0x1p4 ".into()))
        );
    }

    proptest::proptest! {
        #![proptest_config({
            let mut config = proptest::test_runner::Config::default();
            if std::env::var_os("PROPTEST_CASES").is_none() {
                config.cases = 2000;
            }
            config
        })]

        /// A hexadecimal mantissa of up to 32 digits (the last 16 only felt as "not zero")
        /// rounds as Rust's `u128 as f64` does: to nearest, ties to even.
        #[test]
        fn hex_rounds_to_nearest_even(m in 1u128.., e in -700i64..700) {
            let want = m as f64 * pow2(e);
            proptest::prop_assert_eq!(
                parse_number(&format!("0x{m:x}p{e}")).map(f64::to_bits),
                Some(want.to_bits())
            );
            // Digits after the point move the exponent, underscores change nothing.
            let digits = format!("{m:x}");
            let (int, frac) = digits.split_at(digits.len().div_ceil(2));
            let shifted = format!("0x{int}.{}p{}", frac.replace("", "_").trim_matches('_'), e + 4 * frac.len() as i64);
            proptest::prop_assert_eq!(parse_number(&shifted).map(f64::to_bits), Some(want.to_bits()));
        }

        /// Every finite `f64`, written exactly in hexadecimal, subnormals included, or in
        /// Rust's shortest decimal, reads back as itself.
        #[test]
        fn every_float_reads_back(bits in proptest::prelude::any::<u64>()) {
            let f = f64::from_bits(bits);
            proptest::prop_assume!(f.is_finite());
            let fraction = bits & ((1 << 52) - 1);
            let biased = (bits >> 52) & 0x7ff;
            let sign = if f.is_sign_negative() { "-" } else { "" };
            let hex = if biased == 0 {
                format!("{sign}0x0.{fraction:013x}p-1022")
            } else {
                format!("{sign}0x1.{fraction:013x}p{}", biased as i64 - 1023)
            };
            proptest::prop_assert_eq!(parse_number(&hex).map(f64::to_bits), Some(bits));
            proptest::prop_assert_eq!(parse_number(&format!("{f:?}")).map(f64::to_bits), Some(bits));
        }

        /// Any text is a number or not, without a panic.
        #[test]
        fn any_text(text in "[-+0-9a-fA-FxXpP._ inIN]{0,40}") {
            let _ = parse_number(&text);
        }
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
