//! The GGUF reader (header, metadata, tensor table, config and tokenizer from metadata, block
//! data): any file gives a model source or an error naming the file, never a panic, a hang or an
//! unbounded allocation.
#![no_main]

use finetune_engine::model::{GgufFile, WeightSource};
use finetune_engine::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("fuzz-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(file) = GgufFile::open(&path) else { return };
    let _ = file.config();
    let _ = file.tokenizer();
    for name in file.names().into_iter().take(8) {
        if file.shape(&name).is_some_and(|s| s.iter().product::<usize>() <= 1 << 18) {
            let _ = file.load(&name, DType::F32, &Device::Cpu);
        }
    }
});
