//! Quantization against bitsandbytes 0.50 references (`fixtures/reference/bnb_quant.safetensors`,
//! made by `tools/fixtures/make_fixtures.py --only bnb`): NF4/FP4 codes, block scales and the
//! double-quantization state are bit-identical, dequantized weights are identical, and the
//! quantized linear's forward and dL/dx match `Linear4bit` to 1e-5.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use finetune_engine::quant::{
    Absmax, DoubleQuant, FourBitKind, Int8Rows, QuantKind, QuantSpec, QuantWeight, quant_matmul,
    quantize_4bit,
};
use std::collections::HashMap;
use std::sync::Arc;

fn refs() -> HashMap<String, Tensor> {
    let p = fixtures().join("reference/bnb_quant.safetensors");
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Index and values of the first difference, for readable failures.
fn first_diff<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T]) -> Option<(usize, String)> {
    if a.len() != b.len() {
        return Some((usize::MAX, format!("lengths {} vs {}", a.len(), b.len())));
    }
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| (i, format!("{:?} vs {:?}", a[i], b[i])))
}

const CASES: [&str; 4] = ["small", "ragged", "real", "edge"];

#[test]
fn nf4_and_fp4_codes_scales_and_double_quant_state_are_bit_identical_to_bitsandbytes() {
    let r = refs();
    let mut checked = 0;
    for case in CASES {
        let w = f32s(&r[&format!("{case}.weight")]);
        for (kind, name) in [(FourBitKind::Nf4, "nf4"), (FourBitKind::Fp4, "fp4")] {
            for bs in [64usize, 128] {
                let key = if bs == 64 { format!("{case}.{name}") } else { format!("{case}.{name}.b{bs}") };
                let Some(packed) = r.get(&format!("{key}.packed")) else { continue };
                let q = quantize_4bit(&w, kind, bs).unwrap();
                assert_eq!(first_diff(&q.packed, &u8s(packed)), None, "{key}: packed codes");
                let Absmax::F32(absmax) = &q.absmax else { panic!("plain absmax") };
                assert_eq!(
                    first_diff(&bits(absmax), &bits(&f32s(&r[&format!("{key}.absmax")]))),
                    None,
                    "{key}: absmax"
                );
                let deq = q.dequantize();
                assert_eq!(
                    first_diff(&bits(&deq), &bits(&f32s(&r[&format!("{key}.dequant")]))),
                    None,
                    "{key}: dequant"
                );

                let dq = DoubleQuant::quantize(absmax);
                let offset = f32s(&r[&format!("{key}.dq.offset")])[0];
                assert_eq!(
                    dq.offset.to_bits(),
                    offset.to_bits(),
                    "{key}: double-quant offset {} vs {offset}",
                    dq.offset
                );
                assert_eq!(
                    first_diff(&dq.codes, &u8s(&r[&format!("{key}.dq.codes")])),
                    None,
                    "{key}: 8-bit scale codes"
                );
                assert_eq!(
                    first_diff(&bits(&dq.absmax2), &bits(&f32s(&r[&format!("{key}.dq.absmax2")]))),
                    None,
                    "{key}: second-level absmax"
                );
                let mut q2 = q.clone();
                q2.double_quantize();
                let deq2 = q2.dequantize();
                assert_eq!(
                    first_diff(&bits(&deq2), &bits(&f32s(&r[&format!("{key}.dq.dequant")]))),
                    None,
                    "{key}: dq dequant"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 10, "every reference case was compared");
}

#[test]
fn int8_rowwise_codes_scales_and_dequantized_weights_match_linear8bitlt() {
    let r = refs();
    for case in CASES {
        let t = &r[&format!("{case}.weight")];
        let (rows, cols) = t.dims2().unwrap();
        let q = Int8Rows::quantize(&f32s(t), rows, cols);
        let codes: Vec<u8> = q.codes.iter().map(|&c| c as u8).collect();
        assert_eq!(first_diff(&codes, &u8s(&r[&format!("{case}.int8.codes")])), None, "{case}: int8 codes");
        assert_eq!(
            first_diff(&bits(&q.scale), &bits(&f32s(&r[&format!("{case}.int8.scale")]))),
            None,
            "{case}: SCB"
        );
        let mut deq = vec![0f32; rows * cols];
        q.dequantize_rows_into(0, &mut deq);
        assert_eq!(
            first_diff(&bits(&deq), &bits(&f32s(&r[&format!("{case}.int8.dequant")]))),
            None,
            "{case}: dequant"
        );
    }
}

#[test]
fn quantized_linear_forward_and_input_gradient_match_linear4bit() {
    let r = refs();
    for (kind, name) in [(QuantKind::Nf4, "nf4"), (QuantKind::Fp4, "fp4")] {
        let w = f32s(&r["small.weight"]);
        let spec = QuantSpec { kind, double_quant: true, block_size: 64, compute: DType::F32 };
        let qw = Arc::new(QuantWeight::quantize(&w, 64, 128, &spec).unwrap());
        let pre = format!("linear4bit.{name}");
        let x = Var::from_tensor(&r[&format!("{pre}.x")]).unwrap();
        let y = quant_matmul(x.as_tensor(), &qw).unwrap().broadcast_add(&r[&format!("{pre}.bias")]).unwrap();
        let d = rel_diff(&y, &r[&format!("{pre}.y")]);
        assert!(d < 1e-5, "{name}: forward differs from Linear4bit by {d}");
        let grads = (y * &r[&format!("{pre}.r")]).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(x.as_tensor()).expect("dL/dx");
        let d = rel_diff(dx, &r[&format!("{pre}.dx")]);
        assert!(d < 1e-5, "{name}: dL/dx differs from Linear4bit by {d}");
    }
}

#[test]
fn the_dynamic_map_is_bitsandbytes_create_dynamic_map() {
    let r = refs();
    let theirs = f32s(&r["dynamic_map"]);
    assert_eq!(bits(&finetune_engine::quant::DYNAMIC_MAP), bits(&theirs));
}
