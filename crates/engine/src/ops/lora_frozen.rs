//! LoRA over a frozen base (dense or quantized) as one op on any device (the GPU path; the CPU's
//! f32 path is the fused kernel of [`super::lora_linear`]):
//! `y = base(x) + scale · (dropout(x) · Aᵀ) · Bᵀ`.
//!
//! Composed from candle ops, an adapted projection kept an f32 copy of its input and three
//! `[rows, out]` temporaries alive until backward; here only the op's inputs are kept, and the
//! backward is written out (no second product through the base):
//! `dL/dx = dY · W + scale · (dY · B) · A ⊙ mask`, `dL/dA = scale · (dY · B)ᵀ · xd`,
//! `dL/dB = scale · dYᵀ · (xd · Aᵀ)` with `xd = dropout(x)`. The adapter side runs in the adapter's
//! dtype (f32) whatever the base's, as PEFT does.

use super::cpu::with_last_dim;
use super::custom_backward::with_backward;
use super::lora_linear::DropoutSpec;
use candle_core::{D, DType, Result, Shape, Tensor, bail};
use std::sync::Arc;

/// A frozen base as tensor ops on any device: its product and the gradient of its input. Neither
/// records a graph (inputs arrive detached).
pub trait FrozenBase: Send + Sync {
    /// (in, out)
    fn dims(&self) -> (usize, usize);
    /// `x[m, in] · Wᵀ (+ bias)` in the base's compute dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// `dy[m, out] · W`.
    fn input_grad(&self, dy: &Tensor) -> Result<Tensor>;
}

/// A dense frozen weight `[out, in]` (in the compute dtype) with an optional bias.
pub struct DenseBase {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl FrozenBase for DenseBase {
    fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[1], d[0])
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.to_dtype(self.weight.dtype())?.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }

    fn input_grad(&self, dy: &Tensor) -> Result<Tensor> {
        dy.to_dtype(self.weight.dtype())?.matmul(&self.weight)
    }
}

/// `x` `[.., in]`, `a` `[r, in]`, `b` `[out, r]` over a frozen `base`.
pub fn lora_linear_frozen(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    base: Arc<dyn FrozenBase>,
    scale: f64,
    dropout: Option<DropoutSpec>,
) -> Result<Tensor> {
    let (k, n) = base.dims();
    let (r, a_in) = a.dims2()?;
    let (b_out, b_r) = b.dims2()?;
    if a_in != k || b_r != r || b_out != n || x.dim(D::Minus1)? != k {
        bail!(
            "lora: shapes x {:?}, A {:?}, B {:?} do not fit a base with {k} inputs and {n} outputs",
            x.dims(),
            a.dims(),
            b.dims(),
        );
    }
    let m = x.elem_count() / k.max(1);
    let dropout = match dropout.filter(|d| d.p > 0.0) {
        Some(d) => Some(Dropout {
            kept: Tensor::from_vec(d.kept(m * k), (m, k), x.device())?,
            scale: d.keep_scale(),
        }),
        None => None,
    };
    let op = Arc::new(FrozenLora { base, scale, dropout, m, k, n, out_shape: with_last_dim(x.dims(), n) });
    let out = op.forward(&x.detach(), &a.detach(), &b.detach())?;
    with_backward(&[x, a, b], out, Arc::new(move |args, grad| op.backward(args[0], args[1], args[2], grad)))
}

/// A dropout mask drawn once per forward and kept (one byte per element) for the backward:
/// drawing it on the host is the slow part, and it must not be drawn twice.
struct Dropout {
    /// `[m, k]` u8, 1 where the input is kept.
    kept: Tensor,
    /// `1 / (1 − p)`.
    scale: f64,
}

struct FrozenLora {
    base: Arc<dyn FrozenBase>,
    scale: f64,
    dropout: Option<Dropout>,
    /// Rows of `x`, its features, the base's outputs.
    m: usize,
    k: usize,
    n: usize,
    out_shape: Shape,
}

impl FrozenLora {
    /// The dropout mask `[m, k]` in `dtype`: 0 or `1 / (1 − p)`.
    fn mask(&self, dtype: DType) -> Result<Option<Tensor>> {
        self.dropout.as_ref().map(|d| d.kept.to_dtype(dtype)?.affine(d.scale, 0.0)).transpose()
    }

    /// `dropout(x)` as `[m, k]` in the mask's dtype (the adapter's).
    fn adapter_input(&self, x: &Tensor, dtype: DType, mask: Option<&Tensor>) -> Result<Tensor> {
        let xa = x.reshape((self.m, self.k))?.to_dtype(dtype)?;
        match mask {
            Some(mask) => xa * mask,
            None => Ok(xa),
        }
    }

    fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let y = self.base.forward(&x.reshape((self.m, self.k))?)?;
        let mask = self.mask(a.dtype())?;
        let u = (self.adapter_input(x, a.dtype(), mask.as_ref())?.matmul(&a.t()?)? * self.scale)?;
        let z = u.matmul(&b.t()?)?.to_dtype(y.dtype())?;
        (y + z)?.reshape(self.out_shape.clone())
    }

    fn backward(&self, x: &Tensor, a: &Tensor, b: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (a_, b_) = (a.detach(), b.detach());
        let g = grad.detach().reshape((self.m, self.n))?;
        let gf = g.to_dtype(a_.dtype())?;
        let gb = gf.matmul(&b_)?; // [m, r]
        let mask = self.mask(a_.dtype())?;
        let dx = if x.track_op() {
            let base = self.base.input_grad(&g)?; // [m, k]
            let mut lora = (gb.matmul(&a_)? * self.scale)?;
            if let Some(mask) = &mask {
                lora = (lora * mask)?;
            }
            Some((&base + lora.to_dtype(base.dtype())?)?.to_dtype(x.dtype())?.reshape(x.shape())?)
        } else {
            None
        };
        let xd = self.adapter_input(&x.detach(), a_.dtype(), mask.as_ref())?;
        let da = if a.track_op() { Some((gb.t()?.matmul(&xd)? * self.scale)?) } else { None };
        let db =
            if b.track_op() { Some((gf.t()?.matmul(&xd.matmul(&a_.t()?)?)? * self.scale)?) } else { None };
        Ok(vec![dx, da, db])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_same_value_and_gradients, randn};
    use candle_core::{Device, Var};

    /// The plain composition, differentiated by candle.
    fn composed(
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        a: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let base = x.broadcast_matmul(&w.t()?)?.broadcast_add(bias)?;
        let xd = match mask {
            Some(m) => x.broadcast_mul(m)?,
            None => x.clone(),
        };
        base + (xd.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * 0.5)?
    }

    #[test]
    fn matches_the_composition_in_value_and_every_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (w, bias) = (randn(&[6, 5], 1, &dev)?, randn(&[6], 2, &dev)?);
        let probe = randn(&[2, 3, 6], 3, &dev)?;
        for p in [0.0, 0.3] {
            let x = Var::from_tensor(&randn(&[2, 3, 5], 4, &dev)?)?;
            let a = Var::from_tensor(&randn(&[4, 5], 5, &dev)?)?;
            let b = Var::from_tensor(&randn(&[6, 4], 6, &dev)?)?;
            let spec = DropoutSpec { p, seed: 7, keys: [1, 2, 3] };
            let mask = (p > 0.0).then(|| Tensor::from_vec(spec.mask(30), (2, 3, 5), &dev)).transpose()?;
            let expected = composed(x.as_tensor(), &w, &bias, a.as_tensor(), b.as_tensor(), mask.as_ref())?;
            let base = Arc::new(DenseBase { weight: w.clone(), bias: Some(bias.clone()) });
            let ours = lora_linear_frozen(
                x.as_tensor(),
                a.as_tensor(),
                b.as_tensor(),
                base,
                0.5,
                (p > 0.0).then_some(spec),
            )?;
            let grads = assert_same_value_and_gradients(&ours, &expected, &probe, &[&x, &a, &b], 1e-5, 1e-5)?;
            assert!(grads.get(&w).is_none(), "no gradient for the frozen base");
        }
        Ok(())
    }

    #[test]
    fn a_bf16_base_with_f32_adapters_tracks_f32_and_an_untracked_input_gets_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (w, bias) = (randn(&[6, 5], 1, &dev)?, randn(&[6], 2, &dev)?);
        let x = randn(&[3, 5], 4, &dev)?;
        let a = Var::from_tensor(&randn(&[4, 5], 5, &dev)?)?;
        let b = Var::from_tensor(&randn(&[6, 4], 6, &dev)?)?;
        let dense = |w: &Tensor, b: &Tensor| Arc::new(DenseBase { weight: w.clone(), bias: Some(b.clone()) });
        let f32_out = lora_linear_frozen(&x, a.as_tensor(), b.as_tensor(), dense(&w, &bias), 0.5, None)?;
        let half = |t: &Tensor| t.to_dtype(DType::BF16);
        let bf16_base = dense(&half(&w)?, &half(&bias)?);
        let bf16_out = lora_linear_frozen(&half(&x)?, a.as_tensor(), b.as_tensor(), bf16_base, 0.5, None)?;
        assert_eq!(bf16_out.dtype(), DType::BF16);
        assert_close(&bf16_out.to_dtype(DType::F32)?, &f32_out, 0.1)?;
        let g = bf16_out.to_dtype(DType::F32)?.sum_all()?.backward()?;
        assert!(g.get(&x).is_none());
        assert_eq!(g.get(a.as_tensor()).map(|t| t.dtype()), Some(DType::F32));
        assert_eq!(g.get(b.as_tensor()).map(|t| t.dtype()), Some(DType::F32));
        Ok(())
    }
}
