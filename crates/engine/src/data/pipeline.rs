//! The one pass over a dataset file that loading, previewing and validating share: read rows,
//! parse them in the detected format, render them (in parallel chunks, results in file order)
//! and hand each to a caller that decides whether to stop at the first error or keep going.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::RowError;
use super::batch::Example;
use super::format::{DataFormat, Detector, Record};
use super::render::{Rendered, render};
use super::report::{DataReport, Fit, Overlong, fit, split_eval};
use super::source::{Loc, Rows};
use crate::config::DataSection;
use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

/// Records rendered together on the thread pool.
const CHUNK: usize = 512;
/// Errors `validate_file` collects before it stops.
pub const MAX_RECORD_ERRORS: usize = 100;

/// A loaded dataset: examples in file order, split into train and eval.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub report: DataReport,
}

/// One problem found by [`validate_file`]. `line` is the 1-based line (for a JSON array file, the
/// 1-based element number, which the message spells out); 0 for a problem with the whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    pub line: usize,
    pub field: Option<String>,
    pub message: String,
}

/// One token of a previewed example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviewToken {
    pub id: u32,
    /// The text this token adds when decoding in order ("" for a token that ends mid-character).
    pub text: String,
    /// Whether the loss covers this token (its label is not -100 and it is not the first token).
    pub learned: bool,
}

/// One previewed record: the text given to the tokenizer and its tokens after `max_len`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviewRow {
    pub line: usize,
    pub text: String,
    pub tokens: Vec<PreviewToken>,
    pub truncated: bool,
    /// Why training would drop this record, if it would.
    pub skipped: Option<String>,
}

/// The `[data]` settings, checked.
#[derive(Debug, Clone)]
struct Options {
    format: Option<DataFormat>,
    max_len: usize,
    overlong: Overlong,
    eval_fraction: f64,
    train_on_prompt: bool,
}

impl Options {
    fn new(cfg: &DataSection) -> Result<Self> {
        let overlong = match cfg.overlong.as_str() {
            "truncate" => Overlong::Truncate,
            "skip" => Overlong::Skip,
            other => {
                return Err(EngineError::config(
                    "data.overlong",
                    format!("{other:?} is not allowed; expected truncate or skip"),
                ));
            }
        };
        if !(0.0..1.0).contains(&cfg.eval_fraction) {
            return Err(EngineError::config(
                "data.eval_fraction",
                format!("{} is outside [0, 1)", cfg.eval_fraction),
            ));
        }
        Ok(Self {
            format: DataFormat::from_config(&cfg.format)?,
            max_len: cfg.max_len,
            overlong,
            eval_fraction: cfg.eval_fraction,
            train_on_prompt: cfg.train_on_prompt,
        })
    }
}

fn record_error(path: &Path, loc: &Loc, e: RowError) -> EngineError {
    EngineError::record(path, loc.line, format!("{}{}", loc.prefix(), e.message))
}

fn empty_file(path: &Path) -> EngineError {
    EngineError::record(
        path,
        1,
        "the file is empty: no records (expected JSON Lines or a JSON array of objects)",
    )
}

struct Summary {
    rows: usize,
    format: Option<DataFormat>,
}

type Item = (Loc, std::result::Result<Option<Rendered>, RowError>);

/// Reads, parses and renders every row (rendering only with a tokenizer), calling `sink` in file
/// order until it breaks.
fn drive(
    path: &Path,
    opts: &Options,
    tok: Option<&TextTokenizer>,
    want_text: bool,
    chunk: usize,
    mut sink: impl FnMut(Item) -> ControlFlow<()>,
) -> Result<Summary> {
    let mut detector = Detector::new(opts.format);
    let mut rows = 0;
    let mut pending: Vec<(Loc, std::result::Result<Record, RowError>)> = Vec::new();
    let flush = |pending: &mut Vec<_>, sink: &mut dyn FnMut(Item) -> ControlFlow<()>| {
        let items: Vec<Item> = std::mem::take(pending)
            .into_par_iter()
            .map(|(loc, rec): (Loc, std::result::Result<Record, RowError>)| {
                let out =
                    rec.and_then(|r| tok.map(|t| render(r, t, opts.train_on_prompt, want_text)).transpose());
                (loc, out)
            })
            .collect();
        items.into_iter().try_for_each(sink)
    };
    for (loc, value) in Rows::open(path)? {
        rows += 1;
        pending.push((loc, value.and_then(|v| detector.parse(loc.line, v))));
        if pending.len() >= chunk && flush(&mut pending, &mut sink).is_break() {
            return Ok(Summary { rows, format: detector.format() });
        }
    }
    let _ = flush(&mut pending, &mut sink);
    Ok(Summary { rows, format: detector.format() })
}

/// Loads a dataset for training: every record rendered to token ids and labels, `max_len`
/// applied, and `eval_fraction` of the examples set aside by a shuffle seeded with `seed`.
/// The first bad record stops loading with an error naming its line and field.
pub fn load_dataset(path: &Path, cfg: &DataSection, tok: &TextTokenizer, seed: u64) -> Result<Dataset> {
    let opts = Options::new(cfg)?;
    let mut kept = Vec::new();
    let mut truncated = 0;
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_err = None;
    let summary = drive(path, &opts, Some(tok), false, CHUNK, |(loc, res)| match res {
        Err(e) => {
            first_err = Some(record_error(path, &loc, e));
            ControlFlow::Break(())
        }
        Ok(r) => {
            let example = r.expect("rendered with a tokenizer").example;
            match fit(example, opts.max_len, opts.overlong) {
                Fit::Kept { example, truncated: t } => {
                    truncated += usize::from(t);
                    kept.push(example);
                }
                Fit::Skipped { reason, .. } => *skipped.entry(reason.to_string()).or_default() += 1,
            }
            ControlFlow::Continue(())
        }
    })?;
    if let Some(e) = first_err {
        return Err(e);
    }
    if summary.rows == 0 {
        return Err(empty_file(path));
    }
    if kept.is_empty() {
        let reasons: Vec<String> = skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
        return Err(EngineError::file(
            path,
            format!(
                "no usable examples: all {} records were skipped ({}); raise data.max_len or check the data",
                summary.rows,
                reasons.join(", ")
            ),
        ));
    }
    let mut report = DataReport::new(summary.format, summary.rows, &kept, truncated, skipped);
    let (train, eval) = split_eval(kept, opts.eval_fraction, seed);
    report.train_examples = train.len();
    report.eval_examples = eval.len();
    Ok(Dataset { train, eval, report })
}

/// The first `n` records as training would see them: the rendered text and each token with
/// whether the loss covers it.
pub fn preview(path: &Path, cfg: &DataSection, tok: &TextTokenizer, n: usize) -> Result<Vec<PreviewRow>> {
    let opts = Options::new(cfg)?;
    let mut out = Vec::new();
    let mut first_err = None;
    if n == 0 {
        return Ok(out);
    }
    let summary = drive(path, &opts, Some(tok), true, n.min(64), |(loc, res)| {
        let row = res.map_err(|e| record_error(path, &loc, e)).and_then(|r| {
            let r = r.expect("rendered with a tokenizer");
            let (example, truncated, skipped) = match fit(r.example, opts.max_len, opts.overlong) {
                Fit::Kept { example, truncated } => (example, truncated, None),
                Fit::Skipped { example, reason } => (example, false, Some(reason.to_string())),
            };
            let pieces = tok.decode_pieces(&example.input_ids)?;
            let tokens = (example.input_ids.iter().zip(&example.labels).zip(pieces).enumerate())
                .map(|(i, ((&id, &label), text))| PreviewToken {
                    id,
                    text,
                    learned: i > 0 && label != crate::ops::IGNORE_INDEX,
                })
                .collect();
            Ok(PreviewRow { line: loc.line, text: r.text.unwrap_or_default(), tokens, truncated, skipped })
        });
        match row {
            Ok(row) => {
                out.push(row);
                if out.len() >= n { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            }
            Err(e) => {
                first_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = first_err {
        return Err(e);
    }
    if summary.rows == 0 {
        return Err(empty_file(path));
    }
    Ok(out)
}

/// Checks a whole file and collects up to [`MAX_RECORD_ERRORS`] problems instead of stopping at
/// the first. Without a tokenizer only the structure is checked; with one, every record is also
/// rendered (chat template errors, token ids outside the vocabulary). An empty list means valid.
pub fn validate_file(path: &Path, cfg: &DataSection, tok: Option<&TextTokenizer>) -> Vec<RecordError> {
    let whole_file = |e: EngineError| {
        let (line, field) = match &e {
            EngineError::Config { key, .. } => (0, Some(key.clone())),
            EngineError::Record { line, .. } => (*line, None),
            _ => (0, None),
        };
        let message = match e {
            EngineError::Record { message, .. } | EngineError::Config { message, .. } => message,
            other => other.to_string(),
        };
        vec![RecordError { line, field, message }]
    };
    let opts = match Options::new(cfg) {
        Ok(o) => o,
        Err(e) => return whole_file(e),
    };
    let mut errors = Vec::new();
    let summary = drive(path, &opts, tok, false, CHUNK, |(loc, res)| {
        if let Err(e) = res {
            errors.push(RecordError {
                line: loc.line,
                field: e.field,
                message: format!("{}{}", loc.prefix(), e.message),
            });
            if errors.len() >= MAX_RECORD_ERRORS {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    match summary {
        Err(e) => whole_file(e),
        Ok(s) if s.rows == 0 => whole_file(empty_file(path)),
        Ok(_) => errors,
    }
}
