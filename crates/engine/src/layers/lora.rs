//! LoRA as a decorator over any base linear: `y = base(x) + B · A · dropout(x) · scale`, with the
//! adapter kept in f32 whatever the base dtype (PEFT casts the input to the adapter's dtype too).

use super::{ForwardCtx, Linear};
use crate::ops::{self, DropoutSpec, GateAct, LoraParts};
use crate::rng::Rng;
use candle_core::{DType, Result, Tensor, Var};
use std::sync::Arc;

pub struct LoraLinear {
    pub base: Box<dyn Linear>,
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    /// Key of this module's dropout stream.
    pub key: u64,
}

impl LoraLinear {
    /// Rank of the adapter.
    pub fn rank(&self) -> usize {
        self.a.as_tensor().dim(0).unwrap_or(0)
    }

    /// The update `scale · B · A` as `[out, in]` in f32.
    pub fn delta(&self) -> Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale
    }

    /// The base's CPU kernel and this adapter, for the fused CPU ops (alone, or with the
    /// projection's neighbours), when `input` runs on the CPU kernels.
    fn fused_parts(
        &self,
        input: &Tensor,
        ctx: &ForwardCtx,
    ) -> Option<(Arc<dyn ops::FrozenKernel>, LoraParts<'_>)> {
        let a = self.a.as_tensor();
        if !ops::use_cpu_kernels(input) || a.dtype() != DType::F32 {
            return None;
        }
        let kernel = self.base.cpu_kernel()?;
        Some((
            kernel,
            LoraParts { a, b: self.b.as_tensor(), scale: self.scale, dropout: self.dropout_spec(ctx) },
        ))
    }

    /// This forward pass's dropout mask, if any (drawn from a stream keyed by seed, pass and
    /// module, so recomputation draws the same one).
    fn dropout_spec(&self, ctx: &ForwardCtx) -> Option<DropoutSpec> {
        (ctx.train && self.dropout > 0.0).then_some(DropoutSpec {
            p: self.dropout,
            seed: ctx.seed,
            keys: [Rng::key("lora-dropout"), ctx.pass, self.key],
        })
    }
}

impl Linear for LoraLinear {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if let Some((kernel, l)) = self.fused_parts(x, ctx) {
            return ops::lora_linear(x, l.a, l.b, kernel, l.scale, l.dropout);
        }
        let a = self.a.as_tensor();
        let dropout = self.dropout_spec(ctx);
        if let Some(base) = self.base.frozen_base() {
            return ops::lora_linear_frozen(x, a, self.b.as_tensor(), base, self.scale, dropout);
        }
        let y = self.base.forward(x, ctx)?;
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let mut xa = x.to_dtype(a.dtype())?.reshape((rows, in_dim))?;
        if let Some(d) = dropout {
            let mask = Tensor::from_vec(d.mask(rows * in_dim), (rows, in_dim), x.device())?;
            xa = (xa * mask.to_dtype(a.dtype())?)?;
        }
        let z = xa.matmul(&a.t()?)?.matmul(&self.b.as_tensor().t()?)?;
        let z = (z * self.scale)?.reshape(y.dims())?.to_dtype(y.dtype())?;
        y + z
    }

    fn forward_gated(
        &self,
        gate: &Tensor,
        up: &Tensor,
        act: GateAct,
        ctx: &ForwardCtx,
    ) -> Option<Result<Tensor>> {
        let (kernel, lora) = self.fused_parts(gate, ctx)?;
        Some(ops::gated_down(gate, up, act, kernel, Some(lora)))
    }

    fn forward_residual(&self, x: &Tensor, residual: &Tensor, ctx: &ForwardCtx) -> Option<Result<Tensor>> {
        if !ops::use_cpu_kernels(residual) {
            return None;
        }
        let (kernel, lora) = self.fused_parts(x, ctx)?;
        Some(ops::residual_projection(x, residual, kernel, Some(lora)))
    }

    fn dims(&self) -> (usize, usize) {
        self.base.dims()
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        vec![("lora_A.weight".into(), self.a.clone()), ("lora_B.weight".into(), self.b.clone())]
    }

    fn merged_weight(&self) -> Result<Tensor> {
        let base = self.base.merged_weight()?;
        let delta = self.delta()?.to_dtype(DType::F32)?;
        base.to_dtype(DType::F32)?.add(&delta)?.to_dtype(base.dtype())
    }

    fn bias(&self) -> Option<Tensor> {
        self.base.bias()
    }

    fn base_bytes(&self) -> usize {
        self.base.base_bytes()
    }

    fn as_lora(&self) -> Option<&LoraLinear> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_mask_keeps_the_right_fraction() {
        let mut rng = Rng::new(1);
        let m = ops::dropout_mask(10000, 0.25, &mut rng);
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.25).abs() < 0.02, "{dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    }
}
