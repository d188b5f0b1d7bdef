//! Which settings differ between two configs in a way that changes the result of training —
//! used to refuse resuming a run with a different config (unless forced), naming the keys.

use super::TrainConfig;
use serde_json::Value;

/// Keys that can change between a run and its resumption without changing what is computed.
const RESULT_NEUTRAL: &[&str] =
    &["checkpoint.every_steps", "checkpoint.keep_last", "train.eval_every_steps", "model.device"];

/// Dotted keys whose values differ and affect the result, sorted.
pub fn result_affecting_changes(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    let (a, b) =
        (serde_json::to_value(old).unwrap_or(Value::Null), serde_json::to_value(new).unwrap_or(Value::Null));
    let mut keys = Vec::new();
    if let (Value::Object(a), Value::Object(b)) = (&a, &b) {
        for (section, av) in a {
            let bv = b.get(section).cloned().unwrap_or(Value::Null);
            let empty = serde_json::Map::new();
            let am = av.as_object().unwrap_or(&empty);
            let bm = bv.as_object().unwrap_or(&empty);
            let mut fields: Vec<&String> = am.keys().chain(bm.keys()).collect();
            fields.sort();
            fields.dedup();
            for f in fields {
                let key = format!("{section}.{f}");
                if am.get(f) != bm.get(f) && !RESULT_NEUTRAL.contains(&key.as_str()) {
                    keys.push(key);
                }
            }
        }
    }
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_changed_keys_and_ignores_neutral_ones() {
        let a = TrainConfig::default();
        let b = a
            .with_overrides(&["train.lr=0.1".into(), "checkpoint.keep_last=9".into(), "lora.r=4".into()])
            .unwrap();
        assert_eq!(result_affecting_changes(&a, &b), vec!["lora.r".to_string(), "train.lr".to_string()]);
        assert!(result_affecting_changes(&a, &a).is_empty());
    }
}
