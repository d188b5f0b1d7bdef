//! [`Norm`]: RMSNorm (optionally `(1 + w)`), LayerNorm with or without bias, or non-parametric
//! LayerNorm, with its weights frozen or trained. Statistics in f32, output in the input dtype.

use crate::arch::NormKind;
use crate::error::Result;
use crate::layers::{LayerFactory, Param};
use crate::ops;
use candle_core::{DType, Tensor, Var};

pub struct Norm {
    kind: NormKind,
    path: String,
    weight: Option<Param>,
    bias: Option<Param>,
    eps: f64,
}

impl Norm {
    /// The norm at `path` (`{path}.weight`, `{path}.bias`) over `dim` features.
    pub fn load(
        f: &LayerFactory,
        kind: NormKind,
        path: &str,
        dim: usize,
        eps: f64,
        bias: bool,
    ) -> Result<Self> {
        let weight = match kind {
            NormKind::LayerNoAffine => None,
            _ => Some(f.param(&format!("{path}.weight"), &[dim], DType::F32)?),
        };
        let bias = if bias && kind == NormKind::Layer {
            Some(f.param(&format!("{path}.bias"), &[dim], DType::F32)?)
        } else {
            None
        };
        Ok(Self { kind, path: path.to_string(), weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.weight.as_ref().map(|w| w.tensor());
        let y = match (self.kind, w) {
            (NormKind::Rms { offset }, Some(w)) => ops::rms_norm(x, w, self.eps, offset)?,
            _ => ops::layer_norm(x, w, self.bias.as_ref().map(|b| b.tensor()), self.eps)?,
        };
        y.to_dtype(x.dtype())
    }

    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        if let Some(v) = self.weight.as_ref().and_then(|w| w.var()) {
            out.push((format!("{}.weight", self.path), v.clone()));
        }
        if let Some(v) = self.bias.as_ref().and_then(|b| b.var()) {
            out.push((format!("{}.bias", self.path), v.clone()));
        }
    }

    /// The norm's tensors by Hugging Face name, for writing a model.
    pub fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        if let Some(w) = &self.weight {
            out.push((format!("{}.weight", self.path), w.tensor().detach()));
        }
        if let Some(b) = &self.bias {
            out.push((format!("{}.bias", self.path), b.tensor().detach()));
        }
    }
}
