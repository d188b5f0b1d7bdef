//! One AdamW update of an f32 or bf16 CPU parameter as a single in-place pass over the parameter, its
//! gradient and its moments. The tensor-op version reads and writes every parameter-sized array
//! about fourteen times per step, with as many allocations; for full fine-tuning of a 100 M
//! parameter model that memory traffic was a third of a step. The arithmetic is the tensor ops',
//! operation for operation (scalars rounded to f32 the way candle's `affine` rounds them), so both
//! paths give bit-identical parameters.

use crate::ops::cpu::Value;
use crate::ops::simd::widest_simd;
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
        if crate::ops::cpu::threads() > 1 && v.len() > 1 << 16 {
            use rayon::prelude::*;
            v.par_chunks(1 << 15).map(sum_squares_block).sum()
        } else {
            sum_squares_block(v)
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

/// The sum of squares of a block: f32 sums over short chunks, each in sixteen running sums (one
/// AVX-512 register, two AVX2 ones) so that the loop vectorises, and f64 across the chunks.
/// Plain loops, no closures: a closure the compiler leaves out of line runs at the baseline width.
#[inline(always)]
fn block_squares<V: Value>(b: &[V]) -> f64 {
    let mut total = 0f64;
    for c in b.chunks(1024) {
        let mut lanes = [0f32; 16];
        let mut rows = c.chunks_exact(16);
        for row in &mut rows {
            for (l, x) in lanes.iter_mut().zip(row) {
                *l += x.widen() * x.widen();
            }
        }
        let mut tail = 0f32;
        for x in rows.remainder() {
            tail += x.widen() * x.widen();
        }
        let mut sum = 0f64;
        for l in lanes {
            sum += l as f64;
        }
        total += sum + tail as f64;
    }
    total
}

widest_simd!(fn sum_squares_block<V: Value>(b: &[V]) -> f64 => block_squares);

/// The per-step constants as the f32 values the arithmetic uses.
#[derive(Clone, Copy)]
struct Consts {
    decays: bool,
    decay: f32,
    scales: bool,
    scale: f32,
    b1: f32,
    c1: f32,
    b2: f32,
    c2: f32,
    inv_bc2: f32,
    eps: f32,
    step_size: f32,
}

/// `x · s + 0` (candle's `affine(s, 0)` on f32 data) for an `s` already rounded to f32.
#[inline(always)]
fn times(x: f32, s: f32) -> f32 {
    x * s + 0.0
}

/// The update of one chunk. Lengths are made equal up front (no bounds checks inside) and every
/// choice is a select, so that the loop vectorises.
#[inline(always)]
fn update_chunk<P: Value, G: Value>(c: &Consts, p: &mut [P], m: &mut [f32], v: &mut [f32], g: &[G]) {
    let n = p.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        let gw = g[i].widen();
        let gi = if c.scales { times(gw, c.scale) } else { gw };
        let pw = p[i].widen();
        let pi = if c.decays { times(pw, c.decay) } else { pw };
        let mi = times(m[i], c.b1) + times(gi, c.c1);
        let vi = times(v[i], c.b2) + times(gi * gi, c.c2);
        let denom = times(vi.sqrt(), c.inv_bc2) + c.eps;
        p[i] = P::narrow(pi - times(mi / denom, c.step_size));
        (m[i], v[i]) = (mi, vi);
    }
}

widest_simd!(
    /// [`update_chunk`] at the CPU's widest vectors (the same bits at every width).
    fn update<P: Value, G: Value>(c: &Consts, p: &mut [P], m: &mut [f32], v: &mut [f32], g: &[G]) => update_chunk
);

impl FusedUpdate<'_> {
    fn run<P: Value, G: Value>(&self, p: &mut [P], g: &[G]) {
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        let r = self.rates;
        let c = Consts {
            decays: r.decay.is_some(),
            decay: r.decay.unwrap_or(1.0) as f32,
            scales: r.grad_scale != 1.0,
            scale: r.grad_scale as f32,
            b1: r.b1 as f32,
            c1: (1.0 - r.b1) as f32,
            b2: r.b2 as f32,
            c2: (1.0 - r.b2) as f32,
            inv_bc2: (1.0 / r.bc2_sqrt) as f32,
            eps: r.eps as f32,
            step_size: r.step_size as f32,
        };
        const CHUNK: usize = 1 << 15;
        if crate::ops::cpu::threads() > 1 && p.len() > CHUNK {
            use rayon::prelude::*;
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| update(&c, p, m, v, g));
        } else {
            update(&c, p, m, v, g);
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

    /// Three steps of the fused pass (sequential, and split across threads, at every vector
    /// width the CPU has) and of the tensor ops from the same state: identical bits, for f32 and
    /// bf16 parameters.
    #[test]
    fn the_fused_pass_is_bit_identical_to_the_tensor_ops() -> Result<()> {
        let mut runs = Vec::new();
        crate::ops::simd::with_each_level(|level| {
            for dtype in [DType::F32, DType::BF16] {
                for threads in [1, 4] {
                    crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(threads)));
                    runs.push((level, three_steps_both_ways(70_001, dtype)));
                    crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
                }
            }
        });
        for (level, r) in runs {
            r.map_err(|e| candle_core::Error::Msg(format!("{level:?}: {e}")))?;
        }
        Ok(())
    }

    /// The one-pass sum of squares is the f64 sum of the squares, within f32 rounding, at every
    /// vector width (the same bits at each).
    #[test]
    fn the_sum_of_squares_is_the_same_at_every_width() -> Result<()> {
        let values: Vec<f32> = (0..70_001).map(|i| ((i * 7919) % 1999) as f32 / 700.0 - 1.4).collect();
        let exact: f64 = values.iter().map(|&x| x as f64 * x as f64).sum();
        let t = Tensor::from_slice(&values, values.len(), &Device::Cpu)?;
        let mut sums = Vec::new();
        crate::ops::simd::with_each_level(|level| sums.push((level, sum_squares(&t))));
        let first =
            sums[0].1.as_ref().map_err(|e| candle_core::Error::Msg(e.to_string()))?.expect("f32 on the CPU");
        assert!((first - exact).abs() <= 1e-5 * exact, "{first} vs {exact}");
        for (level, sum) in sums {
            assert_eq!(sum?.map(f64::to_bits), Some(first.to_bits()), "{level:?}");
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
