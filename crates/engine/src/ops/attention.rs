//! Scaled dot-product attention for training: causal or bidirectional, sliding windows, logit
//! soft-capping, ALiBi biases, an additive score bias (T5), key padding, cross-attention, and
//! MHA/MQA/GQA through one path. Tensors use the `[batch, seq, heads, head_dim]` layout
//! projections produce, so no transposed copies are made.
//! On the CPU it is one fused kernel whose backward recomputes the probabilities (no
//! `[heads, T, S]` tensor is kept for backward); elsewhere it is candle's products and fused
//! softmax with a backward written out ([`super::attention_off_cpu`]), which keeps none either.

use super::attention_off_cpu::attention_off_cpu;
#[cfg(test)]
use super::attention_off_cpu::composed;
use super::cpu::{Mat, sgemm, slice, threads, with_f32, zeroed};
use super::rope::{RopeTables, Rotation, rope};
use super::use_cpu_kernels;
use super::vexp::exp_shifted;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
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

    /// The keys `[lo, hi)` query `i` (of `t`) may see in batch row `b`; queries are the last `t`
    /// positions of the `s` keys (a KV cache holds the earlier ones).
    pub(super) fn visible(&self, b: usize, i: usize, t: usize, s: usize) -> (usize, usize) {
        let (mut lo, mut hi) = (0, s);
        if self.positional() {
            let qpos = s - t + i;
            if self.causal {
                hi = qpos + 1;
            }
            if let Some(w) = self.sliding_window {
                lo = (qpos + 1).saturating_sub(w);
            }
        }
        if let Some(lens) = &self.key_lens {
            hi = hi.min(lens[b]);
        }
        (lo, hi.max(lo))
    }

    /// Whether queries have positions among the keys (causal, windowed or ALiBi attention); a
    /// bidirectional cross-attention may have more queries than keys.
    fn positional(&self) -> bool {
        self.causal || self.sliding_window.is_some() || self.alibi_slopes.is_some()
    }
}

/// `softmax(mask(q · kᵀ)) · v` with q `[b, t, h, d]`, k `[b, s, kv, d]`, v `[b, s, kv, dv]`;
/// `h` must be a multiple of `kv` (GQA; `kv = 1` is MQA). Returns `[b, t, h, dv]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask) -> Result<Tensor> {
    validate(q, k, v, mask)?;
    if use_cpu_kernels(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32 {
        return q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            FusedAttention { mask: mask.clone(), extra: None, rope: None },
        );
    }
    attention_off_cpu(q, k, v, mask, None)
}

/// [`attention`] of `q` and `k` rotated by rotary position embeddings for positions
/// `offset..offset + t`, given before the rotation (self-attention: as many keys as queries).
/// On the CPU the kernel rotates its own copies in forward and again in backward, and rotates
/// the gradients back: the graph keeps the unrotated q and k only, where `rope` then
/// [`attention`] would keep both (a quarter of a block's activations for multi-head attention).
pub fn attention_rotary(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    tables: &RopeTables,
    offset: usize,
) -> Result<Tensor> {
    validate(q, k, v, mask)?;
    let (t, s) = (q.dim(1)?, k.dim(1)?);
    let fused = use_cpu_kernels(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32;
    if !fused || s != t || q.dim(3)? < tables.rot_dim || offset + t > tables.max_positions() {
        return attention(&rope(q, tables, offset)?, &rope(k, tables, offset)?, v, mask);
    }
    let rope = Some(Rotation::new(tables, offset, t));
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        FusedAttention { mask: mask.clone(), extra: None, rope },
    )
}

/// [`attention`] with an additive score bias `[1 or b, h, t, s]` (T5's relative positions),
/// added after scaling and soft-capping. A bias that needs no gradient runs in the fused kernel;
/// a trained one (full fine-tuning) goes through the composed path so its gradient flows.
pub fn attention_with_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    bias: &Tensor,
) -> Result<Tensor> {
    validate(q, k, v, mask)?;
    let (b, t, h, _) = q.dims4()?;
    let s = k.dim(1)?;
    let (bb, bh, bt, bs) = bias.dims4()?;
    if (bb != 1 && bb != b) || bh != h || bt != t || bs != s {
        bail!("attention: bias {:?} does not fit scores [{b}, {h}, {t}, {s}]", bias.dims());
    }
    if use_cpu_kernels(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32 && !bias.track_op() {
        let values = bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let extra = Some(ExtraBias { values: values.into(), per_row: bb != 1 });
        return q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            FusedAttention { mask: mask.clone(), extra, rope: None },
        );
    }
    if bias.track_op() {
        // A trained bias (T5's relative positions in full fine-tuning) needs its own gradient.
        return super::attention_off_cpu::composed(q, k, v, mask, Some(bias));
    }
    attention_off_cpu(q, k, v, mask, Some(bias))
}

fn validate(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask) -> Result<()> {
    let (b, t, h, d) = q.dims4()?;
    let (b2, s, kv, d2) = k.dims4()?;
    let (b3, s2, kv2, _) = v.dims4()?;
    let positions_ok = t <= s || !mask.positional();
    if b != b2 || b != b3 || kv != kv2 || s != s2 || d != d2 || kv == 0 || h % kv != 0 || !positions_ok {
        bail!("attention: incompatible shapes q {:?} k {:?} v {:?}", q.dims(), k.dims(), v.dims());
    }
    if let Some(sl) = &mask.alibi_slopes
        && sl.len() != h
    {
        bail!("attention: {} ALiBi slopes for {h} heads", sl.len());
    }
    if let Some(lens) = &mask.key_lens
        && lens.len() != b
    {
        bail!("attention: {} key lengths for batch {b}", lens.len());
    }
    Ok(())
}

/// A constant additive score bias for the fused kernel, `[1 or b, h, t, s]` row-major.
struct ExtraBias {
    values: std::sync::Arc<[f32]>,
    per_row: bool,
}

struct FusedAttention {
    mask: AttentionMask,
    extra: Option<ExtraBias>,
    /// Rotary positions applied to copies of q and k inside the kernel (forward and backward),
    /// so the rotated q and k are never kept: q and k come in unrotated.
    rope: Option<Rotation>,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    s: usize,
    d: usize,
    dv: usize,
}

impl Dims {
    /// Head `hi` of batch row `bi` in a `[b, t, h, d]` tensor, as a strided `[t, d]` matrix.
    fn q<'a>(&self, q: &'a [f32], bi: usize, hi: usize) -> Mat<'a> {
        Mat { data: &q[bi * self.t * self.h * self.d + hi * self.d..], rs: self.h * self.d, cs: 1 }
    }
    fn k<'a>(&self, k: &'a [f32], bi: usize, ki: usize) -> Mat<'a> {
        Mat { data: &k[bi * self.s * self.kv * self.d + ki * self.d..], rs: self.kv * self.d, cs: 1 }
    }
    fn v<'a>(&self, v: &'a [f32], bi: usize, ki: usize) -> Mat<'a> {
        Mat { data: &v[bi * self.s * self.kv * self.dv + ki * self.dv..], rs: self.kv * self.dv, cs: 1 }
    }
    fn kt<'a>(&self, k: &'a [f32], bi: usize, ki: usize) -> Mat<'a> {
        let m = self.k(k, bi, ki);
        Mat { data: m.data, rs: 1, cs: m.rs }
    }
    fn vt<'a>(&self, v: &'a [f32], bi: usize, ki: usize) -> Mat<'a> {
        let m = self.v(v, bi, ki);
        Mat { data: m.data, rs: 1, cs: m.rs }
    }
}

/// Writes a contiguous `[rows, width]` block into a strided destination.
fn scatter(dst: &mut [f32], src: &[f32], width: usize, offset: usize, stride: usize) {
    for (r, row) in src.chunks(width).enumerate() {
        let at = offset + r * stride;
        dst[at..at + width].copy_from_slice(row);
    }
}

fn run_tasks<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if threads() > 1 { (0..n).into_par_iter().map(f).collect() } else { (0..n).map(f).collect() }
}

impl FusedAttention {
    /// Rotated copies of q and k when the kernel applies rotary positions itself.
    fn rotated(&self, q: &[f32], k: &[f32], dm: &Dims) -> Option<(Vec<f32>, Vec<f32>)> {
        let rope = self.rope.as_ref()?;
        Some((rope.rotated(q, (dm.t, dm.h, dm.d), false), rope.rotated(k, (dm.s, dm.kv, dm.d), false)))
    }

    /// Softmax probabilities `[t, s]` for (row b, head h) into `p`; `raw` receives the
    /// pre-softcap scaled scores when soft-capping is on (needed by backward).
    fn probs(
        &self,
        dm: &Dims,
        bi: usize,
        hi: usize,
        q: Mat,
        k: Mat,
        p: &mut [f32],
        mut raw: Option<&mut [f32]>,
    ) {
        let Dims { t, s, d, .. } = *dm;
        sgemm(t, s, d, q, k, p, false, self.mask.scale as f32);
        let slope = self.mask.alibi_slopes.as_ref().map(|sl| sl[hi]);
        for i in 0..t {
            let row = &mut p[i * s..(i + 1) * s];
            let (lo, hi_k) = self.mask.visible(bi, i, t, s);
            if let Some(cap) = self.mask.softcap {
                if let Some(raw) = raw.as_deref_mut() {
                    raw[i * s..(i + 1) * s].copy_from_slice(row);
                }
                let cap = cap as f32;
                row[lo..hi_k].iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
            }
            if let Some(slope) = slope {
                let qpos = (s - t + i) as f32;
                row[lo..hi_k]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x += slope * ((lo + j) as f32 - qpos));
            }
            if let Some(e) = &self.extra {
                let base = ((if e.per_row { bi * dm.h } else { 0 }) + hi) * t * s + i * s;
                row[lo..hi_k].iter_mut().zip(&e.values[base + lo..base + hi_k]).for_each(|(x, a)| *x += a);
            }
            row[..lo].fill(0.0);
            row[hi_k..].fill(0.0);
            let live = &mut row[lo..hi_k];
            if live.is_empty() {
                continue; // a query that sees nothing attends to nothing
            }
            let max = live.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            exp_shifted(live, max);
            let sum: f32 = live.iter().sum();
            let inv = 1.0 / sum;
            live.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

fn dims(q: &Layout, k: &Layout, v: &Layout) -> Dims {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    Dims { b: qd[0], t: qd[1], h: qd[2], d: qd[3], s: kd[1], kv: kd[2], dv: vd[3] }
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
        let rotated = self.rotated(q, k, &dm);
        let (q, k) = match &rotated {
            Some((q, k)) => (&q[..], &k[..]),
            None => (q, k),
        };
        let Dims { b, h, kv, t, s, dv, .. } = dm;
        let group = h / kv;
        let heads = run_tasks(b * h, |idx| {
            let (bi, hi) = (idx / h, idx % h);
            let ki = hi / group;
            let mut p = vec![0f32; t * s];
            self.probs(&dm, bi, hi, dm.q(q, bi, hi), dm.kt(k, bi, ki), &mut p, None);
            let mut o = vec![0f32; t * dv];
            sgemm(t, dv, s, Mat::rows(&p, s), dm.v(v, bi, ki), &mut o, false, 1.0);
            o
        });
        let mut out = zeroed(b * t * h * dv);
        for (idx, o) in heads.iter().enumerate() {
            let (bi, hi) = (idx / h, idx % h);
            scatter(&mut out, o, dv, bi * t * h * dv + hi * dv, h * dv);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, h, dv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, h, d) = q.dims4()?;
        let (_, s, kv, _) = k.dims4()?;
        let dv = v.dim(3)?;
        let dm = Dims { b, h, kv, t, s, d, dv };
        let group = h / kv;
        let scale = self.mask.scale as f32;
        // Work is split by (row, kv head): each task owns the dk/dv of its kv head.
        let parts = with_f32(q, |q| {
            with_f32(k, |k| {
                let rotated = self.rotated(q, k, &dm);
                let (q, k) = match &rotated {
                    Some((q, k)) => (&q[..], &k[..]),
                    None => (q, k),
                };
                with_f32(v, |v| {
                    with_f32(grad, |g| {
                        Ok(run_tasks(b * kv, |task| {
                            let (bi, ki) = (task / kv, task % kv);
                            let mut dq = vec![0f32; group * t * d];
                            let mut dk = vec![0f32; s * d];
                            let mut dvv = vec![0f32; s * dv];
                            let mut p = vec![0f32; t * s];
                            let mut dp = vec![0f32; t * s];
                            let mut raw = vec![0f32; if self.mask.softcap.is_some() { t * s } else { 0 }];
                            for gi in 0..group {
                                let hi = ki * group + gi;
                                let raw_opt = if raw.is_empty() { None } else { Some(&mut raw[..]) };
                                self.probs(&dm, bi, hi, dm.q(q, bi, hi), dm.kt(k, bi, ki), &mut p, raw_opt);
                                // dO of this head, [t, dv] strided like q.
                                let go = Mat { data: &g[bi * t * h * dv + hi * dv..], rs: h * dv, cs: 1 };
                                // dV += Pᵀ · dO
                                sgemm(s, dv, t, Mat::rows_t(&p, s), go, &mut dvv, true, 1.0);
                                // dP = dO · Vᵀ
                                sgemm(t, s, dv, go, dm.vt(v, bi, ki), &mut dp, false, 1.0);
                                // dS = P ⊙ (dP - rowsum(P ⊙ dP)), then through the soft-cap.
                                for i in 0..t {
                                    let pr = &p[i * s..(i + 1) * s];
                                    let dr = &mut dp[i * s..(i + 1) * s];
                                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                                    dr.iter_mut().zip(pr).for_each(|(x, p)| *x = p * (*x - dot));
                                }
                                if let Some(cap) = self.mask.softcap {
                                    let cap = cap as f32;
                                    for (x, r) in dp.iter_mut().zip(raw.iter()) {
                                        let th = (r / cap).tanh();
                                        *x *= 1.0 - th * th;
                                    }
                                }
                                // dQ = scale · dS · K ; dK += scale · dSᵀ · Q
                                sgemm(
                                    t,
                                    d,
                                    s,
                                    Mat::rows(&dp, s),
                                    dm.k(k, bi, ki),
                                    &mut dq[gi * t * d..(gi + 1) * t * d],
                                    false,
                                    scale,
                                );
                                sgemm(s, d, t, Mat::rows_t(&dp, s), dm.q(q, bi, hi), &mut dk, true, scale);
                            }
                            (dq, dk, dvv)
                        }))
                    })
                })
            })
        })?;
        let mut dq = zeroed(b * t * h * d);
        let mut dk = zeroed(b * s * kv * d);
        let mut dvv = zeroed(b * s * kv * dv);
        for (task, (q_part, k_part, v_part)) in parts.iter().enumerate() {
            let (bi, ki) = (task / kv, task % kv);
            for gi in 0..group {
                let hi = ki * group + gi;
                scatter(&mut dq, &q_part[gi * t * d..(gi + 1) * t * d], d, bi * t * h * d + hi * d, h * d);
            }
            scatter(&mut dk, k_part, d, bi * s * kv * d + ki * d, kv * d);
            scatter(&mut dvv, v_part, dv, bi * s * kv * dv + ki * dv, kv * dv);
        }
        // The gradients of the unrotated q and k: the rotated ones rotated back.
        if let Some(rope) = &self.rope {
            rope.apply(&mut dq, (t, h, d), true);
            rope.apply(&mut dk, (s, kv, d), true);
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, t, h, d), dev)?),
            Some(Tensor::from_vec(dk, (b, s, kv, d), dev)?),
            Some(Tensor::from_vec(dvv, (b, s, kv, dv), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::RopeLayout;
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
        let q = randn(&[2, 6, 4, 8], 1, &dev)?;
        let k = randn(&[2, 6, 2, 8], 2, &dev)?;
        let v = randn(&[2, 6, 2, 8], 3, &dev)?;
        let r = randn(&[2, 6, 4, 8], 4, &dev)?;
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

    /// Rotating inside the kernel gives rope-then-attention's values and gradients (GQA, both
    /// pairings, partial rotation, an offset, every mask) without keeping the rotated q and k.
    #[test]
    fn rotary_inside_the_kernel_matches_rope_then_attention() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[2, 6, 4, 8], 1, &dev)?;
        let k = randn(&[2, 6, 2, 8], 2, &dev)?;
        let v = randn(&[2, 6, 2, 8], 3, &dev)?;
        let r = randn(&[2, 6, 4, 8], 4, &dev)?;
        for (layout, rot) in
            [(RopeLayout::HalfSplit, 8), (RopeLayout::Interleaved, 8), (RopeLayout::HalfSplit, 4)]
        {
            let inv: Vec<f64> =
                (0..rot / 2).map(|i| 1.0 / 100f64.powf(2.0 * i as f64 / rot as f64)).collect();
            let tables = RopeTables::new(&inv, 16, 1.0, layout, &dev)?;
            for mask in masks() {
                let vars = || -> Result<[Var; 3]> {
                    Ok([Var::from_tensor(&q)?, Var::from_tensor(&k)?, Var::from_tensor(&v)?])
                };
                let (a, b) = (vars()?, vars()?);
                let [qa, ka, va] = a.each_ref().map(|x| x.as_tensor());
                let fused = attention_rotary(qa, ka, va, &mask, &tables, 3)?;
                let [qb, kb, vb] = b.each_ref().map(|x| x.as_tensor());
                let reference = attention(&rope(qb, &tables, 3)?, &rope(kb, &tables, 3)?, vb, &mask)?;
                assert_close(&fused, &reference, 1e-5)?;
                let (g1, g2) =
                    ((&fused * &r)?.sum_all()?.backward()?, (&reference * &r)?.sum_all()?.backward()?);
                for (x, y) in a.iter().zip(&b) {
                    assert_close(g1.get(x.as_tensor()).unwrap(), g2.get(y.as_tensor()).unwrap(), 1e-5)?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn additive_bias_fused_matches_composed_and_reaches_a_trained_bias() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[2, 5, 4, 8], 1, &dev)?;
        let k = randn(&[2, 5, 2, 8], 2, &dev)?;
        let v = randn(&[2, 5, 2, 8], 3, &dev)?;
        let bias = randn(&[1, 4, 5, 5], 5, &dev)?;
        let r = randn(&[2, 5, 4, 8], 4, &dev)?;
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
    fn cross_attention_may_have_more_queries_than_keys() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[2, 7, 2, 4], 1, &dev)?;
        let k = randn(&[2, 3, 2, 4], 2, &dev)?;
        let v = randn(&[2, 3, 2, 4], 3, &dev)?;
        let mask = AttentionMask { key_lens: Some(vec![3, 2]), ..AttentionMask::bidirectional(0.5) };
        let fused = attention(&q, &k, &v, &mask)?;
        let f64 = |t: &Tensor| t.to_dtype(DType::F64);
        assert_close(&fused, &composed(&f64(&q)?, &f64(&k)?, &f64(&v)?, &mask, None)?, 1e-5)?;
        assert!(attention(&q, &k, &v, &AttentionMask::causal(0.5)).is_err(), "causal needs t <= s");
        Ok(())
    }

    #[test]
    fn finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[1, 4, 2, 4], 1, &dev)?;
        let k = randn(&[1, 4, 1, 4], 2, &dev)?;
        let v = randn(&[1, 4, 1, 4], 3, &dev)?;
        let mask = AttentionMask { softcap: Some(3.0), ..AttentionMask::causal(0.5) };
        check_gradient(|q| attention(q, &k, &v, &mask), &q, 1, 1e-2, 2e-3)?;
        check_gradient(|k| attention(&q, k, &v, &mask), &k, 2, 1e-2, 2e-3)?;
        check_gradient(|v| attention(&q, &k, v, &mask), &v, 3, 1e-2, 2e-3)?;
        Ok(())
    }

    #[test]
    fn kv_cache_queries_are_the_last_positions() -> Result<()> {
        let dev = Device::Cpu;
        let q = randn(&[1, 5, 2, 4], 1, &dev)?;
        let k = randn(&[1, 5, 2, 4], 2, &dev)?;
        let v = randn(&[1, 5, 2, 4], 3, &dev)?;
        let mask = AttentionMask::causal(0.5);
        let full = attention(&q, &k, &v, &mask)?;
        let last = attention(&q.narrow(1, 4, 1)?, &k, &v, &mask)?;
        assert_close(&last, &full.narrow(1, 4, 1)?, 1e-6)
    }
}
