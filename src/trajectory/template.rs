//! A checkpoint's Jinja chat template, rendered with minijinja the way Hugging
//! Face transformers renders it (`apply_chat_template`): `trim_blocks` and
//! `lstrip_blocks` on, loop controls, the globals HF provides (`bos_token` and
//! the other special tokens, `raise_exception`, `strftime_now`,
//! `add_generation_prompt`, `tools`), Python string methods through
//! minijinja-contrib's pycompat, and Python-exact `tojson` and `trim`.
//! HF's `{% generation %}` blocks (assistant-mask markers) render as plain
//! blocks. A render is bounded: after [`FUEL`] template instructions it stops
//! with an error blaming the template (a loop that does not end would
//! otherwise hang a `padv serve` worker).

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use super::python;

const NAME: &str = "chat_template";

/// Template instructions one render may execute (minijinja's fuel). Real
/// chat templates spend about a hundred per message; 5 million is about a
/// tenth of a second of work.
pub const FUEL: u64 = 5_000_000;

/// The special tokens named in `tokenizer_config.json`, as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: Vec<(&'static str, String)>,
}

impl ChatTemplate {
    /// Compiles `source`; the error is minijinja's message.
    pub fn new(source: &str, special: &SpecialTokens) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| describe(&e))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_filter("trim", trim);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, strip_generation_tags(source))
            .map_err(|e| describe(&e))?;
        let special = [
            ("bos_token", &special.bos),
            ("eos_token", &special.eos),
            ("pad_token", &special.pad),
            ("unk_token", &special.unk),
        ]
        .into_iter()
        .filter_map(|(name, tok)| Some((name, tok.clone()?)))
        .collect();
        Ok(ChatTemplate { env, special })
    }

    /// Renders `messages` (template values, see [`json_to_value`]).
    /// `tools` is the tool list or none.
    pub fn render(
        &self,
        messages: &[Value],
        tools: &Value,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(messages.to_vec())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", tools.clone()),
            ("documents", Value::from(())),
        ];
        for (name, tok) in &self.special {
            ctx.push((name, Value::from(tok.as_str())));
        }
        let tmpl = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        tmpl.render(Value::from_pairs(ctx))
            .map_err(|e| match e.kind() {
                ErrorKind::OutOfFuel => format!(
                    "the template did not finish within {FUEL} instructions (a loop that does not \
                 end, or far too much work per message): the template is at fault, not the \
                 record; fix `chat_template` in tokenizer_config.json (or chat_template.jinja), \
                 or use --render plain"
                ),
                _ => describe(&e),
            })
    }
}

/// The message of a minijinja error with its causes.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// A JSON value as a template value, keeping object key order.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(json_to_value).collect(),
        serde_json::Value::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

/// Replaces `{% generation %}` / `{% endgeneration %}` (HF's AssistantTracker
/// extension) by `{% if true %}` / `{% endif %}`, keeping whitespace control.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..close];
        let (lead, body) = split_control(inner, true);
        let (body, trail) = split_control(body, false);
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a whitespace-control sign `-` / `+` off the start of a tag body:
/// `(sign, rest)`; or, with `leading` false, off its end: `(rest, sign)`.
fn split_control(s: &str, leading: bool) -> (&str, &str) {
    let has = |c: char| c == '-' || c == '+';
    if leading {
        if s.starts_with(has) {
            s.split_at(1)
        } else {
            ("", s)
        }
    } else if s.ends_with(has) {
        s.split_at(s.len() - 1)
    } else {
        (s, "")
    }
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, sort_keys=False)`.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e)
    })?;
    Ok(Value::from(python::json_dumps(
        &json,
        indent,
        sort_keys,
        ensure_ascii,
    )))
}

/// Jinja2's `trim`: Python's `str.strip(chars)`.
fn trim(value: String, chars: Option<String>) -> String {
    match chars {
        Some(chars) => value.trim_matches(|c| chars.contains(c)).to_string(),
        None => python::strip(&value).to_string(),
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("the chat template raised an exception: {msg}"),
    ))
}

/// HF's `strftime_now(format)`, in UTC (no time zone data here).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A subset of C `strftime` for a UTC Unix time: `%Y %y %m %d %e %B %b %A %a
/// %j %H %I %M %S %p %%`; other specifiers are written as they are.
fn strftime(format: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01
/// (Howard Hinnant's civil-from-days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: serde_json::Value) -> Result<String, String> {
        let special = SpecialTokens {
            bos: Some("<s>".into()),
            ..Default::default()
        };
        let t = ChatTemplate::new(source, &special)?;
        let msgs: Vec<Value> = messages
            .as_array()
            .unwrap()
            .iter()
            .map(json_to_value)
            .collect();
        t.render(&msgs, &Value::from(()), false)
    }

    #[test]
    fn python_string_methods_work_in_templates() {
        let src = "{% for m in messages %}{{ m.content.split('</think>')[-1].lstrip('\\n') }}|{{ m.content.startswith('a') }}{% endfor %}";
        let out = render(src, serde_json::json!([{"content": "a</think>\n\nb"}])).unwrap();
        assert_eq!(out, "b|True");
    }

    #[test]
    fn tojson_writes_python_json() {
        let src = "{{ messages[0] | tojson }}";
        let out = render(src, serde_json::json!([{"b": 1, "a": "<é>"}])).unwrap();
        assert_eq!(out, r#"{"b": 1, "a": "<é>"}"#);
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let src = "{{ raise_exception('Conversation roles must alternate') }}";
        let err = render(src, serde_json::json!([])).unwrap_err();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let src = "{{- bos_token }}{%- for m in messages %}{%- generation %}{{ m.content }}{%- endgeneration %}{% endfor %}";
        let out = render(src, serde_json::json!([{"content": "x"}, {"content": "y"}])).unwrap();
        assert_eq!(out, "<s>xy");
    }

    #[test]
    fn a_template_that_loops_stops_with_an_error_blaming_the_template() {
        let src = "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(render(src, serde_json::json!([])));
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("rendering did not stop within 60 s");
        let err = out.unwrap_err();
        assert!(
            err.contains("did not finish") && err.contains("template is at fault"),
            "{err}"
        );
    }

    #[test]
    fn a_long_conversation_renders_well_within_the_fuel() {
        let src = "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}<|end|>{% endfor %}";
        let msgs: Vec<_> = (0..5000)
            .map(|i| serde_json::json!({"role": "user", "content": format!(" m{i} ")}))
            .collect();
        let out = render(src, serde_json::Value::Array(msgs)).unwrap();
        assert!(out.ends_with("<|user|>m4999<|end|>"));
    }

    #[test]
    fn strftime_formats_a_known_date() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_721_999_109;
        assert_eq!(
            strftime("%d %b %Y %A %j %H:%M:%S %I%p %%", t),
            "26 Jul 2024 Friday 208 13:05:09 01PM %"
        );
    }
}
