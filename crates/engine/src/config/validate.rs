//! Key-level checks for [`TrainConfig`]: unknown keys, wrong types (via serde_path_to_error) and
//! value ranges. Each problem becomes a [`FieldError`] whose key is `section.key`.

use super::{MethodKind, Targets, TrainConfig};
use crate::error::{EngineError, Result};
use serde::Serialize;
use serde_json::Value;

/// One problem with one configuration key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> FieldError {
    FieldError { key: key.to_string(), message: message.into() }
}

/// Deserializes with errors that carry the dotted path of the offending key.
pub(super) fn deserialize(value: Value) -> Result<TrainConfig> {
    let known = serde_json::to_value(TrainConfig::default()).unwrap_or(Value::Null);
    check_unknown_keys(&value, &known, "")?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        EngineError::config(if key == "." { "config".to_string() } else { key }, message)
    })
}

fn check_unknown_keys(value: &Value, known: &Value, prefix: &str) -> Result<()> {
    let (Value::Object(map), Value::Object(known_map)) = (value, known) else {
        return Ok(());
    };
    for (k, v) in map {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match known_map.get(k) {
            None => {
                let allowed: Vec<&str> = known_map.keys().map(String::as_str).collect();
                return Err(EngineError::config(
                    key,
                    format!("unknown key; known keys here: {}", allowed.join(", ")),
                ));
            }
            Some(kv) if prefix.is_empty() => check_unknown_keys(v, kv, &key)?,
            Some(_) => {}
        }
    }
    Ok(())
}

/// Applies one `section.key=value` override to the JSON form of a config.
pub(super) fn apply_override(value: &mut Value, item: &str) -> Result<()> {
    let Some((key, raw)) = item.split_once('=') else {
        return Err(EngineError::config(item, "expected section.key=value"));
    };
    let key = key.trim();
    let Some((section, field)) = key.split_once('.') else {
        return Err(EngineError::config(key, "expected section.key (for example train.lr)"));
    };
    let parsed: Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").and_then(|v| serde_json::to_value(v).ok()).unwrap_or(Value::Null),
        Err(_) => Value::String(raw.to_string()),
    };
    let Some(sec) = value.get_mut(section).and_then(Value::as_object_mut) else {
        return Err(EngineError::config(key, format!("unknown section `{section}`")));
    };
    sec.insert(field.to_string(), parsed);
    Ok(())
}

fn one_of(errors: &mut Vec<FieldError>, key: &str, value: &str, allowed: &[&str]) {
    if !allowed.contains(&value) {
        errors.push(err(key, format!("must be one of {}, got `{value}`", allowed.join(", "))));
    }
}

fn range(errors: &mut Vec<FieldError>, key: &str, value: f64, lo: f64, hi: f64, lo_open: bool) {
    let ok = value.is_finite() && (if lo_open { value > lo } else { value >= lo }) && value <= hi;
    if !ok {
        let bracket = if lo_open { "(" } else { "[" };
        errors.push(err(key, format!("must be in {bracket}{lo}, {hi}], got {value}")));
    }
}

pub(super) fn check(c: &TrainConfig) -> Vec<FieldError> {
    let mut e = Vec::new();
    one_of(&mut e, "model.dtype", &c.model.dtype, &["auto", "f32", "bf16", "f16"]);
    one_of(&mut e, "model.frozen_dtype", &c.model.frozen_dtype, &["auto", "compute", "stored"]);
    let device = c.model.device.as_str();
    let cuda_n = device.strip_prefix("cuda:").map(|n| n.parse::<usize>().is_ok()).unwrap_or(false);
    if !(matches!(device, "auto" | "cpu" | "cuda" | "metal") || cuda_n) {
        e.push(err("model.device", format!("must be auto, cpu, cuda, cuda:N or metal, got `{device}`")));
    }
    if c.lora.r == 0 || c.lora.r > 1024 {
        e.push(err("lora.r", format!("must be in [1, 1024], got {}", c.lora.r)));
    }
    range(&mut e, "lora.alpha", c.lora.alpha, 0.0, 1e6, true);
    range(&mut e, "lora.dropout", c.lora.dropout, 0.0, 0.9, false);
    match &c.lora.targets {
        Targets::Keyword(k) if k != "default" && k != "all-linear" => e.push(err(
            "lora.targets",
            format!("must be `default`, `all-linear` or a list of module names, got `{k}`"),
        )),
        Targets::Modules(m) if m.is_empty() => e.push(err("lora.targets", "the list of modules is empty")),
        _ => {}
    }
    one_of(&mut e, "quant.kind", &c.quant.kind, &["nf4", "fp4", "int8"]);
    if !(16..=4096).contains(&c.quant.block_size) || !c.quant.block_size.is_power_of_two() {
        e.push(err(
            "quant.block_size",
            format!("must be a power of two in [16, 4096], got {}", c.quant.block_size),
        ));
    }
    one_of(&mut e, "quant.compute_dtype", &c.quant.compute_dtype, &["bf16", "f16", "f32"]);
    one_of(&mut e, "data.format", &c.data.format, &["auto", "alpaca", "chat", "text", "tokens"]);
    one_of(&mut e, "data.overlong", &c.data.overlong, &["truncate", "skip"]);
    if c.data.max_len < 2 || c.data.max_len > 1 << 20 {
        e.push(err("data.max_len", format!("must be in [2, 1048576], got {}", c.data.max_len)));
    }
    range(&mut e, "data.eval_fraction", c.data.eval_fraction, 0.0, 0.5, false);
    range(&mut e, "train.lr", c.train.lr, 0.0, 1.0, true);
    one_of(&mut e, "train.scheduler", &c.train.scheduler, &["constant", "linear", "cosine"]);
    if c.train.epochs == 0 && c.train.max_steps == 0 {
        e.push(err("train.epochs", "must be at least 1 when train.max_steps is 0"));
    }
    if c.train.batch_size == 0 || c.train.batch_size > 4096 {
        e.push(err("train.batch_size", format!("must be in [1, 4096], got {}", c.train.batch_size)));
    }
    if c.train.grad_accum == 0 || c.train.grad_accum > 4096 {
        e.push(err("train.grad_accum", format!("must be in [1, 4096], got {}", c.train.grad_accum)));
    }
    range(&mut e, "train.weight_decay", c.train.weight_decay, 0.0, 10.0, false);
    range(&mut e, "train.max_grad_norm", c.train.max_grad_norm, 0.0, 1e6, false);
    range(&mut e, "train.adam_beta1", c.train.adam_beta1, 0.0, 0.999_999, false);
    range(&mut e, "train.adam_beta2", c.train.adam_beta2, 0.0, 0.999_999_9, false);
    range(&mut e, "train.adam_eps", c.train.adam_eps, 0.0, 1.0, true);
    if c.method.kind == MethodKind::Full && c.lora.init_from.is_some() {
        e.push(err("lora.init_from", "only applies to lora and qlora methods"));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use std::path::Path;

    fn parse(text: &str) -> crate::Result<TrainConfig> {
        TrainConfig::from_toml_str(text, Path::new("test.toml"))
    }

    #[test]
    fn defaults_are_valid_and_sections_parse() {
        assert!(TrainConfig::default().validate().is_empty());
        let c =
            parse("[train]\nlr = 1e-3\nscheduler = \"linear\"\n[lora]\ntargets = [\"q_proj\", \"v_proj\"]\n")
                .unwrap();
        assert_eq!(c.train.lr, 1e-3);
        assert_eq!(c.lora.targets, Targets::Modules(vec!["q_proj".into(), "v_proj".into()]));
    }

    #[test]
    fn errors_name_the_key() {
        let msg = |t: &str| parse(t).unwrap_err().to_string();
        assert!(msg("[train]\nlrr = 1\n").contains("train.lrr"), "{}", msg("[train]\nlrr = 1\n"));
        assert!(msg("[trian]\nlr = 1\n").contains("trian"));
        assert!(msg("[train]\nlr = \"fast\"\n").contains("train.lr"));
        assert!(msg("[train]\nlr = 5.0\n").contains("train.lr"));
        assert!(msg("[lora]\nr = 0\n").contains("lora.r"));
        assert!(msg("[data]\nformat = \"csv\"\n").contains("data.format"));
        assert!(msg("[train\n").contains("test.toml"));
    }

    #[test]
    fn overrides_use_dotted_keys() {
        let c = TrainConfig::default()
            .with_overrides(&[
                "train.lr=0.001".into(),
                "model.path=/tmp/m".into(),
                "lora.targets=\"all-linear\"".into(),
            ])
            .unwrap();
        assert_eq!(c.train.lr, 0.001);
        assert_eq!(c.model.path, std::path::PathBuf::from("/tmp/m"));
        assert_eq!(c.lora.targets, Targets::Keyword("all-linear".into()));
        let e = TrainConfig::default().with_overrides(&["train.nope=1".into()]).unwrap_err();
        assert!(e.to_string().contains("train.nope"));
    }

    #[test]
    fn toml_round_trips() {
        let c = TrainConfig::default();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }
}
