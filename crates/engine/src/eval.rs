//! Evaluation: the token-weighted mean next-token cross-entropy of a set of examples (target-token
//! cross-entropy for encoder-decoders), and its perplexity.

use crate::data::{Batch, Example};
use crate::error::Result;
use crate::layers::ForwardCtx;
use crate::model::{AnyModel, CausalLm, Seq2SeqBatch, Seq2SeqLm, next_token_targets};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: u64,
}

/// Mean loss over every predicted token of `examples`, in batches of `batch_size`.
pub fn evaluate(
    model: &CausalLm,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
) -> Result<EvalResult> {
    let ctx = ForwardCtx::eval();
    let mut total = 0f64;
    let mut tokens = 0u64;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let b = Batch::collate(&refs, pad_id);
        let (rows, targets) = next_token_targets(&b.labels, b.batch, b.seq_len);
        if rows.is_empty() {
            continue;
        }
        let mut x = model.embed(&b.input_ids, b.batch, b.seq_len)?;
        for i in 0..model.num_blocks() {
            x = model.block(i, &x.detach(), None, &ctx)?;
        }
        let sum = model.head_loss_sum(&x.detach(), &rows, &targets, &ctx)?;
        total += sum.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        tokens += rows.len() as u64;
    }
    let loss = if tokens > 0 { total / tokens as f64 } else { f64::NAN };
    Ok(EvalResult { loss, perplexity: loss.exp(), tokens })
}

/// Mean loss over every labelled target token of seq2seq `examples` (source in `input_ids`,
/// target in `labels`).
pub fn evaluate_seq2seq(
    model: &Seq2SeqLm,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
) -> Result<EvalResult> {
    let ctx = ForwardCtx::eval();
    let mut total = 0f64;
    let mut tokens = 0u64;
    for chunk in examples.chunks(batch_size.max(1)) {
        let pairs: Vec<(&[u32], &[i64])> = chunk.iter().map(|e| (&e.input_ids[..], &e.labels[..])).collect();
        let b = Seq2SeqBatch::collate(&pairs, pad_id);
        if b.targets() == 0 {
            continue;
        }
        let (sum, n) = model.loss_sum(&b, &ctx)?;
        total += sum.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        tokens += n as u64;
    }
    let loss = if tokens > 0 { total / tokens as f64 } else { f64::NAN };
    Ok(EvalResult { loss, perplexity: loss.exp(), tokens })
}

/// [`evaluate`] or [`evaluate_seq2seq`], whichever the model is.
pub fn evaluate_any(
    model: &AnyModel,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
) -> Result<EvalResult> {
    match model {
        AnyModel::Causal(m) => evaluate(m, examples, batch_size, pad_id),
        AnyModel::Seq2Seq(m) => evaluate_seq2seq(m, examples, batch_size, pad_id),
    }
}
