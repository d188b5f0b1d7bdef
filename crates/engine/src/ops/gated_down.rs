//! A gated MLP's down projection fused with its activation, `down(act(gate) ⊙ up)`, as one CPU
//! op whose graph keeps `gate` and `up` only. Apart, the activation's output — the down
//! projection's input, as large as `gate` — stays alive until backward too: one of the three
//! intermediate-sized activations of every block. Here it is a temporary of the forward, and the
//! backward computes it again (one elementwise pass) where LoRA's `dL/dA` needs it.
//!
//! The projection is a frozen base with a CPU kernel, or LoRA over one (its A and B packed into
//! one input, [`LoraParts`]).

use super::cpu::{slice, with_f32, with_last_dim};
use super::gated::{GateAct, gated_grads, gated_values};
use super::lora_linear::{FrozenKernel, LoraOp, LoraParts};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use std::sync::Arc;

/// `base(act(gate) ⊙ up)` (plus LoRA's update when `lora` is given) for `gate` and `up`
/// `[.., in]` f32 on the CPU.
pub fn gated_down(
    gate: &Tensor,
    up: &Tensor,
    act: GateAct,
    base: Arc<dyn FrozenKernel>,
    lora: Option<LoraParts>,
) -> Result<Tensor> {
    let (in_dim, _) = base.dims();
    if gate.shape() != up.shape() || gate.dim(candle_core::D::Minus1)? != in_dim {
        bail!("gated down: gate {:?} and up {:?} for a base with {in_dim} inputs", gate.dims(), up.dims());
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let Some(l) = lora else { return gate.apply_op2(&up, FrozenGatedDown { act, base }) };
    let (packed, r) = l.packed(in_dim)?;
    gate.apply_op3(&up, &packed, LoraGatedDown { act, rank: r, lora: LoraOp::new(base, l.scale, l.dropout) })
}

struct FrozenGatedDown {
    act: GateAct,
    base: Arc<dyn FrozenKernel>,
}

impl CustomOp2 for FrozenGatedDown {
    fn name(&self) -> &'static str {
        "gated-down"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = gated_values(slice(gs, gl)?, slice(us, ul)?, self.act);
        let (k, n) = self.base.dims();
        let m = h.len() / k.max(1);
        let mut out = super::cpu::zeroed(m * n);
        self.base.forward_into(&h, m, &mut out)?;
        Ok((CpuStorage::F32(out), with_last_dim(gl.dims(), n)))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (k, _) = self.base.dims();
        let (dg, du) = with_f32(gate, |g| {
            with_f32(up, |u| {
                with_f32(dy, |dy| {
                    let m = g.len() / k.max(1);
                    let mut dh = super::cpu::zeroed(m * k);
                    self.base.backward_into(dy, m, &mut dh, false)?;
                    Ok(gated_grads(g, u, &dh, self.act))
                })
            })
        })?;
        let dev = gate.device();
        Ok((Some(Tensor::from_vec(dg, gate.shape(), dev)?), Some(Tensor::from_vec(du, up.shape(), dev)?)))
    }
}

struct LoraGatedDown {
    act: GateAct,
    rank: usize,
    lora: LoraOp,
}

impl CustomOp3 for LoraGatedDown {
    fn name(&self) -> &'static str {
        "lora-gated-down"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = gated_values(slice(gs, gl)?, slice(us, ul)?, self.act);
        let out = self.lora.forward_packed(&h, slice(ps, pl)?, self.rank)?;
        Ok((CpuStorage::F32(out), with_last_dim(gl.dims(), self.lora.dims().1)))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let needs_input_grad = gate.track_op() || up.track_op();
        let (dg, du, dp) = with_f32(gate, |g| {
            with_f32(up, |u| {
                with_f32(packed, |p| {
                    with_f32(dy, |dy| {
                        let h = gated_values(g, u, self.act);
                        let (dh, dp) = self.lora.backward_packed(&h, p, self.rank, dy, needs_input_grad)?;
                        let (dg, du) = match dh {
                            Some(dh) => {
                                let (dg, du) = gated_grads(g, u, &dh, self.act);
                                (Some(dg), Some(du))
                            }
                            None => (None, None),
                        };
                        Ok((dg, du, dp))
                    })
                })
            })
        })?;
        let dev = gate.device();
        Ok((
            dg.map(|d| Tensor::from_vec(d, gate.shape(), dev)).transpose()?,
            du.map(|d| Tensor::from_vec(d, up.shape(), dev)).transpose()?,
            Some(Tensor::from_vec(dp, packed.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, randn};
    use crate::ops::{DenseKernel, DropoutSpec, gated, lora_linear};
    use candle_core::{Device, Var};

    /// Fused and apart give the same values and gradients, frozen and with LoRA (with dropout),
    /// for both activations.
    #[test]
    fn fused_matches_activation_then_projection() -> Result<()> {
        let dev = Device::Cpu;
        let (m, k, n, r) = (6, 12, 5, 3);
        let g0 = randn(&[2, m / 2, k], 1, &dev)?;
        let u0 = randn(&[2, m / 2, k], 2, &dev)?;
        let w = randn(&[n, k], 3, &dev)?;
        let probe = randn(&[2, m / 2, n], 4, &dev)?;
        let a0 = (randn(&[r, k], 5, &dev)? * 0.3)?;
        let b0 = (randn(&[n, r], 6, &dev)? * 0.3)?;
        let kernel: Arc<dyn FrozenKernel> = Arc::new(DenseKernel { weight: w.clone(), bias: None });
        for act in [GateAct::Silu, GateAct::GeluTanh] {
            for lora in [false, true] {
                let dropout = lora.then_some(DropoutSpec { p: 0.3, seed: 9, keys: [1, 2, 3] });
                let vars = || -> Result<[Var; 4]> {
                    Ok([
                        Var::from_tensor(&g0)?,
                        Var::from_tensor(&u0)?,
                        Var::from_tensor(&a0)?,
                        Var::from_tensor(&b0)?,
                    ])
                };
                let (x, y) = (vars()?, vars()?);
                let [g, u, a, b] = x.each_ref().map(|v| v.as_tensor());
                let adapter = lora.then_some(LoraParts { a, b, scale: 1.5, dropout });
                let fused = gated_down(g, u, act, kernel.clone(), adapter)?;
                let [g2, u2, a2, b2] = y.each_ref().map(|v| v.as_tensor());
                let h = gated(g2, u2, act)?;
                let apart = if lora {
                    lora_linear(&h, a2, b2, kernel.clone(), 1.5, dropout)?
                } else {
                    crate::ops::frozen_matmul(&h, &w)?
                };
                assert_close(&fused, &apart, 1e-5)?;
                let s1 = (&fused * &probe)?.sum_all()?.backward()?;
                let s2 = (&apart * &probe)?.sum_all()?.backward()?;
                let used = if lora { 4 } else { 2 };
                for (v1, v2) in x.iter().zip(&y).take(used) {
                    assert_close(
                        s1.get(v1.as_tensor()).expect("fused"),
                        s2.get(v2.as_tensor()).expect("apart"),
                        1e-5,
                    )?;
                }
            }
        }
        Ok(())
    }
}
