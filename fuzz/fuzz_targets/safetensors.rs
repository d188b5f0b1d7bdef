//! The safetensors reader: any file gives tensors or an error naming the file, never a panic or
//! an out-of-bounds read (headers are checked against the file before any tensor is read).
#![no_main]

use finetune_engine::model::{SafetensorsWeights, WeightSource};
use finetune_engine::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(w) = SafetensorsWeights::from_files(&dir, vec![path]) {
        for name in w.names().into_iter().take(16) {
            if let Some(shape) = w.shape(&name) {
                if shape.iter().product::<usize>() <= 1 << 20 {
                    let _ = w.load(&name, DType::F32, &Device::Cpu);
                }
            }
        }
    }
});
