//! [`Mlp`]: the one feed-forward layer, gated (SwiGLU/GeGLU, separate or fused gate|up) or plain,
//! with an activation enum; and [`Moe`], a sparse mixture of such MLPs (softmax top-k, or
//! DeepSeek's group-limited sigmoid routing with shared experts) whose routing weights stay
//! differentiable; experts run only on the tokens routed to them.

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
        let gated = |g: Tensor, u: Tensor| match self.act.fused_gate() {
            Some(act) => crate::ops::gated(&g, &u, act),
            None => self.act.apply(&g)? * u,
        };
        let h = match (self.kind, &self.gate) {
            (MlpKind::Gated, Some(gate)) => {
                let (g, u) = (gate.forward(x, ctx)?, self.up.forward(x, ctx)?);
                // The activation inside the down projection's op where it can be: its output
                // is then never kept for backward.
                if let Some(act) = self.act.fused_gate()
                    && let Some(y) = self.down.forward_gated(&g, &u, act, ctx)
                {
                    return y;
                }
                gated(g, u)?
            }
            (MlpKind::FusedGated, _) => {
                let y = self.up.forward(x, ctx)?;
                let n = self.intermediate;
                gated(y.narrow(D::Minus1, 0, n)?, y.narrow(D::Minus1, n, n)?)?
            }
            _ => self.act.apply(&self.up.forward(x, ctx)?)?,
        };
        self.down.forward(&h, ctx)
    }
}

/// How a mixture of experts picks and weighs experts for a token.
pub enum Routing {
    /// softmax over experts, top-k, optionally renormalised.
    Softmax { renormalize: bool },
    /// DeepSeek-V3: sigmoid scores; the choice adds `bias` and keeps the `topk_group` groups
    /// whose two best choices sum highest; weights are the chosen scores, optionally
    /// renormalised, times `scale`.
    GroupSigmoid { bias: Vec<f32>, groups: usize, topk_group: usize, renormalize: bool, scale: f64 },
}

impl Routing {
    /// The experts chosen for each row of `probs` (`top_k` per row, row-major).
    fn choose(&self, probs: &[Vec<f32>], top_k: usize) -> Vec<u32> {
        let mut chosen = Vec::with_capacity(probs.len() * top_k);
        for row in probs {
            let choice: Vec<f32> = match self {
                Routing::Softmax { .. } => row.clone(),
                Routing::GroupSigmoid { bias, groups, topk_group, .. } => {
                    let mut c: Vec<f32> = row.iter().zip(bias).map(|(s, b)| s + b).collect();
                    let size = c.len() / groups;
                    let group_score = |g: usize| {
                        let mut v = c[g * size..(g + 1) * size].to_vec();
                        v.sort_by(|a, b| b.total_cmp(a));
                        v[0] + v[1]
                    };
                    let mut order: Vec<usize> = (0..*groups).collect();
                    order.sort_by(|&a, &b| group_score(b).total_cmp(&group_score(a)).then(a.cmp(&b)));
                    for &g in &order[*topk_group..] {
                        c[g * size..(g + 1) * size].fill(f32::NEG_INFINITY);
                    }
                    c
                }
            };
            let mut order: Vec<usize> = (0..choice.len()).collect();
            order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]).then(a.cmp(&b)));
            chosen.extend(order[..top_k].iter().map(|&e| e as u32));
        }
        chosen
    }
}

/// A sparse mixture of gated experts with a linear router, and optional shared experts.
pub struct Moe {
    router: Box<dyn Linear>,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
    top_k: usize,
    routing: Routing,
    paths: Vec<String>,
}

impl Moe {
    /// `router` is the router's path; `expert_paths[e]` the paths of expert `e`; `shared` the
    /// configuration and paths of the shared experts.
    pub fn load(
        f: &LayerFactory,
        c: &MlpConfig,
        router: &str,
        expert_paths: &[MlpPaths],
        shared: Option<(MlpConfig, MlpPaths)>,
        top_k: usize,
        routing: Routing,
    ) -> Result<Self> {
        let router_layer = load_linear(f, c.weight_layout, router, c.hidden, expert_paths.len(), false)?;
        let experts = expert_paths.iter().map(|p| Mlp::load(f, c, p)).collect::<Result<Vec<_>>>()?;
        let shared = shared.map(|(sc, sp)| Mlp::load(f, &sc, &sp)).transpose()?;
        let mut paths = vec![router.to_string()];
        for e in experts.iter().chain(shared.iter()) {
            paths.extend(e.paths.iter().cloned());
        }
        Ok(Self { router: router_layer, experts, shared, top_k, routing, paths })
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn linears(&self) -> Vec<&dyn Linear> {
        let mut v: Vec<&dyn Linear> = vec![self.router.as_ref()];
        for e in self.experts.iter().chain(self.shared.iter()) {
            v.extend(e.linears());
        }
        v
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let hidden = dims[dims.len() - 1];
        let n = x.elem_count() / hidden;
        let xf = x.reshape((n, hidden))?;
        let logits = self.router.forward(&xf, ctx)?.to_dtype(DType::F32)?;
        let probs = match &self.routing {
            Routing::Softmax { .. } => candle_nn::ops::softmax(&logits, D::Minus1)?,
            Routing::GroupSigmoid { .. } => candle_nn::ops::sigmoid(&logits)?,
        };
        // The choice is made on the host and not differentiated; the chosen weights are.
        let chosen = self.routing.choose(&probs.to_vec2::<f32>()?, self.top_k);
        let idx = Tensor::from_vec(chosen.clone(), (n, self.top_k), x.device())?;
        let mut weights = probs.gather(&idx, 1)?;
        let (renormalize, eps, scale) = match &self.routing {
            Routing::Softmax { renormalize } => (*renormalize, 0.0, 1.0),
            Routing::GroupSigmoid { renormalize, scale, .. } => (*renormalize, 1e-20, *scale),
        };
        if renormalize {
            weights = weights.broadcast_div(&(weights.sum_keepdim(1)? + eps)?)?;
        }
        if scale != 1.0 {
            weights = (weights * scale)?;
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
        if let Some(shared) = &self.shared {
            out = (out + shared.forward(&xf, ctx)?)?;
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
