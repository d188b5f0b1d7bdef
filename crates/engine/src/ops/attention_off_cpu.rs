//! Attention off the CPU kernels (GPUs, CPU dtypes other than f32): the forward through candle's
//! matrix products and its fused softmax, the backward written out with the probabilities
//! recomputed, so no `[batch, heads, T, S]` tensor is kept between forward and backward and none
//! is differentiated through.
//!
//! With `S = scale · q · kᵀ` (soft-capped: `c · tanh(S / c)`), plus biases and `-inf` where masked,
//! `P = softmax(S)` and `O = P · v`: `dv = Pᵀ · dO`, `dP = dO · vᵀ`,
//! `dS = P ⊙ (dP − rowsum(dP ⊙ P))` (times `1 − tanh²` when capped), `dq = scale · dS · k`,
//! `dk = scale · dSᵀ · q`; grouped key/value heads sum the gradients of the heads that share them.
//! Composing the softmax from candle ops instead, and differentiating through it, cost most of a
//! GPU step (see docs/benchmarks.md, "Where the GPU time goes").

use super::AttentionMask;
use super::custom_backward::with_backward;
use candle_core::{D, Result, Tensor};
use std::sync::Arc;

/// `softmax(mask(q · kᵀ)) · v` with q `[b, t, h, d]`, k `[b, s, kv, d]`, v `[b, s, kv, dv]` and an
/// optional constant additive score bias `[1 or b, h, t, s]`; returns `[b, t, h, dv]`.
pub(super) fn attention_off_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    extra: Option<&Tensor>,
) -> Result<Tensor> {
    let op = Arc::new(OffCpu { mask: mask.clone(), extra: extra.map(|e| e.detach()) });
    let out = op.forward(&q.detach(), &k.detach(), &v.detach())?;
    with_backward(&[q, k, v], out, Arc::new(move |args, grad| op.backward(args[0], args[1], args[2], grad)))
}

struct OffCpu {
    mask: AttentionMask,
    extra: Option<Tensor>,
}

/// `q`, `k`, `v` as `[b, heads, seq, d]` with the key/value heads repeated to `h`.
struct Heads {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Query heads per key/value head.
    n_rep: usize,
}

impl OffCpu {
    fn heads(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Heads> {
        let h = q.dim(2)?;
        let kv = k.dim(2)?;
        let n_rep = h / kv;
        Ok(Heads {
            q: q.transpose(1, 2)?.contiguous()?,
            k: repeat_kv(&k.transpose(1, 2)?.contiguous()?, n_rep)?,
            v: repeat_kv(&v.transpose(1, 2)?.contiguous()?, n_rep)?,
            n_rep,
        })
    }

    /// The probabilities `[b, h, t, s]` and, when scores are soft-capped, `tanh(S / cap)`.
    fn probs(&self, x: &Heads) -> Result<(Tensor, Option<Tensor>)> {
        let (b, h, t, _) = x.q.dims4()?;
        let s = x.k.dim(2)?;
        let mut scores = (x.q.matmul(&x.k.t()?.contiguous()?)? * self.mask.scale)?;
        let mut tanh = None;
        if let Some(cap) = self.mask.softcap {
            let th = (scores / cap)?.tanh()?;
            scores = (&th * cap)?;
            tanh = Some(th);
        }
        if let Some(extra) = &self.extra {
            scores = scores.broadcast_add(&extra.to_dtype(scores.dtype())?)?;
        }
        let bias = bias_tensor(&self.mask, b, h, t, s, scores.device())?.to_dtype(scores.dtype())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&bias)?)?;
        Ok((probs, tanh))
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let x = Self::heads(q, k, v)?;
        let (p, _) = self.probs(&x)?;
        p.matmul(&x.v)?.transpose(1, 2)?.contiguous()
    }

    fn backward(&self, q: &Tensor, k: &Tensor, v: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let x = Self::heads(&q.detach(), &k.detach(), &v.detach())?;
        let (p, tanh) = self.probs(&x)?;
        let go = grad.detach().to_dtype(p.dtype())?.transpose(1, 2)?.contiguous()?; // [b, h, t, dv]
        let dv = if v.track_op() { Some(Self::per_kv_head(&p.t()?.matmul(&go)?, x.n_rep)?) } else { None };
        if !q.track_op() && !k.track_op() {
            return Ok(vec![None, None, dv]);
        }
        let dp = go.matmul(&x.v.t()?.contiguous()?)?; // [b, h, t, s]
        let row = (&dp * &p)?.sum_keepdim(D::Minus1)?;
        let mut ds = (dp.broadcast_sub(&row)? * &p)?;
        if let Some(th) = tanh {
            ds = (ds * th.sqr()?.affine(-1.0, 1.0)?)?;
        }
        let ds = (ds * self.mask.scale)?;
        let dq = if q.track_op() { Some(ds.matmul(&x.k)?.transpose(1, 2)?.contiguous()?) } else { None };
        let dk = if k.track_op() { Some(Self::per_kv_head(&ds.t()?.matmul(&x.q)?, x.n_rep)?) } else { None };
        Ok(vec![dq, dk, dv])
    }

    /// A gradient `[b, h, s, d]` of the repeated key/value heads as `[b, s, kv, d]`: each
    /// key/value head gets the sum over the query heads that shared it.
    fn per_kv_head(g: &Tensor, n_rep: usize) -> Result<Tensor> {
        let (b, h, s, d) = g.dims4()?;
        let g = if n_rep == 1 { g.clone() } else { g.reshape((b, h / n_rep, n_rep, s, d))?.sum(2)? };
        g.transpose(1, 2)?.contiguous()
    }
}

pub(super) fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, n_rep, s, d))?.contiguous()?.reshape((b, kv * n_rep, s, d))
}

/// The additive mask `[rows, heads, t, s]` (`-inf` where masked) for the composed path.
pub(super) fn bias_tensor(
    mask: &AttentionMask,
    b: usize,
    h: usize,
    t: usize,
    s: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let heads = if mask.alibi_slopes.is_some() { h } else { 1 };
    let rows = if mask.key_lens.is_some() { b } else { 1 };
    let mut bias = Vec::with_capacity(rows * heads * t * s);
    for bi in 0..rows {
        for hi in 0..heads {
            for i in 0..t {
                let (lo, hi_k) = mask.visible(bi, i, t, s);
                for j in 0..s {
                    bias.push(if j < lo || j >= hi_k {
                        f32::NEG_INFINITY
                    } else {
                        mask.alibi_slopes
                            .as_ref()
                            .map(|sl| sl[hi] * (j as f32 - (s - t + i) as f32))
                            .unwrap_or(0.0)
                    });
                }
            }
        }
    }
    Tensor::from_vec(bias, (rows, heads, t, s), dev)
}

pub(super) fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    extra: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, h, _) = q.dims4()?;
    let (_, s, kv, _) = k.dims4()?;
    let q = q.transpose(1, 2)?.contiguous()?;
    let k = repeat_kv(&k.transpose(1, 2)?.contiguous()?, h / kv)?;
    let v = repeat_kv(&v.transpose(1, 2)?.contiguous()?, h / kv)?;
    let mut scores = (q.matmul(&k.t()?.contiguous()?)? * mask.scale)?;
    if let Some(cap) = mask.softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    if let Some(extra) = extra {
        scores = scores.broadcast_add(&extra.to_dtype(scores.dtype())?)?;
    }
    let bias = bias_tensor(mask, b, h, t, s, q.device())?.to_dtype(scores.dtype())?;
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&bias)?, D::Minus1)?;
    probs.matmul(&v)?.transpose(1, 2)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_same_value_and_gradients, randn};
    use candle_core::{Device, Var};

    /// Every mask feature, GQA and cross-attention: values and the gradients of q, k and v equal
    /// those of the plain composition differentiated by candle.
    #[test]
    fn matches_the_differentiated_composition_for_every_mask() -> Result<()> {
        let dev = Device::Cpu;
        let causal = AttentionMask::causal(0.35);
        let cases: Vec<(AttentionMask, usize, usize, bool)> = vec![
            (causal.clone(), 5, 5, false),
            (AttentionMask { sliding_window: Some(2), ..causal.clone() }, 5, 5, false),
            (AttentionMask { softcap: Some(1.5), ..causal.clone() }, 5, 5, false),
            (
                AttentionMask { alibi_slopes: Some(vec![0.5, 0.25, 0.125, 0.0625]), ..causal.clone() },
                5,
                5,
                false,
            ),
            (AttentionMask { key_lens: Some(vec![5, 3]), ..AttentionMask::bidirectional(0.35) }, 4, 5, false),
            (AttentionMask::bidirectional(0.35), 3, 6, true),
        ];
        for (i, (mask, t, s, with_bias)) in cases.into_iter().enumerate() {
            let seed = 10 * i as u64;
            let q = Var::from_tensor(&randn(&[2, t, 4, 3], seed + 1, &dev)?)?;
            let k = Var::from_tensor(&randn(&[2, s, 2, 3], seed + 2, &dev)?)?;
            let v = Var::from_tensor(&randn(&[2, s, 2, 5], seed + 3, &dev)?)?;
            let bias = if with_bias { Some(randn(&[1, 4, t, s], seed + 4, &dev)?) } else { None };
            let probe = randn(&[2, t, 4, 5], seed + 5, &dev)?;
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let expected = composed(qt, kt, vt, &mask, bias.as_ref())?;
            let ours = attention_off_cpu(qt, kt, vt, &mask, bias.as_ref())?;
            // Inputs 0, 1, 2 are q, k, v.
            assert_same_value_and_gradients(&ours, &expected, &probe, &[&q, &k, &v], 1e-5, 1e-5)
                .map_err(|e| candle_core::Error::Msg(format!("case {i}: {e}")))?;
        }
        Ok(())
    }

    #[test]
    fn only_inputs_that_track_get_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[1, 3, 2, 4], 1, &dev)?;
        let k = Var::from_tensor(&randn(&[1, 3, 1, 4], 2, &dev)?)?;
        let v = randn(&[1, 3, 1, 4], 3, &dev)?;
        let out = attention_off_cpu(&q, k.as_tensor(), &v, &AttentionMask::causal(0.5), None)?;
        let g = out.sum_all()?.backward()?;
        assert!(g.get(k.as_tensor()).is_some());
        assert!(g.get(&q).is_none() && g.get(&v).is_none());
        Ok(())
    }
}
