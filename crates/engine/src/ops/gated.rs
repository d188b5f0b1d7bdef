//! The gated MLP activation `act(gate) * up` (SwiGLU, GeGLU) as one CPU op: keeps no
//! intermediate `act(gate)` tensor alive for backward and makes one pass instead of three.

use super::cpu::{ELEMENTS_PER_TASK, par_chunks, par_chunks2, slice, with_f32, zeroed};
use super::custom_backward::with_backward;
use super::use_cpu_kernels;
use super::vexp::{silu_gated, silu_gated_backward, silu_scalar};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use std::sync::Arc;

/// Activations with a fused kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAct {
    Silu,
    /// The tanh approximation of GELU (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

impl GateAct {
    /// (act(x), act'(x))
    #[inline]
    fn eval(self, x: f32) -> (f32, f32) {
        match self {
            GateAct::Silu => silu_scalar(x),
            GateAct::GeluTanh => {
                let inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                let t = inner.tanh();
                let d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner)
            }
        }
    }

    fn composed(self, x: &Tensor) -> Result<Tensor> {
        match self {
            GateAct::Silu => candle_nn::ops::silu(x),
            GateAct::GeluTanh => x.gelu(),
        }
    }
}

/// `act(gate) * up`, elementwise.
pub fn gated(gate: &Tensor, up: &Tensor, act: GateAct) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        bail!("gated activation: gate {:?} and up {:?} differ", gate.dims(), up.dims());
    }
    if use_cpu_kernels(gate) && use_cpu_kernels(up) {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, Gated(act));
    }
    gated_off_cpu(gate, up, act)
}

/// Off the CPU kernels: candle's activation and product forward, the backward written out.
fn gated_off_cpu(gate: &Tensor, up: &Tensor, act: GateAct) -> Result<Tensor> {
    let out = (act.composed(&gate.detach())? * up.detach())?;
    with_backward(&[gate, up], out, Arc::new(move |args, g| gated_backward(args[0], args[1], g, act)))
}

/// Off the CPU kernels: `d gate = g ⊙ up ⊙ act'(gate)`, `d up = g ⊙ act(gate)`, in f32.
fn gated_backward(gate: &Tensor, up: &Tensor, g: &Tensor, act: GateAct) -> Result<Vec<Option<Tensor>>> {
    let x = gate.detach().to_dtype(DType::F32)?;
    let g32 = g.detach().to_dtype(DType::F32)?;
    let (value, slope) = match act {
        GateAct::Silu => {
            let s = candle_nn::ops::sigmoid(&x)?;
            // silu'(x) = s · (1 + x · (1 − s))
            let slope = ((&x * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)? * &s)?;
            ((&x * &s)?, slope)
        }
        GateAct::GeluTanh => {
            let k = SQRT_2_OVER_PI as f64;
            let x2 = x.sqr()?;
            let t = ((&x * x2.affine(0.044715, 1.0)?)? * k)?.tanh()?;
            let one_plus_t = t.affine(1.0, 1.0)?;
            let value = ((&x * &one_plus_t)? * 0.5)?;
            // ½(1 + t) + ½ x (1 − t²) k (1 + 3 · 0.044715 x²)
            let d_inner = (x2.affine(3.0 * 0.044715, 1.0)? * k)?;
            let slope =
                ((one_plus_t * 0.5)? + ((&x * t.sqr()?.affine(-1.0, 1.0)?)? * d_inner)?.affine(0.5, 0.0)?)?;
            (value, slope)
        }
    };
    let d_gate = if gate.track_op() {
        Some(((&g32 * up.detach().to_dtype(DType::F32)?)? * slope)?.to_dtype(gate.dtype())?)
    } else {
        None
    };
    let d_up = if up.track_op() { Some((g32 * value)?.to_dtype(up.dtype())?) } else { None };
    Ok(vec![d_gate, d_up])
}

/// `act(g) ⊙ u` over slices, across the pool.
pub(crate) fn gated_values(g: &[f32], u: &[f32], act: GateAct) -> Vec<f32> {
    let mut out = zeroed(g.len());
    par_chunks(&mut out, ELEMENTS_PER_TASK, |i0, o| {
        let (g, u) = (&g[i0..i0 + o.len()], &u[i0..i0 + o.len()]);
        match act {
            GateAct::Silu => silu_gated(g, u, o),
            act => o.iter_mut().zip(g).zip(u).for_each(|((o, &g), &u)| *o = act.eval(g).0 * u),
        }
    });
    out
}

/// `(dL/dg, dL/du)` of `act(g) ⊙ u` for the output gradient `dy`, across the pool.
pub(crate) fn gated_grads(g: &[f32], u: &[f32], dy: &[f32], act: GateAct) -> (Vec<f32>, Vec<f32>) {
    let (mut dg, mut du) = (zeroed(g.len()), zeroed(g.len()));
    par_chunks2(&mut dg, &mut du, ELEMENTS_PER_TASK, |i0, dg, du| {
        let end = i0 + dg.len();
        let (g, u, dy) = (&g[i0..end], &u[i0..end], &dy[i0..end]);
        if act == GateAct::Silu {
            return silu_gated_backward(g, u, dy, dg, du);
        }
        let inputs = g.iter().zip(u).zip(dy);
        for ((dg, du), ((&g, &u), &d)) in dg.iter_mut().zip(du.iter_mut()).zip(inputs) {
            let (a, da) = act.eval(g);
            *dg = d * u * da;
            *du = d * a;
        }
    });
    (dg, du)
}

struct Gated(GateAct);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = gated_values(slice(gs, gl)?, slice(us, ul)?, self.0);
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) =
            with_f32(gate, |g| with_f32(up, |u| with_f32(dy, |dy| Ok(gated_grads(g, u, dy, self.0)))))?;
        let dev = gate.device();
        Ok((Some(Tensor::from_vec(dg, gate.shape(), dev)?), Some(Tensor::from_vec(du, up.shape(), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_same_value_and_gradients, check_gradient, randn};
    use candle_core::{DType, Device};

    /// The GPU path, run on the CPU: the gradients of gate and up equal the differentiated
    /// composition's for both activations.
    #[test]
    fn off_cpu_gradients_match_the_differentiated_composition() -> Result<()> {
        let dev = Device::Cpu;
        let probe = randn(&[3, 7], 3, &dev)?;
        for act in [GateAct::Silu, GateAct::GeluTanh] {
            let g = candle_core::Var::from_tensor(&(randn(&[3, 7], 1, &dev)? * 2.0)?)?;
            let u = candle_core::Var::from_tensor(&randn(&[3, 7], 2, &dev)?)?;
            let expected = (act.composed(g.as_tensor())? * u.as_tensor())?;
            let ours = gated_off_cpu(g.as_tensor(), u.as_tensor(), act)?;
            assert_same_value_and_gradients(&ours, &expected, &probe, &[&g, &u], 1e-6, 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn matches_composition_and_finite_differences() -> Result<()> {
        let g = (randn(&[3, 7], 1, &Device::Cpu)? * 2.0)?;
        let u = randn(&[3, 7], 2, &Device::Cpu)?;
        for act in [GateAct::Silu, GateAct::GeluTanh] {
            let expected = (act.composed(&g.to_dtype(DType::F64)?)? * u.to_dtype(DType::F64)?)?;
            assert_close(&gated(&g, &u, act)?, &expected, 1e-6)?;
            check_gradient(|g| gated(g, &u, act), &g, 3, 1e-2, 1e-3)?;
            check_gradient(|u| gated(&g, u, act), &u, 4, 1e-2, 1e-3)?;
        }
        Ok(())
    }
}
