//! Evaluation: the token-weighted mean next-token cross-entropy of a set of examples, and its
//! perplexity.

use crate::data::{Batch, Example};
use crate::error::Result;
use crate::layers::ForwardCtx;
use crate::model::{CausalLm, next_token_targets};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: u64,
}

/// Mean loss over every predicted token of `examples`, in batches of `batch_size`.
pub fn evaluate(model: &CausalLm, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<EvalResult> {
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
