//! [`CausalLm`]: the one generic decoder-only language model. It exposes its stages (embed, each
//! block, the head) so the trainer can recompute blocks for gradient checkpointing.

use super::LanguageModel;
use super::attention::{AttnPos, LayerCache};
use super::blocks::Block;
use super::dims::ModelDims;
use super::norm::Norm;
use super::positions::{Positions, alibi_slopes};
use crate::arch::{ArchSpec, PositionKind, WeightLayout};
use crate::error::{EngineError, Result};
use crate::layers::{ForwardCtx, LayerFactory, Linear, Param};
use crate::ops::{self, IGNORE_INDEX};
use candle_core::{DType, Device, Tensor, Var};

/// The output projection: the embedding matrix (tied) or its own linear layer.
enum Head {
    Tied,
    Linear(Box<dyn Linear>),
}

pub struct CausalLm {
    /// The family row as adjusted to this model's config.
    pub spec: ArchSpec,
    pub dims: ModelDims,
    pub dtype: DType,
    pub device: Device,
    embed: Param,
    embed_norm: Option<Norm>,
    positions: Positions,
    blocks: Vec<Block>,
    final_norm: Norm,
    head: Head,
    head_bias: Option<Param>,
    /// Module paths that carry a LoRA adapter.
    pub adapted: Vec<String>,
}

/// Rows of the flattened `[batch * seq]` hidden states that predict a token, and those tokens.
pub fn next_token_targets(labels: &[i64], batch: usize, seq: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let l = labels[b * seq + t + 1];
            if l != IGNORE_INDEX {
                rows.push((b * seq + t) as u32);
                targets.push(l as u32);
            }
        }
    }
    (rows, targets)
}

/// `cap · tanh(x / cap)` when a cap is set.
pub(crate) fn softcap(x: Tensor, cap: Option<f64>) -> candle_core::Result<Tensor> {
    match cap {
        Some(c) => (x / c)?.tanh()? * c,
        None => Ok(x),
    }
}

impl CausalLm {
    pub fn build(spec: ArchSpec, dims: ModelDims, f: &LayerFactory) -> Result<Self> {
        let (v, h) = (dims.vocab, dims.hidden);
        let embed = f.param(&format!("{}.weight", spec.names.embed), &[v, h], f.weight_dtype())?;
        let embed_norm = match spec.names.embed_norm {
            "" => None,
            name => Some(Norm::load(f, spec.norm, name, h, dims.norm_eps, dims.norm_bias)?),
        };
        let positions = match spec.position {
            PositionKind::Rope(layout) => {
                Positions::rope(&dims.rope, dims.head_dim, dims.max_positions, layout, f)?
            }
            PositionKind::Alibi(kind) => {
                Positions::Alibi(alibi_slopes(kind, dims.heads, dims.alibi_bias_max))
            }
            PositionKind::Learned { offset } => {
                Positions::learned(f, spec.names.positions, dims.max_positions + offset, h, offset)?
            }
            PositionKind::None => Positions::None,
        };
        let blocks = (0..dims.layers).map(|i| Block::load(f, &spec, &dims, i)).collect::<Result<Vec<_>>>()?;
        let final_norm = Norm::load(f, spec.norm, spec.names.final_norm, h, dims.norm_eps, dims.norm_bias)?;
        let head_name = format!("{}.weight", spec.names.lm_head);
        let head = if dims.tie_embeddings || !f.weights.contains(&head_name) {
            Head::Tied
        } else {
            Head::Linear(f.output_head(spec.names.lm_head, h, v)?)
        };
        let head_bias = if dims.head_bias {
            Some(f.param(&format!("{}.bias", spec.names.lm_head), &[v], f.dtype)?)
        } else {
            None
        };
        f.check_init_adapter_used()?;
        Ok(Self {
            spec,
            dtype: f.dtype,
            device: f.device.clone(),
            adapted: f.adapted_modules(),
            dims,
            embed,
            embed_norm,
            positions,
            blocks,
            final_norm,
            head,
            head_bias,
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Token ids (`[batch * seq]`, row-major) to hidden states `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &[u32], batch: usize, seq: usize) -> candle_core::Result<Tensor> {
        self.embed_at(ids, batch, seq, 0)
    }

    /// [`CausalLm::embed`] for tokens at positions `start..start + seq`.
    pub fn embed_at(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        start: usize,
    ) -> candle_core::Result<Tensor> {
        let idx = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let mut x = self.embed.tensor().index_select(&idx, 0)?.reshape((batch, seq, self.dims.hidden))?;
        // Embeddings trained in bf16 under f32 activations (full fine-tuning in bf16 on the CPU).
        x = x.to_dtype(self.dtype)?;
        if let Some(s) = self.dims.embed_scale {
            x = (x * s)?;
        }
        x = self.positions.add_absolute(&x, start)?;
        match &self.embed_norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    pub fn block(
        &self,
        i: usize,
        x: &Tensor,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let end = cache.as_ref().map(|c| c.len()).unwrap_or(0) + x.dim(1)?;
        let pos = AttnPos {
            rope: self.positions.rope_for(i, end),
            alibi: self.positions.alibi(),
            ..Default::default()
        };
        self.blocks[i].forward(x, pos, cache, ctx)
    }

    /// The final norm and logit scaling of hidden states, ready for the head.
    fn head_input(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.final_norm.forward(hidden)?;
        match self.dims.logit_scale {
            Some(s) => h * s,
            None => Ok(h),
        }
    }

    fn head_logits(&self, h: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let logits = match &self.head {
            Head::Tied => ops::frozen_matmul(h, &self.embed.tensor().detach())?,
            Head::Linear(l) => l.forward(h, ctx)?,
        };
        let logits = match &self.head_bias {
            Some(b) => logits.broadcast_add(&b.tensor().to_dtype(logits.dtype())?)?,
            None => logits,
        };
        softcap(logits.to_dtype(DType::F32)?, self.dims.final_softcap)
    }

    /// Final norm + head logits (f32) for hidden states; for evaluation, no gradients.
    pub fn logits(&self, hidden: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        self.head_logits(&self.head_input(hidden)?, ctx)
    }

    /// Sum of next-token losses over the selected rows of `hidden` (`[b, t, hidden]`), applying
    /// the final norm and head; rows and targets come from [`next_token_targets`]. A frozen head
    /// goes through the fused kernel that never holds all logits at once.
    pub fn head_loss_sum(
        &self,
        hidden: &Tensor,
        rows: &[u32],
        targets: &[u32],
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let h = hidden.reshape(((), self.dims.hidden))?;
        let idx = Tensor::from_slice(rows, rows.len(), &self.device)?;
        let h = self.head_input(&h.index_select(&idx, 0)?)?;
        let cap = self.dims.final_softcap;
        if self.head_bias.is_none() {
            match &self.head {
                Head::Tied => {
                    if let Param::Frozen(w) = &self.embed {
                        return ops::linear_cross_entropy_sum(&h.to_dtype(w.dtype())?, w, targets, cap);
                    }
                }
                Head::Linear(l) if l.trainable().is_empty() && l.bias().is_none() => {
                    let w = l.merged_weight()?;
                    return ops::linear_cross_entropy_sum(&h.to_dtype(w.dtype())?, &w, targets, cap);
                }
                Head::Linear(_) => {}
            }
        }
        let logits = match (&self.head, &self.embed) {
            (Head::Tied, Param::Trainable(v)) => {
                let l = ops::linear_matmul(&h, v.as_tensor())?;
                match &self.head_bias {
                    Some(b) => l.broadcast_add(&b.tensor().to_dtype(l.dtype())?)?,
                    None => l,
                }
            }
            _ => return ops::cross_entropy_sum(&self.head_logits(&h, ctx)?, targets),
        };
        ops::cross_entropy_sum(&softcap(logits.to_dtype(DType::F32)?, cap)?, targets)
    }

    /// Full forward: `[batch, seq, vocab]` logits in f32.
    pub fn forward_logits(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Tensor> {
        let ctx = ForwardCtx::eval();
        let mut x = self.embed(ids, batch, seq)?;
        for i in 0..self.blocks.len() {
            x = self.block(i, &x, None, &ctx)?;
        }
        Ok(self.logits(&x, &ctx)?)
    }

    /// Mean next-token loss of a batch with aligned labels (`-100` = ignored), like Hugging Face's
    /// `model(input_ids, labels=labels).loss`, and the number of predicted tokens.
    pub fn loss(
        &self,
        ids: &[u32],
        labels: &[i64],
        batch: usize,
        seq: usize,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, usize)> {
        let (rows, targets) = next_token_targets(labels, batch, seq);
        if rows.is_empty() {
            return Err(EngineError::Other("batch has no token to predict".into()));
        }
        let mut x = self.embed(ids, batch, seq)?;
        for i in 0..self.blocks.len() {
            x = self.block(i, &x, None, ctx)?;
        }
        let sum = self.head_loss_sum(&x, &rows, &targets, ctx)?;
        Ok(((sum / rows.len() as f64)?, rows.len()))
    }

    /// Logits of the last position after feeding `ids` through the cache (generation).
    pub fn step_with_cache(&self, ids: &[u32], cache: &mut [LayerCache]) -> Result<Tensor> {
        let ctx = ForwardCtx::eval();
        let start = cache.first().map(|c| c.len()).unwrap_or(0);
        let mut x = self.embed_at(ids, 1, ids.len(), start)?;
        for (i, c) in cache.iter_mut().enumerate() {
            x = self.block(i, &x, Some(c), &ctx)?;
        }
        let last = x.narrow(1, ids.len() - 1, 1)?;
        Ok(self.logits(&last, &ctx)?.flatten_all()?)
    }

    pub fn new_cache(&self) -> Vec<LayerCache> {
        vec![LayerCache::default(); self.blocks.len()]
    }

    /// Every trainable variable with its Hugging Face / PEFT-relative name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        if let Some(v) = self.embed.var() {
            out.push((format!("{}.weight", self.spec.names.embed), v.clone()));
        }
        self.positions.trainable(&mut out);
        if let Some(n) = &self.embed_norm {
            n.trainable(&mut out);
        }
        for b in &self.blocks {
            b.trainable(&mut out);
        }
        self.final_norm.trainable(&mut out);
        if let Head::Linear(l) = &self.head {
            for (n, v) in l.trainable() {
                out.push((format!("{}.{n}", self.spec.names.lm_head), v));
            }
        }
        if let Some(v) = self.head_bias.as_ref().and_then(|b| b.var()) {
            out.push((format!("{}.bias", self.spec.names.lm_head), v.clone()));
        }
        out
    }

    /// Every linear layer with its module path (blocks, then the head).
    pub fn linears(&self) -> Vec<(String, &dyn Linear)> {
        let mut out: Vec<(String, &dyn Linear)> = self
            .blocks
            .iter()
            .flat_map(|b| b.linears().into_iter().map(|(p, l)| (p.to_string(), l)))
            .collect();
        if let Head::Linear(l) = &self.head {
            out.push((self.spec.names.lm_head.to_string(), l.as_ref()));
        }
        out
    }

    /// All weights of the model with adapters merged, by Hugging Face name and in the file's
    /// layout (Conv1D weights transposed back to `[in, out]`).
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(format!("{}.weight", self.spec.names.embed), self.embed.tensor().detach())];
        self.positions.weights(&mut out);
        if let Some(n) = &self.embed_norm {
            n.weights(&mut out);
        }
        for b in &self.blocks {
            for (path, l) in b.linears() {
                let w = l.merged_weight()?;
                let w = match self.spec.weight_layout {
                    WeightLayout::OutIn => w,
                    WeightLayout::InOut => w.t()?.contiguous()?,
                };
                out.push((format!("{path}.weight"), w));
                if let Some(bias) = l.bias() {
                    out.push((format!("{path}.bias"), bias));
                }
            }
            b.norm_weights(&mut out);
        }
        self.final_norm.weights(&mut out);
        if let Head::Linear(l) = &self.head {
            out.push((format!("{}.weight", self.spec.names.lm_head), l.merged_weight()?));
        }
        if let Some(b) = &self.head_bias {
            out.push((format!("{}.bias", self.spec.names.lm_head), b.tensor().detach()));
        }
        Ok(out)
    }

    /// Bytes of the frozen base weights.
    pub fn base_bytes(&self) -> usize {
        let embed = self.embed.tensor();
        let e =
            if self.embed.var().is_some() { 0 } else { embed.elem_count() * embed.dtype().size_in_bytes() };
        e + self.linears().iter().map(|(_, l)| l.base_bytes()).sum::<usize>()
    }
}

impl LanguageModel for CausalLm {
    fn family(&self) -> &'static str {
        self.spec.family
    }

    fn task_type(&self) -> &'static str {
        "CAUSAL_LM"
    }

    fn fan_in_fan_out(&self) -> bool {
        self.spec.weight_layout == WeightLayout::InOut
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        CausalLm::trainable(self)
    }

    fn linears(&self) -> Vec<(String, &dyn Linear)> {
        CausalLm::linears(self)
    }

    fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        CausalLm::merged_weights(self)
    }

    fn base_bytes(&self) -> usize {
        CausalLm::base_bytes(self)
    }

    fn parameter_count(&self) -> usize {
        self.dims.parameter_count()
    }
}
