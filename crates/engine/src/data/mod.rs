//! The training-data pipeline: reads a dataset file (JSON Lines or a JSON array) in one of four
//! formats (alpaca, chat, text, tokens), renders each record with the model's tokenizer and chat
//! template into token ids and labels (loss on responses only unless `train_on_prompt`), applies
//! `max_len`, splits off an eval set and batches examples. Every bad record is an error naming
//! the file, the line and the field.
//!
//! - [`source`]: rows and their line numbers; [`format`]: record parsing and format detection;
//! - [`render`]: records to [`Example`]s; [`chat_template`]: Hugging Face-compatible Jinja;
//! - [`report`]: length policy, counts and the eval split; [`batch`]: collation and epoch order;
//! - [`pipeline`]: [`load_dataset`], [`preview`] and [`validate_file`];
//! - [`seq2seq`]: source → target examples for encoder-decoder models.

pub mod batch;
pub mod chat_template;
pub mod format;
mod pipeline;
mod render;
pub mod report;
pub mod seq2seq;
mod source;

pub use batch::{Batch, Example, batches_per_epoch, epoch_order};
pub use chat_template::ChatMessage;
pub use format::DataFormat;
pub use pipeline::{
    Dataset, MAX_RECORD_ERRORS, PreviewRow, PreviewToken, RecordError, load_dataset, preview, validate_file,
};
pub use report::{DataReport, Overlong, eval_count};
pub use seq2seq::{load_seq2seq_dataset, seq2seq_targets};

/// Why one record is bad: the field at fault (dotted path such as `messages[2].role`) and a
/// message that names it. The pipeline adds the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowError {
    pub field: Option<String>,
    pub message: String,
}

impl RowError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self { field: None, message: message.into() }
    }

    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self { field: Some(field.to_string()), message: message.into() }
    }
}

#[cfg(test)]
mod tests;
