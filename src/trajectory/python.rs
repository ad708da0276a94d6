//! Python-compatible text forms of JSON values, so that what we render equals
//! what the Python tools render byte for byte: `json.dumps` (the `tojson`
//! filter Hugging Face installs in chat templates), `repr` (the paper's plain
//! renderer formats tool-call arguments with an f-string) and `str.strip`.

use serde_json::Value;
use std::fmt::Write;

/// Python's `str.isspace` for one character: Rust's `char::is_whitespace`
/// plus the four ASCII information separators U+001C–U+001F.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` (no argument).
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `json.dumps(value, ensure_ascii=.., indent=.., sort_keys=..)`
/// with the default separators (`", "` and `": "`, or `","` when indenting).
pub fn json_dumps(
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
) -> String {
    let mut out = String::new();
    let opts = DumpOptions {
        indent,
        sort_keys,
        ensure_ascii,
    };
    dump(&mut out, value, &opts, 0);
    out
}

struct DumpOptions {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn dump(out: &mut String, value: &Value, opts: &DumpOptions, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number_text(n, true)),
        Value::String(s) => json_string(out, s, opts.ensure_ascii),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(out, opts, depth + 1, i == 0);
                dump(out, item, opts, depth + 1);
            }
            close(out, opts, depth, ']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                separator(out, opts, depth + 1, i == 0);
                json_string(out, k, opts.ensure_ascii);
                out.push_str(": ");
                dump(out, v, opts, depth + 1);
            }
            close(out, opts, depth, '}');
        }
    }
}

fn separator(out: &mut String, opts: &DumpOptions, depth: usize, first: bool) {
    match opts.indent {
        Some(n) => {
            if !first {
                out.push(',');
            }
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
        None if !first => out.push_str(", "),
        None => {}
    }
}

fn close(out: &mut String, opts: &DumpOptions, depth: usize, bracket: char) {
    if let Some(n) = opts.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * depth));
    }
    out.push(bracket);
}

fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON number as Python writes it: integers as is, floats with `repr`
/// (`json.dumps` spells non-finite floats `NaN`/`Infinity`, `repr` `nan`/`inf`).
fn number_text(n: &serde_json::Number, json: bool) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    match (f.is_finite(), json) {
        (true, _) => float_repr(f),
        (false, true) if f.is_nan() => "NaN".into(),
        (false, true) => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        (false, false) if f.is_nan() => "nan".into(),
        (false, false) => if f > 0.0 { "inf" } else { "-inf" }.into(),
    }
}

/// Python's `repr(float)` for a finite float: the shortest round-trip digits,
/// positional for decimal exponents in [-4, 16), scientific (`1e+16`) otherwise.
pub fn float_repr(f: f64) -> String {
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        if exp < 0 {
            let zeros = "0".repeat((-exp - 1) as usize);
            format!("{sign}0.{zeros}{digits}")
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                let pad = "0".repeat(int_len - digits.len());
                format!("{sign}{digits}{pad}.0")
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python's `str(value)` for a value loaded with `json.loads`: a string is
/// itself, anything else its `repr`.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr` of a value loaded with `json.loads` (`{'a': [1, True, None]}`).
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    repr_into(&mut out, value);
    out
}

fn repr_into(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Value::Number(n) => out.push_str(&number_text(n, false)),
        Value::String(s) => string_repr(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                string_repr(out, k);
                out.push_str(": ");
                repr_into(out, v);
            }
            out.push('}');
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`;
/// non-printable characters escaped. Printability follows Python for ASCII,
/// Latin-1 and the common format/space characters; rarer unassigned code
/// points are written as they are.
fn string_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !printable(c) => {
                let code = c as u32;
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn printable(c: char) -> bool {
    let code = c as u32;
    !(code < 0x20
        || (0x7f..=0xa0).contains(&code)
        || code == 0xad
        || c == '\u{1680}'
        || (0x2000..=0x200f).contains(&code)
        || (0x2028..=0x202f).contains(&code)
        || (0x205f..=0x2064).contains(&code)
        || c == '\u{3000}'
        || c == '\u{feff}'
        || (0xe000..=0xf8ff).contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_dumps_uses_python_separators_and_keeps_unicode() {
        let v = json!({"b": [1, 2.5, null], "a": "日本\n\"x\"", "c": {}});
        assert_eq!(
            json_dumps(&v, None, false, false),
            r#"{"b": [1, 2.5, null], "a": "日本\n\"x\"", "c": {}}"#
        );
        assert_eq!(
            json_dumps(&v, None, true, true),
            r#"{"a": "\u65e5\u672c\n\"x\"", "b": [1, 2.5, null], "c": {}}"#
        );
    }

    #[test]
    fn json_dumps_indents_like_python() {
        let v = json!({"a": [1, []], "b": "x"});
        assert_eq!(
            json_dumps(&v, Some(2), false, false),
            "{\n  \"a\": [\n    1,\n    []\n  ],\n  \"b\": \"x\"\n}"
        );
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (412.5, "412.5"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e300, "1.5e+300"),
            (-2.5e-7, "-2.5e-07"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn repr_matches_python_for_dicts_of_json_values() {
        let v = json!({"city": "it's", "n": 3, "ok": true, "x": null, "l": ["a\"b", 1.0]});
        assert_eq!(
            py_repr(&v),
            r#"{'city': "it's", 'n': 3, 'ok': True, 'x': None, 'l': ['a"b', 1.0]}"#
        );
        assert_eq!(py_repr(&json!("a'b\"c\u{0}é")), r#"'a\'b"c\x00é'"#);
        assert_eq!(py_str(&json!("{\"a\": 1}")), "{\"a\": 1}");
    }

    #[test]
    fn strip_removes_python_whitespace() {
        assert_eq!(strip("\u{1f} \u{3000}x y\n"), "x y");
    }
}
