//! Training examples and how they become batches: right-padded collation and a per-epoch order
//! seeded by (seed, epoch), so a run resumed at (epoch, position) sees the same batches as an
//! uninterrupted one.

use serde::Serialize;

use crate::ops::IGNORE_INDEX;
use crate::rng::Rng;

/// One tokenized example. `labels` is aligned with `input_ids` (not shifted; the model shifts):
/// `labels[i]` is `input_ids[i]` when the model learns that token, `-100` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Tokens the loss covers: positions `1..len` whose label is not -100 (position 0 has no
    /// preceding token to predict it from).
    pub fn learned_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Keeps the first `max_len` tokens.
    pub fn truncate(&mut self, max_len: usize) {
        self.input_ids.truncate(max_len);
        self.labels.truncate(max_len);
    }
}

/// A right-padded batch, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub batch: usize,
    pub seq_len: usize,
    /// Unpadded length of each row.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Pads every example on the right to the longest one: `pad_id` for ids, -100 for labels.
    pub fn collate(examples: &[&Example], pad_id: u32) -> Batch {
        let seq_len = examples.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(examples.len() * seq_len);
        let mut labels = Vec::with_capacity(examples.len() * seq_len);
        for e in examples {
            input_ids.extend_from_slice(&e.input_ids);
            input_ids.resize(input_ids.len() + seq_len - e.len(), pad_id);
            labels.extend_from_slice(&e.labels);
            labels.resize(labels.len() + seq_len - e.labels.len(), IGNORE_INDEX);
        }
        Batch {
            input_ids,
            labels,
            batch: examples.len(),
            seq_len,
            lengths: examples.iter().map(|e| e.len()).collect(),
        }
    }

    /// Tokens the loss covers in this batch (see [`Example::learned_tokens`]).
    pub fn learned_tokens(&self) -> usize {
        if self.seq_len == 0 {
            return 0;
        }
        self.labels
            .chunks(self.seq_len)
            .map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }

    /// Real (unpadded) tokens in this batch.
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// The order of `n` examples in `epoch`: shuffled with a stream keyed by (seed, "shuffle", epoch),
/// or `0..n` when `shuffle` is off.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        Rng::stream(seed, &[Rng::key("shuffle"), epoch]).shuffle(&mut order);
    }
    order
}

/// Batches in one epoch; the last partial batch is kept.
pub fn batches_per_epoch(n: usize, batch_size: usize) -> usize {
    n.div_ceil(batch_size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], labels: &[i64]) -> Example {
        Example { input_ids: ids.to_vec(), labels: labels.to_vec() }
    }

    #[test]
    fn collate_pads_right_and_masks_padding() {
        let a = ex(&[5, 6, 7], &[-100, 6, 7]);
        let b = ex(&[8], &[8]);
        let batch = Batch::collate(&[&a, &b], 0);
        assert_eq!((batch.batch, batch.seq_len), (2, 3));
        assert_eq!(batch.input_ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(batch.labels, vec![-100, 6, 7, 8, -100, -100]);
        assert_eq!(batch.lengths, vec![3, 1]);
        assert_eq!(batch.learned_tokens(), 2);
        assert_eq!(batch.real_tokens(), 4);
        assert_eq!(Batch::collate(&[], 0).seq_len, 0);
    }

    #[test]
    fn learned_tokens_ignore_position_zero() {
        assert_eq!(ex(&[1, 2, 3], &[1, -100, 3]).learned_tokens(), 1);
        assert_eq!(ex(&[1], &[1]).learned_tokens(), 0);
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, true, 7, 3);
        assert_eq!(a, epoch_order(50, true, 7, 3));
        assert_ne!(a, epoch_order(50, true, 7, 4));
        assert_ne!(a, epoch_order(50, true, 8, 3));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(epoch_order(4, false, 7, 3), vec![0, 1, 2, 3]);
    }

    #[test]
    fn partial_batches_count() {
        assert_eq!(batches_per_epoch(10, 4), 3);
        assert_eq!(batches_per_epoch(8, 4), 2);
        assert_eq!(batches_per_epoch(0, 4), 0);
    }
}
