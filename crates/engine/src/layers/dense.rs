//! A dense linear layer: frozen (forward through [`crate::ops::frozen_matmul`], so no gradient is
//! ever computed for its weight) or trainable (full fine-tuning: the weight is a `Var`).

use super::{ForwardCtx, Linear};
use crate::ops::{DenseBase, DenseKernel, FrozenBase, FrozenKernel, frozen_matmul, linear_matmul};
use candle_core::{DType, Device, Result, Tensor, Var};
use std::sync::Arc;

pub enum DenseLinear {
    Frozen { weight: Tensor, bias: Option<Tensor> },
    Trainable { weight: Var, bias: Option<Var> },
}

impl DenseLinear {
    pub fn frozen(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::Frozen { weight, bias }
    }

    pub fn trainable(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self::Trainable {
            weight: Var::from_tensor(&weight)?,
            bias: bias.map(|b| Var::from_tensor(&b)).transpose()?,
        })
    }

    fn weight(&self) -> &Tensor {
        match self {
            Self::Frozen { weight, .. } => weight,
            Self::Trainable { weight, .. } => weight.as_tensor(),
        }
    }
}

impl Linear for DenseLinear {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        let (y, bias) = match self {
            Self::Frozen { weight, bias } => (frozen_matmul(x, weight)?, bias.clone()),
            Self::Trainable { weight, bias } => {
                (linear_matmul(x, weight.as_tensor())?, bias.as_ref().map(|b| b.as_tensor().clone()))
            }
        };
        match bias {
            Some(b) => y.broadcast_add(&b),
            None => Ok(y),
        }
    }

    fn dims(&self) -> (usize, usize) {
        let d = self.weight().dims();
        (d[1], d[0])
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        match self {
            Self::Frozen { .. } => vec![],
            Self::Trainable { weight, bias } => {
                let mut v = vec![("weight".to_string(), weight.clone())];
                if let Some(b) = bias {
                    v.push(("bias".to_string(), b.clone()));
                }
                v
            }
        }
    }

    fn merged_weight(&self) -> Result<Tensor> {
        Ok(self.weight().detach())
    }

    fn bias(&self) -> Option<Tensor> {
        match self {
            Self::Frozen { bias, .. } => bias.clone(),
            Self::Trainable { bias, .. } => bias.as_ref().map(|b| b.as_tensor().detach()),
        }
    }

    fn cpu_kernel(&self) -> Option<Arc<dyn FrozenKernel>> {
        match self {
            Self::Frozen { weight, bias }
                if matches!(weight.device(), Device::Cpu) && weight.dtype() == DType::F32 =>
            {
                Some(Arc::new(DenseKernel { weight: weight.clone(), bias: bias.clone() }))
            }
            _ => None,
        }
    }

    fn frozen_base(&self) -> Option<Arc<dyn FrozenBase>> {
        match self {
            Self::Frozen { weight, bias } => {
                Some(Arc::new(DenseBase { weight: weight.clone(), bias: bias.clone() }))
            }
            Self::Trainable { .. } => None,
        }
    }

    fn base_bytes(&self) -> usize {
        match self {
            Self::Frozen { weight, bias } => {
                let b = bias.as_ref().map(|b| b.elem_count() * b.dtype().size_in_bytes()).unwrap_or(0);
                weight.elem_count() * weight.dtype().size_in_bytes() + b
            }
            Self::Trainable { .. } => 0,
        }
    }
}
