//! The dataset reader (JSONL and JSON arrays, every format, chat templates, tokenization):
//! any file gives examples or per-line errors, never a panic, a hang or an unbounded allocation.
#![no_main]

use finetune_engine::config::DataSection;
use finetune_engine::data::{load_dataset, validate_file};
use finetune_engine::tokenizer::TextTokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokenizer() -> &'static TextTokenizer {
    static TOK: OnceLock<TextTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/llama");
        TextTokenizer::from_dir(&dir).expect("fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("fuzz-dataset-{}.jsonl", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let cfg = DataSection { max_len: 64, eval_fraction: 0.1, ..DataSection::default() };
    let _ = validate_file(&path, &cfg, Some(tokenizer()));
    if let Ok(ds) = load_dataset(&path, &cfg, tokenizer(), 1) {
        for ex in ds.train.iter().chain(&ds.eval) {
            assert_eq!(ex.input_ids.len(), ex.labels.len());
            assert!(ex.input_ids.len() <= 64);
        }
    }
});
