//! [`QuantLinear`]: a frozen quantized base (NF4/FP4/int8 from bitsandbytes-style quantization
//! on load, or GGUF blocks as stored) computed through [`crate::quant::quant_matmul`], which
//! dequantizes inside the op, so no dense weight stays alive in the autograd graph.

use super::{ForwardCtx, Linear};
use crate::ops::{FrozenBase, FrozenKernel};
use crate::quant::{QuantWeight, quant_matmul, quant_matmul_cpu, quant_matmul_t};
use candle_core::{DType, Device, Result, Tensor, Var};
use std::sync::Arc;

/// The CPU kernel of a quantized base, so LoRA can fuse base and adapter in one op.
struct QuantKernel {
    weight: Arc<QuantWeight>,
    bias: Option<Vec<f32>>,
}

impl FrozenKernel for QuantKernel {
    fn dims(&self) -> (usize, usize) {
        (self.weight.cols, self.weight.rows)
    }

    fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        quant_matmul_cpu(&self.weight, x, m, false, out, false)?;
        if let Some(b) = &self.bias {
            out.chunks_mut(b.len()).for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
        }
        Ok(())
    }

    fn backward_into(&self, dy: &[f32], m: usize, dx: &mut [f32], accumulate: bool) -> Result<()> {
        quant_matmul_cpu(&self.weight, dy, m, true, dx, accumulate)
    }
}

/// `x · Wᵀ (+ bias)` through [`quant_matmul`].
fn product(x: &Tensor, weight: &Arc<QuantWeight>, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = quant_matmul(x, weight)?;
    match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
        None => Ok(y),
    }
}

/// A quantized base as tensor ops on any device (see [`FrozenBase`]).
struct QuantBase {
    weight: Arc<QuantWeight>,
    bias: Option<Tensor>,
}

impl FrozenBase for QuantBase {
    fn dims(&self) -> (usize, usize) {
        (self.weight.cols, self.weight.rows)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        product(x, &self.weight, self.bias.as_ref())
    }

    fn input_grad(&self, dy: &Tensor) -> Result<Tensor> {
        quant_matmul_t(dy, &self.weight)
    }
}

pub struct QuantLinear {
    pub weight: Arc<QuantWeight>,
    pub bias: Option<Tensor>,
    /// Dtype and device of merged (dequantized) weights.
    dtype: DType,
    device: Device,
}

impl QuantLinear {
    pub fn new(weight: QuantWeight, bias: Option<Tensor>, dtype: DType, device: Device) -> Self {
        Self { weight: Arc::new(weight), bias, dtype, device }
    }
}

impl Linear for QuantLinear {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        product(x, &self.weight, self.bias.as_ref())
    }

    fn dims(&self) -> (usize, usize) {
        (self.weight.cols, self.weight.rows)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        vec![]
    }

    fn merged_weight(&self) -> Result<Tensor> {
        self.weight.dequantize(self.dtype, &self.device).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn bias(&self) -> Option<Tensor> {
        self.bias.clone()
    }

    fn cpu_kernel(&self) -> Option<Arc<dyn FrozenKernel>> {
        if !self.device.is_cpu() {
            return None;
        }
        let bias = match &self.bias {
            Some(b) => Some(b.to_dtype(DType::F32).ok()?.flatten_all().ok()?.to_vec1::<f32>().ok()?),
            None => None,
        };
        Some(Arc::new(QuantKernel { weight: self.weight.clone(), bias }))
    }

    fn frozen_base(&self) -> Option<Arc<dyn FrozenBase>> {
        Some(Arc::new(QuantBase { weight: self.weight.clone(), bias: self.bias.clone() }))
    }

    fn base_bytes(&self) -> usize {
        let b = self.bias.as_ref().map(|b| b.elem_count() * b.dtype().size_in_bytes()).unwrap_or(0);
        self.weight.bytes() + b
    }
}
