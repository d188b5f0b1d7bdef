//! LoRA over a frozen base as one fused CPU op: `y = base(x) + scale · (dropout(x) · Aᵀ) · Bᵀ`
//! computed into one output buffer. Only `x` is kept for backward (the dropout mask and `x · Aᵀ`
//! are recomputed), so an adapted projection costs one activation instead of five, and its
//! backward returns dL/dx, dL/dA and dL/dB — never a gradient for the frozen base.

use super::bitmask;
use super::cpu::{
    ELEMENTS_PER_TASK, Mat, par_chunks, sgemm_par, slice, threads, with_f32, with_last_dim, zeroed,
};
use crate::rng::Rng;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use std::sync::Arc;

/// A frozen base that can multiply on the CPU in f32 (dense today; quantized bases can too).
pub trait FrozenKernel: Send + Sync {
    /// (in, out)
    fn dims(&self) -> (usize, usize);
    /// `out[m, out] = x[m, in] · Wᵀ (+ bias)`.
    fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()>;
    /// `dx[m, in] (+)= dy[m, out] · W`.
    fn backward_into(&self, dy: &[f32], m: usize, dx: &mut [f32], accumulate: bool) -> Result<()>;
}

/// A dense f32 CPU weight `[out, in]` with an optional bias.
pub struct DenseKernel {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl FrozenKernel for DenseKernel {
    fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[1], d[0])
    }

    fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let (k, n) = self.dims();
        with_f32(&self.weight, |w| {
            sgemm_par(m, n, k, Mat::rows(x, k), Mat::rows_t(w, k), out, false, 1.0);
            Ok(())
        })?;
        if let Some(b) = &self.bias {
            with_f32(b, |b| {
                out.chunks_mut(n).for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
                Ok(())
            })?;
        }
        Ok(())
    }

    fn backward_into(&self, dy: &[f32], m: usize, dx: &mut [f32], accumulate: bool) -> Result<()> {
        let (k, n) = self.dims();
        with_f32(&self.weight, |w| {
            sgemm_par(m, k, n, Mat::rows(dy, n), Mat::rows(w, k), dx, accumulate, 1.0);
            Ok(())
        })
    }
}

/// Where a LoRA dropout mask comes from: a seeded stream, so backward redraws the same mask.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSpec {
    pub p: f64,
    pub seed: u64,
    pub keys: [u64; 3],
}

impl DropoutSpec {
    /// The mask: 0 where dropped, `1 / (1 - p)` where kept.
    pub fn mask(&self, n: usize) -> Vec<f32> {
        let scale = keep_scale(self.p);
        let mut out = vec![0f32; n];
        self.each(&mut out, |_, kept, o| *o = if kept { scale } else { 0.0 });
        out
    }

    /// The same draw as [`Self::mask`] as one byte per element: 1 where kept, 0 where dropped.
    pub fn kept(&self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        self.each(&mut out, |_, kept, o| *o = u8::from(kept));
        out
    }

    /// The same draw as one bit per element (bit `i % 64` of word `i / 64`, set where kept):
    /// what the fused CPU op keeps from its forward for its backward.
    pub(crate) fn keep_bits(&self, n: usize) -> Vec<u64> {
        let rng = Rng::stream(self.seed, &self.keys);
        let threshold = threshold(self.p);
        let mut bits = vec![0u64; n.div_ceil(64)];
        let fill = |(b, word): (usize, &mut u64)| {
            let mut v = 0u64;
            for w in 0..16 {
                let r = rng.nth_u64((16 * b + w) as u64);
                for k in 0..4 {
                    v |= u64::from(survives(r, k, threshold)) << (4 * w + k);
                }
            }
            *word = v;
        };
        if threads() > 1 && bits.len() > 256 {
            use rayon::prelude::*;
            bits.par_iter_mut().enumerate().with_min_len(256).for_each(fill);
        } else {
            bits.iter_mut().enumerate().for_each(fill);
        }
        bits
    }

    /// Runs `f(i, kept, &mut out[i])` for every element, across the kernel pool for large
    /// buffers. Element i's fate is 16 bits of word i / 4 of the stream (as [`draw_keeps`] draws
    /// them), and the stream is counter-based ([`Rng::nth_u64`]), so every chunk draws its own
    /// words: drawing a mask element by element on one thread was a fifth of a LoRA step.
    fn each<T: Send>(&self, out: &mut [T], f: impl Fn(usize, bool, &mut T) + Sync + Send) {
        let rng = Rng::stream(self.seed, &self.keys);
        let threshold = threshold(self.p);
        let run = |first: usize, chunk: &mut [T]| {
            for (w, group) in chunk.chunks_mut(4).enumerate() {
                let word = rng.nth_u64((first / 4 + w) as u64);
                for (k, o) in group.iter_mut().enumerate() {
                    f(first + 4 * w + k, survives(word, k, threshold), o);
                }
            }
        };
        // A multiple of 4, so every chunk starts at a word.
        let chunk = ELEMENTS_PER_TASK;
        if threads() > 1 && out.len() > chunk {
            use rayon::prelude::*;
            out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| run(i * chunk, c));
        } else {
            run(0, out);
        }
    }

    /// What a kept element is multiplied by, as [`Self::mask`] has it.
    pub fn keep_scale(&self) -> f64 {
        keep_scale(self.p) as f64
    }
}

fn keep_scale(p: f64) -> f32 {
    (1.0 / (1.0 - p)) as f32
}

/// Elements whose 16 random bits fall below this are dropped (dropout `p`).
fn threshold(p: f64) -> u64 {
    (p * 65536.0).round() as u64
}

/// Whether element `k` (0–3) of a random word survives: its 16 bits against [`threshold`].
#[inline]
fn survives(word: u64, k: usize, threshold: u64) -> bool {
    (word >> (16 * k)) & 0xffff >= threshold
}

/// Calls `keep` for each of `n` elements with whether it survives dropout `p`: 16 random bits
/// per element, dropped below `p · 65536`.
fn draw_keeps(n: usize, p: f64, rng: &mut Rng, mut keep: impl FnMut(bool)) {
    let threshold = threshold(p);
    let mut left = n;
    while left > 0 {
        let r = rng.next_u64();
        let here = left.min(4);
        for k in 0..here {
            keep(survives(r, k, threshold));
        }
        left -= here;
    }
}

/// A dropout mask (values 0 or 1/(1-p)) from a seeded stream; 16 random bits per element.
pub fn dropout_mask(n: usize, p: f64, rng: &mut Rng) -> Vec<f32> {
    let scale = keep_scale(p);
    let mut out = Vec::with_capacity(n);
    draw_keeps(n, p, rng, |kept| out.push(if kept { scale } else { 0.0 }));
    out
}

/// The fused LoRA linear: `x` (`[.., in]`, f32 on the CPU), `a` `[r, in]`, `b` `[out, r]`.
pub fn lora_linear(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    base: Arc<dyn FrozenKernel>,
    scale: f64,
    dropout: Option<DropoutSpec>,
) -> Result<Tensor> {
    let (in_dim, _) = base.dims();
    let (r, a_in) = a.dims2()?;
    let (_, b_r) = b.dims2()?;
    if a_in != in_dim || b_r != r || x.dim(candle_core::D::Minus1)? != in_dim {
        bail!(
            "lora: shapes x {:?}, A {:?}, B {:?} do not fit a base with {in_dim} inputs",
            x.dims(),
            a.dims(),
            b.dims()
        );
    }
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, LoraOp::new(base, scale, dropout))
}

/// A LoRA adapter handed to an op that fuses its projection with what comes before or after it
/// ([`super::gated_down`], [`super::residual_projection`]): A and B travel as one small packed
/// tensor ([`LoraParts::packed`]), so that such an op keeps candle's three inputs, and candle's
/// own `cat` backward hands each its gradient.
pub struct LoraParts<'a> {
    /// `[r, in]`
    pub a: &'a Tensor,
    /// `[out, r]`
    pub b: &'a Tensor,
    pub scale: f64,
    pub dropout: Option<DropoutSpec>,
}

impl LoraParts<'_> {
    /// A and B flattened into one tensor, after checking they fit a base with `in_dim` inputs;
    /// and the rank.
    pub(crate) fn packed(&self, in_dim: usize) -> Result<(Tensor, usize)> {
        let (r, a_in) = self.a.dims2()?;
        if a_in != in_dim || self.b.dims2()?.1 != r {
            bail!("lora: A {:?} and B {:?} do not fit {in_dim} inputs", self.a.dims(), self.b.dims());
        }
        Ok((Tensor::cat(&[self.a.flatten_all()?, self.b.flatten_all()?], 0)?, r))
    }
}

/// `(dL/dx if wanted, dL/dA, dL/dB)` of the fused LoRA product.
pub(crate) type LoraGrads = (Option<Vec<f32>>, Vec<f32>, Vec<f32>);

/// The fused LoRA product over slices; [`super::gated_down`] runs it on an input it computes.
pub(crate) struct LoraOp {
    base: Arc<dyn FrozenKernel>,
    scale: f32,
    dropout: Option<DropoutSpec>,
    /// `dropout(x) · Aᵀ` (`[m, r]`, a few KiB) from the forward, for the backward's `dL/dB`:
    /// recomputing it read all of `x` once more per adapted projection.
    xa: std::sync::Mutex<Option<Vec<f32>>>,
    /// The forward's dropout mask as bits (`x`'s size / 32): drawing it again twice in the
    /// backward was most of what dropout cost.
    kept: std::sync::Mutex<Option<Vec<u64>>>,
}

impl LoraOp {
    pub(crate) fn new(base: Arc<dyn FrozenKernel>, scale: f64, dropout: Option<DropoutSpec>) -> Self {
        Self {
            base,
            scale: scale as f32,
            dropout,
            xa: std::sync::Mutex::new(None),
            kept: std::sync::Mutex::new(None),
        }
    }

    /// The base's (in, out).
    pub(crate) fn dims(&self) -> (usize, usize) {
        self.base.dims()
    }

    /// A and B of rank `r` from a [`LoraParts::packed`] adapter.
    fn split<'a>(&self, packed: &'a [f32], r: usize) -> (&'a [f32], &'a [f32]) {
        packed.split_at(r * self.base.dims().0)
    }

    /// [`Self::forward_values`] for an adapter of rank `r` packed by [`LoraParts::packed`].
    pub(crate) fn forward_packed(&self, x: &[f32], packed: &[f32], r: usize) -> Result<Vec<f32>> {
        let (a, b) = self.split(packed, r);
        self.forward_values(x, a, b, r)
    }

    /// [`Self::backward_values`] for a packed adapter: dL/dx if wanted, and the packed
    /// adapter's gradient (dL/dA then dL/dB).
    pub(crate) fn backward_packed(
        &self,
        x: &[f32],
        packed: &[f32],
        r: usize,
        dy: &[f32],
        x_needs_grad: bool,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let (a, b) = self.split(packed, r);
        let (dx, mut da, db) = self.backward_values(x, a, b, dy, x_needs_grad)?;
        da.extend_from_slice(&db);
        Ok((dx, da))
    }

    /// `base(x) + scale · (dropout(x) · Aᵀ) · Bᵀ` for `x` `[m, in]`, `a` `[r, in]`, `b` `[out, r]`,
    /// keeping `dropout(x) · Aᵀ` and the mask for the backward.
    pub(crate) fn forward_values(&self, x: &[f32], a: &[f32], b: &[f32], r: usize) -> Result<Vec<f32>> {
        let (k, n) = self.base.dims();
        let m = x.len() / k;
        let mut out = zeroed(m * n);
        self.base.forward_into(x, m, &mut out)?;
        let bits = self.mask_bits(x.len(), false);
        let xd = self.dropped(x, bits.as_deref());
        let mut xa = vec![0f32; m * r];
        sgemm_par(m, r, k, Mat::rows(&xd, k), Mat::rows_t(a, k), &mut xa, false, 1.0);
        sgemm_par(m, n, r, Mat::rows(&xa, r), Mat::rows_t(b, r), &mut out, true, self.scale);
        if let Ok(mut kept) = self.xa.lock() {
            *kept = Some(xa);
        }
        if let Ok(mut kept) = self.kept.lock() {
            *kept = bits;
        }
        Ok(out)
    }

    /// `(dL/dx if wanted, dL/dA, dL/dB)` for the forward of [`Self::forward_values`] and `dy`.
    pub(crate) fn backward_values(
        &self,
        x: &[f32],
        a: &[f32],
        b: &[f32],
        dy: &[f32],
        x_needs_grad: bool,
    ) -> Result<LoraGrads> {
        let (k, n) = self.base.dims();
        let r = a.len() / k.max(1);
        let m = x.len() / k;
        // g = dY · B   [m, r]
        let mut g = vec![0f32; m * r];
        sgemm_par(m, r, n, Mat::rows(dy, n), Mat::rows(b, r), &mut g, false, 1.0);
        let bits = self.mask_bits(x.len(), true);
        let xd = self.dropped(x, bits.as_deref());
        let dx = if x_needs_grad { Some(self.input_grad(dy, &g, a, m, bits.as_deref())?) } else { None };
        // dA = scale · gᵀ · xd   [r, k]
        let mut da = vec![0f32; r * k];
        sgemm_par(r, k, m, Mat::rows_t(&g, r), Mat::rows(&xd, k), &mut da, false, self.scale);
        // dB = scale · dYᵀ · (xd · Aᵀ)   [n, r], with xd · Aᵀ kept by the forward (recomputed
        // when this op's forward did not run here).
        let kept = self.xa.lock().ok().and_then(|mut k| k.take()).filter(|v| v.len() == m * r);
        let xa = match kept {
            Some(xa) => xa,
            None => {
                let mut xa = vec![0f32; m * r];
                sgemm_par(m, r, k, Mat::rows(&xd, k), Mat::rows_t(a, k), &mut xa, false, 1.0);
                xa
            }
        };
        let mut db = vec![0f32; n * r];
        sgemm_par(n, r, m, Mat::rows_t(dy, n), Mat::rows(&xa, r), &mut db, false, self.scale);
        Ok((dx, da, db))
    }

    /// The dropout mask for `n` elements as bits: the forward's when it kept one (taken, so it
    /// is freed after this backward), else drawn; `None` without dropout.
    fn mask_bits(&self, n: usize, from_forward: bool) -> Option<Vec<u64>> {
        let d = self.dropout.filter(|d| d.p > 0.0)?;
        let kept = from_forward.then(|| self.kept.lock().ok().and_then(|mut k| k.take())).flatten();
        Some(kept.filter(|b| b.len() == n.div_ceil(64)).unwrap_or_else(|| d.keep_bits(n)))
    }

    /// `x` with the dropout mask (`bits`) applied; `x` itself without dropout.
    fn dropped<'a>(&self, x: &'a [f32], bits: Option<&[u64]>) -> std::borrow::Cow<'a, [f32]> {
        let (Some(d), Some(bits)) = (&self.dropout, bits) else { return std::borrow::Cow::Borrowed(x) };
        let scale = keep_scale(d.p);
        let mut out = vec![0f32; x.len()];
        par_chunks(&mut out, ELEMENTS_PER_TASK, |i0, chunk| {
            bitmask::scaled(bits, i0, &x[i0..i0 + chunk.len()], scale, chunk)
        });
        std::borrow::Cow::Owned(out)
    }

    /// `dL/dx = dY · W + scale · (g · A) ⊙ mask`, with `g = dY · B` `[m, r]`.
    fn input_grad(
        &self,
        dy: &[f32],
        g: &[f32],
        a: &[f32],
        m: usize,
        bits: Option<&[u64]>,
    ) -> Result<Vec<f32>> {
        let (k, _) = self.base.dims();
        let r = g.len() / m.max(1);
        let mut dx = zeroed(m * k);
        self.base.backward_into(dy, m, &mut dx, false)?;
        match (&self.dropout, bits) {
            (Some(d), Some(bits)) => {
                let mut t = zeroed(m * k);
                sgemm_par(m, k, r, Mat::rows(g, r), Mat::rows(a, k), &mut t, false, self.scale);
                let scale = keep_scale(d.p);
                par_chunks(&mut dx, ELEMENTS_PER_TASK, |i0, chunk| {
                    bitmask::add_scaled(bits, i0, &t[i0..i0 + chunk.len()], scale, chunk)
                });
            }
            _ => sgemm_par(m, k, r, Mat::rows(g, r), Mat::rows(a, k), &mut dx, true, self.scale),
        }
        Ok(dx)
    }
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, b) = (slice(xs, xl)?, slice(as_, al)?, slice(bs, bl)?);
        let (_, n) = self.base.dims();
        let out = self.forward_values(x, a, b, al.dims()[0])?;
        Ok((CpuStorage::F32(out), with_last_dim(xl.dims(), n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The first layer's input comes from frozen embeddings: no product for a gradient nobody reads.
        let x_needs_grad = x.track_op();
        let (dx, da, db) = with_f32(x, |x| {
            with_f32(a, |a| {
                with_f32(b, |b| with_f32(dy, |dy| self.backward_values(x, a, b, dy, x_needs_grad)))
            })
        })?;
        let dev = x.device();
        Ok((
            dx.map(|dx| Tensor::from_vec(dx, x.shape(), dev)).transpose()?,
            a.track_op().then(|| Tensor::from_vec(da, a.shape(), dev)).transpose()?,
            b.track_op().then(|| Tensor::from_vec(db, b.shape(), dev)).transpose()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, check_gradient, randn};
    use candle_core::{DType, Device, Var};

    fn composed(
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let base = x.broadcast_matmul(&w.t()?)?.broadcast_add(bias)?;
        let xd = match mask {
            Some(m) => (x * m)?,
            None => x.clone(),
        };
        base + (xd.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * scale)?
    }

    #[test]
    fn the_parallel_draw_is_the_sequential_stream() {
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(3)));
        for (p, n) in [(0.05, 3 * ELEMENTS_PER_TASK + 7), (0.5, 13)] {
            let d = DropoutSpec { p, seed: 5, keys: [7, 8, 9] };
            let sequential = dropout_mask(n, p, &mut Rng::stream(d.seed, &d.keys));
            assert_eq!(d.mask(n), sequential, "p {p}, n {n}");
        }
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
    }

    #[test]
    fn kept_bits_are_the_mask_drawn_again() {
        for (p, n) in [(0.05, 1003), (0.5, 64), (0.9, 7)] {
            let d = DropoutSpec { p, seed: 11, keys: [4, 5, 6] };
            let bits = d.keep_bits(n);
            let from_bits: Vec<u8> = (0..n).map(|i| (bits[i / 64] >> (i % 64) & 1) as u8).collect();
            assert_eq!(from_bits, d.kept(n), "p {p}");
        }
    }

    #[test]
    fn kept_bytes_are_the_mask_drawn_again() {
        for (p, n) in [(0.05, 1003), (0.5, 64), (0.9, 7)] {
            let d = DropoutSpec { p, seed: 11, keys: [4, 5, 6] };
            let bytes: Vec<f32> = d.kept(n).iter().map(|&b| b as f32 * d.keep_scale() as f32).collect();
            assert_eq!(bytes, d.mask(n), "p {p}");
        }
    }

    #[test]
    fn fused_lora_matches_composition_with_and_without_dropout() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[2, 5, 6], 1, &dev)?;
        let w = randn(&[7, 6], 2, &dev)?;
        let bias = randn(&[7], 3, &dev)?;
        let a = randn(&[3, 6], 4, &dev)?;
        let b = randn(&[7, 3], 5, &dev)?;
        let r = randn(&[2, 5, 7], 6, &dev)?;
        for p in [0.0, 0.3] {
            let spec = DropoutSpec { p, seed: 9, keys: [1, 2, 3] };
            let mask = Tensor::from_vec(spec.mask(60), (2, 5, 6), &dev)?;
            let kernel: Arc<dyn FrozenKernel> =
                Arc::new(DenseKernel { weight: w.clone(), bias: Some(bias.clone()) });
            let (xv, av, bv) = (Var::from_tensor(&x)?, Var::from_tensor(&a)?, Var::from_tensor(&b)?);
            let fused = lora_linear(
                xv.as_tensor(),
                av.as_tensor(),
                bv.as_tensor(),
                kernel.clone(),
                1.5,
                (p > 0.0).then_some(spec),
            )?;
            let g1 = (&fused * &r)?.sum_all()?.backward()?;
            let f64v = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64)?);
            let (xd, ad, bd) = (f64v(&x)?, f64v(&a)?, f64v(&b)?);
            let m64 = mask.to_dtype(DType::F64)?;
            let reference = composed(
                xd.as_tensor(),
                &w.to_dtype(DType::F64)?,
                &bias.to_dtype(DType::F64)?,
                ad.as_tensor(),
                bd.as_tensor(),
                1.5,
                (p > 0.0).then_some(&m64),
            )?;
            let g2 = (&reference * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            assert_close(&fused, &reference, 1e-5)?;
            for (u, v) in [(&xv, &xd), (&av, &ad), (&bv, &bd)] {
                assert_close(g1.get(u.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap(), 1e-5)?;
            }
            check_gradient(
                |x| lora_linear(x, &a, &b, kernel.clone(), 1.5, (p > 0.0).then_some(spec)),
                &x,
                7,
                1e-2,
                2e-3,
            )?;
        }
        Ok(())
    }

    #[test]
    fn an_input_without_gradient_gets_none_and_the_adapter_the_same_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[3, 6], 11, &dev)?;
        let w = randn(&[5, 6], 12, &dev)?;
        let (a, b) =
            (Var::from_tensor(&randn(&[2, 6], 13, &dev)?)?, Var::from_tensor(&randn(&[5, 2], 14, &dev)?)?);
        let kernel: Arc<dyn FrozenKernel> = Arc::new(DenseKernel { weight: w, bias: None });
        let grads_for = |x: &Tensor| -> Result<_> {
            let y = lora_linear(x, a.as_tensor(), b.as_tensor(), kernel.clone(), 0.5, None)?;
            y.sqr()?.sum_all()?.backward()
        };
        let tracked = Var::from_tensor(&x)?;
        let (with_dx, without_dx) = (grads_for(tracked.as_tensor())?, grads_for(&x)?);
        assert!(with_dx.get(tracked.as_tensor()).is_some());
        assert!(without_dx.get(&x).is_none(), "a frozen input got a gradient");
        for v in [&a, &b] {
            assert_close(with_dx.get(v.as_tensor()).unwrap(), without_dx.get(v.as_tensor()).unwrap(), 0.0)?;
        }
        Ok(())
    }
}
