//! The one linear-layer seam. Every projection of every architecture is a `Box<dyn Linear>` made
//! by [`LayerFactory`], which picks the base (frozen dense, trainable dense, or quantized: NF4,
//! FP4, int8, GGUF blocks) and wraps it with a LoRA adapter when the plan targets it. Models
//! never branch on either.

mod dense;
mod factory;
mod lora;
mod quant;

pub use dense::DenseLinear;
pub use factory::{AdapterPlan, LayerFactory, Param, TargetSet, peft_name};
pub use lora::LoraLinear;
pub use quant::QuantLinear;

use crate::ops::{FrozenBase, FrozenKernel, GateAct};
use candle_core::{Result, Tensor, Var};
use std::sync::Arc;

/// Per-forward settings that layers may need (dropout is on only in training; its masks are
/// drawn from a stream keyed by seed and step so recomputation and resume redraw the same ones).
#[derive(Debug, Clone, Copy)]
pub struct ForwardCtx {
    pub train: bool,
    pub seed: u64,
    /// A key unique to this forward pass (optimizer step and micro-batch).
    pub pass: u64,
}

impl ForwardCtx {
    pub fn eval() -> Self {
        Self { train: false, seed: 0, pass: 0 }
    }
}

/// A linear projection `y = x · Wᵀ (+ b)` of some kind.
pub trait Linear: Send + Sync {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor>;
    /// (in features, out features)
    fn dims(&self) -> (usize, usize);
    /// Trainable variables, named relative to the module (`weight`, `lora_A.weight`, ...).
    fn trainable(&self) -> Vec<(String, Var)>;
    /// The dense weight `[out, in]` this layer computes with, adapters merged in.
    fn merged_weight(&self) -> Result<Tensor>;
    fn bias(&self) -> Option<Tensor>;
    /// Bytes held by the frozen base.
    fn base_bytes(&self) -> usize;
    fn as_lora(&self) -> Option<&LoraLinear> {
        None
    }
    /// A CPU f32 kernel of this frozen base, which lets LoRA fuse base and adapter in one op.
    fn cpu_kernel(&self) -> Option<Arc<dyn FrozenKernel>> {
        None
    }
    /// `self(act(gate) ⊙ up)` as one op that keeps `gate` and `up` but not their product (a
    /// gated MLP's down projection, [`crate::ops::gated_down`]) where this layer runs on the CPU
    /// kernels; `None` where the caller must apply the activation itself.
    fn forward_gated(
        &self,
        gate: &Tensor,
        up: &Tensor,
        act: GateAct,
        _ctx: &ForwardCtx,
    ) -> Option<Result<Tensor>> {
        let kernel = self.cpu_kernel()?;
        crate::ops::use_cpu_kernels(gate).then(|| crate::ops::gated_down(gate, up, act, kernel, None))
    }
    /// `residual + self(x)` as one op that does not keep the projection's output for the
    /// addition ([`crate::ops::residual_projection`]) where this layer runs on the CPU kernels;
    /// `None` where the caller must add.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor, _ctx: &ForwardCtx) -> Option<Result<Tensor>> {
        let kernel = self.cpu_kernel()?;
        (crate::ops::use_cpu_kernels(x) && crate::ops::use_cpu_kernels(residual))
            .then(|| crate::ops::residual_projection(x, residual, kernel, None))
    }
    /// This frozen base as tensor ops, which lets LoRA run as one op on any device
    /// ([`crate::ops::lora_linear_frozen`]).
    fn frozen_base(&self) -> Option<Arc<dyn FrozenBase>> {
        None
    }
}
