//! Shared helpers for the engine's integration tests: fixture paths and reference tensors made by
//! `tools/fixtures/make_fixtures.py` (Hugging Face transformers + PEFT).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// The device the tests run on: `FINETUNE_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`, `metal`; default
/// `cpu`). A GPU build's tests run the same references on the GPU with
/// `FINETUNE_TEST_DEVICE=cuda`; references always stay on the CPU.
pub fn device_name() -> String {
    std::env::var("FINETUNE_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}

pub fn device() -> Device {
    let name = device_name();
    finetune_engine::device::resolve_device(&name)
        .unwrap_or_else(|e| panic!("FINETUNE_TEST_DEVICE={name}: {e}"))
}

/// `--set` overrides that pin a training config to the test device in f32 (`auto` would pick
/// bf16 on a GPU).
pub fn device_sets() -> Vec<String> {
    vec![format!("model.device=\"{}\"", device_name()), "model.dtype=\"f32\"".into()]
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn model_dir(family: &str) -> PathBuf {
    fixtures().join("models").join(family)
}

pub fn adapter_dir(family: &str) -> PathBuf {
    fixtures().join("adapters").join(family)
}

pub fn reference(family: &str) -> HashMap<String, Tensor> {
    let p = fixtures().join("reference").join(format!("{family}.safetensors"));
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

pub fn labels(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0]
}

/// Max |a - b| divided by max(1, max |b|).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let d =
        (a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    let s = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1.0);
    d / s
}
