//! Weight gradients handed over beside candle's `GradStore`. candle adds every gradient an op
//! returns onto a fresh zero tensor of the input's shape: for the weights of full fine-tuning
//! that is one more pass over every weight per step, and with bf16 weights it runs through
//! candle's bf16 add, which took a third of a step. The CPU products of trainable weights
//! ([`super::linear_matmul`]) deposit dL/dW here under the weight's id instead and return no
//! gradient for it; [`weight_grad`] gives a parameter's whole gradient from both places.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};
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
        Some(earlier) => (earlier + g)?,
        None => g,
    };
    map.insert(w.id(), sum);
    Ok(())
}

/// Removes and returns the pending gradient of weight `w`.
pub fn take(w: &Tensor) -> Option<Tensor> {
    pending().remove(&w.id())
}

/// The gradient of parameter `w` after a backward pass: what reached it through candle's store
/// plus what the CPU products deposited (a tied embedding gets both), taking the deposit.
pub fn weight_grad(store: &GradStore, w: &Tensor) -> Result<Option<Tensor>> {
    Ok(match (store.get(w), take(w)) {
        (Some(a), Some(b)) => Some((a + b)?),
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
}
