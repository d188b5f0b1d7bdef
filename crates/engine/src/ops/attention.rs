//! Scaled dot-product attention for training: causal or bidirectional, sliding windows, logit
//! soft-capping, ALiBi biases, key padding, and MHA/MQA/GQA through one path. On the CPU it is one
//! fused kernel whose backward recomputes the probabilities (no `[heads, T, S]` tensor is kept for
//! backward); elsewhere it is composed from candle ops that have a correct backward.

use super::cpu::{Mat, sgemm, slice, threads, with_f32};
use super::use_cpu_kernels;
use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Which scores survive, and how they are shaped before the softmax.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMask {
    /// Multiplies `q · kᵀ` (usually `1 / sqrt(head_dim)`).
    pub scale: f64,
    /// Query i sees only keys at positions ≤ its own.
    pub causal: bool,
    /// Query at position p sees keys at positions in `(p - window, p]`.
    pub sliding_window: Option<usize>,
    /// Gemma 2 style `cap * tanh(score / cap)`, applied after scaling.
    pub softcap: Option<f64>,
    /// ALiBi: adds `slope[head] * (key_pos - query_pos)`.
    pub alibi_slopes: Option<Vec<f32>>,
    /// Per batch row, keys at index ≥ len are padding.
    pub key_lens: Option<Vec<usize>>,
}

impl AttentionMask {
    pub fn causal(scale: f64) -> Self {
        Self { scale, causal: true, sliding_window: None, softcap: None, alibi_slopes: None, key_lens: None }
    }

    pub fn bidirectional(scale: f64) -> Self {
        Self { causal: false, ..Self::causal(scale) }
    }

    /// Whether queries have positions among the keys (causal, windowed or ALiBi attention); a
    /// bidirectional cross-attention may have more queries than keys.
    fn positional(&self) -> bool {
        self.causal || self.sliding_window.is_some() || self.alibi_slopes.is_some()
    }

    /// Whether query `i` (of `t`) may see key `j` (of `s`) in batch row `b`; queries are the last
    /// `t` positions of the `s` keys (a KV cache holds the earlier ones).
    fn visible(&self, b: usize, i: usize, j: usize, t: usize, s: usize) -> bool {
        if self.positional() {
            let qpos = s - t + i;
            if self.causal && j > qpos {
                return false;
            }
            if let Some(w) = self.sliding_window {
                if qpos >= j + w {
                    return false;
                }
            }
        }
        if let Some(lens) = &self.key_lens {
            if j >= lens[b] {
                return false;
            }
        }
        true
    }

    /// The additive bias before the softmax (`-inf` where masked), `[t, s]` for row b, head h.
    fn bias(&self, b: usize, h: usize, i: usize, j: usize, t: usize, s: usize) -> f32 {
        if !self.visible(b, i, j, t, s) {
            return f32::NEG_INFINITY;
        }
        match &self.alibi_slopes {
            Some(sl) => sl[h] * (j as f32 - (s - t + i) as f32),
            None => 0.0,
        }
    }
}

/// `softmax(mask(q · kᵀ)) · v` with q `[b, h, t, d]`, k `[b, kv, s, d]`, v `[b, kv, s, dv]`;
/// `h` must be a multiple of `kv` (GQA; `kv = 1` is MQA). Returns `[b, h, t, dv]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask) -> Result<Tensor> {
    validate(q, k, v, mask)?;
    if use_cpu_kernels(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32 {
        return q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, FusedAttention { mask: mask.clone(), extra: None });
    }
    composed(q, k, v, mask, None)
}

/// [`attention`] with an additive score bias `[1 or b, h, t, s]` (T5's relative positions),
/// added after scaling and soft-capping. A bias that needs no gradient runs in the fused kernel;
/// a trained one (full fine-tuning) goes through the composed path so its gradient flows.
pub fn attention_with_bias(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask, bias: &Tensor) -> Result<Tensor> {
    validate(q, k, v, mask)?;
    let (b, h, t, _) = q.dims4()?;
    let s = k.dim(2)?;
    let (bb, bh, bt, bs) = bias.dims4()?;
    if (bb != 1 && bb != b) || bh != h || bt != t || bs != s {
        bail!("attention: bias {:?} does not fit scores [{b}, {h}, {t}, {s}]", bias.dims());
    }
    if use_cpu_kernels(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32 && !bias.track_op() {
        let values = bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let op = FusedAttention { mask: mask.clone(), extra: Some(ExtraBias { values: values.into(), per_row: bb != 1 }) };
        return q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    composed(q, k, v, mask, Some(bias))
}

fn validate(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask) -> Result<()> {
    let (b, h, t, d) = q.dims4()?;
    let (b2, kv, s, d2) = k.dims4()?;
    let (b3, kv2, s2, _) = v.dims4()?;
    if b != b2 || b != b3 || kv != kv2 || s != s2 || d != d2 || kv == 0 || h % kv != 0 || (t > s && mask.positional()) {
        bail!("attention: incompatible shapes q {:?} k {:?} v {:?}", q.dims(), k.dims(), v.dims());
    }
    if let Some(sl) = &mask.alibi_slopes {
        if sl.len() != h {
            bail!("attention: {} ALiBi slopes for {h} heads", sl.len());
        }
    }
    if let Some(lens) = &mask.key_lens {
        if lens.len() != b {
            bail!("attention: {} key lengths for batch {b}", lens.len());
        }
    }
    Ok(())
}

fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, n_rep, s, d))?.contiguous()?.reshape((b, kv * n_rep, s, d))
}

fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask, extra: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, t, _) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let k = repeat_kv(k, h / kv)?;
    let v = repeat_kv(v, h / kv)?;
    let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * mask.scale)?;
    if let Some(cap) = mask.softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    let heads_in_bias = if mask.alibi_slopes.is_some() { h } else { 1 };
    let rows = if mask.key_lens.is_some() { b } else { 1 };
    let mut bias = Vec::with_capacity(rows * heads_in_bias * t * s);
    for bi in 0..rows {
        for hi in 0..heads_in_bias {
            for i in 0..t {
                for j in 0..s {
                    bias.push(mask.bias(bi, hi, i, j, t, s));
                }
            }
        }
    }
    let bias = Tensor::from_vec(bias, (rows, heads_in_bias, t, s), q.device())?.to_dtype(scores.dtype())?;
    if let Some(extra) = extra {
        scores = scores.broadcast_add(&extra.to_dtype(scores.dtype())?)?;
    }
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&bias)?, D::Minus1)?;
    probs.matmul(&v.contiguous()?)
}

/// A constant additive bias for the fused kernel, `[1 or b, h, t, s]` row-major.
struct ExtraBias {
    values: std::sync::Arc<[f32]>,
    per_row: bool,
}

struct FusedAttention {
    mask: AttentionMask,
    extra: Option<ExtraBias>,
}

struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    s: usize,
    d: usize,
    dv: usize,
}

impl FusedAttention {
    /// Softmax probabilities `[t, s]` for (row b, head h) into `p`; `raw` receives the
    /// pre-softcap scaled scores when soft-capping is on (needed by backward).
    fn probs(&self, dm: &Dims, bi: usize, hi: usize, q: &[f32], k: &[f32], p: &mut [f32], raw: Option<&mut [f32]>) {
        let Dims { t, s, d, .. } = *dm;
        sgemm(t, s, d, Mat::rows(q, d), Mat::rows_t(k, d), p, false, self.mask.scale as f32);
        if let Some(cap) = self.mask.softcap {
            if let Some(raw) = raw {
                raw.copy_from_slice(p);
            }
            let cap = cap as f32;
            for x in p.iter_mut() {
                *x = cap * (*x / cap).tanh();
            }
        }
        let extra = self.extra.as_ref().map(|e| {
            let base = ((if e.per_row { bi * dm.h } else { 0 }) + hi) * t * s;
            &e.values[base..base + t * s]
        });
        for i in 0..t {
            let row = &mut p[i * s..(i + 1) * s];
            let mut max = f32::NEG_INFINITY;
            for (j, x) in row.iter_mut().enumerate() {
                *x += self.mask.bias(bi, hi, i, j, t, s);
                if let Some(e) = extra {
                    *x += e[i * s + j];
                }
                max = max.max(*x);
            }
            if max == f32::NEG_INFINITY {
                row.fill(0.0); // a query that sees nothing attends to nothing
                continue;
            }
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

fn dims(q: &Layout, k: &Layout, v: &Layout) -> Dims {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    Dims { b: qd[0], h: qd[1], kv: kd[1], t: qd[2], s: kd[2], d: qd[3], dv: vd[3] }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
        let dm = dims(ql, kl, vl);
        let Dims { b, h, kv, t, s, d, dv } = dm;
        let group = h / kv;
        let mut out = vec![0f32; b * h * t * dv];
        let work = |idx: usize, o: &mut [f32]| {
            let (bi, hi) = (idx / h, idx % h);
            let kvi = bi * kv + hi / group;
            let qh = &q[idx * t * d..(idx + 1) * t * d];
            let kh = &k[kvi * s * d..(kvi + 1) * s * d];
            let vh = &v[kvi * s * dv..(kvi + 1) * s * dv];
            let mut p = vec![0f32; t * s];
            self.probs(&dm, bi, hi, qh, kh, &mut p, None);
            sgemm(t, dv, s, Mat::rows(&p, s), Mat::rows(vh, dv), o, false, 1.0);
        };
        if threads() > 1 {
            out.par_chunks_mut(t * dv).enumerate().for_each(|(i, o)| work(i, o));
        } else {
            out.chunks_mut(t * dv).enumerate().for_each(|(i, o)| work(i, o));
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, dv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, d) = q.dims4()?;
        let (_, kv, s, _) = k.dims4()?;
        let dv = v.dim(3)?;
        let dm = Dims { b, h, kv, t, s, d, dv };
        let group = h / kv;
        let scale = self.mask.scale as f32;
        // Work is split by (row, kv head): each task owns the dk/dv of its kv head.
        let per_kv: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = with_f32(q, |q| {
            with_f32(k, |k| {
                with_f32(v, |v| {
                    with_f32(grad, |g| {
                        let task = |task: usize| {
                            let (bi, kh_i) = (task / kv, task % kv);
                            let kvi = bi * kv + kh_i;
                            let kh = &k[kvi * s * d..(kvi + 1) * s * d];
                            let vh = &v[kvi * s * dv..(kvi + 1) * s * dv];
                            let mut dq = vec![0f32; group * t * d];
                            let mut dk = vec![0f32; s * d];
                            let mut dvv = vec![0f32; s * dv];
                            let mut p = vec![0f32; t * s];
                            let mut dp = vec![0f32; t * s];
                            let mut raw = vec![0f32; if self.mask.softcap.is_some() { t * s } else { 0 }];
                            for gi in 0..group {
                                let hi = kh_i * group + gi;
                                let idx = bi * h + hi;
                                let qh = &q[idx * t * d..(idx + 1) * t * d];
                                let gh = &g[idx * t * dv..(idx + 1) * t * dv];
                                let raw_opt = if raw.is_empty() { None } else { Some(&mut raw[..]) };
                                self.probs(&dm, bi, hi, qh, kh, &mut p, raw_opt);
                                // dV += Pᵀ · dO
                                sgemm(s, dv, t, Mat::rows_t(&p, s), Mat::rows(gh, dv), &mut dvv, true, 1.0);
                                // dP = dO · Vᵀ
                                sgemm(t, s, dv, Mat::rows(gh, dv), Mat::rows_t(vh, dv), &mut dp, false, 1.0);
                                // dS = P ⊙ (dP - rowsum(P ⊙ dP)), then through the soft-cap.
                                for i in 0..t {
                                    let pr = &p[i * s..(i + 1) * s];
                                    let dr = &mut dp[i * s..(i + 1) * s];
                                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                                    for j in 0..s {
                                        dr[j] = pr[j] * (dr[j] - dot);
                                    }
                                }
                                if let Some(cap) = self.mask.softcap {
                                    let cap = cap as f32;
                                    for (x, r) in dp.iter_mut().zip(raw.iter()) {
                                        let th = (r / cap).tanh();
                                        *x *= 1.0 - th * th;
                                    }
                                }
                                // dQ = scale · dS · K ; dK += scale · dSᵀ · Q
                                sgemm(t, d, s, Mat::rows(&dp, s), Mat::rows(kh, d), &mut dq[gi * t * d..(gi + 1) * t * d], false, scale);
                                sgemm(s, d, t, Mat::rows_t(&dp, s), Mat::rows(qh, d), &mut dk, true, scale);
                            }
                            (dq, dk, dvv)
                        };
                        Ok(if threads() > 1 {
                            (0..b * kv).into_par_iter().map(task).collect()
                        } else {
                            (0..b * kv).map(task).collect()
                        })
                    })
                })
            })
        })?;
        let mut dq = Vec::with_capacity(b * h * t * d);
        let mut dk = Vec::with_capacity(b * kv * s * d);
        let mut dvv = Vec::with_capacity(b * kv * s * dv);
        for (q_part, k_part, v_part) in per_kv {
            dq.extend(q_part);
            dk.extend(k_part);
            dvv.extend(v_part);
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
            Some(Tensor::from_vec(dk, (b, kv, s, d), dev)?),
            Some(Tensor::from_vec(dvv, (b, kv, s, dv), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, check_gradient, randn};
    use candle_core::{Device, Var};

    fn masks() -> Vec<AttentionMask> {
        let base = AttentionMask::causal(0.35);
        vec![
            base.clone(),
            AttentionMask::bidirectional(0.35),
            AttentionMask { sliding_window: Some(3), ..base.clone() },
            AttentionMask { softcap: Some(2.0), ..base.clone() },
            AttentionMask { alibi_slopes: Some(vec![0.5, 0.25, 0.125, 0.0625]), ..base.clone() },
            AttentionMask { key_lens: Some(vec![6, 4]), ..AttentionMask::bidirectional(0.35) },
        ]
    }

    #[test]
    fn fused_matches_composed_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[2, 4, 6, 8], 1, &dev)?;
        let k = randn(&[2, 2, 6, 8], 2, &dev)?;
        let v = randn(&[2, 2, 6, 8], 3, &dev)?;
        let r = randn(&[2, 4, 6, 8], 4, &dev)?;
        for mask in masks() {
            let (qv, kv, vv) = (Var::from_tensor(&q)?, Var::from_tensor(&k)?, Var::from_tensor(&v)?);
            let fused = attention(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), &mask)?;
            let g1 = (&fused * &r)?.sum_all()?.backward()?;
            let f64v = |t: &Tensor| -> Result<Var> { Var::from_tensor(&t.to_dtype(DType::F64)?) };
            let (qd, kd, vd) = (f64v(&q)?, f64v(&k)?, f64v(&v)?);
            let reference = composed(qd.as_tensor(), kd.as_tensor(), vd.as_tensor(), &mask, None)?;
            let g2 = (&reference * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            assert_close(&fused, &reference, 1e-5)?;
            for (a, b) in [(&qv, &qd), (&kv, &kd), (&vv, &vd)] {
                assert_close(g1.get(a.as_tensor()).unwrap(), g2.get(b.as_tensor()).unwrap(), 1e-5)?;
            }
        }
        Ok(())
    }

    #[test]
    fn additive_bias_fused_matches_composed_and_reaches_a_trained_bias() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[2, 4, 5, 8], 1, &dev)?;
        let k = randn(&[2, 2, 5, 8], 2, &dev)?;
        let v = randn(&[2, 2, 5, 8], 3, &dev)?;
        let bias = randn(&[1, 4, 5, 5], 5, &dev)?;
        let r = randn(&[2, 4, 5, 8], 4, &dev)?;
        let padded = AttentionMask { key_lens: Some(vec![5, 3]), ..AttentionMask::bidirectional(1.0) };
        for mask in [AttentionMask::causal(1.0), padded] {
            let qv = Var::from_tensor(&q)?;
            let fused = attention_with_bias(qv.as_tensor(), &k, &v, &mask, &bias)?;
            let g1 = (&fused * &r)?.sum_all()?.backward()?;
            let qd = Var::from_tensor(&q.to_dtype(DType::F64)?)?;
            let bd = Var::from_tensor(&bias.to_dtype(DType::F64)?)?;
            let (kd, vd) = (k.to_dtype(DType::F64)?, v.to_dtype(DType::F64)?);
            let reference = attention_with_bias(qd.as_tensor(), &kd, &vd, &mask, bd.as_tensor())?;
            let g2 = (&reference * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            assert_close(&fused, &reference, 1e-5)?;
            assert_close(g1.get(qv.as_tensor()).unwrap(), g2.get(qd.as_tensor()).unwrap(), 1e-5)?;
            // Without the bias the result differs: the bias is really applied.
            let plain = attention(&q, &k, &v, &mask)?;
            assert!((plain - &fused)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? > 1e-3);
        }
        let mask = AttentionMask::causal(1.0);
        check_gradient(|b| attention_with_bias(&q, &k, &v, &mask, b), &bias, 6, 1e-2, 2e-3)?;
        Ok(())
    }

    #[test]
    fn finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[1, 2, 4, 4], 1, &dev)?;
        let k = randn(&[1, 1, 4, 4], 2, &dev)?;
        let v = randn(&[1, 1, 4, 4], 3, &dev)?;
        let mask = AttentionMask { softcap: Some(3.0), ..AttentionMask::causal(0.5) };
        check_gradient(|q| attention(q, &k, &v, &mask), &q, 1, 1e-2, 2e-3)?;
        check_gradient(|k| attention(&q, k, &v, &mask), &k, 2, 1e-2, 2e-3)?;
        check_gradient(|v| attention(&q, &k, v, &mask), &v, 3, 1e-2, 2e-3)?;
        Ok(())
    }

    #[test]
    fn kv_cache_queries_are_the_last_positions() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[1, 2, 5, 4], 1, &dev)?;
        let k = randn(&[1, 2, 5, 4], 2, &dev)?;
        let v = randn(&[1, 2, 5, 4], 3, &dev)?;
        let mask = AttentionMask::causal(0.5);
        let full = attention(&q, &k, &v, &mask)?;
        let last = attention(&q.narrow(2, 4, 1)?, &k, &v, &mask)?;
        assert_close(&last, &full.narrow(2, 4, 1)?, 1e-6)
    }
}
