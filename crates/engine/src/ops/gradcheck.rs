//! Test helpers: seeded random tensors, closeness checks and finite-difference gradient checks.

use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var, bail};

pub fn randn(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(data, shape, dev)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    if a.shape() != b.shape() {
        bail!("shape mismatch {:?} vs {:?}", a.shape(), b.shape());
    }
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Max abs difference, relative to the largest magnitude of `expected` (at least 1).
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: f32) -> Result<()> {
    let diff = max_abs_diff(actual, expected)?;
    let scale = expected.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
    if diff / scale > tol {
        bail!("tensors differ: max abs diff {diff} (scale {scale}, tolerance {tol})");
    }
    Ok(())
}

/// Checks the analytic gradient of `sum(f(x) ⊙ r)` for a fixed random `r` against central
/// finite differences at a sample of coordinates of `x`.
pub fn check_gradient(
    f: impl Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    seed: u64,
    eps: f64,
    tol: f64,
) -> Result<()> {
    let var = Var::from_tensor(x)?;
    let y = f(var.as_tensor())?;
    let r = randn(y.dims(), seed, x.device())?;
    let loss = (&y * &r)?.sum_all()?;
    let grads = loss.backward()?;
    let analytic = match grads.get(var.as_tensor()) {
        Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
        None => bail!("no gradient reached the input"),
    };
    let base = x.flatten_all()?.to_vec1::<f32>()?;
    let mut rng = Rng::new(seed ^ 0xfeed);
    let samples = base.len().min(24);
    for s in 0..samples {
        let i = if base.len() <= 24 { s } else { rng.below(base.len()) };
        let eval = |delta: f64| -> Result<f64> {
            let mut v = base.clone();
            v[i] = (v[i] as f64 + delta) as f32;
            let xt = Tensor::from_vec(v, x.dims(), x.device())?;
            let y = f(&xt)?;
            (&y * &r)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
        };
        let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
        let a = analytic[i] as f64;
        let err = (a - numeric).abs() / numeric.abs().max(a.abs()).max(1.0);
        if err > tol {
            bail!("gradient mismatch at {i}: analytic {a}, finite difference {numeric} (rel err {err})");
        }
    }
    Ok(())
}

/// `ours` equals `expected` within `value_tol`, and the gradients of `sum(out ⊙ probe)` with
/// respect to each of `vars` agree within `grad_tol`: how a hand-written backward is checked
/// against candle's differentiation of the composition it replaces. Returns our gradients.
pub fn assert_same_value_and_gradients(
    ours: &Tensor,
    expected: &Tensor,
    probe: &Tensor,
    vars: &[&Var],
    value_tol: f32,
    grad_tol: f32,
) -> Result<candle_core::backprop::GradStore> {
    assert_close(ours, expected, value_tol)?;
    let theirs = expected.broadcast_mul(probe)?.sum_all()?.backward()?;
    let mine = ours.broadcast_mul(probe)?.sum_all()?.backward()?;
    for (i, v) in vars.iter().enumerate() {
        let (Some(a), Some(b)) = (mine.get(v.as_tensor()), theirs.get(v.as_tensor())) else {
            bail!("input {i}: a gradient is missing");
        };
        assert_close(a, b, grad_tol)
            .map_err(|e| candle_core::Error::Msg(format!("gradient of input {i}: {e}")))?;
    }
    Ok(mine)
}
