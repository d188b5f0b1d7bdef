//! [`Seq2SeqLm`]: the one encoder-decoder (T5, BART) built from a [`Seq2SeqSpec`] row with the
//! same norm, attention, MLP and positional pieces as the decoder-only model. The encoder is
//! bidirectional with key padding, the decoder causal with cross-attention over the encoder.

use super::LanguageModel;
use super::attention::{Attention, AttnConfig, AttnPaths, AttnPos};
use super::config::HfConfig;
use super::dims::Activation;
use super::mlp::{Mlp, MlpConfig, MlpPaths};
use super::norm::Norm;
use super::positions::{Positions, RelativeBias};
use crate::arch::{
    MlpKind, NormKind, NormPlacement, QkNorm, QkvLayout, Seq2SeqPositions, Seq2SeqSpec, StackNames,
    WeightLayout,
};
use crate::error::{EngineError, Result};
use crate::layers::{ForwardCtx, LayerFactory, Linear, Param};
use crate::ops::{self, IGNORE_INDEX};
use candle_core::{DType, Device, Tensor, Var};

/// The resolved numbers of an encoder-decoder model.
#[derive(Debug, Clone)]
pub struct Seq2SeqDims {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub ff: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub norm_eps: f64,
    pub act: Activation,
    pub gated: bool,
    pub max_positions: usize,
    /// Multiplies the decoder output before a tied head (original T5: `d_model^-0.5`).
    pub output_scale: Option<f64>,
    /// Multiplies token embeddings (BART `scale_embedding`).
    pub embed_scale: Option<f64>,
    pub buckets: usize,
    pub max_distance: usize,
    pub decoder_start_token_id: u32,
    pub pad_token_id: u32,
    pub eos_token_id: Option<u32>,
    pub tie_embeddings: bool,
}

impl Seq2SeqDims {
    pub fn from_config(cfg: &HfConfig, spec: &Seq2SeqSpec) -> Result<Self> {
        let hidden = cfg.require_usize(&["d_model", "hidden_size"])?;
        let heads = cfg.require_usize(&["num_heads", "encoder_attention_heads", "num_attention_heads"])?;
        if let Some(dh) = cfg.usize_any(&["decoder_attention_heads"])?
            && dh != heads
        {
            return Err(cfg.error("decoder_attention_heads", "encoder and decoder head counts must match"));
        }
        let ff = cfg.require_usize(&["d_ff", "encoder_ffn_dim"])?;
        if let Some(df) = cfg.usize_any(&["decoder_ffn_dim"])?
            && df != ff
        {
            return Err(cfg.error("decoder_ffn_dim", "encoder and decoder MLP sizes must match"));
        }
        let encoder_layers = cfg.require_usize(&["num_layers", "encoder_layers"])?;
        let decoder_layers =
            cfg.usize_any(&["num_decoder_layers", "decoder_layers"])?.unwrap_or(encoder_layers);
        let vocab = cfg.require_usize(&["vocab_size"])?;
        if heads == 0 || hidden == 0 || vocab == 0 {
            return Err(cfg.error("d_model", "sizes must be positive"));
        }
        let head_dim = cfg.usize_any(&["d_kv"])?.unwrap_or(hidden / heads);
        let default_eps = if matches!(spec.norm, NormKind::Rms { .. }) { 1e-6 } else { 1e-5 };
        let norm_eps = cfg.f64_any(&["layer_norm_epsilon", "layer_norm_eps"])?.unwrap_or(default_eps);
        // T5: `feed_forward_proj` "gated-gelu" means gated gelu_new; BART: `activation_function`.
        let proj = cfg.str_any(&["feed_forward_proj"]).unwrap_or("");
        let gated = cfg.bool_any(&["is_gated_act"])?.unwrap_or(proj.starts_with("gated-"));
        let act_name = match cfg.str_any(&["dense_act_fn", "activation_function"]) {
            Some(a) => a.to_string(),
            None if proj == "gated-gelu" => "gelu_new".into(),
            None => proj.rsplit('-').next().filter(|s| !s.is_empty()).unwrap_or("relu").to_string(),
        };
        let act = Activation::parse(&act_name)
            .ok_or_else(|| cfg.error("dense_act_fn", format!("unsupported activation `{act_name}`")))?;
        let tie_cfg = cfg.bool_any(&["tie_word_embeddings"])?;
        let output_scale = match spec.positions {
            Seq2SeqPositions::RelativeBuckets => {
                let scale = cfg.bool_any(&["scale_decoder_outputs"])?.unwrap_or(tie_cfg != Some(false));
                scale.then(|| (hidden as f64).powf(-0.5))
            }
            Seq2SeqPositions::Learned { .. } => None,
        };
        let embed_scale =
            cfg.bool_any(&["scale_embedding"])?.unwrap_or(false).then(|| (hidden as f64).sqrt());
        let decoder_start_token_id = cfg.usize_any(&["decoder_start_token_id"])?.ok_or_else(|| {
            cfg.error("decoder_start_token_id", "missing (needed to shift labels into decoder inputs)")
        })? as u32;
        let pad_token_id = cfg.usize_any(&["pad_token_id"])?.unwrap_or(0) as u32;
        let eos_token_id = cfg.usize_any(&["eos_token_id"])?.map(|e| e as u32);
        Ok(Self {
            vocab,
            hidden,
            heads,
            head_dim,
            ff,
            encoder_layers,
            decoder_layers,
            norm_eps,
            act,
            gated,
            max_positions: cfg.usize_any(&["max_position_embeddings", "n_positions"])?.unwrap_or(512),
            output_scale,
            embed_scale,
            buckets: cfg.usize_any(&["relative_attention_num_buckets"])?.unwrap_or(32),
            max_distance: cfg.usize_any(&["relative_attention_max_distance"])?.unwrap_or(128),
            decoder_start_token_id,
            pad_token_id,
            eos_token_id,
            tie_embeddings: tie_cfg.unwrap_or(true),
        })
    }
}

impl Seq2SeqDims {
    /// Parameters of the model (embeddings once; norms and position tables left out).
    pub fn parameter_count(&self) -> usize {
        let inner = self.heads * self.head_dim;
        let attn = 4 * self.hidden * inner;
        let mlp = (if self.gated { 3 } else { 2 }) * self.hidden * self.ff;
        let head = if self.tie_embeddings { 0 } else { self.vocab * self.hidden };
        self.vocab * self.hidden
            + head
            + self.encoder_layers * (attn + mlp)
            + self.decoder_layers * (2 * attn + mlp)
    }
}

/// Decoder inputs from labels: `[start, labels[..-1]]` with -100 replaced by the pad id.
pub fn shift_right(labels: &[i64], batch: usize, seq: usize, start: u32, pad: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(batch * seq);
    for b in 0..batch {
        out.push(start);
        for t in 0..seq.saturating_sub(1) {
            let l = labels[b * seq + t];
            out.push(if l == IGNORE_INDEX { pad } else { l as u32 });
        }
    }
    out
}

/// One encoder or decoder layer.
struct Layer {
    placement: NormPlacement,
    attn: Attention,
    attn_norm: Norm,
    cross: Option<(Attention, Norm)>,
    mlp: Mlp,
    mlp_norm: Norm,
}

impl Layer {
    fn sub(
        &self,
        x: &Tensor,
        norm: &Norm,
        f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        match self.placement {
            NormPlacement::Pre => x + f(&norm.forward(x)?)?,
            NormPlacement::Post => norm.forward(&(x + f(x)?)?),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        self_pos: AttnPos,
        memory: Option<(&Tensor, AttnPos)>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let x = self.sub(x, &self.attn_norm, |h| self.attn.forward(h, None, self_pos, None, ctx))?;
        let x = match (&self.cross, memory) {
            (Some((attn, norm)), Some((mem, pos))) => {
                self.sub(&x, norm, |h| attn.forward(h, Some(mem), pos, None, ctx))?
            }
            _ => x,
        };
        self.sub(&x, &self.mlp_norm, |h| self.mlp.forward(h, ctx))
    }

    fn linears(&self) -> Vec<(&str, &dyn Linear)> {
        let mut out: Vec<(&str, &dyn Linear)> = Vec::new();
        out.extend(self.attn.paths().iter().map(String::as_str).zip(self.attn.linears()));
        if let Some((c, _)) = &self.cross {
            out.extend(c.paths().iter().map(String::as_str).zip(c.linears()));
        }
        out.extend(self.mlp.paths().iter().map(String::as_str).zip(self.mlp.linears()));
        out
    }

    fn norms(&self) -> Vec<&Norm> {
        let mut v = vec![&self.attn_norm];
        if let Some((_, n)) = &self.cross {
            v.push(n);
        }
        v.push(&self.mlp_norm);
        v
    }
}

/// A stack of layers with its embedding extras and final norm.
struct Stack {
    layers: Vec<Layer>,
    relative: Option<RelativeBias>,
    learned: Positions,
    embed_norm: Option<Norm>,
    final_norm: Option<Norm>,
}

fn p(prefix: &str, name: &str) -> String {
    if name.is_empty() { String::new() } else { format!("{prefix}.{name}") }
}

impl Stack {
    fn load(
        f: &LayerFactory,
        spec: &Seq2SeqSpec,
        d: &Seq2SeqDims,
        names: &StackNames,
        n_layers: usize,
        decoder: bool,
    ) -> Result<Self> {
        let norm = |path: &str| Norm::load(f, spec.norm, path, d.hidden, d.norm_eps, spec.biases);
        let attn_cfg = AttnConfig {
            hidden: d.hidden,
            heads: d.heads,
            kv_heads: d.heads,
            head_dim: d.head_dim,
            layout: QkvLayout::Separate,
            weight_layout: WeightLayout::OutIn,
            qkv_bias: spec.biases,
            o_bias: spec.biases,
            qk_norm: QkNorm::None,
            norm: spec.norm,
            norm_eps: d.norm_eps,
            norm_bias: spec.biases,
            clip: None,
            scale: if spec.scaled_attention { 1.0 / (d.head_dim as f64).sqrt() } else { 1.0 },
            softcap: None,
            window: None,
            causal: decoder,
            mla: None,
        };
        let mlp_cfg = MlpConfig {
            hidden: d.hidden,
            intermediate: d.ff,
            kind: if d.gated { MlpKind::Gated } else { MlpKind::Plain },
            act: d.act,
            bias: spec.biases,
            weight_layout: WeightLayout::OutIn,
        };
        let n = &names.layer_names;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let prefix = names.layer.replace("{i}", &i.to_string());
            let q = |name: &str| p(&prefix, name);
            let attn_paths = AttnPaths { q: q(n.q), k: q(n.k), v: q(n.v), o: q(n.o), ..Default::default() };
            let cross = if decoder {
                let paths = AttnPaths {
                    q: q(n.cross_q),
                    k: q(n.cross_k),
                    v: q(n.cross_v),
                    o: q(n.cross_o),
                    ..Default::default()
                };
                Some((Attention::load(f, &attn_cfg, &paths)?, norm(&q(n.cross_norm))?))
            } else {
                None
            };
            let mlp_paths = if d.gated {
                MlpPaths { gate: q(n.gate), up: q(n.up), down: q(n.down), ..Default::default() }
            } else {
                MlpPaths { up: q(n.plain_up), down: q(n.down), ..Default::default() }
            };
            layers.push(Layer {
                placement: spec.placement,
                attn: Attention::load(f, &attn_cfg, &attn_paths)?,
                attn_norm: norm(&q(n.attn_norm))?,
                cross,
                mlp: Mlp::load(f, &mlp_cfg, &mlp_paths)?,
                mlp_norm: norm(&q(n.mlp_norm))?,
            });
        }
        let relative = match spec.positions {
            Seq2SeqPositions::RelativeBuckets => Some(RelativeBias::load(
                f,
                names.relative_bias,
                d.heads,
                d.buckets,
                d.max_distance,
                !decoder,
            )?),
            Seq2SeqPositions::Learned { .. } => None,
        };
        let learned = match spec.positions {
            Seq2SeqPositions::Learned { offset } => {
                Positions::learned(f, names.positions, d.max_positions + offset, d.hidden, offset)?
            }
            Seq2SeqPositions::RelativeBuckets => Positions::None,
        };
        let opt_norm = |name: &str| -> Result<Option<Norm>> {
            if name.is_empty() { Ok(None) } else { norm(name).map(Some) }
        };
        Ok(Self {
            layers,
            relative,
            learned,
            embed_norm: opt_norm(names.embed_norm)?,
            final_norm: opt_norm(names.final_norm)?,
        })
    }

    /// Runs the stack over embedded tokens `x` (`[b, t, hidden]`).
    fn forward(
        &self,
        x: Tensor,
        key_lens: Option<&[usize]>,
        memory: Option<(&Tensor, &[usize])>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let t = x.dim(1)?;
        let mut x = self.learned.add_absolute(&x, 0)?;
        if let Some(n) = &self.embed_norm {
            x = n.forward(&x)?;
        }
        let bias = match &self.relative {
            Some(r) => Some(r.bias(t, t)?.to_dtype(x.dtype())?),
            None => None,
        };
        let self_pos = AttnPos { bias: bias.as_ref(), key_lens, ..Default::default() };
        let mem = memory.map(|(m, lens)| (m, AttnPos { key_lens: Some(lens), ..Default::default() }));
        for l in &self.layers {
            x = l.forward(&x, self_pos, mem, ctx)?;
        }
        match &self.final_norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    fn trainable(&self, out: &mut Vec<(String, Var)>) {
        if let Some(r) = &self.relative {
            r.trainable(out);
        }
        self.learned.trainable(out);
        for n in self.embed_norm.iter().chain(self.final_norm.iter()) {
            n.trainable(out);
        }
        for l in &self.layers {
            for (path, lin) in l.linears() {
                for (name, v) in lin.trainable() {
                    out.push((format!("{path}.{name}"), v));
                }
            }
            for n in l.norms() {
                n.trainable(out);
            }
        }
    }

    fn weights(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        if let Some(r) = &self.relative {
            r.weights(out);
        }
        self.learned.weights(out);
        for n in self.embed_norm.iter().chain(self.final_norm.iter()) {
            n.weights(out);
        }
        for l in &self.layers {
            for (path, lin) in l.linears() {
                out.push((format!("{path}.weight"), lin.merged_weight()?));
                if let Some(b) = lin.bias() {
                    out.push((format!("{path}.bias"), b));
                }
            }
            for n in l.norms() {
                n.weights(out);
            }
        }
        Ok(())
    }
}

enum Head {
    Tied,
    Linear(Box<dyn Linear>),
}

/// A batch for an encoder-decoder: right-padded encoder ids with their lengths and aligned
/// (unshifted) decoder labels.
#[derive(Debug, Clone)]
pub struct Seq2SeqBatch {
    pub input_ids: Vec<u32>,
    pub input_lens: Vec<usize>,
    pub labels: Vec<i64>,
    pub batch: usize,
    pub src_len: usize,
    pub tgt_len: usize,
}

impl Seq2SeqBatch {
    /// Pads sources with `pad` and labels with -100 to the longest of each.
    pub fn collate(pairs: &[(&[u32], &[i64])], pad: u32) -> Self {
        let src_len = pairs.iter().map(|p| p.0.len()).max().unwrap_or(0);
        let tgt_len = pairs.iter().map(|p| p.1.len()).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(pairs.len() * src_len);
        let mut labels = Vec::with_capacity(pairs.len() * tgt_len);
        for (src, tgt) in pairs {
            input_ids.extend_from_slice(src);
            input_ids.resize(input_ids.len() + src_len - src.len(), pad);
            labels.extend_from_slice(tgt);
            labels.resize(labels.len() + tgt_len - tgt.len(), IGNORE_INDEX);
        }
        Self {
            input_ids,
            input_lens: pairs.iter().map(|p| p.0.len()).collect(),
            labels,
            batch: pairs.len(),
            src_len,
            tgt_len,
        }
    }

    /// Labels the loss covers.
    pub fn targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

pub struct Seq2SeqLm {
    pub spec: Seq2SeqSpec,
    pub dims: Seq2SeqDims,
    pub dtype: DType,
    pub device: Device,
    shared: Param,
    encoder: Stack,
    decoder: Stack,
    head: Head,
    logits_bias: Option<Tensor>,
    /// Module paths that carry a LoRA adapter.
    pub adapted: Vec<String>,
}

impl Seq2SeqLm {
    pub fn build(spec: Seq2SeqSpec, dims: Seq2SeqDims, f: &LayerFactory) -> Result<Self> {
        let (v, h) = (dims.vocab, dims.hidden);
        let shared = f.param(&format!("{}.weight", spec.shared), &[v, h], f.weight_dtype())?;
        let encoder = Stack::load(f, &spec, &dims, &spec.encoder, dims.encoder_layers, false)?;
        let decoder = Stack::load(f, &spec, &dims, &spec.decoder, dims.decoder_layers, true)?;
        let head_name = format!("{}.weight", spec.lm_head);
        let head = if f.weights.contains(&head_name) && !dims.tie_embeddings {
            Head::Linear(f.output_head(spec.lm_head, h, v)?)
        } else {
            Head::Tied
        };
        // A buffer, never trained (as in transformers).
        let logits_bias = match spec.logits_bias {
            "" => None,
            name => Some(f.tensor(name, &[1, v], DType::F32)?.reshape(v)?),
        };
        f.check_init_adapter_used()?;
        Ok(Self {
            spec,
            dtype: f.dtype,
            device: f.device.clone(),
            adapted: f.adapted_modules(),
            dims,
            shared,
            encoder,
            decoder,
            head,
            logits_bias,
        })
    }

    fn embed(&self, ids: &[u32], batch: usize, seq: usize) -> candle_core::Result<Tensor> {
        let idx = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let x = self.shared.tensor().index_select(&idx, 0)?.reshape((batch, seq, self.dims.hidden))?;
        let x = x.to_dtype(self.dtype)?;
        match self.dims.embed_scale {
            Some(s) => x * s,
            None => Ok(x),
        }
    }

    /// Encoder states `[b, s, hidden]` for right-padded sources of the given lengths.
    pub fn encode(
        &self,
        ids: &[u32],
        lens: &[usize],
        batch: usize,
        seq: usize,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let x = self.embed(ids, batch, seq)?;
        self.encoder.forward(x, Some(lens), None, ctx)
    }

    /// Decoder states `[b, t, hidden]` for decoder inputs over the encoder states.
    pub fn decode(
        &self,
        dec_ids: &[u32],
        batch: usize,
        seq: usize,
        memory: &Tensor,
        lens: &[usize],
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let x = self.embed(dec_ids, batch, seq)?;
        self.decoder.forward(x, None, Some((memory, lens)), ctx)
    }

    /// Logits (f32) of decoder states.
    pub fn logits(&self, hidden: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let h = match self.dims.output_scale {
            Some(s) => (hidden * s)?,
            None => hidden.clone(),
        };
        let logits = match &self.head {
            Head::Tied => match &self.shared {
                Param::Frozen(w) => ops::frozen_matmul(&h, w)?,
                Param::Trainable(v) => ops::linear_matmul(&h, v.as_tensor())?,
            },
            Head::Linear(l) => l.forward(&h, ctx)?,
        };
        let logits = logits.to_dtype(DType::F32)?;
        match &self.logits_bias {
            Some(b) => logits.broadcast_add(b),
            None => Ok(logits),
        }
    }

    /// Logits `[b, t, vocab]` for full (unpadded) sources and given decoder inputs.
    pub fn forward_logits(
        &self,
        ids: &[u32],
        batch: usize,
        src_len: usize,
        dec_ids: &[u32],
        tgt_len: usize,
    ) -> Result<Tensor> {
        let ctx = ForwardCtx::eval();
        let lens = vec![src_len; batch];
        let memory = self.encode(ids, &lens, batch, src_len, &ctx)?;
        let h = self.decode(dec_ids, batch, tgt_len, &memory, &lens, &ctx)?;
        Ok(self.logits(&h, &ctx)?)
    }

    /// Summed cross-entropy over labelled decoder positions and their count.
    pub fn loss_sum(&self, b: &Seq2SeqBatch, ctx: &ForwardCtx) -> Result<(Tensor, usize)> {
        let d = &self.dims;
        let dec_ids = shift_right(&b.labels, b.batch, b.tgt_len, d.decoder_start_token_id, d.pad_token_id);
        let memory = self.encode(&b.input_ids, &b.input_lens, b.batch, b.src_len, ctx)?;
        let h = self.decode(&dec_ids, b.batch, b.tgt_len, &memory, &b.input_lens, ctx)?;
        let rows: Vec<u32> =
            (0..b.labels.len() as u32).filter(|&r| b.labels[r as usize] != IGNORE_INDEX).collect();
        if rows.is_empty() {
            return Err(EngineError::Other("batch has no token to predict".into()));
        }
        let targets: Vec<u32> = rows.iter().map(|&r| b.labels[r as usize] as u32).collect();
        let idx = Tensor::from_slice(&rows, rows.len(), &self.device)?;
        let h = h.reshape(((), d.hidden))?.index_select(&idx, 0)?;
        let sum = ops::cross_entropy_sum(&self.logits(&h, ctx)?, &targets)?;
        Ok((sum, rows.len()))
    }

    /// Mean loss like `model(input_ids, labels=labels).loss` in transformers.
    pub fn loss(&self, b: &Seq2SeqBatch, ctx: &ForwardCtx) -> Result<(Tensor, usize)> {
        let (sum, n) = self.loss_sum(b, ctx)?;
        Ok(((sum / n as f64)?, n))
    }
}

impl LanguageModel for Seq2SeqLm {
    fn family(&self) -> &'static str {
        self.spec.family
    }

    fn task_type(&self) -> &'static str {
        "SEQ_2_SEQ_LM"
    }

    fn fan_in_fan_out(&self) -> bool {
        false
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        if let Some(v) = self.shared.var() {
            out.push((format!("{}.weight", self.spec.shared), v.clone()));
        }
        self.encoder.trainable(&mut out);
        self.decoder.trainable(&mut out);
        if let Head::Linear(l) = &self.head {
            for (n, v) in l.trainable() {
                out.push((format!("{}.{n}", self.spec.lm_head), v));
            }
        }
        out
    }

    fn linears(&self) -> Vec<(String, &dyn Linear)> {
        let mut out: Vec<(String, &dyn Linear)> = Vec::new();
        for stack in [&self.encoder, &self.decoder] {
            for l in &stack.layers {
                out.extend(l.linears().into_iter().map(|(p, l)| (p.to_string(), l)));
            }
        }
        if let Head::Linear(l) = &self.head {
            out.push((self.spec.lm_head.to_string(), l.as_ref()));
        }
        out
    }

    fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(format!("{}.weight", self.spec.shared), self.shared.tensor().detach())];
        self.encoder.weights(&mut out)?;
        self.decoder.weights(&mut out)?;
        if let Head::Linear(l) = &self.head {
            out.push((format!("{}.weight", self.spec.lm_head), l.merged_weight()?));
        }
        if let Some(b) = &self.logits_bias {
            out.push((self.spec.logits_bias.to_string(), b.unsqueeze(0)?));
        }
        Ok(out)
    }

    fn base_bytes(&self) -> usize {
        let e = self.shared.tensor();
        let shared = if self.shared.var().is_some() { 0 } else { e.elem_count() * e.dtype().size_in_bytes() };
        shared + self.linears().iter().map(|(_, l)| l.base_bytes()).sum::<usize>()
    }

    /// Base parameters: embeddings, every projection (with bias) and the head; norms and
    /// position tables are left out (they are a rounding error at real sizes).
    fn parameter_count(&self) -> usize {
        let linears: usize = self
            .linears()
            .iter()
            .map(|(_, l)| {
                let (i, o) = l.dims();
                i * o + l.bias().map(|b| b.elem_count()).unwrap_or(0)
            })
            .sum();
        self.shared.tensor().elem_count() + linears
    }
}
