//! [`Mlp`]: the one feed-forward layer, gated (SwiGLU/GeGLU, separate or fused gate|up) or plain,
//! with an activation enum; and [`Moe`], a sparse mixture of such MLPs with softmax top-k
//! routing whose weights stay differentiable (experts run only on the tokens routed to them).

use super::attention::load_linear;
use super::dims::Activation;
use crate::arch::{MlpKind, WeightLayout};
use crate::error::Result;
use crate::layers::{ForwardCtx, LayerFactory, Linear};
use candle_core::{D, DType, Tensor, Var};

#[derive(Debug, Clone)]
pub struct MlpConfig {
    pub hidden: usize,
    pub intermediate: usize,
    /// Gated, FusedGated or Plain.
    pub kind: MlpKind,
    pub act: Activation,
    pub bias: bool,
    pub weight_layout: WeightLayout,
}

/// Full module paths (unused ones empty).
#[derive(Debug, Clone, Default)]
pub struct MlpPaths {
    pub gate: String,
    pub up: String,
    pub gate_up: String,
    pub down: String,
}

pub struct Mlp {
    kind: MlpKind,
    gate: Option<Box<dyn Linear>>,
    /// `up`, or `gate_up` for [`MlpKind::FusedGated`].
    up: Box<dyn Linear>,
    down: Box<dyn Linear>,
    act: Activation,
    intermediate: usize,
    paths: Vec<String>,
}

impl Mlp {
    pub fn load(f: &LayerFactory, c: &MlpConfig, p: &MlpPaths) -> Result<Self> {
        let lin = |path: &str, i, o| load_linear(f, c.weight_layout, path, i, o, c.bias);
        let (h, n) = (c.hidden, c.intermediate);
        let (gate, up, mut paths) = match c.kind {
            MlpKind::Gated => {
                (Some(lin(&p.gate, h, n)?), lin(&p.up, h, n)?, vec![p.gate.clone(), p.up.clone()])
            }
            MlpKind::FusedGated => (None, lin(&p.gate_up, h, 2 * n)?, vec![p.gate_up.clone()]),
            _ => (None, lin(&p.up, h, n)?, vec![p.up.clone()]),
        };
        let down = lin(&p.down, n, h)?;
        paths.push(p.down.clone());
        Ok(Self { kind: c.kind, gate, up, down, act: c.act, intermediate: n, paths })
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn linears(&self) -> Vec<&dyn Linear> {
        let mut v: Vec<&dyn Linear> = self.gate.iter().map(|g| g.as_ref()).collect();
        v.push(self.up.as_ref());
        v.push(self.down.as_ref());
        v
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let h = match (self.kind, &self.gate) {
            (MlpKind::Gated, Some(gate)) => {
                (self.act.apply(&gate.forward(x, ctx)?)? * self.up.forward(x, ctx)?)?
            }
            (MlpKind::FusedGated, _) => {
                let y = self.up.forward(x, ctx)?;
                let n = self.intermediate;
                (self.act.apply(&y.narrow(D::Minus1, 0, n)?)? * y.narrow(D::Minus1, n, n)?)?
            }
            _ => self.act.apply(&self.up.forward(x, ctx)?)?,
        };
        self.down.forward(&h, ctx)
    }
}

/// A sparse mixture of gated experts with a linear router.
pub struct Moe {
    router: Box<dyn Linear>,
    experts: Vec<Mlp>,
    top_k: usize,
    renormalize: bool,
    paths: Vec<String>,
}

impl Moe {
    /// `router` is the router's path; `expert_paths[e]` the paths of expert `e`.
    pub fn load(
        f: &LayerFactory,
        c: &MlpConfig,
        router: &str,
        expert_paths: &[MlpPaths],
        top_k: usize,
        renormalize: bool,
    ) -> Result<Self> {
        let router_layer = load_linear(f, c.weight_layout, router, c.hidden, expert_paths.len(), false)?;
        let experts = expert_paths.iter().map(|p| Mlp::load(f, c, p)).collect::<Result<Vec<_>>>()?;
        let mut paths = vec![router.to_string()];
        for e in &experts {
            paths.extend(e.paths.iter().cloned());
        }
        Ok(Self { router: router_layer, experts, top_k, renormalize, paths })
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn linears(&self) -> Vec<&dyn Linear> {
        let mut v: Vec<&dyn Linear> = vec![self.router.as_ref()];
        for e in &self.experts {
            v.extend(e.linears());
        }
        v
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let hidden = dims[dims.len() - 1];
        let n = x.elem_count() / hidden;
        let xf = x.reshape((n, hidden))?;
        let probs =
            candle_nn::ops::softmax(&self.router.forward(&xf, ctx)?.to_dtype(DType::F32)?, D::Minus1)?;
        // Top-k on the host (the choice is not differentiated; the chosen weights are).
        let host = probs.to_vec2::<f32>()?;
        let mut chosen = Vec::with_capacity(n * self.top_k);
        for row in &host {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            chosen.extend(order[..self.top_k].iter().map(|&e| e as u32));
        }
        let idx = Tensor::from_vec(chosen.clone(), (n, self.top_k), x.device())?;
        let mut weights = probs.gather(&idx, 1)?;
        if self.renormalize {
            weights = weights.broadcast_div(&weights.sum_keepdim(1)?)?;
        }
        let weights = weights.to_dtype(x.dtype())?.flatten_all()?;
        let mut out = Tensor::zeros((n, hidden), x.dtype(), x.device())?;
        for (e, expert) in self.experts.iter().enumerate() {
            let slots: Vec<u32> =
                (0..chosen.len() as u32).filter(|&s| chosen[s as usize] == e as u32).collect();
            if slots.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = slots.iter().map(|&s| s / self.top_k as u32).collect();
            let tok = Tensor::from_vec(tokens, slots.len(), x.device())?;
            let slot = Tensor::from_vec(slots.clone(), slots.len(), x.device())?;
            let y = expert.forward(&xf.index_select(&tok, 0)?, ctx)?;
            let w = weights.index_select(&slot, 0)?.unsqueeze(1)?;
            out = out.index_add(&tok, &y.broadcast_mul(&w)?, 0)?;
        }
        out.reshape(dims)
    }
}

/// A block's feed-forward part.
pub enum FeedForward {
    Dense(Mlp),
    Sparse(Moe),
}

impl FeedForward {
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(m) => m.forward(x, ctx),
            Self::Sparse(m) => m.forward(x, ctx),
        }
    }

    pub fn paths(&self) -> &[String] {
        match self {
            Self::Dense(m) => m.paths(),
            Self::Sparse(m) => m.paths(),
        }
    }

    pub fn linears(&self) -> Vec<&dyn Linear> {
        match self {
            Self::Dense(m) => m.linears(),
            Self::Sparse(m) => m.linears(),
        }
    }

    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        for (path, l) in self.paths().iter().zip(self.linears()) {
            for (name, v) in l.trainable() {
                out.push((format!("{path}.{name}"), v));
            }
        }
    }
}
