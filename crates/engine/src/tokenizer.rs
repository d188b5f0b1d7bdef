//! The model's tokenizer and chat template, loaded from a Hugging Face model folder
//! (`tokenizer.json`, `tokenizer_config.json`, optionally `chat_template.jinja`) or from parts
//! (GGUF). Encoding, decoding and chat rendering match Hugging Face's `tokenizers` and
//! `apply_chat_template`, so what we train on is what the model sees at inference.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

pub use crate::data::chat_template::ChatMessage;
use crate::data::chat_template::{ChatTemplate, TemplateTokens};
use crate::error::{EngineError, Result};

/// A special token: its text and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

/// Token ids of one encoded text with the byte range of `text` each token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Byte offsets `(start, end)` into the encoded text. Tokens the tokenizer adds (BOS ...) have
    /// `(0, 0)`; the byte-level pieces of one multi-byte character all carry that character's range.
    pub offsets: Vec<(usize, usize)>,
}

/// A Hugging Face tokenizer with the model's special tokens and chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    /// Where the chat template and special tokens came from, for error messages.
    source: PathBuf,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    unk: Option<SpecialToken>,
    vocab_size: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("chat_template", &self.template.is_some())
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EngineError::file(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

/// A tokenizer_config token entry: a string, an AddedToken object `{"content": ...}` or null.
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which "default" is used.
fn template_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Array(items) => {
            let named =
                |name: &str| items.iter().find(|t| t.get("name").and_then(Json::as_str) == Some(name));
            named("default")
                .or_else(|| items.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_string))
        }
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` and `chat_template.jinja`
    /// (transformers 5 writes the template there; it wins over the config's copy). Without a
    /// tokenizer_config, BOS/EOS ids come from `config.json` (`bos_token_id`, `eos_token_id`).
    pub fn from_dir(model_dir: &Path) -> Result<Self> {
        let tok_path = model_dir.join("tokenizer.json");
        let bytes = match std::fs::read(&tok_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EngineError::file(
                    &tok_path,
                    "tokenizer.json not found: the model folder needs a Hugging Face fast tokenizer",
                ));
            }
            Err(e) => return Err(EngineError::io(&tok_path, e)),
        };
        let tokenizer = parse_tokenizer(&tok_path, &bytes)?;

        let cfg_path = model_dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(Json::Null);
        let jinja_path = model_dir.join("chat_template.jinja");
        let (template, source) = match std::fs::read_to_string(&jinja_path) {
            Ok(t) => (Some(t), jinja_path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (template_text(cfg.get("chat_template")), cfg_path.clone())
            }
            Err(e) => return Err(EngineError::io(&jinja_path, e)),
        };

        let mut out = Self::assemble(tokenizer, template, source);
        let field = |name: &str| token_text(cfg.get(name));
        out.bos = out.special(&cfg_path, "bos_token", field("bos_token"), true)?;
        out.eos = out.special(&cfg_path, "eos_token", field("eos_token"), true)?;
        out.pad = out.special(&cfg_path, "pad_token", field("pad_token"), false)?;
        out.unk = out.special(&cfg_path, "unk_token", field("unk_token"), false)?;

        // A key the config leaves out (not one set to null) falls back to config.json's id.
        let unset = |key: &str| cfg.get(key).is_none();
        if unset("bos_token") || unset("eos_token") {
            let model_cfg = read_json(&model_dir.join("config.json")).ok().flatten().unwrap_or(Json::Null);
            let by_id = |key: &str| {
                let id = match model_cfg.get(key)? {
                    Json::Array(a) => a.first()?.as_u64()?,
                    v => v.as_u64()?,
                };
                out.special_by_id(u32::try_from(id).ok()?)
            };
            let (bos, eos) = (by_id("bos_token_id"), by_id("eos_token_id"));
            if unset("bos_token") {
                out.bos = bos;
            }
            if unset("eos_token") {
                out.eos = eos;
            }
        }
        Ok(out)
    }

    /// Builds a tokenizer from a serialized `tokenizer.json`, a chat template and BOS/EOS token
    /// strings (as a GGUF file stores them).
    pub fn from_parts(
        tokenizer_json: &[u8],
        chat_template: Option<String>,
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<Self> {
        let source = PathBuf::from("<tokenizer from parts>");
        let tokenizer = parse_tokenizer(&source, tokenizer_json)?;
        let mut out = Self::assemble(tokenizer, chat_template, source.clone());
        out.bos = out.special(&source, "bos_token", bos.map(str::to_string), true)?;
        out.eos = out.special(&source, "eos_token", eos.map(str::to_string), true)?;
        Ok(out)
    }

    fn assemble(tokenizer: tokenizers::Tokenizer, template: Option<String>, source: PathBuf) -> Self {
        let vocab_size = tokenizer
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0)
            .max(tokenizer.get_vocab_size(true));
        Self {
            tokenizer,
            template: template.filter(|t| !t.trim().is_empty()).map(ChatTemplate::new),
            source,
            bos: None,
            eos: None,
            pad: None,
            unk: None,
            vocab_size,
        }
    }

    fn special(
        &self,
        path: &Path,
        key: &str,
        text: Option<String>,
        required: bool,
    ) -> Result<Option<SpecialToken>> {
        let Some(text) = text else { return Ok(None) };
        match self.tokenizer.token_to_id(&text) {
            Some(id) => Ok(Some(SpecialToken { text, id })),
            None if required => Err(EngineError::file(
                path,
                format!("`{key}` is {text:?}, which is not in the tokenizer's vocabulary"),
            )),
            None => Ok(None),
        }
    }

    fn special_by_id(&self, id: u32) -> Option<SpecialToken> {
        let text = self.tokenizer.id_to_token(id)?;
        Some(SpecialToken { text, id })
    }

    /// Token ids of `text`; `add_special_tokens` lets the post-processor add BOS/EOS as the model
    /// defines (HF `add_special_tokens`). Special tokens written in the text map to their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.err(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Like [`encode`](Self::encode), with the byte range of `text` behind each token.
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(format!("cannot encode text: {e}")))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special).map_err(|e| self.err(format!("cannot decode ids: {e}")))
    }

    /// The text each token adds when decoding `ids` in order (pieces concatenate to
    /// `decode(ids, false)`); a token that ends inside a multi-byte character yields "" and the
    /// character appears with the token that completes it.
    pub fn decode_pieces(&self, ids: &[u32]) -> Result<Vec<String>> {
        let mut stream = self.tokenizer.decode_stream(false);
        ids.iter()
            .map(|&id| {
                stream
                    .step(id)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| self.err(format!("cannot decode id {id}: {e}")))
            })
            .collect()
    }

    /// Number of token ids (one past the largest id, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|t| t.id)
    }

    /// The padding id: `pad_token`, else `eos_token`, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad.as_ref().or(self.eos.as_ref()).map_or(0, |t| t.id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|t| t.text.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|t| t.text.as_str())
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.template.as_ref().map(ChatTemplate::source)
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The underlying Hugging Face tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// Renders a conversation with the model's chat template, as `apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=...)` does.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.template.as_ref().ok_or_else(|| {
            self.err("model has no chat_template; use the alpaca or text format, or add a template")
        })?;
        let tokens = TemplateTokens {
            bos: self.bos.as_ref().map(|t| t.text.clone()),
            eos: self.eos.as_ref().map(|t| t.text.clone()),
            pad: self.pad.as_ref().map(|t| t.text.clone()),
            unk: self.unk.as_ref().map(|t| t.text.clone()),
        };
        template.render(messages, add_generation_prompt, &tokens).map_err(|m| self.err(m))
    }

    fn err(&self, message: impl Into<String>) -> EngineError {
        EngineError::file(&self.source, message)
    }
}

/// Parses tokenizer.json and turns off any truncation/padding it carries: a tokenizer saved with
/// `truncation: {max_length: 512}` would otherwise cut every text silently.
fn parse_tokenizer(path: &Path, bytes: &[u8]) -> Result<tokenizers::Tokenizer> {
    let mut tok = tokenizers::Tokenizer::from_bytes(bytes)
        .map_err(|e| EngineError::file(path, format!("cannot parse tokenizer: {e}")))?;
    tok.with_truncation(None)
        .map_err(|e| EngineError::file(path, format!("cannot disable truncation: {e}")))?;
    tok.with_padding(None);
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    pub(crate) fn llama() -> TextTokenizer {
        TextTokenizer::from_dir(&fixtures().join("models/llama")).unwrap()
    }

    fn reference() -> Json {
        let p = fixtures().join("reference/chat_template.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn ids(v: &Json) -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    }

    #[test]
    fn loads_special_tokens_and_template() {
        let tok = llama();
        assert_eq!(tok.vocab_size(), 384);
        assert_eq!(tok.eos_id(), Some(2));
        assert_eq!(tok.eos_token(), Some("<|im_end|>"));
        assert_eq!(tok.pad_id(), 0);
        assert_eq!(tok.bos_id(), None);
        assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    }

    #[test]
    fn chat_rendering_and_ids_match_transformers() {
        let tok = llama();
        let r = reference();
        let convs = r["conversations"].as_array().unwrap();
        assert!(!convs.is_empty());
        for c in convs {
            let msgs: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
            let agp = c["add_generation_prompt"].as_bool().unwrap();
            let text = tok.render_chat(&msgs, agp).unwrap();
            assert_eq!(text, c["text"].as_str().unwrap(), "{}", c["name"]);
            assert_eq!(tok.encode(&text, false).unwrap(), ids(&c["ids"]), "{}", c["name"]);
        }
    }

    #[test]
    fn plain_encodings_match_transformers_and_round_trip() {
        let tok = llama();
        for p in reference()["plain"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            let want = ids(&p["ids"]);
            assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
            let toks: Vec<String> = want.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
            let ref_toks: Vec<String> = serde_json::from_value(p["tokens"].clone()).unwrap();
            assert_eq!(toks, ref_toks);
            assert_eq!(tok.decode(&want, false).unwrap(), text);
            assert_eq!(tok.decode_pieces(&want).unwrap().concat(), text);
            let enc = tok.encode_with_offsets(text, false).unwrap();
            assert_eq!(enc.ids, want);
            assert!(enc.offsets.iter().all(|&(s, e)| s <= e && e <= text.len()));
        }
    }

    #[test]
    fn template_sources_and_token_objects() {
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures().join("models/llama/tokenizer.json");
        std::fs::copy(&src, dir.path().join("tokenizer.json")).unwrap();
        let cfg = serde_json::json!({
            "eos_token": {"content": "<|im_end|>", "__type": "AddedToken"},
            "pad_token": null,
            "bos_token": "<|endoftext|>",
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}
            ]
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let tok = TextTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.eos_id(), Some(2));
        assert_eq!(tok.pad_id(), 2, "pad falls back to eos");
        let msgs = [ChatMessage::new("user", "hi")];
        assert_eq!(tok.render_chat(&msgs, false).unwrap(), "<|endoftext|>hi");

        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ messages[0].content }}\n").unwrap();
        let tok = TextTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(
            tok.render_chat(&msgs, false).unwrap(),
            "Jhi",
            "jinja file wins; trailing newline dropped"
        );
    }

    #[test]
    fn missing_files_and_templates_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");

        // Only tokenizer.json: special ids come from config.json.
        std::fs::copy(fixtures().join("models/llama/tokenizer.json"), dir.path().join("tokenizer.json"))
            .unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"bos_token_id": 1, "eos_token_id": [2, 0]}"#)
            .unwrap();
        let tok = TextTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (Some(1), Some(2), 2));
        assert!(!tok.has_chat_template());

        let json = std::fs::read(fixtures().join("models/llama/tokenizer.json")).unwrap();
        let tok = TextTokenizer::from_parts(&json, None, None, Some("<|im_end|>")).unwrap();
        assert_eq!(tok.eos_id(), Some(2));
        let err = tok.render_chat(&[ChatMessage::new("user", "x")], true).unwrap_err().to_string();
        assert!(err.contains("model has no chat_template"), "{err}");

        let err = TextTokenizer::from_parts(&json, None, None, Some("</s>")).unwrap_err().to_string();
        assert!(err.contains("eos_token") && err.contains("</s>"), "{err}");
    }

    #[test]
    fn raising_template_names_the_message() {
        let json = std::fs::read(fixtures().join("models/llama/tokenizer.json")).unwrap();
        let tpl = "{% if messages|length > 1 %}{{ raise_exception('Only one message please') }}{% endif %}ok";
        let tok = TextTokenizer::from_parts(&json, Some(tpl.into()), None, None).unwrap();
        let one = [ChatMessage::new("user", "x")];
        assert_eq!(tok.render_chat(&one, false).unwrap(), "ok");
        let two = [ChatMessage::new("user", "x"), ChatMessage::new("assistant", "y")];
        let err = tok.render_chat(&two, false).unwrap_err().to_string();
        assert!(err.contains("Only one message please"), "{err}");
    }
}
