//! [`Attention`]: the one attention layer of every family. It covers MHA, MQA and GQA by head
//! grouping; separate, fused and per-group fused q/k/v projections; q/k norms per head or over
//! the projection; `clip_qkv`; RoPE, ALiBi or an additive position bias; causal, sliding-window,
//! soft-capped, bidirectional and cross attention; and a KV cache for generation.

use super::dims::MlaDims;
use super::norm::Norm;
use crate::arch::{NormKind, QkNorm, QkvLayout, WeightLayout};
use crate::error::Result;
use crate::layers::{ForwardCtx, LayerFactory, Linear};
use crate::ops::{self, AttentionMask, RopeTables};
use candle_core::{Tensor, Var};

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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads the projection at `path` whose file weight is `[out, in]` or (Conv1D) `[in, out]`.
pub fn load_linear(
    f: &LayerFactory,
    layout: WeightLayout,
    path: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Box<dyn Linear>> {
    match layout {
        WeightLayout::OutIn => f.linear(path, in_dim, out_dim, bias),
        WeightLayout::InOut => {
            let w = f.tensor(&format!("{path}.weight"), &[in_dim, out_dim], f.dtype)?;
            let b = if bias { Some(f.tensor(&format!("{path}.bias"), &[out_dim], f.dtype)?) } else { None };
            f.linear_from(path, w.t()?.contiguous()?, b)
        }
    }
}

/// Everything an attention layer needs besides its weights.
#[derive(Debug, Clone)]
pub struct AttnConfig {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layout: QkvLayout,
    pub weight_layout: WeightLayout,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub qk_norm: QkNorm,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub norm_bias: bool,
    pub clip: Option<f64>,
    pub scale: f64,
    pub softcap: Option<f64>,
    pub window: Option<usize>,
    pub causal: bool,
    /// Multi-head latent attention sizes when the layout is [`QkvLayout::Latent`].
    pub mla: Option<MlaDims>,
}

/// Full module paths of an attention layer's weights (unused ones empty).
#[derive(Debug, Clone, Default)]
pub struct AttnPaths {
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    pub qkv: String,
    pub q_norm: String,
    pub k_norm: String,
    pub q_a: String,
    pub q_b: String,
    pub kv_a: String,
    pub kv_b: String,
}

/// Positional inputs of one attention call.
#[derive(Default, Clone, Copy)]
pub struct AttnPos<'a> {
    pub rope: Option<&'a RopeTables>,
    pub alibi: Option<&'a [f32]>,
    /// Additive bias `[1 or batch, heads, t, s]` (T5 relative positions).
    pub bias: Option<&'a Tensor>,
    /// Keys at index ≥ len of each batch row are padding.
    pub key_lens: Option<&'a [usize]>,
}

enum Projections {
    Separate { q: Box<dyn Linear>, k: Box<dyn Linear>, v: Box<dyn Linear> },
    Fused(Box<dyn Linear>),
    Latent(Box<Latent>),
}

/// Multi-head latent attention projections: queries `q_b(norm(q_a(x)))` (or `q(x)`);
/// `kv_a(x)` = latent | shared rotary key; `kv_b(norm(latent))` = per-head key | value.
struct Latent {
    dims: MlaDims,
    q_a: Option<(Box<dyn Linear>, Norm)>,
    q: Box<dyn Linear>,
    kv_a: Box<dyn Linear>,
    kv_norm: Norm,
    kv_b: Box<dyn Linear>,
}

/// transformers builds DeepSeek's latent norms with RMSNorm's default epsilon, not the config's.
const LATENT_NORM_EPS: f64 = 1e-6;

pub struct Attention {
    cfg: AttnConfig,
    proj: Projections,
    o: Box<dyn Linear>,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    paths: Vec<String>,
}

impl Attention {
    pub fn load(f: &LayerFactory, c: &AttnConfig, p: &AttnPaths) -> Result<Self> {
        let (mut q_out, kv_out) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let lin = |path: &str, i, o, b| load_linear(f, c.weight_layout, path, i, o, b);
        let (proj, mut paths) = match (c.layout, c.mla) {
            (QkvLayout::Separate, _) => (
                Projections::Separate {
                    q: lin(&p.q, c.hidden, q_out, c.qkv_bias)?,
                    k: lin(&p.k, c.hidden, kv_out, c.qkv_bias)?,
                    v: lin(&p.v, c.hidden, kv_out, c.qkv_bias)?,
                },
                vec![p.q.clone(), p.k.clone(), p.v.clone()],
            ),
            (QkvLayout::Fused | QkvLayout::Grouped, _) => (
                Projections::Fused(lin(&p.qkv, c.hidden, q_out + 2 * kv_out, c.qkv_bias)?),
                vec![p.qkv.clone()],
            ),
            (QkvLayout::Latent, Some(m)) => {
                let qk = c.heads * (m.nope + m.rope);
                let latent_norm = |path: &str, dim| Norm::load(f, c.norm, path, dim, LATENT_NORM_EPS, false);
                let (q_a, q, mut paths) = match m.q_rank {
                    Some(r) => (
                        Some((lin(&p.q_a, c.hidden, r, c.qkv_bias)?, latent_norm(&p.q_norm, r)?)),
                        lin(&p.q_b, r, qk, false)?,
                        vec![p.q_a.clone(), p.q_b.clone()],
                    ),
                    None => (None, lin(&p.q, c.hidden, qk, false)?, vec![p.q.clone()]),
                };
                let kv_a = lin(&p.kv_a, c.hidden, m.kv_rank + m.rope, c.qkv_bias)?;
                let kv_norm = latent_norm(&p.k_norm, m.kv_rank)?;
                let kv_b = lin(&p.kv_b, m.kv_rank, c.heads * (m.nope + m.v), false)?;
                paths.extend([p.kv_a.clone(), p.kv_b.clone()]);
                q_out = c.heads * m.v;
                (Projections::Latent(Box::new(Latent { dims: m, q_a, q, kv_a, kv_norm, kv_b })), paths)
            }
            (QkvLayout::Latent, None) => {
                return Err(crate::error::EngineError::Other(format!(
                    "{}: latent attention without its sizes",
                    p.o
                )));
            }
        };
        let o = lin(&p.o, q_out, c.hidden, c.o_bias)?;
        paths.push(p.o.clone());
        let (qd, kd) = match c.qk_norm {
            _ if c.layout == QkvLayout::Latent => (0, 0),
            QkNorm::None => (0, 0),
            QkNorm::PerHead => (c.head_dim, c.head_dim),
            QkNorm::Full => (q_out, kv_out),
        };
        let norm = |path: &str, dim| Norm::load(f, c.norm, path, dim, c.norm_eps, c.norm_bias);
        let (q_norm, k_norm) =
            if qd > 0 { (Some(norm(&p.q_norm, qd)?), Some(norm(&p.k_norm, kd)?)) } else { (None, None) };
        Ok(Self { cfg: c.clone(), proj, o, q_norm, k_norm, paths })
    }

    /// Module paths of the linear layers, in the order of [`Attention::linears`].
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn linears(&self) -> Vec<&dyn Linear> {
        let mut v: Vec<&dyn Linear> = match &self.proj {
            Projections::Separate { q, k, v } => vec![q.as_ref(), k.as_ref(), v.as_ref()],
            Projections::Fused(qkv) => vec![qkv.as_ref()],
            Projections::Latent(l) => {
                let mut v: Vec<&dyn Linear> = l.q_a.iter().map(|(a, _)| a.as_ref()).collect();
                v.extend([l.q.as_ref(), l.kv_a.as_ref(), l.kv_b.as_ref()]);
                v
            }
        };
        v.push(self.o.as_ref());
        v
    }

    pub fn norms(&self) -> impl Iterator<Item = &Norm> {
        let latent: Vec<&Norm> = match &self.proj {
            Projections::Latent(l) => l.q_a.iter().map(|(_, n)| n).chain([&l.kv_norm]).collect(),
            _ => vec![],
        };
        self.q_norm.iter().chain(self.k_norm.iter()).chain(latent)
    }

    /// q, k, v as `[b, t, n·d]` from `x` (and `kv_source` for cross-attention).
    fn project(
        &self,
        x: &Tensor,
        kv_source: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (hd, nh, nkv) = (self.cfg.head_dim, self.cfg.heads, self.cfg.kv_heads);
        match &self.proj {
            Projections::Separate { q, k, v } => {
                let src = kv_source.unwrap_or(x);
                Ok((q.forward(x, ctx)?, k.forward(src, ctx)?, v.forward(src, ctx)?))
            }
            Projections::Fused(qkv) => {
                let y = qkv.forward(x, ctx)?;
                if self.cfg.layout == QkvLayout::Fused {
                    return Ok((
                        y.narrow(2, 0, nh * hd)?,
                        y.narrow(2, nh * hd, nkv * hd)?,
                        y.narrow(2, (nh + nkv) * hd, nkv * hd)?,
                    ));
                }
                // Grouped: per kv head, `group` query heads then one key and one value head.
                let group = nh / nkv;
                let y = y.reshape((b, t, nkv, group + 2, hd))?;
                let q = y.narrow(3, 0, group)?.reshape((b, t, nh * hd))?;
                let k = y.narrow(3, group, 1)?.reshape((b, t, nkv * hd))?;
                let v = y.narrow(3, group + 1, 1)?.reshape((b, t, nkv * hd))?;
                Ok((q, k, v))
            }
            Projections::Latent(_) => candle_core::bail!("latent attention projects through `latent_qkv`"),
        }
    }

    /// Multi-head latent attention's q, k, v as `[b, t, heads, d]`, RoPE applied to the rotary
    /// slice of each query head and to the one rotary key all heads share.
    fn latent_qkv(
        &self,
        l: &Latent,
        x: &Tensor,
        rope: Option<&RopeTables>,
        offset: usize,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (m, nh) = (l.dims, self.cfg.heads);
        let q = match &l.q_a {
            Some((a, norm)) => l.q.forward(&norm.forward(&a.forward(x, ctx)?)?, ctx)?,
            None => l.q.forward(x, ctx)?,
        };
        let q = q.contiguous()?.reshape((b, t, nh, m.nope + m.rope))?;
        let ckv = l.kv_a.forward(x, ctx)?;
        let latent = l.kv_norm.forward(&ckv.narrow(2, 0, m.kv_rank)?)?;
        let mut k_rot = ckv.narrow(2, m.kv_rank, m.rope)?.contiguous()?.reshape((b, t, 1, m.rope))?;
        let kv = l.kv_b.forward(&latent, ctx)?.contiguous()?.reshape((b, t, nh, m.nope + m.v))?;
        let mut q_rot = q.narrow(3, m.nope, m.rope)?.contiguous()?;
        if let Some(rope) = rope {
            q_rot = ops::rope(&q_rot, rope, offset)?;
            k_rot = ops::rope(&k_rot, rope, offset)?;
        }
        let q = Tensor::cat(&[&q.narrow(3, 0, m.nope)?, &q_rot], 3)?;
        let k_rot = k_rot.broadcast_as((b, t, nh, m.rope))?;
        let k = Tensor::cat(&[&kv.narrow(3, 0, m.nope)?, &k_rot], 3)?.contiguous()?;
        let v = kv.narrow(3, m.nope, m.v)?.contiguous()?;
        Ok((q, k, v))
    }

    /// Attention over `x` (`[b, t, hidden]`); with `kv_source` the keys and values come from it
    /// (cross-attention, no cache).
    pub fn forward(
        &self,
        x: &Tensor,
        kv_source: Option<&Tensor>,
        pos: AttnPos,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        self.forward_onto(x, kv_source, pos, cache, None, ctx)
    }

    /// `residual + self-attention(x)`: the output projection adds onto the residual stream in
    /// one op where it can ([`Linear::forward_residual`]), so its output is not kept for the
    /// addition.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        pos: AttnPos,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        self.forward_onto(x, None, pos, cache, Some(residual), ctx)
    }

    fn forward_onto(
        &self,
        x: &Tensor,
        kv_source: Option<&Tensor>,
        pos: AttnPos,
        cache: Option<&mut LayerCache>,
        residual: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.heads, c.kv_heads);
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Projections::Latent(l) = &self.proj {
            let (q, k, v) = self.latent_qkv(l, x, pos.rope, offset, ctx)?;
            return self.attend(q, k, v, pos, cache, false, residual, ctx);
        }
        let (mut q, mut k, mut v) = self.project(x, kv_source, ctx)?;
        if let Some(clip) = c.clip {
            q = q.clamp(-clip, clip)?;
            k = k.clamp(-clip, clip)?;
            v = v.clamp(-clip, clip)?;
        }
        if c.qk_norm == QkNorm::Full
            && let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm)
        {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let s_new = k.dim(1)?;
        // [b, t, heads, head_dim]: the layout rope and attention work in, no transposed copies.
        let heads = |y: Tensor, s: usize, n: usize| y.contiguous()?.reshape((b, s, n, hd));
        let (mut q, mut k, v) = (heads(q, t, nh)?, heads(k, s_new, nkv)?, heads(v, s_new, nkv)?);
        if c.qk_norm == QkNorm::PerHead
            && let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm)
        {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        if let Some(rope) = pos.rope {
            // Training and evaluation (no cache, no score bias): the kernel rotates q and k
            // itself, and the graph keeps only the unrotated ones.
            if cache.is_none() && pos.bias.is_none() && kv_source.is_none() {
                let y = ops::attention_rotary(&q, &k, &v, &self.mask(pos, false), rope, offset)?;
                return self.project_out(y, residual, ctx);
            }
            q = ops::rope(&q, rope, offset)?;
            k = ops::rope(&k, rope, offset)?;
        }
        self.attend(q, k, v, pos, cache, kv_source.is_some(), residual, ctx)
    }

    /// Which scores attention keeps, for these positions (`cross`: keys from another sequence).
    fn mask(&self, pos: AttnPos, cross: bool) -> AttentionMask {
        let c = &self.cfg;
        AttentionMask {
            scale: c.scale,
            causal: c.causal && !cross,
            sliding_window: c.window,
            softcap: c.softcap,
            alibi_slopes: pos.alibi.map(|s| s.to_vec()),
            key_lens: pos.key_lens.map(|l| l.to_vec()),
        }
    }

    /// Merges the heads of attention's output `[b, t, heads, dv]` and projects them out, onto
    /// `residual` when given.
    fn project_out(
        &self,
        y: Tensor,
        residual: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _, dv) = y.dims4()?;
        let y = y.reshape((b, t, self.cfg.heads * dv))?;
        let Some(r) = residual else { return self.o.forward(&y, ctx) };
        match self.o.forward_residual(&y, r, ctx) {
            Some(out) => out,
            None => r + self.o.forward(&y, ctx)?,
        }
    }

    /// Caches keys and values, attends (`[b, t, heads, d]` each), merges heads, projects out.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: Tensor,
        mut k: Tensor,
        mut v: Tensor,
        pos: AttnPos,
        cache: Option<&mut LayerCache>,
        cross: bool,
        residual: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        if let Some(cache) = cache {
            if let (Some(pk), Some(pv)) = (&cache.k, &cache.v) {
                k = Tensor::cat(&[pk, &k], 1)?;
                v = Tensor::cat(&[pv, &v], 1)?;
            }
            cache.k = Some(k.clone());
            cache.v = Some(v.clone());
        }
        let mask = self.mask(pos, cross);
        let y = match pos.bias {
            Some(bias) => ops::attention_with_bias(&q, &k, &v, &mask, bias)?,
            None => ops::attention(&q, &k, &v, &mask)?,
        };
        self.project_out(y, residual, ctx)
    }

    /// Trainable variables (adapters, full weights, q/k norms) with their names.
    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        for (path, l) in self.paths.iter().zip(self.linears()) {
            for (name, v) in l.trainable() {
                out.push((format!("{path}.{name}"), v));
            }
        }
        for n in self.norms() {
            n.trainable(out);
        }
    }
}
