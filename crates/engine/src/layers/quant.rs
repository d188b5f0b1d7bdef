//! [`QuantLinear`]: a frozen quantized base (NF4/FP4/int8 from bitsandbytes-style quantization
//! on load, or GGUF blocks as stored) computed through [`crate::quant::quant_matmul`], which
//! dequantizes inside the op, so no dense weight stays alive in the autograd graph.

use super::{ForwardCtx, Linear};
use crate::quant::{QuantWeight, quant_matmul};
use candle_core::{DType, Device, Result, Tensor, Var};
use std::sync::Arc;

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
        let y = quant_matmul(x, &self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
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

    fn base_bytes(&self) -> usize {
        let b = self.bias.as_ref().map(|b| b.elem_count() * b.dtype().size_in_bytes()).unwrap_or(0);
        self.weight.bytes() + b
    }
}
