//! RMSNorm and LayerNorm with correct gradients for the input and (when it is trained) the weight.
//! candle's fused `rms_norm`/`layer_norm` record no backward at all.

use super::cpu::{slice, threads, with_f32, zeroed};
use super::custom_backward::with_backward;
use super::use_cpu_kernels;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::Arc;

/// `x / rms(x) * (weight + offset)`; `offset` is 1 for Gemma's `(1 + w)` norms, else 0.
/// Statistics are computed in f32 like Hugging Face does, whatever the compute dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, offset: f64) -> Result<Tensor> {
    if use_cpu_kernels(x) && weight.dtype() == DType::F32 {
        return x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps, offset });
    }
    rms_norm_off_cpu(x, weight, eps, offset)
}

/// Off the CPU kernels: candle's fused forward, and with `x̂ = x · r`, `r = 1 / rms(x)`,
/// `w' = weight + offset`, the backward written out: `dx = r · (g·w' − x̂ · mean(g·w' ⊙ x̂))`,
/// `dw = Σ_rows g ⊙ x̂`, in f32.
fn rms_norm_off_cpu(x: &Tensor, weight: &Tensor, eps: f64, offset: f64) -> Result<Tensor> {
    let w = (weight.detach().to_dtype(DType::F32)? + offset)?.to_dtype(x.dtype())?;
    let out = candle_nn::ops::rms_norm(&x.detach().contiguous()?, &w, eps as f32)?;
    with_backward(
        &[x, weight],
        out,
        Arc::new(move |args, g| rms_norm_backward(args[0], args[1], g, eps, offset)),
    )
}

fn rms_norm_backward(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
    offset: f64,
) -> Result<Vec<Option<Tensor>>> {
    let (dx, dw, _) = norm_backward(x, w, g, eps, offset, false)?;
    Ok(vec![dx, dw])
}

/// The backward both norms share, in f32. With `c = x − mean(x)` (LayerNorm) or `x` (RMSNorm),
/// `r = 1 / sqrt(mean(c²) + eps)`, `x̂ = c · r`, `w' = weight + offset`:
/// `dx = r · (g·w' − [mean(g·w')] − x̂ · mean(g·w' ⊙ x̂))` (the bracket for LayerNorm only) and
/// `dw = Σ_rows g ⊙ x̂`. Also returns `g` in f32.
fn norm_backward(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
    offset: f64,
    centered: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Tensor)> {
    let x32 = x.detach().to_dtype(DType::F32)?;
    let c = if centered { x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)? } else { x32 };
    let r = (c.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let xhat = c.broadcast_mul(&r)?;
    let g32 = g.detach().to_dtype(DType::F32)?;
    let dx = if x.track_op() {
        let gw = g32.broadcast_mul(&(w.detach().to_dtype(DType::F32)? + offset)?)?;
        let gw = if centered { gw.broadcast_sub(&gw.mean_keepdim(D::Minus1)?)? } else { gw };
        let m = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
        Some((gw - xhat.broadcast_mul(&m)?)?.broadcast_mul(&r)?.to_dtype(x.dtype())?)
    } else {
        None
    };
    let dw = if w.track_op() { Some(row_sum(&(&g32 * &xhat)?)?.to_dtype(w.dtype())?) } else { None };
    Ok((dx, dw, g32))
}

/// `[.., d]` summed over every row: `[d]`.
fn row_sum(t: &Tensor) -> Result<Tensor> {
    t.reshape(((), t.dim(D::Minus1)?))?.sum(0)
}

#[cfg(test)]
fn composed_rms_norm(x: &Tensor, weight: &Tensor, eps: f64, offset: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x32.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    let w = if offset != 0.0 { (weight + offset)? } else { weight.clone() };
    normed.broadcast_mul(&w.to_dtype(dtype)?)
}

/// `(x - mean) / std * weight + bias`; either may be absent (OLMo's non-parametric norm).
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let ones;
    let zeros;
    let w = match weight {
        Some(w) => w,
        None => {
            ones = Tensor::ones(d, x.dtype(), x.device())?;
            &ones
        }
    };
    let b = match bias {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(d, x.dtype(), x.device())?;
            &zeros
        }
    };
    if use_cpu_kernels(x) && w.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps });
    }
    layer_norm_off_cpu(x, w, b, eps)
}

/// Off the CPU kernels: candle's fused forward, and with `x̂ = (x − mean) · r`, `r = 1 / std(x)`,
/// the backward written out: `dx = r · (g·w − mean(g·w) − x̂ · mean(g·w ⊙ x̂))`,
/// `dw = Σ_rows g ⊙ x̂`, `db = Σ_rows g`, in f32.
fn layer_norm_off_cpu(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let (wx, bx) = (w.detach().to_dtype(x.dtype())?, b.detach().to_dtype(x.dtype())?);
    let out = candle_nn::ops::layer_norm(&x.detach().contiguous()?, &wx, &bx, eps as f32)?;
    with_backward(
        &[x, w, b],
        out,
        Arc::new(move |args, g| layer_norm_backward(args[0], args[1], args[2], g, eps)),
    )
}

fn layer_norm_backward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    g: &Tensor,
    eps: f64,
) -> Result<Vec<Option<Tensor>>> {
    let (dx, dw, g32) = norm_backward(x, w, g, eps, 0.0, true)?;
    let db = if b.track_op() { Some(row_sum(&g32)?.to_dtype(b.dtype())?) } else { None };
    Ok(vec![dx, dw, db])
}

#[cfg(test)]
fn composed_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let mean = x32.mean_keepdim(D::Minus1)?;
    let centered = x32.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(&w.to_dtype(dtype)?)?.broadcast_add(&b.to_dtype(dtype)?)
}

const ROWS_PER_TASK: usize = 16;

fn par_rows(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if threads() > 1 {
        out.par_chunks_mut(d * ROWS_PER_TASK).enumerate().for_each(|(c, chunk)| {
            for (i, row) in chunk.chunks_mut(d).enumerate() {
                f(c * ROWS_PER_TASK + i, row)
            }
        });
    } else {
        for (r, row) in out.chunks_mut(d).enumerate() {
            f(r, row)
        }
    }
}

struct RmsNorm {
    eps: f64,
    offset: f64,
}

fn inv_rms(row: &[f32], eps: f64) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / ((ss / row.len() as f32) as f64 + eps).sqrt() as f32
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(xs, xl)?;
        let w = slice(ws, wl)?;
        let d = w.len();
        if xl.dims().last() != Some(&d) {
            bail!("rms norm: weight has {d} elements, input {:?}", xl.dims());
        }
        let off = self.offset as f32;
        let mut out = zeroed(x.len());
        par_rows(&mut out, d, |r, o| {
            let xr = &x[r * d..(r + 1) * d];
            let s = inv_rms(xr, self.eps);
            for j in 0..d {
                o[j] = xr[j] * s * (w[j] + off);
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let off = self.offset as f32;
        // A frozen norm weight (LoRA) needs no dL/dw: skip its pass over every row.
        let want_dw = w.track_op();
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(grad, |g| {
                    let mut dx = zeroed(x.len());
                    par_rows(&mut dx, d, |r, o| {
                        let xr = &x[r * d..(r + 1) * d];
                        let gr = &g[r * d..(r + 1) * d];
                        let s = inv_rms(xr, self.eps);
                        // dx = s * (gw - x * s² * mean(gw * x)), gw = g * (w + offset)
                        let mut dot = 0f32;
                        for j in 0..d {
                            dot += gr[j] * (w[j] + off) * xr[j];
                        }
                        let c = s * s * dot / d as f32;
                        for j in 0..d {
                            o[j] = s * (gr[j] * (w[j] + off) - xr[j] * c);
                        }
                    });
                    let mut dw = vec![0f32; d];
                    if want_dw {
                        for (xr, gr) in x.chunks(d).zip(g.chunks(d)) {
                            let s = inv_rms(xr, self.eps);
                            for j in 0..d {
                                dw[j] += gr[j] * xr[j] * s;
                            }
                        }
                    }
                    Ok((dx, dw))
                })
            })
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = if want_dw { Some(Tensor::from_vec(dw, w.shape(), w.device())?) } else { None };
        Ok((Some(dx), dw))
    }
}

struct LayerNorm {
    eps: f64,
}

fn moments(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / ((var as f64 + eps).sqrt() as f32))
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(xs, xl)?;
        let w = slice(ws, wl)?;
        let b = slice(bs, bl)?;
        let d = w.len();
        if xl.dims().last() != Some(&d) || b.len() != d {
            bail!("layer norm: weight/bias have {d}/{} elements, input {:?}", b.len(), xl.dims());
        }
        let mut out = zeroed(x.len());
        par_rows(&mut out, d, |r, o| {
            let xr = &x[r * d..(r + 1) * d];
            let (mean, rstd) = moments(xr, self.eps);
            for j in 0..d {
                o[j] = (xr[j] - mean) * rstd * w[j] + b[j];
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        // Frozen affine parameters (LoRA) need no gradients: skip their pass over every row.
        let want_affine = w.track_op() || b.track_op();
        let (dx, dw, db) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(grad, |g| {
                    let mut dx = zeroed(x.len());
                    par_rows(&mut dx, d, |r, o| {
                        let xr = &x[r * d..(r + 1) * d];
                        let gr = &g[r * d..(r + 1) * d];
                        let (mean, rstd) = moments(xr, self.eps);
                        // dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))
                        let (mut m1, mut m2) = (0f32, 0f32);
                        for j in 0..d {
                            let gw = gr[j] * w[j];
                            m1 += gw;
                            m2 += gw * (xr[j] - mean) * rstd;
                        }
                        m1 /= d as f32;
                        m2 /= d as f32;
                        for j in 0..d {
                            let xhat = (xr[j] - mean) * rstd;
                            o[j] = rstd * (gr[j] * w[j] - m1 - xhat * m2);
                        }
                    });
                    let mut dw = vec![0f32; d];
                    let mut db = vec![0f32; d];
                    if want_affine {
                        for (xr, gr) in x.chunks(d).zip(g.chunks(d)) {
                            let (mean, rstd) = moments(xr, self.eps);
                            for j in 0..d {
                                dw[j] += gr[j] * (xr[j] - mean) * rstd;
                                db[j] += gr[j];
                            }
                        }
                    }
                    Ok((dx, dw, db))
                })
            })
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = if w.track_op() { Some(Tensor::from_vec(dw, w.shape(), w.device())?) } else { None };
        let db = if b.track_op() { Some(Tensor::from_vec(db, b.shape(), b.device())?) } else { None };
        Ok((Some(dx), dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_same_value_and_gradients, check_gradient, randn};
    use candle_core::{Device, Var};

    fn composed_rms(x: &Tensor, w: &Tensor, offset: f64) -> Result<Tensor> {
        let x64 = x.to_dtype(DType::F64)?;
        let var = x64.sqr()?.mean_keepdim(D::Minus1)?;
        x64.broadcast_div(&(var + 1e-5)?.sqrt()?)?.broadcast_mul(&(w.to_dtype(DType::F64)? + offset)?)
    }

    /// The GPU path, run on the CPU: values and the gradients of x and a trained weight equal
    /// the differentiated composition's, with and without Gemma's offset.
    #[test]
    fn off_cpu_rms_norm_matches_the_differentiated_composition() -> Result<()> {
        let dev = Device::Cpu;
        let probe = randn(&[3, 4, 8], 5, &dev)?;
        for offset in [0.0, 1.0] {
            let (x, w) =
                (Var::from_tensor(&randn(&[3, 4, 8], 1, &dev)?)?, Var::from_tensor(&randn(&[8], 2, &dev)?)?);
            let expected = composed_rms_norm(x.as_tensor(), w.as_tensor(), 1e-5, offset)?;
            let ours = rms_norm_off_cpu(x.as_tensor(), w.as_tensor(), 1e-5, offset)?;
            assert_same_value_and_gradients(&ours, &expected, &probe, &[&x, &w], 1e-5, 1e-5)?;
        }
        Ok(())
    }

    /// The GPU path of LayerNorm, run on the CPU: values and the gradients of x, weight and bias
    /// equal the differentiated composition's.
    #[test]
    fn off_cpu_layer_norm_matches_the_differentiated_composition() -> Result<()> {
        let dev = Device::Cpu;
        let probe = randn(&[3, 4, 8], 5, &dev)?;
        let x = Var::from_tensor(&randn(&[3, 4, 8], 1, &dev)?)?;
        let w = Var::from_tensor(&randn(&[8], 2, &dev)?)?;
        let b = Var::from_tensor(&randn(&[8], 3, &dev)?)?;
        let expected = composed_layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        let ours = layer_norm_off_cpu(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        assert_same_value_and_gradients(&ours, &expected, &probe, &[&x, &w, &b], 1e-5, 1e-5)?;
        Ok(())
    }

    #[test]
    fn rms_norm_forward_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[3, 4, 8], 1, &dev)?;
        let w = randn(&[8], 2, &dev)?;
        for offset in [0.0, 1.0] {
            assert_close(&rms_norm(&x, &w, 1e-5, offset)?, &composed_rms(&x, &w, offset)?, 1e-5)?;
            check_gradient(|x| rms_norm(x, &w, 1e-5, offset), &x, 3, 1e-2, 1e-2)?;
            check_gradient(|w| rms_norm(&x, w, 1e-5, offset), &w, 4, 1e-2, 1e-2)?;
            // Exact check against the f64 composition, whose backward is correct.
            let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
            let r = randn(&[3, 4, 8], 5, &dev)?;
            let g1 = (rms_norm(xv.as_tensor(), wv.as_tensor(), 1e-5, offset)? * &r)?.sum_all()?.backward()?;
            let (xd, wd) =
                (Var::from_tensor(&x.to_dtype(DType::F64)?)?, Var::from_tensor(&w.to_dtype(DType::F64)?)?);
            let g2 = (composed_rms(xd.as_tensor(), wd.as_tensor(), offset)? * r.to_dtype(DType::F64)?)?
                .sum_all()?
                .backward()?;
            assert_close(g1.get(xv.as_tensor()).unwrap(), g2.get(xd.as_tensor()).unwrap(), 1e-5)?;
            assert_close(g1.get(wv.as_tensor()).unwrap(), g2.get(wd.as_tensor()).unwrap(), 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn rms_norm_frozen_weight_gets_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&randn(&[2, 8], 1, &dev)?)?;
        let w = randn(&[8], 2, &dev)?;
        let g = rms_norm(x.as_tensor(), &w, 1e-5, 0.0)?.sum_all()?.backward()?;
        assert!(g.get(&w).is_none());
        assert!(g.get(x.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn layer_norm_forward_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[5, 8], 1, &dev)?;
        let w = randn(&[8], 2, &dev)?;
        let b = randn(&[8], 3, &dev)?;
        let x64 = x.to_dtype(DType::F64)?;
        let c = x64.broadcast_sub(&x64.mean_keepdim(D::Minus1)?)?;
        let expected = c
            .broadcast_div(&(c.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?.sqrt()?)?
            .broadcast_mul(&w.to_dtype(DType::F64)?)?
            .broadcast_add(&b.to_dtype(DType::F64)?)?;
        assert_close(&layer_norm(&x, Some(&w), Some(&b), 1e-5)?, &expected, 1e-5)?;
        check_gradient(|x| layer_norm(x, Some(&w), Some(&b), 1e-5), &x, 3, 1e-2, 1e-2)?;
        check_gradient(|w| layer_norm(&x, Some(w), Some(&b), 1e-5), &w, 4, 1e-2, 1e-2)?;
        check_gradient(|b| layer_norm(&x, Some(&w), Some(b), 1e-5), &b, 5, 1e-2, 1e-2)?;
        check_gradient(|x| layer_norm(x, None, None, 1e-5), &x, 6, 1e-2, 1e-2)?;
        Ok(())
    }
}
