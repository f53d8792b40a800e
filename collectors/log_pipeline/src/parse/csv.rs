//! CSV fields as PostgreSQL's csvlog writes them: `"` quotes, `""` inside quotes, empty
//! unquoted fields for NULL, newlines allowed inside quotes.

use std::borrow::Cow;

/// Splits one csvlog record into its fields. Lenient: an unterminated quote ends at the end of
/// the text (a record truncated for size), characters after a closing quote are kept.
/// Fields without doubled quotes borrow from `s`.
pub fn parse_csv_fields(s: &str) -> Vec<Cow<'_, str>> {
    let mut fields = Vec::with_capacity(26);
    let mut split = Splitter::new(s);
    while let Some(span) = split.next_span() {
        fields.push(span.get(s));
    }
    fields
}

/// Where one field lies in the record: its content (`""` still doubled when `doubled`) and
/// what followed a closing quote before the next comma.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Span {
    start: usize,
    end: usize,
    doubled: bool,
    tail: (usize, usize),
}

impl Span {
    /// The field's value in `s`, the record it was found in.
    pub(super) fn get(self, s: &str) -> Cow<'_, str> {
        let mut field: Cow<'_, str> = if self.doubled {
            // Inside the quotes every `"` is the first of a `""` pair.
            let mut out = String::with_capacity(self.end - self.start);
            let mut rest = &s[self.start..self.end];
            while let Some(k) = rest.find('"') {
                out.push_str(&rest[..=k]);
                rest = &rest[k + 1..];
                rest = rest.strip_prefix('"').unwrap_or(rest);
            }
            out.push_str(rest);
            Cow::Owned(out)
        } else {
            Cow::Borrowed(&s[self.start..self.end])
        };
        if self.tail.0 < self.tail.1 {
            field.to_mut().push_str(&s[self.tail.0..self.tail.1]);
        }
        field
    }
}

/// Index of the first `c` in `b` at or after `from`. Most csvlog fields are a few bytes long,
/// where memchr's per-call setup costs more than the search: this tests 8 bytes at a time
/// (SWAR) inline.
fn find_byte(b: &[u8], from: usize, c: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = ONES * u64::from(c);
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w) ^ pattern;
        // The lowest set bit marks the first byte equal to `c` exactly (a borrow can only
        // produce false marks above a true one).
        let found = x.wrapping_sub(ONES) & !x & HIGH;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i.min(b.len())..]
        .iter()
        .position(|&x| x == c)
        .map(|k| i + k)
}

/// Finds the fields of a record one at a time, without allocating. Every index it cuts at
/// is that of an ASCII `"` or `,`, so slices of the `&str` stay on character boundaries.
#[derive(Debug)]
pub(super) struct Splitter<'a> {
    b: &'a [u8],
    i: usize,
    done: bool,
}

impl<'a> Splitter<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Splitter {
            b: s.as_bytes(),
            i: 0,
            done: false,
        }
    }

    pub(super) fn next_span(&mut self) -> Option<Span> {
        if self.done {
            return None;
        }
        let b = self.b;
        let i = self.i;
        if b.get(i) == Some(&b'"') {
            // Quoted: up to a quote not followed by another.
            let start = i + 1;
            let mut j = start;
            let mut doubled = false;
            let end;
            loop {
                match find_byte(b, j, b'"') {
                    None => {
                        end = b.len();
                        j = b.len();
                        break;
                    }
                    Some(k) => {
                        j = k;
                        if b.get(j + 1) == Some(&b'"') {
                            doubled = true;
                            j += 2;
                        } else {
                            end = j;
                            j += 1;
                            break;
                        }
                    }
                }
            }
            // Anything between the closing quote and the next comma is kept.
            let next = find_byte(b, j, b',');
            let tail_end = next.unwrap_or(b.len());
            match next {
                Some(k) => self.i = k + 1,
                None => self.done = true,
            }
            Some(Span {
                start,
                end,
                doubled,
                tail: if j < tail_end { (j, tail_end) } else { (0, 0) },
            })
        } else {
            let end = match find_byte(b, i, b',') {
                Some(k) => {
                    self.i = k + 1;
                    k
                }
                None => {
                    self.done = true;
                    b.len()
                }
            };
            Some(Span {
                start: i,
                end,
                ..Span::default()
            })
        }
    }
}

/// Appends `value` as csvlog writes a text field: quoted, `"` doubled; `None` as an empty
/// unquoted field.
pub fn write_csv_field(out: &mut String, value: Option<&str>) {
    if let Some(v) = value {
        out.push('"');
        for c in v.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(
            parse_csv_fields(
                r#"a,"b,c","d""e",,"x
y""#
            ),
            vec!["a", "b,c", "d\"e", "", "x\ny"]
        );
        assert_eq!(
            parse_csv_fields(r#"1,"unterminated"#),
            vec!["1", "unterminated"]
        );
        let mut s = String::new();
        write_csv_field(&mut s, Some("a\"b"));
        s.push(',');
        write_csv_field(&mut s, None);
        assert_eq!(s, "\"a\"\"b\",");
    }

    /// The splitter as first written (byte loops), to compare the memchr one against.
    fn reference(s: &str) -> Vec<Cow<'_, str>> {
        let b = s.as_bytes();
        let mut fields = Vec::new();
        let mut i = 0;
        loop {
            if i < b.len() && b[i] == b'"' {
                let start = i + 1;
                let mut j = start;
                let mut doubled = false;
                let end;
                loop {
                    match b[j..].iter().position(|&c| c == b'"') {
                        None => {
                            end = b.len();
                            j = b.len();
                            break;
                        }
                        Some(k) => {
                            j += k;
                            if b.get(j + 1) == Some(&b'"') {
                                doubled = true;
                                j += 2;
                            } else {
                                end = j;
                                j += 1;
                                break;
                            }
                        }
                    }
                }
                let mut field: Cow<'_, str> = if doubled {
                    Cow::Owned(s[start..end].replace("\"\"", "\""))
                } else {
                    Cow::Borrowed(&s[start..end])
                };
                let next = b[j..].iter().position(|&c| c == b',').map(|k| j + k);
                let tail_end = next.unwrap_or(b.len());
                if j < tail_end {
                    field.to_mut().push_str(&s[j..tail_end]);
                }
                fields.push(field);
                match next {
                    Some(k) => i = k + 1,
                    None => break,
                }
            } else {
                match b[i..].iter().position(|&c| c == b',') {
                    Some(k) => {
                        fields.push(Cow::Borrowed(&s[i..i + k]));
                        i += k + 1;
                    }
                    None => {
                        fields.push(Cow::Borrowed(&s[i..]));
                        break;
                    }
                }
            }
        }
        fields
    }

    #[test]
    fn same_fields_as_the_byte_loop_splitter() {
        let alphabet = ['a', ',', '"', '\n', 'é', ' '];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..12 {
            for _ in 0..2000 {
                let s: String = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        alphabet[(x % alphabet.len() as u64) as usize]
                    })
                    .collect();
                assert_eq!(parse_csv_fields(&s), reference(&s), "{s:?}");
            }
        }
    }
}
