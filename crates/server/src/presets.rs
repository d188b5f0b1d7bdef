//! Presets: a training config plus a `[preset]` table (`name`, `description`, `hardware`,
//! optional `min_memory_gb`) in one TOML file. The `[preset]` table is split off and the rest is
//! validated exactly like a job's config (`TrainConfig`), so a preset can never hold a setting a
//! job would refuse. Built-in presets are the repository's `presets/*.toml`, compiled in; user
//! presets are saved as `<data dir>/presets/<id>.toml`.

use crate::error::{ApiError, FieldError};
use finetune_engine::config::TrainConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use utoipa::ToSchema;

/// The repository's presets, in the order the UI shows them.
pub const BUILTIN: &[(&str, &str)] = &[
    ("lora-quick-cpu", include_str!("../../../presets/lora-quick-cpu.toml")),
    ("lora-quality", include_str!("../../../presets/lora-quality.toml")),
    ("qlora-8gb", include_str!("../../../presets/qlora-8gb.toml")),
    ("qlora-24gb", include_str!("../../../presets/qlora-24gb.toml")),
    ("full-small", include_str!("../../../presets/full-small.toml")),
    ("demo-smollm2-cpu", include_str!("../../../presets/demo-smollm2-cpu.toml")),
];

/// The `[preset]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresetMeta {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The hardware it is meant for, in words.
    #[serde(default)]
    pub hardware: String,
    /// Memory the target device should have, in GB.
    #[serde(default)]
    pub min_memory_gb: Option<f64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PresetView {
    pub id: String,
    /// builtin or user.
    pub source: String,
    #[serde(flatten)]
    pub meta: PresetMeta,
    /// The training config with every default filled in (model.path and data.path are empty:
    /// the user picks them).
    #[schema(value_type = Object)]
    pub config: Value,
}

/// Splits a preset file into its `[preset]` table and its validated config. Errors name the
/// file and the key.
pub fn parse(text: &str, origin: &str) -> Result<(PresetMeta, TrainConfig), String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| format!("{origin}: invalid TOML: {e}"))?;
    let meta = table
        .remove("preset")
        .ok_or_else(|| format!("{origin}: missing the [preset] table (name, description, hardware)"))?;
    let meta: PresetMeta = meta.try_into().map_err(|e| format!("{origin}: [preset]: {e}"))?;
    if meta.name.trim().is_empty() {
        return Err(format!("{origin}: `preset.name` is empty"));
    }
    let json = serde_json::to_value(&table).map_err(|e| format!("{origin}: {e}"))?;
    let config = TrainConfig::from_json(json).map_err(|e| format!("{origin}: {e}"))?;
    Ok((meta, config))
}

fn view(id: &str, source: &str, meta: PresetMeta, config: &TrainConfig) -> PresetView {
    PresetView {
        id: id.to_string(),
        source: source.to_string(),
        meta,
        config: serde_json::to_value(config).unwrap_or(Value::Null),
    }
}

pub fn builtin() -> Vec<PresetView> {
    BUILTIN
        .iter()
        .filter_map(|(id, text)| match parse(text, &format!("presets/{id}.toml")) {
            Ok((meta, cfg)) => Some(view(id, "builtin", meta, &cfg)),
            Err(e) => {
                eprintln!("studio: {e}");
                None
            }
        })
        .collect()
}

/// The user's presets; a file that no longer parses is reported and skipped.
pub fn user(dir: &Path) -> Vec<PresetView> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| {
            let id = p.file_stem()?.to_str()?.to_string();
            let text = std::fs::read_to_string(p).ok()?;
            match parse(&text, &p.display().to_string()) {
                Ok((meta, cfg)) => Some(view(&id, "user", meta, &cfg)),
                Err(e) => {
                    eprintln!("studio: {e}");
                    None
                }
            }
        })
        .collect()
}

/// `My preset #2` -> `my-preset-2`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(64).collect()
}

/// Saves a user preset (replacing one of the same name) and returns it.
pub fn save_user(dir: &Path, meta: PresetMeta, config: &TrainConfig) -> Result<PresetView, ApiError> {
    let id = slug(&meta.name);
    if id.is_empty() {
        return Err(ApiError::field("name", "must contain letters or digits"));
    }
    if BUILTIN.iter().any(|(b, _)| *b == id) {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "name",
            format!("`{id}` is a built-in preset; choose another name"),
        )]));
    }
    std::fs::create_dir_all(dir).map_err(ApiError::internal)?;
    let header = toml::to_string(&toml::Table::from_iter([(
        "preset".to_string(),
        toml::Value::try_from(&meta).map_err(ApiError::internal)?,
    )]))
    .map_err(ApiError::internal)?;
    let text = format!("{header}\n{}", config.to_toml());
    // Prove it reads back before writing it.
    parse(&text, &format!("{id}.toml")).map_err(ApiError::BadRequest)?;
    let path = dir.join(format!("{id}.toml"));
    let tmp = dir.join(format!(".{id}.toml.tmp"));
    std::fs::write(&tmp, &text).map_err(ApiError::internal)?;
    std::fs::rename(&tmp, &path).map_err(ApiError::internal)?;
    Ok(view(&id, "user", meta, config))
}

pub fn delete_user(dir: &Path, id: &str) -> Result<(), ApiError> {
    if BUILTIN.iter().any(|(b, _)| *b == id) {
        return Err(ApiError::Conflict(format!("`{id}` is a built-in preset and cannot be deleted")));
    }
    if slug(id) != id || id.is_empty() {
        return Err(ApiError::not_found("preset", id));
    }
    let path = dir.join(format!("{id}.toml"));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found("preset", id)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_preset_is_compiled_in_and_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../presets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(String::from))
            .collect();
        on_disk.sort();
        let mut compiled: Vec<String> = BUILTIN.iter().map(|(id, _)| id.to_string()).collect();
        compiled.sort();
        assert_eq!(on_disk, compiled, "add new presets/*.toml files to BUILTIN");
        for (id, text) in BUILTIN {
            let (meta, cfg) = parse(text, id).unwrap_or_else(|e| panic!("{e}"));
            assert!(!meta.description.is_empty() && !meta.hardware.is_empty(), "{id}");
            assert!(cfg.validate().is_empty(), "{id}");
        }
        let kinds: Vec<String> =
            builtin().iter().map(|p| p.config["method"]["kind"].as_str().unwrap().to_string()).collect();
        assert!(kinds.contains(&"qlora".to_string()) && kinds.contains(&"full".to_string()));
    }

    #[test]
    fn bad_presets_name_the_file_and_key() {
        let e = parse("[preset]\nname = \"x\"\n[train]\nlr = -1.0\n", "p.toml").unwrap_err();
        assert!(e.contains("p.toml") && e.contains("train.lr"), "{e}");
        let e = parse("[train]\nlr = 0.1\n", "q.toml").unwrap_err();
        assert!(e.contains("q.toml") && e.contains("[preset]"), "{e}");
        let e = parse("[preset]\nname = \"x\"\ncolour = \"red\"\n", "r.toml").unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn user_presets_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let meta = PresetMeta {
            name: "My Run #2".into(),
            description: "d".into(),
            hardware: "h".into(),
            min_memory_gb: None,
        };
        let mut cfg = TrainConfig::default();
        cfg.train.lr = 3e-4;
        let saved = save_user(dir.path(), meta.clone(), &cfg).unwrap();
        assert_eq!(saved.id, "my-run-2");
        let listed = user(dir.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].meta, meta);
        assert_eq!(listed[0].config["train"]["lr"], 3e-4);
        let builtin_name = PresetMeta { name: "LoRA quick CPU".into(), ..meta };
        assert!(
            save_user(dir.path(), PresetMeta { name: "lora quick cpu".into(), ..builtin_name }, &cfg)
                .is_err()
        );
        delete_user(dir.path(), "my-run-2").unwrap();
        assert!(user(dir.path()).is_empty());
        assert!(delete_user(dir.path(), "../etc").is_err());
    }
}
