//! `x · Wᵀ` for a frozen weight W: backward returns dL/dx only. candle's own matmul would also
//! compute and keep dL/dW for every frozen projection, which costs as much memory as the weights.

use super::cpu::{gw, slice, with_f32, with_last_dim, xwt};
use super::use_cpu_kernels;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Result, Shape, Storage, Tensor, bail,
};

/// Computes `x · wᵀ` where `w` (`[out, in]`) is frozen: no gradient is computed or stored for it.
/// `x` may have any leading dimensions; its last one must be `in`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, in_dim) = w.dims2()?;
    let x_in = x.dim(candle_core::D::Minus1)?;
    if x_in != in_dim {
        bail!("frozen matmul: input has {x_in} features, weight expects {in_dim}");
    }
    let x = if x.dtype() != w.dtype() { x.to_dtype(w.dtype())? } else { x.clone() };
    x.contiguous()?.apply_op1(FrozenMatmul { w: w.contiguous()? })
}

struct FrozenMatmul {
    w: Tensor,
}

/// `x[m, k] · w[n, k]ᵀ` on any backend, through the backend's own matmul.
fn matmul_xwt<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let dims = xl.dims();
    let k = *dims.last().unwrap_or(&0);
    let m = xl.shape().elem_count() / k.max(1);
    let n = wl.dims()[0];
    let x2 = Layout::contiguous_with_offset((m, k), xl.start_offset());
    let wt = wl.transpose(0, 1)?;
    let out = x.matmul(w, (1, m, n, k), &x2, &wt)?;
    Ok((out, with_last_dim(dims, n)))
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w, wl) = self.w.storage_and_layout();
        match &*w {
            Storage::Cpu(w @ CpuStorage::F32(_)) if matches!(s, CpuStorage::F32(_)) => {
                let n = wl.dims()[0];
                Ok((CpuStorage::F32(xwt(slice(s, l)?, slice(w, wl)?, n)), with_last_dim(l.dims(), n)))
            }
            Storage::Cpu(w) => matmul_xwt(s, l, w, wl),
            _ => bail!("frozen matmul: weight and input are on different devices"),
        }
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (w, wl) = self.w.storage_and_layout();
        match &*w {
            Storage::Cuda(w) => matmul_xwt(s, l, w, wl),
            _ => bail!("frozen matmul: weight and input are on different devices"),
        }
    }

    fn metal_fwd(&self, s: &MetalStorage, l: &Layout) -> Result<(MetalStorage, Shape)> {
        let (w, wl) = self.w.storage_and_layout();
        match &*w {
            Storage::Metal(w) => matmul_xwt(s, l, w, wl),
            _ => bail!("frozen matmul: weight and input are on different devices"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = self.w.dim(0)?;
        let m = grad.elem_count() / n;
        if use_cpu_kernels(grad) && use_cpu_kernels(&self.w) {
            let dx = with_f32(grad, |g| with_f32(&self.w, |w| Ok(gw(g, w, n))))?;
            return Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?));
        }
        let dx = grad.contiguous()?.reshape((m, n))?.matmul(&self.w)?;
        Ok(Some(dx.reshape(arg.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, randn};
    use candle_core::{Device, Var};

    #[test]
    fn matches_matmul_and_gives_input_gradient_only() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&randn(&[2, 3, 5], 1, &dev)?)?;
        let w = randn(&[4, 5], 2, &dev)?;
        let y = frozen_matmul(x.as_tensor(), &w)?;
        let reference = x.as_tensor().broadcast_matmul(&w.t()?)?;
        assert_close(&y, &reference, 1e-6)?;

        let loss = (y.sqr()?.sum_all()? * 0.5)?;
        let grads = loss.backward()?;
        assert!(grads.get(&w).is_none(), "a frozen weight must get no gradient");
        let expected = y.broadcast_matmul(&w)?; // d(0.5 y²)/dx = y · W
        assert_close(grads.get(x.as_tensor()).expect("dx"), &expected, 1e-5)?;
        Ok(())
    }
}
