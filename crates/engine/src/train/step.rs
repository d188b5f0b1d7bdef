//! Forward and backward of one micro-batch, adding its gradients into an accumulator. With
//! gradient checkpointing only each block's input is kept: backward re-runs one block at a time
//! on a detached copy of its input and back-propagates `sum(y ⊙ dL/dy)` through it.

use crate::data::{Batch, Example};
use crate::error::{EngineError, Result};
use crate::layers::ForwardCtx;
use crate::model::{AnyModel, CausalLm, Seq2SeqBatch, Seq2SeqLm, next_token_targets};
use crate::ops::weight_grads;
use candle_core::{Tensor, Var, backprop::GradStore};

/// Gradients summed over the micro-batches of one optimizer step, aligned with the parameters.
pub struct GradAccumulator {
    pub grads: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    /// An empty accumulator for `params`, dropping any weight gradient a failed pass left behind.
    pub fn new(params: &[(String, Var)]) -> Self {
        for (_, v) in params {
            weight_grads::take(v.as_tensor());
        }
        Self { grads: vec![None; params.len()] }
    }

    fn collect(&mut self, params: &[(String, Var)], store: &GradStore) -> Result<()> {
        for (slot, (_, var)) in self.grads.iter_mut().zip(params) {
            if let Some(g) = weight_grads::weight_grad(store, var.as_tensor())? {
                *slot = Some(match slot.take() {
                    Some(acc) => weight_grads::accumulate(acc, &g)?,
                    None => g,
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
    if let Some(g) = grad
        && x0.track_op()
    {
        let store = (x0 * g)?.sum_all()?.backward()?;
        acc.collect(params, &store)?;
    }
    Ok((sum.detach(), rows.len()))
}

/// One micro-batch in the form its model takes.
pub enum StepBatch {
    Causal(Batch),
    Seq2Seq(Seq2SeqBatch),
}

impl StepBatch {
    /// Collates examples for `model`: aligned ids and labels for a causal LM; sources and
    /// targets padded separately for an encoder-decoder.
    pub fn collate(model: &AnyModel, examples: &[&Example], pad: u32) -> Self {
        match model {
            AnyModel::Causal(_) => Self::Causal(Batch::collate(examples, pad)),
            AnyModel::Seq2Seq(_) => {
                let pairs: Vec<(&[u32], &[i64])> =
                    examples.iter().map(|e| (&e.input_ids[..], &e.labels[..])).collect();
                Self::Seq2Seq(Seq2SeqBatch::collate(&pairs, pad))
            }
        }
    }

    /// Tokens the loss covers.
    pub fn targets(&self) -> usize {
        match self {
            Self::Causal(b) => next_token_targets(&b.labels, b.batch, b.seq_len).0.len(),
            Self::Seq2Seq(b) => b.targets(),
        }
    }

    /// Real (unpadded) input tokens.
    pub fn tokens(&self) -> u64 {
        match self {
            Self::Causal(b) => b.lengths.iter().sum::<usize>() as u64,
            Self::Seq2Seq(b) => (b.input_lens.iter().sum::<usize>() + b.targets()) as u64,
        }
    }
}

/// [`accumulate`] for either kind of model. Encoder-decoders train without checkpointing.
pub fn accumulate_any(
    model: &AnyModel,
    params: &[(String, Var)],
    batch: &StepBatch,
    scale: f64,
    ctx: &ForwardCtx,
    checkpointing: bool,
    acc: &mut GradAccumulator,
) -> Result<(Tensor, usize)> {
    match (model, batch) {
        (AnyModel::Causal(m), StepBatch::Causal(b)) => {
            let mb = MicroBatch { ids: &b.input_ids, labels: &b.labels, batch: b.batch, seq: b.seq_len };
            accumulate(m, params, &mb, scale, ctx, checkpointing, acc)
        }
        (AnyModel::Seq2Seq(m), StepBatch::Seq2Seq(b)) => accumulate_seq2seq(m, params, b, scale, ctx, acc),
        _ => Err(EngineError::Other("micro-batch was collated for another kind of model".into())),
    }
}

/// Forward and backward of an encoder-decoder micro-batch's `loss_sum * scale`.
pub fn accumulate_seq2seq(
    model: &Seq2SeqLm,
    params: &[(String, Var)],
    batch: &Seq2SeqBatch,
    scale: f64,
    ctx: &ForwardCtx,
    acc: &mut GradAccumulator,
) -> Result<(Tensor, usize)> {
    if batch.targets() == 0 {
        return Ok((Tensor::new(0f32, &model.device)?, 0));
    }
    let (sum, n) = model.loss_sum(batch, ctx)?;
    let store = (&sum * scale)?.backward()?;
    acc.collect(params, &store)?;
    Ok((sum.detach(), n))
}
