//! Cross-entropy for next-token prediction. The caller keeps only the positions that have a
//! target (labels of -100 are dropped before the head), so no logits are computed for ignored
//! tokens. With a frozen output head the fused form never materialises the `[tokens, vocab]`
//! logits: it walks the rows in chunks, forward and backward.

use super::cpu::{Mat, sgemm, slice, threads, with_f32};
use super::custom_backward::with_backward;
use super::vexp::exp_shifted;
use super::{frozen_matmul, use_cpu_kernels};
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::Arc;

/// The label value that marks a position without a target (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Sum over rows of `-log softmax(logits[r])[targets[r]]`, as a scalar f32.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    check_targets(n, v, targets)?;
    if use_cpu_kernels(logits) {
        return logits.contiguous()?.apply_op1(CrossEntropy { targets: targets.to_vec() });
    }
    cross_entropy_off_cpu(logits, targets)
}

/// Off the CPU kernels: each row's `logsumexp − logit[target]` in f32, with the backward written
/// out, `d logits = g · (softmax(logits) − onehot(target))`, so no `[rows, vocab]` f32 tensor
/// outlives the forward (a composed log-softmax kept five, each 2 GB for 4096 tokens of a
/// 128k vocabulary).
fn cross_entropy_off_cpu(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if n == 0 {
        return logits.sum_all()?.to_dtype(DType::F32)? * 0.0;
    }
    let idx = Tensor::from_slice(targets, (n, 1), logits.device())?;
    let x = logits.detach().to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?;
    let lse = (x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
    let loss = (lse - x.gather(&idx, 1)?)?.sum_all()?;
    with_backward(
        &[logits],
        loss,
        Arc::new(move |args, g| {
            let logits = args[0];
            let p = candle_nn::ops::softmax_last_dim(&logits.detach().to_dtype(DType::F32)?)?;
            let classes = Tensor::arange(0u32, v as u32, p.device())?.unsqueeze(0)?;
            let onehot = idx.broadcast_eq(&classes)?.to_dtype(DType::F32)?;
            let g = g.detach().to_dtype(DType::F32)?.reshape((1, 1))?;
            Ok(vec![Some((p - onehot)?.broadcast_mul(&g)?.to_dtype(logits.dtype())?)])
        }),
    )
}

/// [`masked_cross_entropy_sum`] of `softcap(h · wᵀ)` for a frozen head weight `w` (`[vocab, hidden]`),
/// fused on the CPU so the logits exist only one chunk of rows at a time.
pub fn linear_cross_entropy_sum(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    softcap: Option<f64>,
) -> Result<Tensor> {
    let (n, hidden) = h.dims2()?;
    let (v, w_hidden) = w.dims2()?;
    if hidden != w_hidden {
        bail!("output head: hidden size {hidden} vs weight {w_hidden}");
    }
    check_targets(n, v, targets)?;
    if use_cpu_kernels(h) && w.dtype() == DType::F32 {
        let op = LinearCrossEntropy { w: w.contiguous()?, targets: targets.to_vec(), softcap };
        return h.contiguous()?.apply_op1(op);
    }
    let mut logits = frozen_matmul(h, w)?;
    if let Some(cap) = softcap {
        logits = ((logits / cap)?.tanh()? * cap)?;
    }
    cross_entropy_sum(&logits, targets)
}

/// Mean-reduced loss from per-token sums: the caller divides by the number of targets.
pub fn masked_cross_entropy_sum(logits: &Tensor, labels: &[i64]) -> Result<(Tensor, usize)> {
    let (n, _) = logits.dims2()?;
    if labels.len() != n {
        bail!("cross entropy: {} labels for {n} rows", labels.len());
    }
    let rows: Vec<u32> = (0..n as u32).filter(|&r| labels[r as usize] != IGNORE_INDEX).collect();
    let targets: Vec<u32> = rows.iter().map(|&r| labels[r as usize] as u32).collect();
    let idx = Tensor::from_slice(&rows, rows.len(), logits.device())?;
    Ok((cross_entropy_sum(&logits.index_select(&idx, 0)?, &targets)?, rows.len()))
}

fn check_targets(n: usize, v: usize, targets: &[u32]) -> Result<()> {
    if targets.len() != n {
        bail!("cross entropy: {} targets for {n} rows", targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("cross entropy: target id {bad} is outside the vocabulary of {v}");
    }
    Ok(())
}

/// In place: row ← softmax(row); returns `-log p[target]`.
fn softmax_row(row: &mut [f32], target: usize) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    exp_shifted(row, max);
    let sum: f64 = row.iter().map(|&x| x as f64).sum();
    let inv = (1.0 / sum) as f32;
    let loss = -((row[target] as f64 / sum).ln());
    row.iter_mut().for_each(|x| *x *= inv);
    loss
}

struct CrossEntropy {
    targets: Vec<u32>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let v = l.dims()[1];
        let total: f64 =
            x.chunks(v).zip(&self.targets).map(|(row, &t)| softmax_row(&mut row.to_vec(), t as usize)).sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let v = arg.dim(1)?;
        let dx = with_f32(arg, |x| {
            let mut out = x.to_vec();
            for (row, &t) in out.chunks_mut(v).zip(&self.targets) {
                softmax_row(row, t as usize);
                row[t as usize] -= 1.0;
                row.iter_mut().for_each(|x| *x *= g);
            }
            Ok(out)
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

struct LinearCrossEntropy {
    w: Tensor,
    targets: Vec<u32>,
    softcap: Option<f64>,
}

const CHUNK_ROWS: usize = 64;

impl LinearCrossEntropy {
    /// For rows `r0..r0+rows` of `h`: the probabilities (after soft-cap) into `logits`, returns
    /// the loss sum; `raw` keeps the pre-cap logits when soft-capping is on.
    fn chunk(
        &self,
        h: &[f32],
        w: &[f32],
        hidden: usize,
        v: usize,
        r0: usize,
        rows: usize,
        logits: &mut [f32],
        raw: &mut Vec<f32>,
    ) -> f64 {
        sgemm(
            rows,
            v,
            hidden,
            Mat::rows(&h[r0 * hidden..], hidden),
            Mat::rows_t(w, hidden),
            logits,
            false,
            1.0,
        );
        if let Some(cap) = self.softcap {
            raw.clear();
            raw.extend_from_slice(&logits[..rows * v]);
            let cap = cap as f32;
            logits[..rows * v].iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
        logits[..rows * v]
            .chunks_mut(v)
            .zip(&self.targets[r0..r0 + rows])
            .map(|(row, &t)| softmax_row(row, t as usize))
            .sum()
    }

    fn chunks(&self, n: usize) -> Vec<(usize, usize)> {
        (0..n).step_by(CHUNK_ROWS).map(|r0| (r0, CHUNK_ROWS.min(n - r0))).collect()
    }
}

impl CustomOp1 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = slice(s, l)?;
        let (n, hidden) = (l.dims()[0], l.dims()[1]);
        let v = self.w.dim(0)?;
        let total = with_f32(&self.w, |w| {
            let one = |(r0, rows): (usize, usize)| {
                let mut logits = vec![0f32; rows * v];
                self.chunk(h, w, hidden, v, r0, rows, &mut logits, &mut Vec::new())
            };
            Ok(if threads() > 1 {
                self.chunks(n).into_par_iter().map(one).sum::<f64>()
            } else {
                self.chunks(n).into_iter().map(one).sum::<f64>()
            })
        })?;
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (n, hidden) = arg.dims2()?;
        let v = self.w.dim(0)?;
        let parts: Vec<Vec<f32>> = with_f32(arg, |h| {
            with_f32(&self.w, |w| {
                let one = |(r0, rows): (usize, usize)| {
                    let mut logits = vec![0f32; rows * v];
                    let mut raw = Vec::new();
                    self.chunk(h, w, hidden, v, r0, rows, &mut logits, &mut raw);
                    for (i, row) in logits.chunks_mut(v).enumerate() {
                        row[self.targets[r0 + i] as usize] -= 1.0;
                    }
                    if let Some(cap) = self.softcap {
                        let cap = cap as f32;
                        for (x, r) in logits.iter_mut().zip(&raw) {
                            let th = (r / cap).tanh();
                            *x *= 1.0 - th * th;
                        }
                    }
                    let mut dh = vec![0f32; rows * hidden];
                    sgemm(rows, hidden, v, Mat::rows(&logits, v), Mat::rows(w, hidden), &mut dh, false, g);
                    dh
                };
                Ok(if threads() > 1 {
                    self.chunks(n).into_par_iter().map(one).collect()
                } else {
                    self.chunks(n).into_iter().map(one).collect()
                })
            })
        })?;
        let dh: Vec<f32> = parts.into_iter().flatten().collect();
        Ok(Some(Tensor::from_vec(dh, (n, hidden), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, check_gradient, randn};
    use candle_core::{Device, Var};

    fn reference(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
        let l = logits.to_dtype(DType::F64)?;
        let logp = candle_nn::ops::log_softmax(&l, D::Minus1)?;
        let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
        logp.gather(&idx, 1)?.sum_all()? * -1.0
    }

    #[test]
    fn cross_entropy_matches_log_softmax() -> Result<()> {
        let logits = (randn(&[7, 11], 1, &Device::Cpu)? * 3.0)?;
        let targets = [0u32, 3, 10, 5, 5, 1, 2];
        assert_close(&cross_entropy_sum(&logits, &targets)?, &reference(&logits, &targets)?, 1e-5)?;
        check_gradient(|x| cross_entropy_sum(x, &targets), &logits, 1, 1e-2, 1e-3)?;
        Ok(())
    }

    /// The GPU path, run on the CPU: the loss and its gradient equal the f64 log-softmax's, and
    /// no targets give a zero loss that still joins the graph.
    #[test]
    fn off_cpu_cross_entropy_matches_log_softmax() -> Result<()> {
        let logits = Var::from_tensor(&(randn(&[7, 11], 1, &Device::Cpu)? * 3.0)?)?;
        let targets = [0u32, 3, 10, 5, 5, 1, 2];
        let ours = cross_entropy_off_cpu(logits.as_tensor(), &targets)?;
        let expected = reference(logits.as_tensor(), &targets)?;
        assert_close(&ours, &expected, 1e-5)?;
        let g1 = (expected * 0.5)?.backward()?;
        let g2 = (ours * 0.5)?.backward()?;
        let t = logits.as_tensor();
        assert_close(g2.get(t).expect("ours"), g1.get(t).expect("reference"), 1e-6)?;
        let none = cross_entropy_off_cpu(&t.narrow(0, 0, 0)?, &[])?;
        assert_eq!(none.to_scalar::<f32>()?, 0.0);
        assert!(none.track_op());
        Ok(())
    }

    #[test]
    fn fused_head_matches_unfused_with_and_without_softcap() -> Result<()> {
        let dev = Device::Cpu;
        let h = randn(&[150, 8], 1, &dev)?; // more rows than one chunk
        let w = randn(&[13, 8], 2, &dev)?;
        let targets: Vec<u32> = (0..150).map(|i| (i * 7 % 13) as u32).collect();
        for cap in [None, Some(2.5)] {
            let hv = Var::from_tensor(&h)?;
            let fused = linear_cross_entropy_sum(hv.as_tensor(), &w, &targets, cap)?;
            let g1 = fused.backward()?;
            let hd = Var::from_tensor(&h.to_dtype(DType::F64)?)?;
            let mut logits = hd.as_tensor().matmul(&w.to_dtype(DType::F64)?.t()?)?;
            if let Some(c) = cap {
                logits = ((logits / c)?.tanh()? * c)?;
            }
            let expected = reference(&logits, &targets)?;
            let g2 = expected.backward()?;
            assert_close(&fused, &expected, 1e-5)?;
            assert_close(g1.get(hv.as_tensor()).unwrap(), g2.get(hd.as_tensor()).unwrap(), 1e-5)?;
            assert!(g1.get(&w).is_none());
        }
        // Few rows: the f32 sum of many rows drowns finite differences in rounding noise.
        let few = h.narrow(0, 0, 10)?;
        check_gradient(|h| linear_cross_entropy_sum(h, &w, &targets[..10], Some(2.5)), &few, 3, 1e-2, 1e-3)?;
        Ok(())
    }

    #[test]
    fn masked_rows_are_skipped() -> Result<()> {
        let logits = randn(&[4, 5], 1, &Device::Cpu)?;
        let (sum, count) = masked_cross_entropy_sum(&logits, &[IGNORE_INDEX, 2, IGNORE_INDEX, 4])?;
        assert_eq!(count, 2);
        let expected = reference(&logits.index_select(&Tensor::new(&[1u32, 3], &Device::Cpu)?, 0)?, &[2, 4])?;
        assert_close(&sum, &expected, 1e-6)
    }
}
