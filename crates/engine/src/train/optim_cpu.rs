//! One AdamW update of an f32 CPU parameter as a single in-place pass over the parameter, its
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
    /// Updates `p` (an f32 CPU tensor) and the moments `m`, `v` from the gradient `g`.
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
        let g = g.to_dtype(candle_core::DType::F32)?.contiguous()?;
        p.inplace_op2(&g, &FusedUpdate { rates, moments: RefCell::new((m, v)) })
    }
}

/// `x · s` as candle's `affine(s, 0)` computes it on f32 data.
fn affine(x: f32, mul: f64) -> f32 {
    x * mul as f32 + 0.0
}

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-fused"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (p, g) else {
            bail!("adamw: f32 parameter and gradient expected")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            bail!("adamw: contiguous parameter and gradient expected")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        let r = self.rates;
        let (c1, c2, inv_bc2) = (1.0 - r.b1, 1.0 - r.b2, 1.0 / r.bc2_sqrt);
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            for i in 0..p.len() {
                let gi = g[i];
                let pi = match r.decay {
                    Some(d) => affine(p[i], d),
                    None => p[i],
                };
                let mi = affine(m[i], r.b1) + affine(gi, c1);
                let vi = affine(v[i], r.b2) + affine(gi * gi, c2);
                let denom = affine(vi.sqrt(), inv_bc2) + r.eps as f32;
                p[i] = pi - affine(mi / denom, r.step_size);
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Three steps of the fused pass (sequential, and split across threads) and of the tensor
    /// ops from the same state: identical bits.
    #[test]
    fn the_fused_pass_is_bit_identical_to_the_tensor_ops() -> Result<()> {
        for threads in [1, 4] {
            crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(threads)));
            let r = three_steps_both_ways(70_000);
            crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
            r?;
        }
        Ok(())
    }

    fn three_steps_both_ways(n: usize) -> Result<()> {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let fused = Var::from_slice(&init, n, &dev)?;
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let (mut p_ref, mut m_ref, mut v_ref) = (
            Tensor::from_slice(&init, n, &dev)?,
            Tensor::zeros(n, candle_core::DType::F32, &dev)?,
            Tensor::zeros(n, candle_core::DType::F32, &dev)?,
        );
        for t in 1..=3 {
            let g: Vec<f32> = (0..n).map(|i| (((i + t * 31) * 104729) % 997) as f32 / 300.0 - 1.6).collect();
            let g = Tensor::from_slice(&g, n, &dev)?;
            let (b1, b2, lr) = (0.9f64, 0.999f64, 1e-3);
            let rates = Rates {
                decay: (t != 2).then_some(1.0 - lr * 0.01),
                b1,
                b2,
                bc2_sqrt: (1.0 - b2.powi(t as i32)).sqrt(),
                eps: 1e-8,
                step_size: lr / (1.0 - b1.powi(t as i32)),
            };
            FusedUpdate::apply(fused.as_tensor(), &g, &mut m, &mut v, &rates)?;
            (p_ref, m_ref, v_ref) = rates.with_tensors(&p_ref, &g, &m_ref, &v_ref)?;
        }
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(fused.as_tensor().to_vec1()?), bits(p_ref.to_vec1()?), "parameters");
        assert_eq!(bits(m), bits(m_ref.to_vec1()?), "first moments");
        assert_eq!(bits(v), bits(v_ref.to_vec1()?), "second moments");
        Ok(())
    }
}
