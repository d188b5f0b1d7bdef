//! `x · Wᵀ` for a trainable bf16 weight with f32 activations: full fine-tuning with
//! `model.dtype = "bf16"` on the CPU. The weight is trained in bf16 (as on a GPU) while
//! activations, norms and the loss stay f32; all three products of a step round their operands to
//! bf16 and accumulate in f32, on the AMX tile unit where the CPU has one:
//! * forward `Y = X · Wᵀ` from W's rows as they are;
//! * input gradient `dX = G · W`, W's rows again;
//! * weight gradient `dW = Gᵀ · X` with Gᵀ's rows as the left operand and X's rows (padded with
//!   zero rows to a multiple of 32) as the right one, rounded to bf16 like the weight 32 columns
//!   at a time ([`amx::weight_grad`]) and deposited in [`super::weight_grads`].
//!
//! Without a tile unit (or for a shape its blocks do not cover) W is widened exactly and the
//! products run in f32 (the rounding of X and G is then skipped: it would only cost time). The
//! weight changes at every optimizer step, so nothing is laid out ahead of time.

use super::amx::{self, Weight};
use super::cpu::{Mat, Value, sgemm_par, slice, with_f32, with_last_dim, zeroed};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, bail};
use half::bf16;
use half::vec::HalfBitsVecExt;

/// `x · wᵀ` for `x` f32 `[.., k]` and `w` bf16 `[n, k]` on the CPU, differentiable in both.
pub(crate) fn linear_bf16(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || w.dtype() != DType::BF16 || !x.device().is_cpu() {
        bail!("linear-bf16: f32 input and bf16 weight on the CPU expected")
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, LinearBf16)
}

/// Whether the tile unit runs a `[n, k]` weight's products.
fn on_tiles(n: usize, k: usize) -> bool {
    amx::fits(n, k) && amx::available()
}

/// The bits of a contiguous bf16 storage.
fn bits<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u16]> {
    let CpuStorage::BF16(v) = s else { bail!("linear-bf16: bf16 weight expected") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("linear-bf16: contiguous weight expected") };
    // SAFETY: `bf16` is a transparent wrapper of its `u16` bits.
    Ok(unsafe { std::slice::from_raw_parts(v[a..b].as_ptr() as *const u16, b - a) })
}

/// Runs `f` on the bits of a bf16 CPU tensor.
fn with_bits<R>(t: &Tensor, f: impl FnOnce(&[u16]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(bits(s, layout)?),
        _ => bail!("linear-bf16: CPU weight expected"),
    }
}

/// bf16 bits widened to f32 (exact).
fn widened(w: &[u16]) -> Vec<f32> {
    w.iter().map(|&b| bf16::from_bits(b).widen()).collect()
}

/// f32 values rounded to bf16 (to nearest even).
fn rounded(v: &[f32]) -> Vec<bf16> {
    let mut out = vec![0u16; v.len()];
    amx::convert_into(v, &mut out);
    out.reinterpret_into()
}

/// `Gᵀ` for `g` `[m, n]` as bf16 rows `[n', m']` (`n'`, `m'` rounded up to multiples of 32,
/// padded with zeros): the left operand of `dW = Gᵀ · X`.
fn pack_transposed(g: &[f32], m: usize, n: usize) -> Vec<u16> {
    const B: usize = 32;
    let (rows, cols) = (n.div_ceil(B) * B, m.div_ceil(B) * B);
    let mut out = vec![0u16; rows * cols];
    let fill = |(ib, block): (usize, &mut [u16])| {
        // 32 rows of Gᵀ: columns i0..i0+32 of G, read 32 values of a row at a time.
        let i0 = ib * B;
        let width = B.min(n.saturating_sub(i0));
        for j in 0..m {
            let src = &g[j * n + i0..j * n + i0 + width];
            for (ii, &v) in src.iter().enumerate() {
                block[ii * cols + j] = amx::bf16_bits(v);
            }
        }
    };
    if super::cpu::threads() > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(B * cols).enumerate().for_each(fill);
    } else {
        out.chunks_mut(B * cols).enumerate().for_each(fill);
    }
    out
}

struct LinearBf16;

impl CustomOp2 for LinearBf16 {
    fn name(&self) -> &'static str {
        "linear-bf16"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(xs, xl)?, bits(ws, wl)?);
        let (n, k) = (wl.dims()[0], wl.dims()[1]);
        let m = x.len() / k.max(1);
        let mut y = zeroed(m * n);
        if m > 0 && on_tiles(n, k) {
            amx::forward(w, n, k, &amx::pack_x(x, m, k), m, &mut y, n);
        } else {
            sgemm_par(m, n, k, Mat::rows(x, k), Mat::rows_t(&widened(w), k), &mut y, false, 1.0);
        }
        Ok((CpuStorage::F32(y), with_last_dim(xl.dims(), n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let m = x.elem_count() / k.max(1);
        let x_needs_grad = x.track_op();
        let (dx, dw) = with_f32(x, |x| {
            with_bits(w, |w| {
                with_f32(g, |g| {
                    let mut dx = x_needs_grad.then(|| zeroed(m * k));
                    if m == 0 {
                        return Ok((dx, vec![bf16::ZERO; n * k]));
                    }
                    if on_tiles(n, k) {
                        if let Some(dx) = dx.as_mut() {
                            amx::backward(&amx::pack_rows(g, m, n), n, m, Weight::Rows(w), n, k, dx, false);
                        }
                        // dW[n, k] = Gᵀ[n, m'] · X[m', k]: X's zero rows past m add nothing.
                        let padded = m.div_ceil(32) * 32;
                        let xb = amx::pack_rows(x, m, k);
                        let dw = amx::weight_grad(&pack_transposed(g, m, n), padded, n, &xb, k);
                        return Ok((dx, dw.reinterpret_into()));
                    }
                    let wf = widened(w);
                    if let Some(dx) = dx.as_mut() {
                        sgemm_par(m, k, n, Mat::rows(g, n), Mat::rows(&wf, k), dx, false, 1.0);
                    }
                    let mut dw = zeroed(n * k);
                    sgemm_par(n, k, m, Mat::rows_t(g, n), Mat::rows(x, k), &mut dw, false, 1.0);
                    Ok((dx, rounded(&dw)))
                })
            })
        })?;
        let dev = x.device();
        super::weight_grads::deposit(w, Tensor::from_vec(dw, w.shape(), dev)?)?;
        Ok((dx.map(|d| Tensor::from_vec(d, x.shape(), dev)).transpose()?, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::randn;
    use candle_core::{Device, Var};

    fn round(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f32::from_bits((amx::bf16_bits(x) as u32) << 16) as f64).collect()
    }

    fn rel(a: &[f32], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0f64, |s, v| s.max(v.abs()));
        a.iter().zip(b).fold(0f64, |e, (&a, b)| e.max((a as f64 - b).abs())) / scale
    }

    /// Forward and both gradients against f64 sums of the bf16-rounded operands (f32 ones where
    /// the products run in f32), for shapes on and off the tile unit, with row counts that are
    /// not multiples of 32.
    fn check(m: usize, n: usize, k: usize) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&randn(&[m, k], 1, &dev)?)?;
        let w = Var::from_tensor(&randn(&[n, k], 2, &dev)?.to_dtype(DType::BF16)?)?;
        let probe = randn(&[m, n], 3, &dev)?;
        let y = linear_bf16(x.as_tensor(), w.as_tensor())?;
        let grads = (&y * &probe)?.sum_all()?.backward()?;
        let tiles = on_tiles(n, k);
        let (xv, gv) =
            (x.as_tensor().flatten_all()?.to_vec1::<f32>()?, probe.flatten_all()?.to_vec1::<f32>()?);
        let wv: Vec<f64> = w
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect();
        let as_used = |v: &[f32]| if tiles { round(v) } else { v.iter().map(|&a| a as f64).collect() };
        let (xr, gr) = (as_used(&xv), as_used(&gv));
        let want_y: Vec<f64> =
            (0..m * n).map(|e| (0..k).map(|c| xr[e / n * k + c] * wv[e % n * k + c]).sum()).collect();
        let want_dx: Vec<f64> =
            (0..m * k).map(|e| (0..n).map(|i| gr[e / k * n + i] * wv[i * k + e % k]).sum()).collect();
        let want_dw: Vec<f64> =
            (0..n * k).map(|e| (0..m).map(|j| gr[j * n + e / k] * xr[j * k + e % k]).sum()).collect();
        let got =
            |t: &Tensor| -> Result<Vec<f32>> { t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>() };
        let dw = &crate::ops::weight_grads::weight_grad(&grads, w.as_tensor())?.expect("weight gradient");
        assert_eq!(dw.dtype(), DType::BF16, "the gradient of a bf16 weight is bf16");
        let e = (rel(&got(&y)?, &want_y), rel(&got(grads.get(x.as_tensor()).expect("dx"))?, &want_dx));
        assert!(e.0 < 1e-5 && e.1 < 1e-5, "{m}x{n}x{k} (tiles: {tiles}): y {}, dx {}", e.0, e.1);
        // dW is rounded to bf16 once: within half a bf16 step of the exact sum.
        let e = rel(&got(dw)?, &want_dw);
        assert!(e < 4e-3, "{m}x{n}x{k} (tiles: {tiles}): dw {e}");
        Ok(())
    }

    #[test]
    fn products_and_gradients_match_the_rounded_operands() -> Result<()> {
        if !amx::available() {
            eprintln!("no AMX on this CPU: only the widened f32 path is checked");
        }
        for (m, n, k) in [(45, 64, 96), (128, 32, 64), (1, 32, 32), (37, 20, 24)] {
            check(m, n, k)?;
        }
        Ok(())
    }

    #[test]
    fn products_and_gradients_run_on_the_pool_too() -> Result<()> {
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(3)));
        let r = check(70, 96, 64);
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
        r
    }

    #[test]
    fn a_frozen_input_gets_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[4, 32], 1, &dev)?;
        let w = Var::from_tensor(&randn(&[32, 32], 2, &dev)?.to_dtype(DType::BF16)?)?;
        let grads = linear_bf16(&x, w.as_tensor())?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_none(), "the weight's gradient is deposited, not stored");
        assert!(crate::ops::weight_grads::take(w.as_tensor()).is_some());
        Ok(())
    }
}
