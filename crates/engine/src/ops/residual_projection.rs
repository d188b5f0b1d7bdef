//! A projection that adds its result onto the residual stream, `residual + base(x)`, as one CPU
//! op. Apart, the projection's output stays alive until backward as an input of the addition
//! (which needs neither input): one hidden-sized activation per attention block. The residual
//! itself is kept anyway (the block's first norm reads it), so fusing costs nothing. The base is
//! frozen with a CPU kernel, or LoRA over one (its A and B packed into one input,
//! [`LoraParts`]).

use super::cpu::{add_assign, slice, with_f32, zeroed};
use super::lora_linear::{FrozenKernel, LoraOp, LoraParts};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use std::sync::Arc;

/// `residual + base(x)` (plus LoRA's update when `lora` is given) for `x` `[.., in]` and
/// `residual` `[.., out]`, f32 on the CPU.
pub fn residual_projection(
    x: &Tensor,
    residual: &Tensor,
    base: Arc<dyn FrozenKernel>,
    lora: Option<LoraParts>,
) -> Result<Tensor> {
    let (in_dim, out_dim) = base.dims();
    let rows = |t: &Tensor, d: usize| t.elem_count() / d.max(1);
    if x.dim(candle_core::D::Minus1)? != in_dim
        || residual.dim(candle_core::D::Minus1)? != out_dim
        || rows(x, in_dim) != rows(residual, out_dim)
    {
        bail!(
            "residual projection: x {:?} and residual {:?} for a base {in_dim} -> {out_dim}",
            x.dims(),
            residual.dims()
        );
    }
    let (x, residual) = (x.contiguous()?, residual.contiguous()?);
    let Some(l) = lora else { return x.apply_op2(&residual, FrozenResidual { base }) };
    let (packed, rank) = l.packed(in_dim)?;
    x.apply_op3(&residual, &packed, LoraResidual { rank, lora: LoraOp::new(base, l.scale, l.dropout) })
}

struct FrozenResidual {
    base: Arc<dyn FrozenKernel>,
}

impl CustomOp2 for FrozenResidual {
    fn name(&self) -> &'static str {
        "residual-projection"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, residual) = (slice(xs, xl)?, slice(rs, rl)?);
        let (k, n) = self.base.dims();
        let m = x.len() / k.max(1);
        let mut out = zeroed(m * n);
        self.base.forward_into(x, m, &mut out)?;
        add_assign(&mut out, residual);
        Ok((CpuStorage::F32(out), rl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (k, _) = self.base.dims();
        let dx = if x.track_op() {
            let m = x.elem_count() / k.max(1);
            let dx = with_f32(g, |g| {
                let mut dx = zeroed(m * k);
                self.base.backward_into(g, m, &mut dx, false)?;
                Ok(dx)
            })?;
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        Ok((dx, residual.track_op().then(|| g.clone())))
    }
}

struct LoraResidual {
    rank: usize,
    lora: LoraOp,
}

impl CustomOp3 for LoraResidual {
    fn name(&self) -> &'static str {
        "lora-residual-projection"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut out = self.lora.forward_packed(slice(xs, xl)?, slice(ps, pl)?, self.rank)?;
        add_assign(&mut out, slice(rs, rl)?);
        Ok((CpuStorage::F32(out), rl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp) = with_f32(x, |xv| {
            with_f32(packed, |p| {
                with_f32(g, |gv| self.lora.backward_packed(xv, p, self.rank, gv, x.track_op()))
            })
        })?;
        let dev = x.device();
        Ok((
            dx.map(|d| Tensor::from_vec(d, x.shape(), dev)).transpose()?,
            residual.track_op().then(|| g.clone()),
            Some(Tensor::from_vec(dp, packed.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, randn};
    use crate::ops::{DenseKernel, DropoutSpec, frozen_matmul, lora_linear};
    use candle_core::{Device, Var};

    /// Fused and apart give the same values and gradients, frozen and with LoRA (with dropout).
    #[test]
    fn fused_matches_projection_then_addition() -> Result<()> {
        let dev = Device::Cpu;
        let (k, n, r) = (12, 5, 3);
        let x0 = randn(&[2, 3, k], 1, &dev)?;
        let res0 = randn(&[2, 3, n], 2, &dev)?;
        let w = randn(&[n, k], 3, &dev)?;
        let probe = randn(&[2, 3, n], 4, &dev)?;
        let a0 = (randn(&[r, k], 5, &dev)? * 0.3)?;
        let b0 = (randn(&[n, r], 6, &dev)? * 0.3)?;
        let kernel: Arc<dyn FrozenKernel> = Arc::new(DenseKernel { weight: w.clone(), bias: None });
        for lora in [false, true] {
            let dropout = lora.then_some(DropoutSpec { p: 0.3, seed: 9, keys: [1, 2, 3] });
            let vars = || -> Result<[Var; 4]> {
                Ok([
                    Var::from_tensor(&x0)?,
                    Var::from_tensor(&res0)?,
                    Var::from_tensor(&a0)?,
                    Var::from_tensor(&b0)?,
                ])
            };
            let (p, q) = (vars()?, vars()?);
            let [x, res, a, b] = p.each_ref().map(|v| v.as_tensor());
            let adapter = lora.then_some(LoraParts { a, b, scale: 1.5, dropout });
            let fused = residual_projection(x, res, kernel.clone(), adapter)?;
            let [x2, res2, a2, b2] = q.each_ref().map(|v| v.as_tensor());
            let projected = if lora {
                lora_linear(x2, a2, b2, kernel.clone(), 1.5, dropout)?
            } else {
                frozen_matmul(x2, &w)?
            };
            let apart = (projected + res2)?;
            assert_close(&fused, &apart, 1e-5)?;
            let s1 = (&fused * &probe)?.sum_all()?.backward()?;
            let s2 = (&apart * &probe)?.sum_all()?.backward()?;
            for (v1, v2) in p.iter().zip(&q).take(if lora { 4 } else { 2 }) {
                assert_close(
                    s1.get(v1.as_tensor()).expect("fused"),
                    s2.get(v2.as_tensor()).expect("apart"),
                    1e-5,
                )?;
            }
        }
        Ok(())
    }
}
