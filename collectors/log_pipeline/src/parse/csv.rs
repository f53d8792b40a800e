//! CSV fields as PostgreSQL's csvlog writes them: `"` quotes, `""` inside quotes, empty
//! unquoted fields for NULL, newlines allowed inside quotes.

use std::borrow::Cow;

/// Splits one csvlog record into its fields. Lenient: an unterminated quote ends at the end of
/// the text (a record truncated for size), characters after a closing quote are kept.
/// Fields without doubled quotes borrow from `s`.
pub fn parse_csv_fields(s: &str) -> Vec<Cow<'_, str>> {
    let b = s.as_bytes();
    let mut fields = Vec::with_capacity(26);
    let mut i = 0;
    loop {
        if i < b.len() && b[i] == b'"' {
            // Quoted: up to a quote not followed by another.
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
            // Anything between the closing quote and the next comma is kept.
            let next = b[j.min(b.len())..]
                .iter()
                .position(|&c| c == b',')
                .map(|k| j + k);
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
}
