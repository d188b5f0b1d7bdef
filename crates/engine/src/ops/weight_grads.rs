//! Weight gradients handed over beside candle's `GradStore`. candle adds every gradient an op
//! returns onto a fresh zero tensor of the input's shape: for the weights of full fine-tuning
//! that is one more pass over every weight per step, and with bf16 weights it runs through
//! candle's bf16 add, which took a third of a step. The CPU products of trainable weights
//! ([`super::linear_matmul`]) deposit dL/dW here under the weight's id instead and return no
//! gradient for it; [`weight_grad`] gives a parameter's whole gradient from both places.

use super::cpu::add_assign;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, TensorId, bail};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

static PENDING: LazyLock<Mutex<HashMap<TensorId, Tensor>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn pending() -> MutexGuard<'static, HashMap<TensorId, Tensor>> {
    // A panic elsewhere while the lock was held leaves a map that is still whole.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `g` to the pending gradient of weight `w`.
pub(crate) fn deposit(w: &Tensor, g: Tensor) -> Result<()> {
    let mut map = pending();
    let sum = match map.remove(&w.id()) {
        Some(earlier) => accumulate(earlier, &g)?,
        None => g,
    };
    map.insert(w.id(), sum);
    Ok(())
}

/// `acc + g` for a gradient `acc` that nothing else holds (a fresh tensor from a backward pass
/// or an accumulator): added in place for f32 and bf16 on the CPU — one vectorised pass, and no
/// third gradient-sized tensor at the peak (candle's bf16 add alone made gradient accumulation
/// of a bf16 model twice as slow as one large batch) — else through candle.
pub(crate) fn accumulate(acc: Tensor, g: &Tensor) -> Result<Tensor> {
    let in_place = acc.device().is_cpu()
        && acc.dtype() == g.dtype()
        && matches!(acc.dtype(), DType::F32 | DType::BF16)
        && acc.shape() == g.shape()
        && acc.is_contiguous()
        && !acc.track_op();
    if !in_place {
        return acc + g;
    }
    acc.inplace_op2(&g.contiguous()?, &AddInPlace)?;
    Ok(acc)
}

struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add-in-place"
    }

    fn cpu_fwd(&self, a: &mut CpuStorage, al: &Layout, b: &CpuStorage, bl: &Layout) -> Result<()> {
        let (Some((a0, a1)), Some((b0, b1))) = (al.contiguous_offsets(), bl.contiguous_offsets()) else {
            bail!("add in place: contiguous tensors expected")
        };
        match (a, b) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => add_assign(&mut a[a0..a1], &b[b0..b1]),
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => add_assign(&mut a[a0..a1], &b[b0..b1]),
            _ => bail!("add in place: two f32 or two bf16 tensors expected"),
        }
        Ok(())
    }
}

/// Removes and returns the pending gradient of weight `w`.
pub fn take(w: &Tensor) -> Option<Tensor> {
    pending().remove(&w.id())
}

/// The gradient of parameter `w` after a backward pass: what reached it through candle's store
/// plus what the CPU products deposited (a tied embedding gets both), taking the deposit.
pub fn weight_grad(store: &GradStore, w: &Tensor) -> Result<Option<Tensor>> {
    Ok(match (store.get(w), take(w)) {
        (Some(a), Some(b)) => Some(accumulate(b, a)?),
        (a, b) => a.cloned().or(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, randn};
    use candle_core::{Device, Var};

    /// A tied embedding: looked up (candle's store) and used as the output head (deposited). Its
    /// gradient is the sum of both, as candle's own composition computes it.
    #[test]
    fn a_weight_used_twice_gets_both_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&randn(&[7, 4], 1, &dev)?)?;
        let ids = Tensor::new(&[3u32, 0, 3, 6], &dev)?;
        let probe = randn(&[4, 7], 2, &dev)?;
        let loss = |head: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Tensor> {
            let h = w.as_tensor().index_select(&ids, 0)?;
            (head(&h)? * &probe)?.sum_all()
        };
        let ours = loss(&|h| crate::ops::linear_matmul(h, w.as_tensor()))?.backward()?;
        let reference = loss(&|h| h.matmul(&w.as_tensor().t()?))?.backward()?;
        let got = weight_grad(&ours, w.as_tensor())?.expect("a gradient");
        assert_close(&got, reference.get(w.as_tensor()).expect("candle's"), 1e-6)?;
        assert!(take(w.as_tensor()).is_none(), "taken once");
        Ok(())
    }

    /// In-place accumulation gives candle's sums, bf16 rounded as candle rounds, at every vector
    /// width the CPU has and across the pool too (whose threads run the widest); a tensor that is
    /// part of a graph is never changed in place.
    #[test]
    fn accumulating_in_place_adds_like_candle() -> Result<()> {
        let dev = Device::Cpu;
        let mut checks = Vec::new();
        crate::ops::simd::with_each_level(|level| {
            for threads in [1, 3] {
                crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(threads)));
                for dtype in [DType::F32, DType::BF16] {
                    checks.push((level, threads, dtype, same_sums(dtype)));
                }
                crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
            }
        });
        for (level, threads, dtype, same) in checks {
            assert!(same?, "{level:?}, {threads} threads, {dtype:?}");
        }
        let v = Var::from_tensor(&randn(&[4], 3, &dev)?)?;
        let tracked = (v.as_tensor() * 2.0)?;
        let before = tracked.to_vec1::<f32>()?;
        let sum = accumulate(tracked.clone(), &randn(&[4], 4, &dev)?)?;
        assert_eq!(tracked.to_vec1::<f32>()?, before, "a graph tensor stays as it was");
        assert!(sum.to_vec1::<f32>()? != before);
        Ok(())
    }

    /// Whether accumulating in place gives candle's `a + b` bit for bit.
    fn same_sums(dtype: DType) -> Result<bool> {
        let dev = Device::Cpu;
        let a = randn(&[70_001], 1, &dev)?.to_dtype(dtype)?;
        let b = randn(&[70_001], 2, &dev)?.to_dtype(dtype)?;
        let want = (&a + &b)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let got = accumulate(a.copy()?, &b)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()))
    }
}
