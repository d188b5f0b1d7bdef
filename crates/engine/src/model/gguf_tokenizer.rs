//! The tokenizer of a GGUF file, rebuilt from its metadata (`tokenizer.ggml.*`) as a Hugging Face
//! `tokenizer.json` the way transformers' GGUF loader does it: byte-level BPE (`gpt2`) with the
//! file's tokens and merges, control tokens as special added tokens, user-defined ones as plain
//! added tokens, the split regex named by `tokenizer.ggml.pre`, and the chat template from
//! `tokenizer.chat_template`.

use super::gguf::{GgufFile, meta_json};
use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;
use serde_json::{Map, Value as Json, json};

/// GPT-2's byte → printable character table.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// Split regexes for `tokenizer.ggml.pre` values whose merges were learned on other splits than
/// GPT-2's (transformers' `GGUF_PRE_TOKENIZER_SPLITS`).
fn pre_split(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => LLAMA3,
        "qwen2" | "deepseek-r1-qwen" => QWEN2,
        _ => return None,
    })
}

/// Token types llama.cpp writes.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

impl GgufFile {
    fn meta_str(&self, key: &str) -> Option<String> {
        match self.meta(key) {
            Some(candle_core::quantized::gguf_file::Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn meta_strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.meta(key).map(meta_json).unwrap_or(Json::Null);
        let Json::Array(items) = v else {
            return Err(EngineError::file(self.path(), format!("metadata `{key}`: missing or not an array")));
        };
        items
            .into_iter()
            .map(|i| match i {
                Json::String(s) => Ok(s),
                other => {
                    Err(EngineError::file(self.path(), format!("metadata `{key}`: {other} is not a string")))
                }
            })
            .collect()
    }

    /// The `tokenizer.json` this file's metadata describes.
    pub fn tokenizer_json(&self) -> Result<Json> {
        let model = self.meta_str("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(EngineError::file(
                self.path(),
                format!("tokenizer model `{model}` is not supported yet (only byte-level BPE, `gpt2`)"),
            ));
        }
        let tokens = self.meta_strings("tokenizer.ggml.tokens")?;
        let merges = self.meta_strings("tokenizer.ggml.merges").unwrap_or_default();
        let types: Vec<u64> = match self.meta("tokenizer.ggml.token_type").map(meta_json) {
            Some(Json::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![],
        };
        let spelling = bytes_to_unicode();
        let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
        let mut vocab = Map::new();
        for (id, token) in tokens.iter().enumerate() {
            // Tokens outside the byte alphabet are re-spelled byte by byte (transformers does too).
            let spelled = if token.chars().all(|c| alphabet.contains(&c)) {
                token.clone()
            } else {
                token.bytes().map(|b| spelling[b as usize]).collect()
            };
            vocab.insert(spelled, json!(id));
        }
        let mut added = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            let kind = types.get(id).copied().unwrap_or(1);
            let special = kind == CONTROL && token.chars().all(|c| alphabet.contains(&c));
            if special || (kind == USER_DEFINED && vocab.contains_key(token)) {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": special,
                }));
            }
        }
        let byte_level =
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre = self.meta_str("tokenizer.ggml.pre").unwrap_or_default();
        let pre_tokenizer = match pre_split(&pre) {
            Some(regex) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ]}),
            None => byte_level.clone(),
        };
        let add_bos = matches!(
            self.meta("tokenizer.ggml.add_bos_token"),
            Some(candle_core::quantized::gguf_file::Value::Bool(true))
        );
        let bos = self.special_token("tokenizer.ggml.bos_token_id", &tokens);
        let post_processor = match (&bos, add_bos) {
            (Some((id, text)), true) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {text.as_str(): {"id": text, "ids": [id], "tokens": [text]}},
            }),
            _ => {
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
            }
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        }))
    }

    /// `(id, text)` of the special token a metadata key names.
    fn special_token(&self, key: &str, tokens: &[String]) -> Option<(u64, String)> {
        let id = self.meta(key).map(meta_json)?.as_u64()?;
        tokens.get(id as usize).map(|t| (id, t.clone()))
    }

    /// The chat template stored in the file, if any.
    pub fn chat_template(&self) -> Option<String> {
        self.meta_str("tokenizer.chat_template")
    }

    /// The model's tokenizer with its chat template and BOS/EOS tokens.
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        let json = self.tokenizer_json()?;
        let tokens = self.meta_strings("tokenizer.ggml.tokens")?;
        let bos = self.special_token("tokenizer.ggml.bos_token_id", &tokens).map(|t| t.1);
        let eos = self.special_token("tokenizer.ggml.eos_token_id", &tokens).map(|t| t.1);
        let bytes = serde_json::to_vec(&json).map_err(|e| EngineError::file(self.path(), e.to_string()))?;
        TextTokenizer::from_parts(&bytes, self.chat_template(), bos.as_deref(), eos.as_deref())
            .map_err(|e| EngineError::file(self.path(), format!("tokenizer from GGUF metadata: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t.iter().collect::<std::collections::HashSet<_>>().len(), 256);
    }
}
