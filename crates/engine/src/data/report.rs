//! What loading a dataset did (rows read, examples kept, truncated and skipped, token counts and
//! lengths), the length policy that decides truncation and skipping, and the seeded eval split.
//! Kept pure so the counts and the split can be tested without files or a tokenizer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DataFormat;
use super::batch::Example;
use crate::rng::Rng;

/// Why an example was dropped (the keys of [`DataReport::skipped_reasons`]).
pub const SKIP_TOO_LONG: &str = "longer than max_len";
pub const SKIP_NOTHING_LEARNED: &str = "no learned tokens";

/// A summary of a loaded dataset, shown to the user before training starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// The format used (detected when `data.format` is "auto").
    pub format: Option<DataFormat>,
    /// Records read (blank lines not counted).
    pub rows: usize,
    /// Examples kept (train + eval).
    pub examples: usize,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// Kept examples that were cut to `max_len`.
    pub truncated: usize,
    /// Records dropped, in all.
    pub skipped: usize,
    pub skipped_reasons: BTreeMap<String, usize>,
    /// Tokens over all kept examples.
    pub total_tokens: usize,
    /// Tokens the loss covers (see [`Example::learned_tokens`]).
    pub learned_tokens: usize,
    pub min_len: usize,
    pub mean_len: f64,
    pub max_len: usize,
}

impl DataReport {
    pub(crate) fn new(
        format: Option<DataFormat>,
        rows: usize,
        kept: &[Example],
        truncated: usize,
        skipped: BTreeMap<String, usize>,
    ) -> Self {
        let lens = kept.iter().map(Example::len);
        let total: usize = lens.clone().sum();
        Self {
            format,
            rows,
            examples: kept.len(),
            train_examples: kept.len(),
            eval_examples: 0,
            truncated,
            skipped: skipped.values().sum(),
            skipped_reasons: skipped,
            total_tokens: total,
            learned_tokens: kept.iter().map(Example::learned_tokens).sum(),
            min_len: lens.clone().min().unwrap_or(0),
            mean_len: if kept.is_empty() { 0.0 } else { total as f64 / kept.len() as f64 },
            max_len: lens.max().unwrap_or(0),
        }
    }
}

/// What to do with an example longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    Truncate,
    Skip,
}

/// The outcome of the length policy for one example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fit {
    Kept { example: Example, truncated: bool },
    Skipped { example: Example, reason: &'static str },
}

/// Applies `max_len` (0 = no limit) and drops examples left with nothing to learn.
pub(crate) fn fit(mut example: Example, max_len: usize, overlong: Overlong) -> Fit {
    let mut truncated = false;
    if max_len > 0 && example.len() > max_len {
        match overlong {
            Overlong::Skip => return Fit::Skipped { example, reason: SKIP_TOO_LONG },
            Overlong::Truncate => {
                example.truncate(max_len);
                truncated = true;
            }
        }
    }
    if example.learned_tokens() == 0 {
        return Fit::Skipped { example, reason: SKIP_NOTHING_LEARNED };
    }
    Fit::Kept { example, truncated }
}

/// How many of `n` examples go to eval: `round(fraction * n)`, at least 1 when the fraction is
/// positive and there are two or more examples, and never all of them.
pub fn eval_count(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 || n < 2 {
        return 0;
    }
    ((fraction * n as f64).round() as usize).clamp(1, n - 1)
}

/// Splits `examples` into (train, eval) by a shuffle seeded with (seed, "eval-split"); both keep
/// file order.
pub(crate) fn split_eval(examples: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    let k = eval_count(n, fraction);
    if k == 0 {
        return (examples, Vec::new());
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::stream(seed, &[Rng::key("eval-split")]).shuffle(&mut order);
    let mut is_eval = vec![false; n];
    for &i in &order[..k] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (ex, e) in examples.into_iter().zip(is_eval) {
        if e { eval.push(ex) } else { train.push(ex) }
    }
    (train, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: usize, learned_from: usize) -> Example {
        Example {
            input_ids: (0..n as u32).collect(),
            labels: (0..n as i64).map(|i| if (i as usize) < learned_from { -100 } else { i }).collect(),
        }
    }

    #[test]
    fn fit_truncates_or_skips() {
        match fit(ex(10, 2), 5, Overlong::Truncate) {
            Fit::Kept { example, truncated } => assert_eq!((example.len(), truncated), (5, true)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(fit(ex(10, 2), 5, Overlong::Skip), Fit::Skipped { reason: SKIP_TOO_LONG, .. }));
        // The prompt fills max_len: nothing left to learn.
        assert!(matches!(
            fit(ex(10, 6), 5, Overlong::Truncate),
            Fit::Skipped { reason: SKIP_NOTHING_LEARNED, .. }
        ));
        assert!(matches!(fit(ex(10, 2), 0, Overlong::Skip), Fit::Kept { truncated: false, .. }));
    }

    #[test]
    fn eval_split_sizes_and_determinism() {
        assert_eq!(eval_count(20, 0.1), 2);
        assert_eq!(eval_count(20, 0.0), 0);
        assert_eq!(eval_count(3, 0.01), 1);
        assert_eq!(eval_count(1, 0.5), 0);
        assert_eq!(eval_count(4, 0.99), 3);
        let data: Vec<Example> = (1..=20).map(|n| ex(n, 0)).collect();
        let (t1, e1) = split_eval(data.clone(), 0.25, 9);
        let (t2, e2) = split_eval(data.clone(), 0.25, 9);
        assert_eq!((t1.len(), e1.len()), (15, 5));
        assert_eq!(e1, e2);
        assert_eq!(t1, t2);
        let (_, e3) = split_eval(data, 0.25, 10);
        assert_ne!(e1, e3);
        assert!(e1.windows(2).all(|w| w[0].len() < w[1].len()), "file order kept");
    }

    #[test]
    fn report_counts() {
        let kept = vec![ex(4, 1), ex(6, 0)];
        let mut skipped = BTreeMap::new();
        skipped.insert(SKIP_TOO_LONG.to_string(), 2);
        let r = DataReport::new(Some(DataFormat::Text), 5, &kept, 1, skipped);
        assert_eq!((r.examples, r.skipped, r.truncated), (2, 2, 1));
        assert_eq!((r.total_tokens, r.learned_tokens), (10, 3 + 5));
        assert_eq!((r.min_len, r.max_len, r.mean_len), (4, 6, 5.0));
    }
}
