//! Training ops off the CPU kernels (GPUs, and CPU dtypes other than f32) that keep nothing for
//! backward but their inputs.
//!
//! Composed from candle ops, an op's intermediates all stay alive until backward reaches them
//! (candle's autograd keeps every node's inputs): on a GPU that was most of a step's memory (per
//! layer ~10 `[batch, heads, T, T]` attention tensors, and per adapted projection an f32 copy of
//! its input and three `[rows, out]` temporaries), and differentiating through the composition
//! was most of its time. Instead each op runs its forward on detached inputs (candle's fused
//! kernels where they exist; the intermediates are freed as soon as the output exists) and joins
//! the graph through [`with_backward`]: one custom op whose backward is written out.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, MetalStorage, Result, Shape, Storage,
    Tensor, bail,
};
use std::sync::{Arc, Mutex};

/// Gradients of the inputs (`None` for an input that tracks nothing) from the inputs and the
/// gradient of the output.
pub(crate) type Backward = Arc<dyn Fn(&[&Tensor], &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// `out`, computed from `inputs` on detached tensors, joined to the graph so that backward calls
/// `backward` with the inputs and the output's gradient. Costs one copy of `out` when an input
/// tracks a gradient; returns `out` itself when none does.
pub(crate) fn with_backward(inputs: &[&Tensor], out: Tensor, backward: Backward) -> Result<Tensor> {
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(out);
    }
    let op = Precomputed { out: Mutex::new(Some(out)), backward };
    match inputs {
        [a] => a.apply_op1(op),
        [a, b] => a.apply_op2(b, op),
        [a, b, c] => a.apply_op3(b, c, op),
        _ => bail!("precomputed op: {} inputs (1 to 3 are supported)", inputs.len()),
    }
}

struct Precomputed {
    /// Taken by the forward call (candle calls it once), so the op does not keep it alive.
    out: Mutex<Option<Tensor>>,
    backward: Backward,
}

impl Precomputed {
    /// A copy of the precomputed output in the storage type of the backend candle asked for.
    fn take<S>(&self, pick: impl Fn(&Storage) -> Option<&S>) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let out =
            self.out.lock().map_err(|_| candle_core::Error::Msg("precomputed op: poisoned".into()))?.take();
        let Some(out) = out else { bail!("precomputed op: forward ran twice") };
        let (storage, layout) = out.storage_and_layout();
        let Some(src) = pick(&storage) else {
            bail!("precomputed op: output on another device than its inputs")
        };
        // SAFETY: every element is written by the copy below.
        let mut dst = unsafe { src.device().alloc_uninit(layout.shape(), src.dtype())? };
        src.copy_strided_src(&mut dst, 0, layout)?;
        Ok((dst, layout.shape().clone()))
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        self.take(|s| if let Storage::Cpu(s) = s { Some(s) } else { None })
    }

    fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        self.take(|s| if let Storage::Cuda(s) = s { Some(s) } else { None })
    }

    fn metal(&self) -> Result<(MetalStorage, Shape)> {
        self.take(|s| if let Storage::Metal(s) = s { Some(s) } else { None })
    }

    fn grads<const N: usize>(&self, args: [&Tensor; N], grad: &Tensor) -> Result<[Option<Tensor>; N]> {
        let g = (self.backward)(&args, grad)?;
        let n = g.len();
        g.try_into()
            .map_err(|_| candle_core::Error::Msg(format!("precomputed op: {n} gradients for {N} inputs")))
    }
}

impl CustomOp1 for Precomputed {
    fn name(&self) -> &'static str {
        "precomputed"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.metal()
    }
    fn bwd(&self, a: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [ga] = self.grads([a], grad)?;
        Ok(ga)
    }
}

impl CustomOp2 for Precomputed {
    fn name(&self) -> &'static str {
        "precomputed"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.metal()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = self.grads([a, b], grad)?;
        Ok((ga, gb))
    }
}

impl CustomOp3 for Precomputed {
    fn name(&self) -> &'static str {
        "precomputed"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.metal()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb, gc] = self.grads([a, b, c], grad)?;
        Ok((ga, gb, gc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, randn};
    use candle_core::{DType, Device, Var};

    #[test]
    fn without_tracked_inputs_the_output_is_returned_as_it_is() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[4], 1, &dev)?;
        let out = (&x * 3.0)?;
        let y = with_backward(&[&x], out.clone(), Arc::new(|_, _| bail!("no backward expected")))?;
        assert!(!y.track_op());
        assert_close(&y, &out, 0.0)
    }

    #[test]
    fn three_inputs_get_their_gradients_and_an_untracked_one_none() -> Result<()> {
        let dev = Device::Cpu;
        let (a, b) = (Var::from_tensor(&randn(&[3], 1, &dev)?)?, Var::from_tensor(&randn(&[3], 2, &dev)?)?);
        let c = randn(&[3], 3, &dev)?;
        // f = a·b + c, elementwise
        let out = ((a.as_tensor() * b.as_tensor())? + &c)?.detach();
        let y = with_backward(
            &[a.as_tensor(), b.as_tensor(), &c],
            out,
            Arc::new(|args, g| {
                let da = (g * args[1].detach())?;
                let db = (g * args[0].detach())?;
                Ok(vec![Some(da), Some(db), args[2].track_op().then(|| g.clone())])
            }),
        )?;
        assert!(y.track_op());
        let grads = (y.sum_all()? * 2.0)?.backward()?;
        assert_close(grads.get(a.as_tensor()).expect("da"), &(b.as_tensor() * 2.0)?, 1e-6)?;
        assert_close(grads.get(b.as_tensor()).expect("db"), &(a.as_tensor() * 2.0)?, 1e-6)?;
        assert!(grads.get(&c).is_none());
        Ok(())
    }

    #[test]
    fn a_hand_written_backward_gets_the_inputs_and_the_output_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&randn(&[4], 1, &dev)?)?;
        let out = (x.as_tensor().detach() * 3.0)?;
        let y = with_backward(&[x.as_tensor()], out, Arc::new(|_, g| Ok(vec![Some((g * 3.0)?)])))?;
        let g = (y.sqr()?.sum_all()?).backward()?;
        // d/dx sum((3x)^2) = 18 x
        assert_close(g.get(x.as_tensor()).expect("grad"), &(x.as_tensor() * 18.0)?, 1e-6)?;
        assert_eq!(y.dtype(), DType::F32);
        Ok(())
    }
}
