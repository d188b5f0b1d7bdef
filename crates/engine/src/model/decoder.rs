//! [`CausalLm`]: the one generic decoder-only language model. It exposes its stages (embed, each
//! block, the head) so the trainer can recompute blocks for gradient checkpointing.

use super::blocks::{Block, LayerCache, Norm};
use super::config::rope_inv_freq;
use super::dims::ModelDims;
use crate::arch::{ArchSpec, PositionKind};
use crate::error::{EngineError, Result};
use crate::layers::{ForwardCtx, LayerFactory, Linear, Param};
use crate::ops::{self, IGNORE_INDEX, RopeTables};
use candle_core::{DType, Device, Tensor, Var};

/// The output projection: the embedding matrix (tied) or its own linear layer.
enum Head {
    Tied,
    Linear(Box<dyn Linear>),
}

pub struct CausalLm {
    pub spec: &'static ArchSpec,
    pub dims: ModelDims,
    pub dtype: DType,
    pub device: Device,
    embed: Param,
    blocks: Vec<Block>,
    final_norm: Norm,
    head: Head,
    rope: Option<RopeTables>,
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

impl CausalLm {
    pub fn build(spec: &'static ArchSpec, dims: ModelDims, f: &LayerFactory) -> Result<Self> {
        let (v, h) = (dims.vocab, dims.hidden);
        let embed = f.param(&format!("{}.weight", spec.names.embed), &[v, h], f.dtype)?;
        let blocks = (0..dims.layers).map(|i| Block::load(f, spec, &dims, i)).collect::<Result<Vec<_>>>()?;
        let norm_bias = spec.norm == crate::arch::NormKind::Layer;
        let final_norm = Norm::load(f, spec.norm, spec.names.final_norm, h, dims.norm_eps, norm_bias)?;
        let head_name = format!("{}.weight", spec.names.lm_head);
        let head = if dims.tie_embeddings || !f.weights.contains(&head_name) {
            Head::Tied
        } else {
            Head::Linear(f.output_head(spec.names.lm_head, h, v)?)
        };
        let rope = match (spec.position, &dims.rope) {
            (PositionKind::Rope(layout), Some(params)) => {
                let rot = ((dims.head_dim as f64 * params.partial_factor) as usize) & !1;
                let (inv, scaling) = rope_inv_freq(params, rot, dims.max_positions);
                Some(RopeTables::new(&inv, dims.max_positions, scaling, layout, &f.device)?)
            }
            _ => None,
        };
        f.check_init_adapter_used()?;
        Ok(Self {
            spec,
            dtype: f.dtype,
            device: f.device.clone(),
            adapted: f.adapted_modules(),
            dims,
            embed,
            blocks,
            final_norm,
            head,
            rope,
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Token ids (`[batch * seq]`, row-major) to hidden states `[batch, seq, hidden]`.
    pub fn embed(&self, ids: &[u32], batch: usize, seq: usize) -> candle_core::Result<Tensor> {
        let idx = Tensor::from_slice(ids, ids.len(), &self.device)?;
        self.embed.tensor().index_select(&idx, 0)?.reshape((batch, seq, self.dims.hidden))
    }

    pub fn block(&self, i: usize, x: &Tensor, cache: Option<&mut LayerCache>, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        self.blocks[i].forward(x, self.rope.as_ref(), cache, ctx)
    }

    /// Final norm + head logits (f32) for hidden states; for evaluation, no gradients.
    pub fn logits(&self, hidden: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let h = self.final_norm.forward(hidden)?;
        let logits = match &self.head {
            Head::Tied => ops::frozen_matmul(&h, &self.embed.tensor().detach())?,
            Head::Linear(l) => l.forward(&h, ctx)?,
        };
        logits.to_dtype(DType::F32)
    }

    /// Sum of next-token losses over the selected rows of `hidden` (`[b, t, hidden]`), applying
    /// the final norm and head; rows and targets come from [`next_token_targets`]. A frozen head
    /// goes through the fused kernel that never holds all logits at once.
    pub fn head_loss_sum(&self, hidden: &Tensor, rows: &[u32], targets: &[u32], ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let h = hidden.reshape(((), self.dims.hidden))?;
        let idx = Tensor::from_slice(rows, rows.len(), &self.device)?;
        let h = self.final_norm.forward(&h.index_select(&idx, 0)?)?;
        let logits = match &self.head {
            Head::Tied => match &self.embed {
                Param::Frozen(w) => return ops::linear_cross_entropy_sum(&h.to_dtype(w.dtype())?, w, targets, None),
                Param::Trainable(v) => h.to_dtype(v.dtype())?.matmul(&v.as_tensor().t()?)?,
            },
            Head::Linear(l) if l.trainable().is_empty() && l.bias().is_none() => {
                let w = l.merged_weight()?;
                return ops::linear_cross_entropy_sum(&h.to_dtype(w.dtype())?, &w, targets, None);
            }
            Head::Linear(l) => l.forward(&h, ctx)?,
        };
        ops::cross_entropy_sum(&logits.to_dtype(DType::F32)?, targets)
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
    pub fn loss(&self, ids: &[u32], labels: &[i64], batch: usize, seq: usize, ctx: &ForwardCtx) -> Result<(Tensor, usize)> {
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
        let mut x = self.embed(ids, 1, ids.len())?;
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
        for b in &self.blocks {
            b.trainable(&mut out);
        }
        self.final_norm.trainable(self.spec.names.final_norm, &mut out);
        if let Head::Linear(l) = &self.head {
            for (n, v) in l.trainable() {
                out.push((format!("{}.{n}", self.spec.names.lm_head), v));
            }
        }
        out
    }

    /// Every linear layer with its module path (blocks, then the head).
    pub fn linears(&self) -> Vec<(String, &dyn Linear)> {
        let mut out: Vec<(String, &dyn Linear)> =
            self.blocks.iter().flat_map(|b| b.linears().into_iter().map(|(p, l)| (p.to_string(), l))).collect();
        if let Head::Linear(l) = &self.head {
            out.push((self.spec.names.lm_head.to_string(), l.as_ref()));
        }
        out
    }

    /// All weights of the model with adapters merged, by Hugging Face name.
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(format!("{}.weight", self.spec.names.embed), self.embed.tensor().detach())];
        for b in &self.blocks {
            for (path, l) in b.linears() {
                out.push((format!("{path}.weight"), l.merged_weight()?));
                if let Some(bias) = l.bias() {
                    out.push((format!("{path}.bias"), bias));
                }
            }
            b.norm_weights(&mut out);
        }
        self.final_norm.weights(self.spec.names.final_norm, &mut out);
        if let Head::Linear(l) = &self.head {
            out.push((format!("{}.weight", self.spec.names.lm_head), l.merged_weight()?));
        }
        Ok(out)
    }

    /// Bytes of the frozen base weights.
    pub fn base_bytes(&self) -> usize {
        let embed = self.embed.tensor();
        let e = if self.embed.var().is_some() { 0 } else { embed.elem_count() * embed.dtype().size_in_bytes() };
        e + self.linears().iter().map(|(_, l)| l.base_bytes()).sum::<usize>()
    }
}
