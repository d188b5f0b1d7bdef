//! GGUF files (llama.cpp, Ollama) as a model source. [`GgufFile`] memory-maps the file, reads
//! its header with candle's `gguf_file`, maps llama.cpp tensor names to Hugging Face ones
//! (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`), undoes the q/k row
//! permutation llama.cpp applies for its RoPE layout, and serves tensors either dense
//! (embeddings, norms, the head, full fine-tuning) or still block-quantized as a frozen base. The
//! model config and the tokenizer come from the file's metadata.

use super::config::HfConfig;
use super::weights::{WeightSource, release_pages};
use crate::error::{EngineError, Result};
use crate::quant::{GgmlRows, QuantWeight, is_block_quantized};
use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Architectures whose GGUF layout we read, with the Hugging Face class they become.
const ARCHS: &[(&str, &str, &str)] =
    &[("llama", "LlamaForCausalLM", "llama"), ("qwen2", "Qwen2ForCausalLM", "qwen2")];

/// Per-block llama.cpp tensor names and their Hugging Face module paths.
const BLOCK_NAMES: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Whether `path` is a GGUF file (by extension or magic).
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"GGUF"
}

/// One tensor of the file under its Hugging Face name.
struct Entry {
    gguf_name: String,
    dtype: GgmlDType,
    shape: Vec<usize>,
    start: usize,
    len: usize,
    /// Undo llama.cpp's q/k permutation with this many heads.
    unpermute_heads: Option<usize>,
}

/// A memory-mapped GGUF model file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    metadata: HashMap<String, gguf_file::Value>,
    arch: String,
    entries: HashMap<String, Entry>,
}

fn meta_err(path: &Path, key: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::file(path, format!("metadata `{key}`: {message}"))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: read-only map; every tensor range is checked against the map length below.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        let content = gguf_file::Content::read(&mut std::io::Cursor::new(&map[..]))
            .map_err(|e| EngineError::file(path, format!("not a readable GGUF file: {e}")))?;
        let arch = match content.metadata.get("general.architecture") {
            Some(gguf_file::Value::String(s)) => s.clone(),
            _ => return Err(meta_err(path, "general.architecture", "missing")),
        };
        if !ARCHS.iter().any(|(a, _, _)| *a == arch) {
            return Err(EngineError::UnsupportedArchitecture {
                name: format!("GGUF architecture `{arch}` in {}", path.display()),
                supported: ARCHS.iter().map(|a| a.0).collect::<Vec<_>>().join(", "),
            });
        }
        let mut out =
            Self { path: path.to_path_buf(), map, metadata: content.metadata, arch, entries: HashMap::new() };
        let heads = out.usize_key("attention.head_count")?;
        let kv_heads = out.opt_usize_key("attention.head_count_kv")?.unwrap_or(heads);
        let base = content.tensor_data_offset as usize;
        for (name, info) in &content.tensor_infos {
            let shape = info.shape.dims().to_vec();
            let too_large = || EngineError::tensor(path, name, format!("shape {shape:?} is too large"));
            let elems = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(too_large)?;
            let bs = info.ggml_dtype.block_size();
            if elems % bs != 0 {
                return Err(EngineError::tensor(
                    path,
                    name,
                    format!("{elems} elements are not whole {:?} blocks", info.ggml_dtype),
                ));
            }
            let len = (elems / bs).checked_mul(info.ggml_dtype.type_size()).ok_or_else(too_large)?;
            let start = base.saturating_add(info.offset as usize);
            if start.checked_add(len).is_none_or(|end| end > out.map.len()) {
                return Err(EngineError::tensor(
                    path,
                    name,
                    "data lies outside the file (truncated or corrupt file?)",
                ));
            }
            let Some((hf, permute)) = out.hf_name(name, heads, kv_heads) else { continue };
            out.entries.insert(
                hf,
                Entry {
                    gguf_name: name.clone(),
                    dtype: info.ggml_dtype,
                    shape,
                    start,
                    len,
                    unpermute_heads: permute,
                },
            );
        }
        if out.entries.contains_key("rope_freqs.weight")
            || content.tensor_infos.contains_key("rope_freqs.weight")
        {
            return Err(EngineError::file(
                path,
                "per-frequency RoPE factors (`rope_freqs.weight`, Llama 3.1 style) are not supported yet",
            ));
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn architecture(&self) -> &str {
        &self.arch
    }

    /// The Hugging Face name of a llama.cpp tensor, and the head count for un-permuting q/k.
    fn hf_name(&self, name: &str, heads: usize, kv_heads: usize) -> Option<(String, Option<usize>)> {
        let (stem, suffix) = name.rsplit_once('.')?;
        let permute = self.arch == "llama";
        let direct = match stem {
            "token_embd" => Some("model.embed_tokens"),
            "output_norm" => Some("model.norm"),
            "output" => Some("lm_head"),
            _ => None,
        };
        if let Some(hf) = direct {
            return Some((format!("{hf}.{suffix}"), None));
        }
        let rest = stem.strip_prefix("blk.")?;
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (_, module) = BLOCK_NAMES.iter().find(|(g, _)| *g == part)?;
        let unpermute = match part {
            "attn_q" if permute => Some(heads),
            "attn_k" if permute => Some(kv_heads),
            _ => None,
        };
        Some((format!("model.layers.{layer}.{module}.{suffix}"), unpermute))
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    pub fn meta(&self, key: &str) -> Option<&gguf_file::Value> {
        self.metadata.get(key)
    }

    fn opt_usize_key(&self, suffix: &str) -> Result<Option<usize>> {
        let key = self.key(suffix);
        match self.metadata.get(&key) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .map(|n| Some(n as usize))
                .ok_or_else(|| meta_err(&self.path, &key, "expected an integer")),
        }
    }

    fn usize_key(&self, suffix: &str) -> Result<usize> {
        self.opt_usize_key(suffix)?.ok_or_else(|| meta_err(&self.path, &self.key(suffix), "missing"))
    }

    fn f64_key(&self, suffix: &str) -> Result<Option<f64>> {
        let key = self.key(suffix);
        match self.metadata.get(&key) {
            None => Ok(None),
            Some(v) => as_f64(v).map(Some).ok_or_else(|| meta_err(&self.path, &key, "expected a number")),
        }
    }

    /// A `config.json` equivalent built from the metadata, read by the same code as HF configs.
    pub fn config(&self) -> Result<HfConfig> {
        let (_, class, model_type) =
            ARCHS.iter().find(|(a, _, _)| *a == self.arch).copied().unwrap_or(ARCHS[0]);
        let hidden = self.usize_key("embedding_length")?;
        let heads = self.usize_key("attention.head_count")?;
        let embed = self
            .entries
            .get("model.embed_tokens.weight")
            .ok_or_else(|| EngineError::tensor(&self.path, "token_embd.weight", "missing from the file"))?;
        let vocab = match (self.opt_usize_key("vocab_size")?, embed.shape.as_slice()) {
            (Some(v), _) => v,
            (None, [rows, _]) => *rows,
            (None, other) => {
                return Err(EngineError::tensor(
                    &self.path,
                    "token_embd.weight",
                    format!("the embedding must have 2 dimensions, it has shape {other:?}"),
                ));
            }
        };
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": self.usize_key("feed_forward_length")?,
            "num_hidden_layers": self.usize_key("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.opt_usize_key("attention.head_count_kv")?.unwrap_or(heads),
            "head_dim": self.opt_usize_key("attention.key_length")?.unwrap_or(hidden / heads.max(1)),
            "rms_norm_eps": self.f64_key("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            "rope_theta": self.f64_key("rope.freq_base")?.unwrap_or(10000.0),
            "max_position_embeddings": self.opt_usize_key("context_length")?.unwrap_or(2048),
            "vocab_size": vocab,
            "hidden_act": "silu",
            "tie_word_embeddings": !self.entries.contains_key("lm_head.weight"),
            "use_sliding_window": false,
        });
        for (meta, key) in
            [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")]
        {
            if let Some(id) = self.metadata.get(meta).and_then(as_u64) {
                cfg[key] = json!(id);
            }
        }
        let scaling = self.metadata.get(&self.key("rope.scaling.type")).and_then(|v| match v {
            gguf_file::Value::String(s) => Some(s.clone()),
            _ => None,
        });
        match scaling.as_deref() {
            None | Some("none") => {}
            Some("linear") => {
                let factor = self.f64_key("rope.scaling.factor")?.unwrap_or(1.0);
                cfg["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
            }
            Some(other) => {
                return Err(meta_err(
                    &self.path,
                    &self.key("rope.scaling.type"),
                    format!("RoPE scaling `{other}` is not supported"),
                ));
            }
        }
        Ok(HfConfig::from_value(self.path.clone(), cfg))
    }

    /// The raw bytes of a tensor, its pages released from the process once copied out.
    fn with_bytes<R>(&self, e: &Entry, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
        let r = f(&self.map[e.start..e.start + e.len]);
        release_pages(&self.map, e.start, e.len);
        r
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| EngineError::tensor(&self.path, name, "missing from the GGUF file"))
    }

    fn tensor_err(&self, e: &Entry, err: impl std::fmt::Display) -> EngineError {
        EngineError::tensor(&self.path, &e.gguf_name, err.to_string())
    }
}

/// `row_order[o]` = the stored row holding original row `o`: llama.cpp stores q/k rows per head
/// as `[head, pair, 2]` where Hugging Face has `[head, 2, pair]`.
pub fn unpermute_order(rows: usize, heads: usize) -> Option<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return None;
    }
    let half = rows / heads / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for t in 0..2 {
            for d in 0..half {
                order[h * 2 * half + t * half + d] = h * 2 * half + d * 2 + t;
            }
        }
    }
    Some(order)
}

fn as_u64(v: &gguf_file::Value) -> Option<u64> {
    use gguf_file::Value as V;
    match *v {
        V::U8(x) => Some(x as u64),
        V::U16(x) => Some(x as u64),
        V::U32(x) => Some(x as u64),
        V::U64(x) => Some(x),
        V::I8(x) => u64::try_from(x).ok(),
        V::I16(x) => u64::try_from(x).ok(),
        V::I32(x) => u64::try_from(x).ok(),
        V::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn as_f64(v: &gguf_file::Value) -> Option<f64> {
    use gguf_file::Value as V;
    match *v {
        V::F32(x) => Some(x as f64),
        V::F64(x) => Some(x),
        _ => as_u64(v).map(|x| x as f64),
    }
}

/// Metadata arrays as JSON (for the tokenizer builder).
pub(crate) fn meta_json(v: &gguf_file::Value) -> Json {
    use gguf_file::Value as V;
    match v {
        V::String(s) => json!(s),
        V::Bool(b) => json!(b),
        V::Array(a) => Json::Array(a.iter().map(meta_json).collect()),
        V::F32(_) | V::F64(_) => json!(as_f64(v)),
        _ => as_u64(v).map(|n| json!(n)).unwrap_or_else(|| json!(as_f64(v))),
    }
}

impl WeightSource for GgufFile {
    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let e = self.entry(name)?;
        let rows = if e.shape.len() >= 2 { e.shape[0] } else { 1 };
        let cols = e.shape.iter().product::<usize>() / rows.max(1);
        let order = match e.unpermute_heads {
            Some(h) => Some(
                unpermute_order(rows, h)
                    .ok_or_else(|| self.tensor_err(e, format!("{rows} rows do not split into {h} heads")))?,
            ),
            None => None,
        };
        let row = |r: usize| order.as_ref().map_or(r, |o| o[r]);
        let values: Vec<f32> = self.with_bytes(e, |bytes| {
            let per_row = bytes.len() / rows.max(1);
            let rows_in_order = (0..rows).flat_map(|r| {
                bytes[row(r) * per_row..(row(r) + 1) * per_row].chunks_exact(e.dtype.type_size())
            });
            Ok(match e.dtype {
                GgmlDType::F32 => {
                    rows_in_order.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
                GgmlDType::F16 => {
                    rows_in_order.map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                GgmlDType::BF16 => {
                    rows_in_order.map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                d if is_block_quantized(d) => {
                    let g = GgmlRows::new(d, rows, cols, bytes, order.as_deref())
                        .map_err(|err| self.tensor_err(e, err))?;
                    let mut out = vec![0f32; rows * cols];
                    g.dequantize_rows_into(0, &mut out).map_err(|err| self.tensor_err(e, err))?;
                    out
                }
                d => return Err(self.tensor_err(e, format!("storage type {d:?} is not supported"))),
            })
        })?;
        let t = Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    fn load_quantized(&self, name: &str, compute: DType) -> Result<Option<QuantWeight>> {
        let Some(e) = self.entries.get(name) else { return Ok(None) };
        if !is_block_quantized(e.dtype) || e.shape.len() != 2 {
            return Ok(None);
        }
        let (rows, cols) = (e.shape[0], e.shape[1]);
        let order = match e.unpermute_heads {
            Some(h) => Some(
                unpermute_order(rows, h)
                    .ok_or_else(|| self.tensor_err(e, format!("{rows} rows do not split into {h} heads")))?,
            ),
            None => None,
        };
        let g = self.with_bytes(e, |bytes| {
            GgmlRows::new(e.dtype, rows, cols, bytes, order.as_deref()).map_err(|err| self.tensor_err(e, err))
        })?;
        Ok(Some(QuantWeight::from_ggml(g, compute)))
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.entries.keys().cloned().collect();
        n.sort();
        n
    }

    fn origin(&self, _name: &str) -> PathBuf {
        self.path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, half, ..).swapaxes(1, 2): stored row s holds row p[s].
        let (rows, heads) = (12, 2);
        let half = rows / heads / 2;
        let mut stored_holds = vec![0; rows];
        for h in 0..heads {
            for d in 0..half {
                for t in 0..2 {
                    stored_holds[h * 2 * half + d * 2 + t] = h * 2 * half + t * half + d;
                }
            }
        }
        let order = unpermute_order(rows, heads).unwrap();
        for (o, &s) in order.iter().enumerate() {
            assert_eq!(stored_holds[s], o);
        }
        assert!(unpermute_order(10, 3).is_none());
    }
}
