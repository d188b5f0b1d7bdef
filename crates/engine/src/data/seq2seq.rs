//! Training data for encoder-decoder models (T5, BART): each example is a source sequence for the
//! encoder and a target sequence the decoder learns. Two formats: `tokens` rows
//! `{"input_ids": encoder ids, "labels": decoder ids}` (the lengths may differ; -100 ignores a
//! target) and `alpaca` rows, whose instruction (and input, and system text) is the source and
//! whose output is the target. An [`Example`] carries the source in `input_ids` and the target in
//! `labels` (not aligned with each other). Every bad record is an error naming file, line, field.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::RowError;
use super::batch::Example;
use super::format::DataFormat;
use super::pipeline::Dataset;
use super::report::{DataReport, SKIP_NOTHING_LEARNED, SKIP_TOO_LONG, split_eval};
use super::source::Rows;
use crate::config::DataSection;
use crate::error::{EngineError, Result};
use crate::ops::IGNORE_INDEX;
use crate::tokenizer::TextTokenizer;

type RowResult<T> = std::result::Result<T, RowError>;

fn ints(obj: &Map<String, Json>, key: &str) -> RowResult<Vec<i64>> {
    let v = obj.get(key).ok_or_else(|| RowError::field(key, format!("missing field `{key}`")))?;
    let Json::Array(a) = v else {
        return Err(RowError::field(key, format!("`{key}` must be an array of integers")));
    };
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_i64()
                .ok_or_else(|| RowError::field(key, format!("`{key}[{i}]` must be an integer, found {x}")))
        })
        .collect()
}

fn text<'a>(obj: &'a Map<String, Json>, key: &str, required: bool) -> RowResult<&'a str> {
    match obj.get(key) {
        Some(Json::String(s)) => Ok(s),
        None | Some(Json::Null) if !required => Ok(""),
        None => Err(RowError::field(key, format!("missing field `{key}`"))),
        Some(v) => Err(RowError::field(key, format!("`{key}` must be a string, found {v}"))),
    }
}

/// `ids` with the tokenizer's EOS appended when it does not already end with it.
fn with_eos(mut ids: Vec<u32>, tok: &TextTokenizer) -> Vec<u32> {
    if let Some(eos) = tok.eos_id().filter(|&e| ids.last() != Some(&e)) {
        ids.push(eos);
    }
    ids
}

/// The source and target of one alpaca record: system, instruction and input joined by blank
/// lines; the output as target; both end with EOS.
pub(crate) fn alpaca_pair(obj: &Map<String, Json>, tok: &TextTokenizer) -> RowResult<Example> {
    let parts: Vec<&str> =
        [text(obj, "system", false)?, text(obj, "instruction", true)?, text(obj, "input", false)?]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
    let enc = |s: &str| tok.encode(s, true).map_err(|e| RowError::new(e.to_string()));
    let input_ids = with_eos(enc(&parts.join("\n\n"))?, tok);
    let labels = with_eos(enc(text(obj, "output", true)?)?, tok).into_iter().map(i64::from).collect();
    Ok(Example { input_ids, labels })
}

fn tokens_pair(obj: &Map<String, Json>, vocab: usize) -> RowResult<Example> {
    let src = ints(obj, "input_ids")?;
    let labels = ints(obj, "labels")?;
    if src.is_empty() {
        return Err(RowError::field("input_ids", "`input_ids` is empty"));
    }
    let input_ids = src
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            u32::try_from(x).ok().filter(|&id| (id as usize) < vocab).ok_or_else(|| {
                RowError::field(
                    "input_ids",
                    format!("`input_ids[{i}]` is {x}, not a token id of the {vocab}-id vocabulary"),
                )
            })
        })
        .collect::<RowResult<Vec<u32>>>()?;
    if let Some((i, l)) =
        labels.iter().enumerate().find(|&(_, &l)| (l < 0 && l != IGNORE_INDEX) || l >= vocab as i64)
    {
        return Err(RowError::field(
            "labels",
            format!("`labels[{i}]` is {l}; a label is a token id or -100 (ignored)"),
        ));
    }
    Ok(Example { input_ids, labels })
}

/// Labels a seq2seq example learns (every non-ignored target; there is no shift).
pub fn seq2seq_targets(e: &Example) -> usize {
    e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
}

/// Loads an encoder-decoder dataset: `tokens` or `alpaca` rows, each side cut to `max_len` (or
/// the example skipped, per `overlong`), `eval_fraction` split off with `seed`.
pub fn load_seq2seq_dataset(
    path: &Path,
    cfg: &DataSection,
    tok: &TextTokenizer,
    seed: u64,
) -> Result<Dataset> {
    let fixed = DataFormat::from_config(&cfg.format)?;
    if let Some(f @ (DataFormat::Chat | DataFormat::Text)) = fixed {
        return Err(EngineError::config(
            "data.format",
            format!(
                "{f} is not supported for encoder-decoder models; use tokens (input_ids + labels) or alpaca"
            ),
        ));
    }
    let skip_long = match cfg.overlong.as_str() {
        "truncate" => false,
        "skip" => true,
        other => {
            return Err(EngineError::config(
                "data.overlong",
                format!("{other:?} is not allowed; expected truncate or skip"),
            ));
        }
    };
    let mut format = fixed;
    let (mut kept, mut rows, mut truncated) = (Vec::new(), 0, 0);
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for (loc, value) in Rows::open(path)? {
        rows += 1;
        let err = |e: RowError| EngineError::record(path, loc.line, format!("{}{}", loc.prefix(), e.message));
        let Json::Object(obj) = value.map_err(err)? else {
            return Err(err(RowError::new("expected a JSON object")));
        };
        let f = match format {
            Some(f) => f,
            None => {
                let f = DataFormat::detect(&obj)
                    .ok_or_else(|| err(RowError::new("cannot tell the format of this record")))?;
                format = Some(f);
                f
            }
        };
        let mut ex = match f {
            DataFormat::Tokens => tokens_pair(&obj, tok.vocab_size()),
            DataFormat::Alpaca => alpaca_pair(&obj, tok),
            other => Err(RowError::new(format!(
                "{other} records are not supported for encoder-decoder models; use tokens (input_ids + labels) or alpaca"
            ))),
        }
        .map_err(err)?;
        let longest = ex.input_ids.len().max(ex.labels.len());
        if cfg.max_len > 0 && longest > cfg.max_len {
            if skip_long {
                *skipped.entry(SKIP_TOO_LONG.to_string()).or_default() += 1;
                continue;
            }
            ex.input_ids.truncate(cfg.max_len);
            ex.labels.truncate(cfg.max_len);
            truncated += 1;
        }
        if seq2seq_targets(&ex) == 0 {
            *skipped.entry(SKIP_NOTHING_LEARNED.to_string()).or_default() += 1;
            continue;
        }
        kept.push(ex);
    }
    if rows == 0 {
        return Err(EngineError::record(
            path,
            1,
            "the file is empty: no records (expected JSON Lines or a JSON array of objects)",
        ));
    }
    if kept.is_empty() {
        return Err(EngineError::file(
            path,
            "no usable examples: every record was skipped; raise data.max_len or check the data",
        ));
    }
    let mut report = DataReport::new(format, rows, &kept, truncated, skipped);
    report.learned_tokens = kept.iter().map(seq2seq_targets).sum();
    let (train, eval) = split_eval(kept, cfg.eval_fraction, seed);
    report.train_examples = train.len();
    report.eval_examples = eval.len();
    Ok(Dataset { train, eval, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> TextTokenizer {
        TextTokenizer::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/t5"))
            .unwrap()
    }

    fn cfg(path: &Path, max_len: usize) -> DataSection {
        DataSection { path: path.to_path_buf(), max_len, ..Default::default() }
    }

    #[test]
    fn tokens_rows_keep_unaligned_source_and_target() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"input_ids\": [5, 6, 7], \"labels\": [8, -100]}\n{\"input_ids\": [9], \"labels\": [10, 11, 12]}\n")
            .unwrap();
        let d = load_seq2seq_dataset(&p, &cfg(&p, 512), &tok(), 0).unwrap();
        assert_eq!(d.train[0], Example { input_ids: vec![5, 6, 7], labels: vec![8, -100] });
        assert_eq!(d.train[1].labels, vec![10, 11, 12]);
        assert_eq!(d.report.learned_tokens, 4);
        // max_len applies to each side.
        let d = load_seq2seq_dataset(&p, &cfg(&p, 2), &tok(), 0).unwrap();
        assert_eq!(d.train[0].input_ids, vec![5, 6]);
        assert_eq!(d.train[1].labels, vec![10, 11]);
        assert_eq!(d.report.truncated, 2);
    }

    #[test]
    fn alpaca_rows_become_source_and_target_and_bad_rows_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"instruction\": \"Add.\", \"input\": \"1 and 2\", \"output\": \"3\"}\n")
            .unwrap();
        let t = tok();
        let d = load_seq2seq_dataset(&p, &cfg(&p, 512), &t, 0).unwrap();
        let ex = &d.train[0];
        assert_eq!(ex.input_ids, with_eos(t.encode("Add.\n\n1 and 2", true).unwrap(), &t));
        let target: Vec<u32> = ex.labels.iter().map(|&l| l as u32).collect();
        assert_eq!(target, with_eos(t.encode("3", true).unwrap(), &t));

        std::fs::write(&p, "{\"input_ids\": [1], \"labels\": [2]}\n{\"input_ids\": [1], \"labels\": [-5]}\n")
            .unwrap();
        let e = load_seq2seq_dataset(&p, &cfg(&p, 512), &t, 0).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("`labels[0]` is -5"), "{e}");
        std::fs::write(&p, "{\"text\": \"hello\"}\n").unwrap();
        let e = load_seq2seq_dataset(&p, &cfg(&p, 512), &t, 0).unwrap_err().to_string();
        assert!(e.contains("not supported for encoder-decoder"), "{e}");
    }
}
