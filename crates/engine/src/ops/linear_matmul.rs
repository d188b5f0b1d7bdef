//! `x · Wᵀ` for a trainable weight (full fine-tuning): on the CPU in f32 the forward and both
//! backward products (dL/dx = g · W, dL/dW = gᵀ · x) run through the tuned product of
//! [`super::cpu`] (a BLAS when there is one) instead of candle's matmul, and dL/dW goes to
//! [`super::weight_grads`] rather than through candle's store; elsewhere it is candle's
//! own differentiable matmul. A bf16 weight with f32 activations on the CPU (full fine-tuning in
//! bf16) goes through [`super::linear_bf16`].

use super::cpu::{Mat, gw, sgemm_par, slice, with_f32, with_last_dim, xwt, zeroed};
use super::linear_bf16::linear_bf16;
use super::{cpu_kernels_enabled, use_cpu_kernels};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

/// `x · wᵀ` with `w` `[out, in]` trainable; `x` may have any leading dimensions.
pub fn linear_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    let dims = x.dims().to_vec();
    let x_in = dims.last().copied().unwrap_or(0);
    if x_in != in_dim {
        bail!("linear matmul: input has {x_in} features, weight expects {in_dim}");
    }
    if x.dtype() == DType::F32 && w.dtype() == DType::BF16 && x.device().is_cpu() && cpu_kernels_enabled() {
        return linear_bf16(x, w);
    }
    let x = if x.dtype() != w.dtype() { x.to_dtype(w.dtype())? } else { x.clone() };
    if use_cpu_kernels(&x) && use_cpu_kernels(w) {
        return x.contiguous()?.apply_op2(&w.contiguous()?, LinearMatmul);
    }
    let rows = x.elem_count() / in_dim.max(1);
    let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = out_dim;
    }
    y.reshape(out)
}

struct LinearMatmul;

impl CustomOp2 for LinearMatmul {
    fn name(&self) -> &'static str {
        "linear-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = wl.dims()[0];
        Ok((CpuStorage::F32(xwt(slice(xs, xl)?, slice(ws, wl)?, n)), with_last_dim(xl.dims(), n)))
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
            with_f32(w, |w| {
                with_f32(g, |g| {
                    let dx = x_needs_grad.then(|| gw(g, w, n));
                    let mut dw = zeroed(n * k);
                    sgemm_par(n, k, m, Mat::rows_t(g, n), Mat::rows(x, k), &mut dw, false, 1.0);
                    Ok((dx, dw))
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
    use crate::ops::gradcheck::{assert_close, randn};
    use candle_core::{Device, Var};

    #[test]
    fn matches_candles_matmul_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&randn(&[2, 3, 5], 1, &dev)?)?;
        let w = Var::from_tensor(&randn(&[4, 5], 2, &dev)?)?;
        let y = linear_matmul(x.as_tensor(), w.as_tensor())?;
        let reference = x.as_tensor().broadcast_matmul(&w.as_tensor().t()?)?;
        assert_close(&y, &reference, 1e-6)?;

        let probe = randn(&[2, 3, 4], 3, &dev)?;
        let grads = (y * &probe)?.sum_all()?.backward()?;
        let expected = (reference * &probe)?.sum_all()?.backward()?;
        assert_close(
            grads.get(x.as_tensor()).expect("ours"),
            expected.get(x.as_tensor()).expect("candle's"),
            1e-5,
        )?;
        let dw = crate::ops::weight_grads::weight_grad(&grads, w.as_tensor())?.expect("ours");
        assert_close(&dw, expected.get(w.as_tensor()).expect("candle's"), 1e-5)?;
        Ok(())
    }
}
