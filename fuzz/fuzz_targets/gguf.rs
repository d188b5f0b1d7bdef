//! The GGUF reader, the way a user's `.gguf` is read: opened as a model source (header, metadata,
//! tensor table, HF config from metadata), its family and dimensions resolved as the studio's
//! model list and job check do, its tokenizer built from metadata, then tensors read both dense
//! and still block-quantized (the QLoRA/frozen-base path). Any file gives a model or an error
//! naming the file, never a panic, a hang or an unbounded allocation.
#![no_main]

use finetune_engine::arch::Family;
use finetune_engine::model::{GgufFile, ModelSource, WeightSource};
use finetune_engine::{DType, Device};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("fuzz-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    // What the studio does with a model path (crates/server/src/api/models.rs `describe`,
    // crates/server/src/config_check.rs `inspect_model`) and what the trainer opens first.
    let weights: Arc<dyn WeightSource> = match ModelSource::open(&path) {
        Ok(src) => {
            if let Ok(Family::Decoder(_)) = src.family() {
                if let Ok((_, dims)) = src.resolve() {
                    let _ = dims.parameter_count();
                }
            }
            let _ = src.tokenizer();
            src.weights.clone()
        }
        // Metadata that does not make a model: still read the tokenizer and the tensors.
        Err(_) => match GgufFile::open(&path) {
            Ok(file) => {
                let _ = file.tokenizer();
                Arc::new(file)
            }
            Err(_) => return,
        },
    };
    for name in weights.names().into_iter().take(8) {
        if weights.shape(&name).is_some_and(|s| {
            s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= 1 << 18)
        }) {
            let _ = weights.load(&name, DType::F32, &Device::Cpu);
        }
        let _ = weights.load_quantized(&name, DType::F32);
    }
});
