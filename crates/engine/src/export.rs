//! Writing whole models: a merged (adapter folded in) or fully fine-tuned model as a Hugging Face
//! folder — `config.json`, `model.safetensors` and the tokenizer files copied from the base (or,
//! for a GGUF base, written from the file's metadata).

use crate::error::{EngineError, Result};
use crate::fsutil;
use crate::model::LanguageModel;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// Files copied from the base model folder when present.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// Writes `model` with its adapters merged as an HF folder at `out`, copying side files from
/// `base_dir`. Weights keep the model's dtype.
pub fn write_hf_folder(model: &dyn LanguageModel, base_dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| EngineError::io(out, e))?;
    let tensors: HashMap<String, Tensor> = model.merged_weights()?.into_iter().collect();
    let weights = out.join("model.safetensors");
    fsutil::write_atomic_with(&weights, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| EngineError::file(tmp, e.to_string()))
    })?;
    if crate::model::is_gguf(base_dir) {
        return write_gguf_side_files(base_dir, out);
    }
    for name in SIDE_FILES {
        let src = base_dir.join(name);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(|e| EngineError::io(&src, e))?;
            fsutil::write_atomic(&out.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// `config.json`, `tokenizer.json` and `tokenizer_config.json` for a model whose base was a GGUF
/// file: the config and tokenizer the engine built from its metadata.
fn write_gguf_side_files(gguf: &Path, out: &Path) -> Result<()> {
    let file = crate::model::GgufFile::open(gguf)?;
    fsutil::write_json(&out.join("config.json"), &file.config()?.raw)?;
    fsutil::write_json(&out.join("tokenizer.json"), &file.tokenizer_json()?)?;
    let tok = file.tokenizer()?;
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "chat_template": file.chat_template(),
    });
    fsutil::write_json(&out.join("tokenizer_config.json"), &cfg)
}
