//! Forward and backward of one micro-batch, adding its gradients into an accumulator. With
//! gradient checkpointing only each block's input is kept: backward re-runs one block at a time
//! on a detached copy of its input and back-propagates `sum(y ⊙ dL/dy)` through it.

use crate::error::Result;
use crate::layers::ForwardCtx;
use crate::model::{CausalLm, next_token_targets};
use candle_core::{Tensor, Var, backprop::GradStore};

/// Gradients summed over the micro-batches of one optimizer step, aligned with the parameters.
pub struct GradAccumulator {
    pub grads: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(n: usize) -> Self {
        Self { grads: vec![None; n] }
    }

    fn collect(&mut self, params: &[(String, Var)], store: &GradStore) -> Result<()> {
        for (slot, (_, var)) in self.grads.iter_mut().zip(params) {
            if let Some(g) = store.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// The summed gradients; parameters that received none get zeros.
    pub fn finish(self, params: &[(String, Var)]) -> Result<Vec<Tensor>> {
        self.grads
            .into_iter()
            .zip(params)
            .map(|(g, (_, v))| match g {
                Some(g) => Ok(g),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect()
    }
}

/// One micro-batch of right-padded token ids and aligned labels (`[batch * seq]`).
pub struct MicroBatch<'a> {
    pub ids: &'a [u32],
    pub labels: &'a [i64],
    pub batch: usize,
    pub seq: usize,
}

/// Runs forward and backward of `loss_sum * scale`, adds the gradients into `acc`, and returns
/// the (detached) summed loss of the micro-batch and the number of predicted tokens.
pub fn accumulate(
    model: &CausalLm,
    params: &[(String, Var)],
    mb: &MicroBatch,
    scale: f64,
    ctx: &ForwardCtx,
    checkpointing: bool,
    acc: &mut GradAccumulator,
) -> Result<(Tensor, usize)> {
    let (rows, targets) = next_token_targets(mb.labels, mb.batch, mb.seq);
    if rows.is_empty() {
        return Ok((Tensor::new(0f32, &model.device)?, 0));
    }
    let x0 = model.embed(mb.ids, mb.batch, mb.seq)?;
    if !checkpointing {
        let mut x = x0;
        for i in 0..model.num_blocks() {
            x = model.block(i, &x, None, ctx)?;
        }
        let sum = model.head_loss_sum(&x, &rows, &targets, ctx)?;
        let store = (&sum * scale)?.backward()?;
        acc.collect(params, &store)?;
        return Ok((sum.detach(), rows.len()));
    }
    // Forward, keeping only block inputs (the graph of each block is dropped by the detach).
    let mut inputs = vec![x0.detach()];
    for i in 0..model.num_blocks() {
        let y = model.block(i, &inputs[i], None, ctx)?;
        inputs.push(y.detach());
    }
    let last = Var::from_tensor(&inputs[model.num_blocks()])?;
    let sum = model.head_loss_sum(last.as_tensor(), &rows, &targets, ctx)?;
    let store = (&sum * scale)?.backward()?;
    acc.collect(params, &store)?;
    let mut grad = store.get(last.as_tensor()).cloned();
    drop(store);
    for i in (0..model.num_blocks()).rev() {
        let Some(g) = grad.take() else { break };
        let input = Var::from_tensor(&inputs[i])?;
        let y = model.block(i, input.as_tensor(), None, ctx)?;
        let store = (y * &g)?.sum_all()?.backward()?;
        acc.collect(params, &store)?;
        grad = store.get(input.as_tensor()).cloned();
    }
    if let Some(g) = grad {
        if x0.track_op() {
            let store = (x0 * g)?.sum_all()?.backward()?;
            acc.collect(params, &store)?;
        }
    }
    Ok((sum.detach(), rows.len()))
}
