//! One AdamW update of an f32 or bf16 CPU parameter as a single in-place pass over the parameter, its
//! gradient and its moments. The tensor-op version reads and writes every parameter-sized array
//! about fourteen times per step, with as many allocations; for full fine-tuning of a 100 M
//! parameter model that memory traffic was a third of a step. The arithmetic is the tensor ops',
//! operation for operation (scalars rounded to f32 the way candle's `affine` rounds them), so both
//! paths give bit-identical parameters.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, bail};
use std::cell::RefCell;

/// The per-step constants of an update.
pub(super) struct Rates {
    /// `1 - lr · weight_decay` for parameters that decay.
    pub decay: Option<f64>,
    pub b1: f64,
    pub b2: f64,
    /// `sqrt(1 - b2^t)`.
    pub bc2_sqrt: f64,
    pub eps: f64,
    /// `lr / (1 - b1^t)`.
    pub step_size: f64,
    /// Multiplies the gradient first (global-norm clipping); 1 leaves it as it is.
    pub grad_scale: f64,
}

impl Rates {
    /// The update as tensor ops (any device): the new parameter (f32) and moments.
    pub fn with_tensors(
        &self,
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let g = g.to_dtype(candle_core::DType::F32)?;
        let g = if self.grad_scale != 1.0 { (g * self.grad_scale)? } else { g };
        let p = p.to_dtype(candle_core::DType::F32)?;
        let p = match self.decay {
            Some(d) => (p * d)?,
            None => p,
        };
        let m = ((m * self.b1)? + (&g * (1.0 - self.b1))?)?;
        let v = ((v * self.b2)? + (g.sqr()? * (1.0 - self.b2))?)?;
        let denom = ((v.sqrt()? / self.bc2_sqrt)? + self.eps)?;
        let update = ((&m / denom)? * self.step_size)?;
        Ok(((p - update)?, m, v))
    }
}

/// The fused update, applied in place to the parameter's storage.
pub(super) struct FusedUpdate<'a> {
    rates: &'a Rates,
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
}

impl<'a> FusedUpdate<'a> {
    /// Updates `p` (an f32 or bf16 CPU tensor) and the moments `m`, `v` from the gradient `g`.
    pub fn apply(p: &Tensor, g: &Tensor, m: &'a mut [f32], v: &'a mut [f32], rates: &'a Rates) -> Result<()> {
        if m.len() != p.elem_count() || v.len() != p.elem_count() || g.elem_count() != p.elem_count() {
            bail!(
                "adamw: {} values with {} gradients and {}/{} moments",
                p.elem_count(),
                g.elem_count(),
                m.len(),
                v.len()
            );
        }
        let g = match g.dtype() {
            candle_core::DType::F32 | candle_core::DType::BF16 => g.contiguous()?,
            _ => g.to_dtype(candle_core::DType::F32)?.contiguous()?,
        };
        p.inplace_op2(&g, &FusedUpdate { rates, moments: RefCell::new((m, v)) })
    }
}

/// The sum of the squares of an f32 or bf16 CPU tensor's values in one pass (f64 sums per
/// chunk, across the pool), or `None` for another dtype or device.
pub(super) fn sum_squares(t: &Tensor) -> Result<Option<f64>> {
    fn sum<V: Value>(v: &[V]) -> f64 {
        let chunk = |c: &[V]| c.iter().map(|x| x.widen()).fold(0f32, |s, x| s + x * x) as f64;
        // f32 sums over short chunks (vectorised), f64 across them.
        let block = |b: &[V]| b.chunks(1024).map(chunk).sum::<f64>();
        if crate::ops::cpu::threads() > 1 && v.len() > 1 << 16 {
            use rayon::prelude::*;
            v.par_chunks(1 << 15).map(block).sum()
        } else {
            block(v)
        }
    }
    if !t.device().is_cpu() {
        return Ok(None);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else { return Ok(None) };
    let Some((a, b)) = layout.contiguous_offsets() else { return Ok(None) };
    Ok(match s {
        CpuStorage::F32(v) => Some(sum(&v[a..b])),
        CpuStorage::BF16(v) => Some(sum(&v[a..b])),
        _ => None,
    })
}

/// `x · s` as candle's `affine(s, 0)` computes it on f32 data.
fn affine(x: f32, mul: f64) -> f32 {
    x * mul as f32 + 0.0
}

/// A parameter or gradient value the fused pass reads (and for a parameter writes back): f32,
/// or bf16 — widened exactly, and rounded back to nearest even as `to_dtype` rounds it. Both are
/// branch-free so that the pass vectorises.
trait Value: Copy + Send + Sync {
    fn widen(self) -> f32;
    fn narrow(v: f32) -> Self;
}

impl Value for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        v
    }
}

impl Value for half::bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        let b = v.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let nan = ((b >> 16) | 0x40) as u16;
        half::bf16::from_bits(if v.is_nan() { nan } else { rounded })
    }
}

impl FusedUpdate<'_> {
    fn run<P: Value, G: Value>(&self, p: &mut [P], g: &[G]) {
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        let r = self.rates;
        let (c1, c2, inv_bc2) = (1.0 - r.b1, 1.0 - r.b2, 1.0 / r.bc2_sqrt);
        let (decays, d) = (r.decay.is_some(), r.decay.unwrap_or(1.0));
        let (scales, scale) = (r.grad_scale != 1.0, r.grad_scale);
        let update = |p: &mut [P], m: &mut [f32], v: &mut [f32], g: &[G]| {
            // Equal lengths up front: no bounds checks inside, so the loop vectorises.
            let n = p.len();
            let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
            for i in 0..n {
                let gw = g[i].widen();
                let gi = if scales { affine(gw, scale) } else { gw };
                let pw = p[i].widen();
                let pi = if decays { affine(pw, d) } else { pw };
                let mi = affine(m[i], r.b1) + affine(gi, c1);
                let vi = affine(v[i], r.b2) + affine(gi * gi, c2);
                let denom = affine(vi.sqrt(), inv_bc2) + r.eps as f32;
                p[i] = P::narrow(pi - affine(mi / denom, r.step_size));
                (m[i], v[i]) = (mi, vi);
            }
        };
        const CHUNK: usize = 1 << 15;
        if crate::ops::cpu::threads() > 1 && p.len() > CHUNK {
            use rayon::prelude::*;
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| update(p, m, v, g));
        } else {
            update(p, m, v, g);
        }
    }
}

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-fused"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            bail!("adamw: contiguous parameter and gradient expected")
        };
        match (p, g) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => self.run(&mut p[p0..p1], &g[g0..g1]),
            (CpuStorage::F32(p), CpuStorage::BF16(g)) => self.run(&mut p[p0..p1], &g[g0..g1]),
            (CpuStorage::BF16(p), CpuStorage::F32(g)) => self.run(&mut p[p0..p1], &g[g0..g1]),
            (CpuStorage::BF16(p), CpuStorage::BF16(g)) => self.run(&mut p[p0..p1], &g[g0..g1]),
            _ => bail!("adamw: f32 or bf16 parameter and gradient expected"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The branch-free rounding to bf16 is `half`'s (what `to_dtype` uses), bit for bit: ties,
    /// subnormals, infinities, NaN and a spread of values.
    #[test]
    fn bf16_rounding_is_halfs() {
        let mut values = vec![0.0f32, -0.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::MIN_POSITIVE / 3.0];
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX, f32::NAN]);
        let mut bits = 0x1234_5678u32;
        for _ in 0..100_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            values.push(f32::from_bits(bits));
        }
        for v in values {
            let (ours, halfs) = (<half::bf16 as Value>::narrow(v), half::bf16::from_f32(v));
            assert!(
                ours.to_bits() == halfs.to_bits() || (v.is_nan() && ours.is_nan()),
                "{v:e}: {ours} vs {halfs}"
            );
        }
    }

    /// Three steps of the fused pass (sequential, and split across threads) and of the tensor
    /// ops from the same state: identical bits, for f32 and bf16 parameters.
    #[test]
    fn the_fused_pass_is_bit_identical_to_the_tensor_ops() -> Result<()> {
        for dtype in [DType::F32, DType::BF16] {
            for threads in [1, 4] {
                crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(threads)));
                let r = three_steps_both_ways(70_000, dtype);
                crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
                r?;
            }
        }
        Ok(())
    }

    fn three_steps_both_ways(n: usize, dtype: DType) -> Result<()> {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let init = Tensor::from_slice(&init, n, &dev)?.to_dtype(dtype)?;
        let fused = Var::from_tensor(&init)?;
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let (mut p_ref, mut m_ref, mut v_ref) =
            (init.copy()?, Tensor::zeros(n, DType::F32, &dev)?, Tensor::zeros(n, DType::F32, &dev)?);
        for t in 1..=3 {
            let g: Vec<f32> = (0..n).map(|i| (((i + t * 31) * 104729) % 997) as f32 / 300.0 - 1.6).collect();
            // A bf16 parameter's gradient is bf16 too.
            let g = Tensor::from_slice(&g, n, &dev)?.to_dtype(dtype)?;
            let (b1, b2, lr) = (0.9f64, 0.999f64, 1e-3);
            let rates = Rates {
                decay: (t != 2).then_some(1.0 - lr * 0.01),
                b1,
                b2,
                bc2_sqrt: (1.0 - b2.powi(t as i32)).sqrt(),
                eps: 1e-8,
                step_size: lr / (1.0 - b1.powi(t as i32)),
                grad_scale: if t == 3 { 0.37 } else { 1.0 },
            };
            FusedUpdate::apply(fused.as_tensor(), &g, &mut m, &mut v, &rates)?;
            let (p, m2, v2) = rates.with_tensors(&p_ref, &g, &m_ref, &v_ref)?;
            (p_ref, m_ref, v_ref) = (p.to_dtype(dtype)?, m2, v2);
        }
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
        };
        assert_eq!(bits(fused.as_tensor())?, bits(&p_ref)?, "{dtype:?} parameters");
        assert!(bits(&p_ref)? != bits(&init)?, "{dtype:?}: the steps moved the parameters");
        let vec_bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(vec_bits(m), vec_bits(m_ref.to_vec1()?), "first moments");
        assert_eq!(vec_bits(v), vec_bits(v_ref.to_vec1()?), "second moments");
        Ok(())
    }
}
