//! Training ops off the CPU kernels (GPUs, and CPU dtypes other than f32) that keep nothing for
//! backward but their inputs.
//!
//! Off the CPU the ops here are compositions of candle ops, and candle's autograd keeps every
//! intermediate of a composition alive until backward reaches it: on a GPU that was most of a
//! step's memory (per layer ~10 `[batch, heads, T, T]` attention tensors, and per adapted
//! projection an f32 copy of its input and three `[rows, out]` temporaries). Here the composition
//! runs on detached inputs, so its intermediates are freed as soon as the output exists, and the
//! output joins the graph through a custom op whose backward either recomputes the composition
//! with autograd ([`recomputed`]) or is written out by hand ([`with_backward`]).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, MetalStorage, Result, Shape, Storage,
    Tensor, Var, bail,
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

/// `f(inputs)` whose intermediates are not kept: backward runs `f` again on tracked copies of the
/// inputs and differentiates that. For compositions whose forward is cheap next to what keeping
/// its intermediates costs (norms, activations, rotary embeddings, attention's softmax).
pub(crate) fn recomputed<F>(inputs: &[&Tensor], f: F) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
{
    let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let out = f(&detached)?;
    let f = Arc::new(f);
    with_backward(inputs, out, Arc::new(move |args, grad| grads_by_recompute(args, grad, f.as_ref())))
}

fn grads_by_recompute(
    args: &[&Tensor],
    grad: &Tensor,
    f: &(dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync),
) -> Result<Vec<Option<Tensor>>> {
    let vars = args
        .iter()
        .map(|t| if t.track_op() { Var::from_tensor(&t.detach()).map(Some) } else { Ok(None) })
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<Tensor> = args
        .iter()
        .zip(&vars)
        .map(|(t, v)| v.as_ref().map(|v| v.as_tensor().clone()).unwrap_or(t.detach()))
        .collect();
    let out = f(&inputs)?;
    // d(sum(out ⊙ grad))/d(out) is exactly `grad`.
    let grads = (out * grad.detach())?.sum_all()?.backward()?;
    Ok(vars.iter().map(|v| v.as_ref().and_then(|v| grads.get(v.as_tensor()).cloned())).collect())
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
    use candle_core::{D, DType, Device};

    /// A composition with several intermediates and a broadcast input.
    fn f(t: &[Tensor]) -> Result<Tensor> {
        let s = (t[0].exp()? * &t[1])?.sum_keepdim(D::Minus1)?;
        t[0].tanh()?.broadcast_mul(&s)?.broadcast_add(&t[2])
    }

    #[test]
    fn recomputed_matches_the_plain_composition_in_value_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (a, b, c) = (randn(&[3, 5], 1, &dev)?, randn(&[3, 5], 2, &dev)?, randn(&[5], 3, &dev)?);
        let probe = randn(&[3, 5], 4, &dev)?;
        let (va, vb) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        let plain = f(&[va.as_tensor().clone(), vb.as_tensor().clone(), c.clone()])?;
        let g1 = (&plain * &probe)?.sum_all()?.backward()?;
        let ours = recomputed(&[va.as_tensor(), vb.as_tensor(), &c], f)?;
        assert!(ours.track_op(), "the output joins the graph");
        assert_close(&ours, &plain, 0.0)?;
        let g2 = (&ours * &probe)?.sum_all()?.backward()?;
        for v in [&va, &vb] {
            let (x, y) =
                (g1.get(v.as_tensor()).expect("plain grad"), g2.get(v.as_tensor()).expect("our grad"));
            assert_close(y, x, 1e-6)?;
        }
        // The input that tracks nothing gets no gradient.
        assert!(g2.get(&c).is_none());
        Ok(())
    }

    #[test]
    fn without_tracked_inputs_it_is_the_composition_itself() -> Result<()> {
        let dev = Device::Cpu;
        let t = [randn(&[2, 4], 1, &dev)?, randn(&[2, 4], 2, &dev)?, randn(&[4], 3, &dev)?];
        let out = recomputed(&[&t[0], &t[1], &t[2]], f)?;
        assert!(!out.track_op());
        assert_close(&out, &f(&t)?, 0.0)
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
