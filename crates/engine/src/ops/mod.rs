//! Differentiable building blocks for training. candle's fused norm, softmax and rope kernels
//! record no backward, and its matmul stores gradients for frozen weights; every op here has a
//! correct backward. On the CPU with f32 they run as fused kernels (a `CustomOp` whose backward is
//! another kernel); elsewhere as candle's forward kernels with the backward written out, keeping
//! nothing for backward but their inputs ([`custom_backward`]).

pub mod amx;
mod attention;
mod attention_off_cpu;
mod bitmask;
pub mod blas;
pub(crate) mod cpu;
mod cross_entropy;
mod custom_backward;
mod frozen_matmul;
mod gated;
mod gated_down;
mod linear_bf16;
mod linear_matmul;
mod lora_frozen;
mod lora_linear;
mod norm;
mod residual_projection;
mod rope;
pub(crate) mod simd;
mod vexp;
pub mod weight_grads;

#[cfg(test)]
pub(crate) mod gradcheck;
#[cfg(test)]
mod parallel_tests;

pub use attention::{AttentionMask, attention, attention_rotary, attention_with_bias};
pub use cross_entropy::{
    IGNORE_INDEX, cross_entropy_sum, linear_cross_entropy_sum, masked_cross_entropy_sum,
};
pub use frozen_matmul::frozen_matmul;
pub use gated::{GateAct, gated};
pub use gated_down::gated_down;
pub use linear_matmul::linear_matmul;
pub use lora_frozen::{DenseBase, FrozenBase, lora_linear_frozen};
pub use lora_linear::{DenseKernel, DropoutSpec, FrozenKernel, LoraParts, dropout_mask, lora_linear};
pub use norm::{layer_norm, rms_norm};
pub use residual_projection::residual_projection;
pub use rope::{RopeLayout, RopeTables, Rotation, rope};

use candle_core::{DType, Device, Tensor};

/// Whether the hand-written CPU kernels can run on this tensor.
pub(crate) fn use_cpu_kernels(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && cpu_kernels_enabled()
}

/// `FINETUNE_CPU_KERNELS=off` runs the CPU through the paths GPUs take (candle's kernels with
/// written-out backwards), so the reference tests can check those paths without a GPU.
pub(crate) fn cpu_kernels_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("FINETUNE_CPU_KERNELS").map(|v| v != "off").unwrap_or(true))
}
