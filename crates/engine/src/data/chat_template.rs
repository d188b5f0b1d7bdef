//! Renders a model's Jinja `chat_template` exactly as Hugging Face's `apply_chat_template` does.
//!
//! Transformers renders templates in a jinja2 sandbox with `trim_blocks` and `lstrip_blocks` on,
//! Python string methods available, a `raise_exception` global, a `strftime_now` global and its own
//! `tojson` (Python `json.dumps`, not HTML-escaped). minijinja differs from that environment in a
//! few places, which this module papers over so the rendered text is byte-identical.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// One message of a conversation, as chat templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// The special-token strings a template may print (`{{ bos_token }}` ...). A token the model does
/// not define stays undefined in the template, as in transformers (it renders as "").
#[derive(Debug, Clone, Default)]
pub struct TemplateTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

/// Prefix of the error detail produced by the template's own `raise_exception(...)`.
const RAISED: &str = "raise_exception: ";
const NAME: &str = "chat_template";

/// A compiled chat template. Compilation errors are kept and reported when rendering, so a model
/// with a template minijinja cannot parse still loads for the `text` and `tokens` formats.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    env: Result<Environment<'static>, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("chars", &self.source.len())
            .field("compiles", &self.env.is_ok())
            .finish()
    }
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>) -> Self {
        let source = source.into();
        let env = build_env(&source).map_err(|e| describe(&e));
        Self { source, env }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; the error is a one-line message meant for the user.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tokens: &TemplateTokens,
    ) -> std::result::Result<String, String> {
        let env = self.env.as_ref().map_err(|e| format!("chat template does not compile: {e}"))?;
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        for (name, tok) in [
            ("bos_token", &tokens.bos),
            ("eos_token", &tokens.eos),
            ("pad_token", &tokens.pad),
            ("unk_token", &tokens.unk),
        ] {
            if let Some(t) = tok {
                ctx.insert(name.into(), Value::from(t.as_str()));
            }
        }
        let tmpl = env.get_template(NAME).map_err(|e| describe(&e))?;
        tmpl.render(Value::from(ctx)).map_err(|e| describe(&e))
    }
}

/// A user-facing message for a minijinja error, with the template line where known.
fn describe(err: &Error) -> String {
    let line = err.line().map(|l| format!(" (template line {l})")).unwrap_or_default();
    match err.detail() {
        Some(d) if d.starts_with(RAISED) => {
            format!("chat template raised an exception: {}{line}", &d[RAISED.len()..])
        }
        Some(d) => format!("chat template error: {}: {d}{line}", err.kind()),
        None => format!("chat template error: {}{line}", err.kind()),
    }
}

fn build_env(source: &str) -> std::result::Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<String, Error> {
        Ok(strftime_utc(&fmt, now_unix()))
    });
    env.add_filter("tojson", tojson);
    env.add_template_owned(NAME, strip_generation_tags(source))?;
    Ok(env)
}

/// transformers adds a `{% generation %}...{% endgeneration %}` tag (to mark assistant tokens);
/// it only marks, so dropping the tags renders the same text.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let inner = rest[start + 2..start + len].trim_matches(|c: char| c == '-' || c == '+');
        out.push_str(&rest[..start]);
        let tag = inner.trim();
        if tag != "generation" && tag != "endgeneration" {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, so `", "`/`": "` separators and no HTML escaping.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.kind() == ValueKind::None => None,
        Some(v) if v.is_integer() => Some(" ".repeat(v.as_usize().unwrap_or(0))),
        Some(v) => Some(v.as_str().unwrap_or("").to_string()),
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(Error::new(ErrorKind::InvalidOperation, "tojson separators must be a pair"));
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(out: &mut String, v: &Value, st: &JsonStyle, depth: usize) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = &st.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    let sep = |st: &JsonStyle| -> String {
        // Python strips the trailing space of the item separator when indenting.
        if st.indent.is_some() { st.item_sep.trim_end().to_string() } else { st.item_sep.clone() }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or(""), st.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if st.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&sep(st));
                }
                newline(out, depth + 1);
                let key = k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string());
                write_json_str(out, &key, st.ensure_ascii);
                out.push_str(&st.key_sep);
                write_json(out, &v.get_item(k)?, st, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&sep(st));
                }
                newline(out, depth + 1);
                write_json(out, item, st, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot serialize a {}", v.kind()),
            ));
        }
    }
    Ok(())
}

/// Python's `repr(float)` for the common cases: `1.0`, `0.5`, `1e+20`, `NaN`, `Infinity`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else if f == f.trunc() && f.abs() < 1e16 {
        format!("{f:.1}")
    } else if f.abs() >= 1e16 || f.abs() < 1e-4 {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e:0>2}"),
            Some((m, e)) => format!("{m}e-{:0>2}", &e[1..]),
            None => s,
        }
    } else {
        f.to_string()
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
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

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `strftime` for the directives chat templates use (dates for system prompts), in UTC.
pub(crate) fn strftime_utc(fmt: &str, unix: i64) -> String {
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
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_m = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_m + 2) / 153;
    let d = doy_m - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:>2}"),
            Some('-') => match chars.next() {
                Some('d') => write!(out, "{d}"),
                Some('m') => write!(out, "{m}"),
                Some('H') => write!(out, "{h}"),
                Some(o) => write!(out, "%-{o}"),
                None => write!(out, "%-"),
            },
            Some('B') => write!(out, "{month}"),
            Some('b') | Some('h') => write!(out, "{}", &month[..3]),
            Some('A') => write!(out, "{}", DAYS[wday]),
            Some('a') => write!(out, "{}", &DAYS[wday][..3]),
            Some('j') => write!(out, "{yday:03}"),
            Some('H') => write!(out, "{h:02}"),
            Some('I') => write!(out, "{:02}", (h + 11) % 12 + 1),
            Some('p') => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{mi:02}"),
            Some('S') => write!(out, "{s:02}"),
            Some('F') => write!(out, "{y}-{m:02}-{d:02}"),
            Some('T') => write!(out, "{h:02}:{mi:02}:{s:02}"),
            Some('Z') => write!(out, "UTC"),
            Some('z') => write!(out, "+0000"),
            Some('%') => write!(out, "%"),
            Some(o) => write!(out, "%{o}"),
            None => write!(out, "%"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, msgs: &[ChatMessage]) -> std::result::Result<String, String> {
        ChatTemplate::new(src).render(msgs, false, &TemplateTokens::default())
    }

    #[test]
    fn python_string_methods_and_trim_blocks() {
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip().upper() }}]\n  {% endif %}\n{% endfor %}\n";
        let msgs = [ChatMessage::new("user", "  hi  "), ChatMessage::new("assistant", "x")];
        assert_eq!(render(src, &msgs).unwrap(), "[HI]\n");
    }

    #[test]
    fn raise_exception_carries_the_message() {
        let src = "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with system') }}{% endif %}";
        let err = render(src, &[ChatMessage::new("user", "x")]).unwrap_err();
        assert!(err.contains("raised an exception: Conversation must start with system"), "{err}");
    }

    #[test]
    fn undefined_special_tokens_render_empty_and_tools_is_none() {
        let src = "{{ bos_token }}|{{ eos_token }}|{% if tools is none %}no tools{% endif %}";
        let toks = TemplateTokens { eos: Some("</s>".into()), ..Default::default() };
        let out = ChatTemplate::new(src).render(&[], false, &toks).unwrap();
        assert_eq!(out, "|</s>|no tools");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let src = "{{ messages[0] | tojson }}|{{ {'a': [1, 2.5, none, true], 'b': 'é<'} | tojson }}|{{ [1] | tojson(indent=2) }}";
        let out = render(src, &[ChatMessage::new("user", "q\"\n")]).unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"q\\\"\\n\"}|{\"a\": [1, 2.5, null, true], \"b\": \"é<\"}|[\n  1\n]"
        );
    }

    #[test]
    fn generation_tags_are_dropped() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% endif %}{% endfor %}";
        let msgs = [ChatMessage::new("assistant", "ok")];
        assert_eq!(render(src, &msgs).unwrap(), "ok");
    }

    #[test]
    fn broken_template_reports_when_rendering() {
        let err = render("{% if %}", &[]).unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime_utc("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(strftime_utc("%Y-%m-%d %H:%M:%S %A %j", t), "2024-02-29 13:05:09 Thursday 060");
        assert_eq!(strftime_utc("%B %-d, %y", 0), "January 1, 70");
    }
}
