//! The pieces of a decoder block — norm, attention, MLP — built from an [`ArchSpec`] row. One
//! attention covers MHA/MQA/GQA and every positional scheme; one MLP covers gated and plain.

use super::dims::{Activation, ModelDims};
use crate::arch::{ArchSpec, MlpKind, NormKind, QkvLayout, Residual};
use crate::error::Result;
use crate::layers::{ForwardCtx, LayerFactory, Linear, Param};
use crate::ops::{self, AttentionMask, RopeTables};
use candle_core::{DType, Tensor, Var};

/// A normalisation layer with its weights.
pub struct Norm {
    kind: NormKind,
    weight: Param,
    bias: Option<Param>,
    eps: f64,
}

impl Norm {
    pub fn load(f: &LayerFactory, kind: NormKind, path: &str, dim: usize, eps: f64, bias: bool) -> Result<Self> {
        let weight = f.param(&format!("{path}.weight"), &[dim], DType::F32)?;
        let bias = if bias { Some(f.param(&format!("{path}.bias"), &[dim], DType::F32)?) } else { None };
        Ok(Self { kind, weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match self.kind {
            NormKind::Rms { offset } => ops::rms_norm(x, self.weight.tensor(), self.eps, offset)?,
            NormKind::Layer => {
                ops::layer_norm(x, Some(self.weight.tensor()), self.bias.as_ref().map(|b| b.tensor()), self.eps)?
            }
        };
        y.to_dtype(x.dtype())
    }

    pub fn trainable(&self, path: &str, out: &mut Vec<(String, Var)>) {
        if let Some(v) = self.weight.var() {
            out.push((format!("{path}.weight"), v.clone()));
        }
        if let Some(v) = self.bias.as_ref().and_then(|b| b.var()) {
            out.push((format!("{path}.bias"), v.clone()));
        }
    }

    pub fn weights(&self, path: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{path}.weight"), self.weight.tensor().detach()));
        if let Some(b) = &self.bias {
            out.push((format!("{path}.bias"), b.tensor().detach()));
        }
    }
}

/// Keys and values of earlier positions, for generation.
#[derive(Default, Clone)]
pub struct LayerCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl LayerCache {
    pub fn len(&self) -> usize {
        self.k.as_ref().and_then(|k| k.dim(1).ok()).unwrap_or(0)
    }
}

enum Projections {
    Separate { q: Box<dyn Linear>, k: Box<dyn Linear>, v: Box<dyn Linear> },
    Fused(Box<dyn Linear>),
}

pub struct Attention {
    proj: Projections,
    o: Box<dyn Linear>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    paths: Vec<String>,
}

impl Attention {
    fn load(f: &LayerFactory, spec: &ArchSpec, d: &ModelDims, prefix: &str, layer: usize) -> Result<Self> {
        let n = &spec.names;
        let (q_out, kv_out) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let p = |name: &str| format!("{prefix}.{name}");
        let (proj, mut paths) = match spec.qkv {
            QkvLayout::Separate => (
                Projections::Separate {
                    q: f.linear(&p(n.q), d.hidden, q_out, d.qkv_bias)?,
                    k: f.linear(&p(n.k), d.hidden, kv_out, d.qkv_bias)?,
                    v: f.linear(&p(n.v), d.hidden, kv_out, d.qkv_bias)?,
                },
                vec![p(n.q), p(n.k), p(n.v)],
            ),
            QkvLayout::Fused => {
                (Projections::Fused(f.linear(&p(n.qkv), d.hidden, q_out + 2 * kv_out, d.qkv_bias)?), vec![p(n.qkv)])
            }
        };
        let o = f.linear(&p(n.o), q_out, d.hidden, d.o_bias)?;
        paths.push(p(n.o));
        Ok(Self {
            proj,
            o,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            window: d.windows.get(layer).copied().flatten(),
            paths,
        })
    }

    fn linears(&self) -> Vec<&dyn Linear> {
        let mut v: Vec<&dyn Linear> = match &self.proj {
            Projections::Separate { q, k, v } => vec![q.as_ref(), k.as_ref(), v.as_ref()],
            Projections::Fused(qkv) => vec![qkv.as_ref()],
        };
        v.push(self.o.as_ref());
        v
    }

    fn forward(&self, x: &Tensor, rope: Option<&RopeTables>, cache: Option<&mut LayerCache>, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let (q, k, v) = match &self.proj {
            Projections::Separate { q, k, v } => (q.forward(x, ctx)?, k.forward(x, ctx)?, v.forward(x, ctx)?),
            Projections::Fused(qkv) => {
                let y = qkv.forward(x, ctx)?;
                (y.narrow(2, 0, nh * hd)?, y.narrow(2, nh * hd, nkv * hd)?, y.narrow(2, (nh + nkv) * hd, nkv * hd)?)
            }
        };
        // [b, t, heads, head_dim]: the layout rope and attention work in, no transposed copies.
        let heads = |y: Tensor, n: usize| y.contiguous()?.reshape((b, t, n, hd));
        let (mut q, mut k, mut v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(rope) = rope {
            q = ops::rope(&q, rope, offset)?;
            k = ops::rope(&k, rope, offset)?;
        }
        if let Some(cache) = cache {
            if let (Some(pk), Some(pv)) = (&cache.k, &cache.v) {
                k = Tensor::cat(&[pk, &k], 1)?;
                v = Tensor::cat(&[pv, &v], 1)?;
            }
            cache.k = Some(k.clone());
            cache.v = Some(v.clone());
        }
        let mut mask = AttentionMask::causal(1.0 / (hd as f64).sqrt());
        mask.sliding_window = self.window;
        let y = ops::attention(&q, &k, &v, &mask)?;
        let y = y.reshape((b, t, nh * hd))?;
        self.o.forward(&y, ctx)
    }
}

pub struct Mlp {
    kind: MlpKind,
    gate: Option<Box<dyn Linear>>,
    up: Box<dyn Linear>,
    down: Box<dyn Linear>,
    act: Activation,
    paths: Vec<String>,
}

impl Mlp {
    fn load(f: &LayerFactory, spec: &ArchSpec, d: &ModelDims, prefix: &str) -> Result<Self> {
        let n = &spec.names;
        let p = |name: &str| format!("{prefix}.{name}");
        let gate = match spec.mlp {
            MlpKind::Gated => Some(f.linear(&p(n.gate), d.hidden, d.intermediate, d.mlp_bias)?),
            MlpKind::Plain => None,
        };
        let up = f.linear(&p(n.up), d.hidden, d.intermediate, d.mlp_bias)?;
        let down = f.linear(&p(n.down), d.intermediate, d.hidden, d.mlp_bias)?;
        let mut paths = vec![];
        if gate.is_some() {
            paths.push(p(n.gate));
        }
        paths.extend([p(n.up), p(n.down)]);
        Ok(Self { kind: spec.mlp, gate, up, down, act: d.act, paths })
    }

    fn linears(&self) -> Vec<&dyn Linear> {
        let mut v: Vec<&dyn Linear> = self.gate.iter().map(|g| g.as_ref()).collect();
        v.push(self.up.as_ref());
        v.push(self.down.as_ref());
        v
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let h = match (self.kind, &self.gate) {
            (MlpKind::Gated, Some(gate)) => {
                let (g, u) = (gate.forward(x, ctx)?, self.up.forward(x, ctx)?);
                match self.act.fused_gate() {
                    Some(act) => ops::gated(&g, &u, act)?,
                    None => (self.act.apply(&g)? * u)?,
                }
            }
            _ => self.act.apply(&self.up.forward(x, ctx)?)?,
        };
        self.down.forward(&h, ctx)
    }
}

/// One decoder block.
pub struct Block {
    residual: Residual,
    input_norm: Norm,
    post_norm: Option<Norm>,
    attn: Attention,
    mlp: Mlp,
    norm_names: (String, String),
}

impl Block {
    pub fn load(f: &LayerFactory, spec: &ArchSpec, d: &ModelDims, layer: usize) -> Result<Self> {
        let prefix = spec.names.layer.replace("{i}", &layer.to_string());
        let norm_bias = spec.norm == NormKind::Layer;
        let in_name = format!("{prefix}.{}", spec.names.input_norm);
        let post_name = format!("{prefix}.{}", spec.names.post_norm);
        let input_norm = Norm::load(f, spec.norm, &in_name, d.hidden, d.norm_eps, norm_bias)?;
        let post_norm = match spec.residual {
            Residual::Sequential => Some(Norm::load(f, spec.norm, &post_name, d.hidden, d.norm_eps, norm_bias)?),
            Residual::Parallel => None,
        };
        Ok(Self {
            attn: Attention::load(f, spec, d, &prefix, layer)?,
            mlp: Mlp::load(f, spec, d, &prefix)?,
            residual: spec.residual,
            input_norm,
            post_norm,
            norm_names: (in_name, post_name),
        })
    }

    pub fn forward(&self, x: &Tensor, rope: Option<&RopeTables>, cache: Option<&mut LayerCache>, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        let h = self.input_norm.forward(x)?;
        let a = self.attn.forward(&h, rope, cache, ctx)?;
        match (&self.post_norm, self.residual) {
            (Some(post), Residual::Sequential) => {
                let x = (x + a)?;
                let m = self.mlp.forward(&post.forward(&x)?, ctx)?;
                x + m
            }
            _ => {
                let m = self.mlp.forward(&h, ctx)?;
                (x + a)? + m
            }
        }
    }

    /// Every linear layer of the block with its module path.
    pub fn linears(&self) -> Vec<(&str, &dyn Linear)> {
        let paths = self.attn.paths.iter().chain(self.mlp.paths.iter());
        let layers = self.attn.linears().into_iter().chain(self.mlp.linears());
        paths.map(String::as_str).zip(layers).collect()
    }

    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        for (path, l) in self.linears() {
            for (name, v) in l.trainable() {
                out.push((format!("{path}.{name}"), v));
            }
        }
        self.input_norm.trainable(&self.norm_names.0, out);
        if let Some(p) = &self.post_norm {
            p.trainable(&self.norm_names.1, out);
        }
    }

    /// Non-linear weights (norms) by name, for writing a merged model.
    pub fn norm_weights(&self, out: &mut Vec<(String, Tensor)>) {
        self.input_norm.weights(&self.norm_names.0, out);
        if let Some(p) = &self.post_norm {
            p.weights(&self.norm_names.1, out);
        }
    }
}
