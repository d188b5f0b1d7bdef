//! The dataset formats (alpaca, chat, text, tokens): detecting which one a file uses and turning
//! each JSON row into a typed record, with an error that names the offending field. Separate
//! from rendering so that validation without a tokenizer can check structure alone.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::RowError;
use super::chat_template::ChatMessage;
use crate::error::{EngineError, Result};

/// A dataset format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// `{instruction, input?, output, system?}`
    Alpaca,
    /// `{"messages": [{role, content}]}` or ShareGPT `{"conversations": [{from, value}]}`
    Chat,
    /// `{"text"}`
    Text,
    /// `{"input_ids": [...], "labels"?: [...]}`
    Tokens,
}

impl DataFormat {
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Alpaca => "alpaca",
            DataFormat::Chat => "chat",
            DataFormat::Text => "text",
            DataFormat::Tokens => "tokens",
        }
    }

    /// Parses `data.format`: `None` for "auto".
    pub fn from_config(s: &str) -> Result<Option<Self>> {
        Ok(Some(match s {
            "auto" => return Ok(None),
            "alpaca" => DataFormat::Alpaca,
            "chat" => DataFormat::Chat,
            "text" => DataFormat::Text,
            "tokens" => DataFormat::Tokens,
            other => {
                return Err(EngineError::config(
                    "data.format",
                    format!("{other:?} is not a format; expected auto, alpaca, chat, text or tokens"),
                ));
            }
        }))
    }

    /// The format a record's keys suggest.
    pub fn detect(obj: &Map<String, Json>) -> Option<Self> {
        if obj.contains_key("messages") || obj.contains_key("conversations") {
            Some(DataFormat::Chat)
        } else if obj.contains_key("input_ids") {
            Some(DataFormat::Tokens)
        } else if obj.contains_key("instruction") && obj.contains_key("output") {
            Some(DataFormat::Alpaca)
        } else if obj.contains_key("text") {
            Some(DataFormat::Text)
        } else {
            None
        }
    }
}

impl std::fmt::Display for DataFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One parsed row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Alpaca { system: Option<String>, instruction: String, input: String, output: String },
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens { input_ids: Vec<u32>, labels: Option<Vec<i64>> },
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Decides each row's format: fixed by the config, or detected from the first record.
#[derive(Debug, Clone)]
pub(crate) struct Detector {
    fixed: Option<DataFormat>,
    detected: Option<(DataFormat, usize)>,
}

impl Detector {
    pub fn new(fixed: Option<DataFormat>) -> Self {
        Self { fixed, detected: None }
    }

    /// The format in use so far (None until a record was detected).
    pub fn format(&self) -> Option<DataFormat> {
        self.fixed.or(self.detected.map(|d| d.0))
    }

    pub fn parse(&mut self, line: usize, value: Json) -> std::result::Result<Record, RowError> {
        let Json::Object(obj) = value else {
            return Err(RowError::new(format!("expected a JSON object, found {}", kind(&value))));
        };
        let format = match self.format() {
            Some(f) => f,
            None => {
                let f = DataFormat::detect(&obj).ok_or_else(|| {
                    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                    RowError::new(format!(
                        "cannot tell the dataset format from the keys {keys:?}: expected `messages` or \
                         `conversations` (chat), `instruction` and `output` (alpaca), `text` (text) or \
                         `input_ids` (tokens)"
                    ))
                })?;
                self.detected = Some((f, line));
                f
            }
        };
        let looks_like = DataFormat::detect(&obj);
        parse_record(format, obj).map_err(|mut e| {
            if let Some(other) = looks_like.filter(|&o| o != format) {
                let why = match self.detected {
                    Some((_, l)) if self.fixed.is_none() => format!("detected from line {l}"),
                    _ => "set by data.format".to_string(),
                };
                e.message = format!(
                    "{} (this record looks like the {other} format, but the file's format is {format}, {why})",
                    e.message
                );
            }
            e
        })
    }
}

fn take_string(
    obj: &mut Map<String, Json>,
    key: &str,
    required: bool,
) -> std::result::Result<Option<String>, RowError> {
    match obj.remove(key) {
        Some(Json::String(s)) => Ok(Some(s)),
        None | Some(Json::Null) if !required => Ok(None),
        None => Err(RowError::field(key, format!("missing field `{key}`"))),
        Some(v) => Err(RowError::field(key, format!("`{key}` must be a string, found {}", kind(&v)))),
    }
}

pub(crate) fn parse_record(
    format: DataFormat,
    mut obj: Map<String, Json>,
) -> std::result::Result<Record, RowError> {
    Ok(match format {
        DataFormat::Text => Record::Text(take_string(&mut obj, "text", true)?.unwrap_or_default()),
        DataFormat::Alpaca => Record::Alpaca {
            instruction: take_string(&mut obj, "instruction", true)?.unwrap_or_default(),
            input: take_string(&mut obj, "input", false)?.unwrap_or_default(),
            output: take_string(&mut obj, "output", true)?.unwrap_or_default(),
            system: take_string(&mut obj, "system", false)?.filter(|s| !s.is_empty()),
        },
        DataFormat::Chat => Record::Chat(parse_chat(&mut obj)?),
        DataFormat::Tokens => parse_tokens(&mut obj)?,
    })
}

fn parse_chat(obj: &mut Map<String, Json>) -> std::result::Result<Vec<ChatMessage>, RowError> {
    let (key, role_key, content_key, sharegpt) = if obj.contains_key("messages") {
        ("messages", "role", "content", false)
    } else if obj.contains_key("conversations") {
        ("conversations", "from", "value", true)
    } else {
        return Err(RowError::field("messages", "missing field `messages` (or ShareGPT `conversations`)"));
    };
    let items = match obj.remove(key) {
        Some(Json::Array(a)) => a,
        Some(v) => return Err(RowError::field(key, format!("`{key}` must be an array, found {}", kind(&v)))),
        None => unreachable!("checked above"),
    };
    if items.is_empty() {
        return Err(RowError::field(key, format!("`{key}` is empty")));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Json::Object(mut m) = item else {
            let path = format!("{key}[{i}]");
            return Err(RowError::field(&path, format!("`{path}` must be an object, found {}", kind(&item))));
        };
        let field = |f: &str| format!("{key}[{i}].{f}");
        let take = |m: &mut Map<String, Json>, f: &str| match m.remove(f) {
            Some(Json::String(s)) => Ok(s),
            None => Err(RowError::field(&field(f), format!("missing field `{}`", field(f)))),
            Some(v) => Err(RowError::field(
                &field(f),
                format!("`{}` must be a string, found {}", field(f), kind(&v)),
            )),
        };
        let role = take(&mut m, role_key)?;
        let content = take(&mut m, content_key)?;
        let role = match (sharegpt, role.as_str()) {
            (_, "system") => "system",
            (false, "user") | (true, "human" | "user") => "user",
            (false, "assistant") | (true, "gpt" | "assistant") => "assistant",
            (_, other) => {
                let allowed = if sharegpt { "system, human or gpt" } else { "system, user or assistant" };
                let f = field(role_key);
                return Err(RowError::field(
                    &f,
                    format!("`{f}` is {other:?}, an unknown role; expected {allowed}"),
                ));
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return Err(RowError::field(key, format!("`{key}` has no assistant turn: nothing to learn")));
    }
    Ok(out)
}

fn parse_tokens(obj: &mut Map<String, Json>) -> std::result::Result<Record, RowError> {
    fn ints(key: &str, v: Json) -> std::result::Result<Vec<i64>, RowError> {
        let Json::Array(a) = v else {
            return Err(RowError::field(
                key,
                format!("`{key}` must be an array of integers, found {}", kind(&v)),
            ));
        };
        a.iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_i64().ok_or_else(|| {
                    RowError::field(key, format!("`{key}[{i}]` must be an integer, found {x}"))
                })
            })
            .collect()
    }
    let ids = match obj.remove("input_ids") {
        Some(v) => ints("input_ids", v)?,
        None => return Err(RowError::field("input_ids", "missing field `input_ids`")),
    };
    if ids.is_empty() {
        return Err(RowError::field("input_ids", "`input_ids` is empty"));
    }
    let input_ids = ids
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            u32::try_from(x)
                .map_err(|_| RowError::field("input_ids", format!("`input_ids[{i}]` is {x}, not a token id")))
        })
        .collect::<std::result::Result<Vec<u32>, _>>()?;
    let labels = match obj.remove("labels") {
        None | Some(Json::Null) => None,
        Some(v) => {
            let labels = ints("labels", v)?;
            if labels.len() != input_ids.len() {
                return Err(RowError::field(
                    "labels",
                    format!("`labels` has {} entries but `input_ids` has {}", labels.len(), input_ids.len()),
                ));
            }
            if let Some((i, l)) =
                labels.iter().enumerate().find(|&(_, &l)| l < 0 && l != crate::ops::IGNORE_INDEX)
            {
                return Err(RowError::field(
                    "labels",
                    format!("`labels[{i}]` is {l}; a label is a token id or -100 (ignored)"),
                ));
            }
            Some(labels)
        }
    };
    Ok(Record::Tokens { input_ids, labels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(fmt: Option<DataFormat>, v: Json) -> std::result::Result<Record, RowError> {
        Detector::new(fmt).parse(1, v)
    }

    fn err(fmt: Option<DataFormat>, v: Json) -> RowError {
        parse(fmt, v).unwrap_err()
    }

    #[test]
    fn detects_each_format() {
        let cases = [
            (json!({"messages": [{"role": "assistant", "content": "a"}]}), DataFormat::Chat),
            (json!({"conversations": [{"from": "gpt", "value": "a"}]}), DataFormat::Chat),
            (json!({"input_ids": [1]}), DataFormat::Tokens),
            (json!({"instruction": "i", "output": "o"}), DataFormat::Alpaca),
            (json!({"text": "t"}), DataFormat::Text),
        ];
        for (v, f) in cases {
            let mut d = Detector::new(None);
            d.parse(1, v).unwrap();
            assert_eq!(d.format(), Some(f));
        }
        let e = err(None, json!({"prompt": "x"}));
        assert!(e.message.contains("cannot tell the dataset format"), "{}", e.message);
        assert_eq!(DataFormat::from_config("auto").unwrap(), None);
        assert!(DataFormat::from_config("csv").unwrap_err().to_string().contains("data.format"));
    }

    #[test]
    fn sharegpt_roles_map_to_chat_roles() {
        let r = parse(
            None,
            json!({"conversations": [
            {"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),
        );
        let Record::Chat(m) = r.unwrap() else { panic!() };
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
    }

    #[test]
    fn errors_name_the_field() {
        let a = Some(DataFormat::Alpaca);
        let c = Some(DataFormat::Chat);
        let t = Some(DataFormat::Tokens);
        let cases = [
            (
                a,
                json!({"instruction": "i", "output": 3}),
                "output",
                "`output` must be a string, found a number",
            ),
            (a, json!({"instruction": "i"}), "output", "missing field `output`"),
            (c, json!({"messages": []}), "messages", "`messages` is empty"),
            (c, json!({"messages": [{"role": "bot", "content": "x"}]}), "messages[0].role", "unknown role"),
            (
                c,
                json!({"messages": [{"role": "user", "content": null}]}),
                "messages[0].content",
                "must be a string",
            ),
            (c, json!({"messages": [{"role": "user", "content": "q"}]}), "messages", "no assistant turn"),
            (
                c,
                json!({"conversations": [{"from": "user2", "value": "q"}]}),
                "conversations[0].from",
                "expected system, human or gpt",
            ),
            (t, json!({"input_ids": [1, -2]}), "input_ids", "`input_ids[1]` is -2"),
            (
                t,
                json!({"input_ids": [1, 2], "labels": [1]}),
                "labels",
                "`labels` has 1 entries but `input_ids` has 2",
            ),
            (t, json!({"input_ids": [1, 2], "labels": [1, -5]}), "labels", "`labels[1]` is -5"),
            (t, json!({"input_ids": "1 2"}), "input_ids", "must be an array of integers"),
        ];
        for (f, v, field, want) in cases {
            let e = err(f, v);
            assert_eq!(e.field.as_deref(), Some(field), "{}", e.message);
            assert!(e.message.contains(want), "{} vs {want}", e.message);
        }
        let e = err(None, json!([1, 2]));
        assert!(e.message.contains("expected a JSON object, found an array"));
    }

    #[test]
    fn later_rows_must_match_the_detected_format() {
        let mut d = Detector::new(None);
        d.parse(1, json!({"instruction": "i", "output": "o"})).unwrap();
        let e = d.parse(2, json!({"text": "t"})).unwrap_err();
        assert!(e.message.contains("missing field `instruction`"), "{}", e.message);
        assert!(
            e.message.contains("looks like the text format") && e.message.contains("detected from line 1"),
            "{}",
            e.message
        );
    }
}
