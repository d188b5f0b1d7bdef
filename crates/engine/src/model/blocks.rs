//! One decoder block built from an [`ArchSpec`] row: up to four norms (before/after attention,
//! before/after the MLP), the one [`Attention`], a dense or sparse feed-forward, and a
//! sequential or parallel residual with an optional residual multiplier.

use super::attention::{Attention, AttnConfig, AttnPaths, AttnPos, LayerCache};
use super::dims::ModelDims;
use super::mlp::{FeedForward, Mlp, MlpConfig, MlpPaths, Moe, Routing};
use super::norm::Norm;
use crate::arch::{ArchSpec, MlpKind, MoeRouting, Residual};
use crate::error::Result;
use crate::layers::{ForwardCtx, LayerFactory, Linear};
use candle_core::{DType, Tensor, Var};

/// One decoder block.
pub struct Block {
    residual: Residual,
    residual_scale: Option<f64>,
    attn_norm: Option<Norm>,
    attn_out_norm: Option<Norm>,
    mlp_norm: Option<Norm>,
    mlp_out_norm: Option<Norm>,
    attn: Attention,
    ff: FeedForward,
}

fn path(prefix: &str, name: &str) -> String {
    if name.is_empty() { String::new() } else { format!("{prefix}.{name}") }
}

impl Block {
    pub fn load(f: &LayerFactory, spec: &ArchSpec, d: &ModelDims, layer: usize) -> Result<Self> {
        let n = &spec.names;
        let prefix = n.layer.replace("{i}", &layer.to_string());
        let p = |name: &str| path(&prefix, name);
        let norm = |name: &str| -> Result<Option<Norm>> {
            if name.is_empty() {
                return Ok(None);
            }
            Norm::load(f, spec.norm, &p(name), d.hidden, d.norm_eps, d.norm_bias).map(Some)
        };
        let attn_cfg = AttnConfig {
            hidden: d.hidden,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            layout: spec.qkv,
            weight_layout: spec.weight_layout,
            qkv_bias: d.qkv_bias,
            o_bias: d.o_bias,
            qk_norm: spec.qk_norm,
            norm: spec.norm,
            norm_eps: d.norm_eps,
            norm_bias: d.norm_bias,
            clip: d.clip_qkv,
            scale: d.attn_scale,
            softcap: d.attn_softcap,
            window: d.windows.get(layer).copied().flatten(),
            causal: true,
            mla: d.mla,
        };
        let attn_paths = AttnPaths {
            q: p(n.q),
            k: p(n.k),
            v: p(n.v),
            o: p(n.o),
            qkv: p(n.qkv),
            q_norm: p(n.q_norm),
            k_norm: p(n.k_norm),
            q_a: p(n.q_a),
            q_b: p(n.q_b),
            kv_a: p(n.kv_a),
            kv_b: p(n.kv_b),
        };
        let dense_kind = match spec.mlp {
            MlpKind::Moe(_) => MlpKind::Gated,
            k => k,
        };
        let mlp_cfg = MlpConfig {
            hidden: d.hidden,
            intermediate: d.intermediate,
            kind: dense_kind,
            act: d.act,
            bias: d.mlp_bias,
            weight_layout: spec.weight_layout,
        };
        let ff = match &d.moe {
            Some(moe) if moe.sparse_layers.get(layer).copied().unwrap_or(false) => {
                let ep = |e: usize| p(&n.experts.replace("{e}", &e.to_string()));
                let experts: Vec<MlpPaths> = (0..moe.experts)
                    .map(|e| {
                        let prefix = ep(e);
                        MlpPaths {
                            gate: path(&prefix, n.gate),
                            up: path(&prefix, n.up),
                            gate_up: String::new(),
                            down: path(&prefix, n.down),
                        }
                    })
                    .collect();
                let cfg = MlpConfig { intermediate: moe.expert_intermediate, ..mlp_cfg.clone() };
                let shared = (moe.shared_intermediate > 0).then(|| {
                    let sp = p(n.shared_experts);
                    let paths = MlpPaths {
                        gate: path(&sp, n.gate),
                        up: path(&sp, n.up),
                        gate_up: String::new(),
                        down: path(&sp, n.down),
                    };
                    (MlpConfig { intermediate: moe.shared_intermediate, ..mlp_cfg.clone() }, paths)
                });
                let routing = match spec.mlp {
                    MlpKind::Moe(MoeRouting::SigmoidGroupTopK) => Routing::GroupSigmoid {
                        bias: f
                            .tensor(
                                &format!("{}.e_score_correction_bias", p(n.router)),
                                &[moe.experts],
                                DType::F32,
                            )?
                            .to_vec1::<f32>()?,
                        groups: moe.groups,
                        topk_group: moe.topk_group,
                        renormalize: moe.renormalize,
                        scale: moe.routed_scale,
                    },
                    _ => Routing::Softmax { renormalize: moe.renormalize },
                };
                FeedForward::Sparse(Moe::load(f, &cfg, &p(n.router), &experts, shared, moe.top_k, routing)?)
            }
            Some(_) => {
                // A dense layer of a mixture-of-experts model: `mlp.{gate,up,down}`.
                let dp = p("mlp");
                let paths = MlpPaths {
                    gate: path(&dp, n.gate),
                    up: path(&dp, n.up),
                    gate_up: String::new(),
                    down: path(&dp, n.down),
                };
                FeedForward::Dense(Mlp::load(f, &mlp_cfg, &paths)?)
            }
            None => {
                let paths = MlpPaths { gate: p(n.gate), up: p(n.up), gate_up: p(n.gate_up), down: p(n.down) };
                FeedForward::Dense(Mlp::load(f, &mlp_cfg, &paths)?)
            }
        };
        Ok(Self {
            residual: spec.residual,
            residual_scale: d.residual_scale,
            attn_norm: norm(n.attn_norm)?,
            attn_out_norm: norm(n.attn_out_norm)?,
            mlp_norm: norm(n.mlp_norm)?,
            mlp_out_norm: norm(n.mlp_out_norm)?,
            attn: Attention::load(f, &attn_cfg, &attn_paths)?,
            ff,
        })
    }

    fn apply(norm: &Option<Norm>, x: &Tensor) -> candle_core::Result<Tensor> {
        match norm {
            Some(n) => n.forward(x),
            None => Ok(x.clone()),
        }
    }

    fn scaled(&self, y: Tensor) -> candle_core::Result<Tensor> {
        match self.residual_scale {
            Some(s) => y * s,
            None => Ok(y),
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        pos: AttnPos,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let h = Self::apply(&self.attn_norm, x)?;
        if self.residual == Residual::Sequential
            && self.attn_out_norm.is_none()
            && self.residual_scale.is_none()
        {
            // The output projection adds onto the residual stream itself.
            let x = self.attn.forward_residual(&h, x, pos, cache, ctx)?;
            return self.mlp_residual(x, ctx);
        }
        let a = self.attn.forward(&h, None, pos, cache, ctx)?;
        let a = self.scaled(Self::apply(&self.attn_out_norm, &a)?)?;
        match self.residual {
            Residual::Sequential => self.mlp_residual((x + a)?, ctx),
            Residual::Parallel => {
                let m_in = match &self.mlp_norm {
                    Some(n) => n.forward(x)?,
                    None => h,
                };
                let m = self.ff.forward(&m_in, ctx)?;
                let m = self.scaled(Self::apply(&self.mlp_out_norm, &m)?)?;
                (x + a)? + m
            }
        }
    }

    /// The sequential residual's second half: `x + mlp(norm(x))`.
    fn mlp_residual(&self, x: Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let m = self.ff.forward(&Self::apply(&self.mlp_norm, &x)?, ctx)?;
        let m = self.scaled(Self::apply(&self.mlp_out_norm, &m)?)?;
        x + m
    }

    fn norms(&self) -> impl Iterator<Item = &Norm> {
        [&self.attn_norm, &self.attn_out_norm, &self.mlp_norm, &self.mlp_out_norm]
            .into_iter()
            .flatten()
            .chain(self.attn.norms())
    }

    /// Every linear layer of the block with its module path.
    pub fn linears(&self) -> Vec<(&str, &dyn Linear)> {
        let paths = self.attn.paths().iter().chain(self.ff.paths().iter());
        let layers = self.attn.linears().into_iter().chain(self.ff.linears());
        paths.map(String::as_str).zip(layers).collect()
    }

    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        self.attn.trainable(out);
        self.ff.trainable(out);
        for n in
            [&self.attn_norm, &self.attn_out_norm, &self.mlp_norm, &self.mlp_out_norm].into_iter().flatten()
        {
            n.trainable(out);
        }
    }

    /// Non-linear weights (norms) by name, for writing a merged model.
    pub fn norm_weights(&self, out: &mut Vec<(String, Tensor)>) {
        for n in self.norms() {
            n.weights(out);
        }
    }
}
