//! The kernels' parallel paths (taken when the pool has several threads) give the results of
//! their sequential paths, forward and backward, on tensors large enough to be split into many
//! tasks. CI runs with `RAYON_NUM_THREADS=1`, so without these tests the parallel paths would
//! only ever run on users' machines.

use super::cpu::THREADS_OVERRIDE;
use super::gradcheck::randn;
use super::*;
use candle_core::{Device, Result, Tensor, Var};

/// Runs `f` with the kernels believing the pool has `threads` threads.
fn with_threads<T>(threads: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
    THREADS_OVERRIDE.with(|c| c.set(Some(threads)));
    let out = f();
    THREADS_OVERRIDE.with(|c| c.set(None));
    out
}

/// The output and the input gradients of `op` for a fixed upstream gradient.
fn output_and_grads(inputs: &[Tensor], op: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Result<Vec<Tensor>> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&ts)?;
    let probe = randn(y.dims(), 99, &Device::Cpu)?;
    let grads = (&y * &probe)?.sum_all()?.backward()?;
    let mut out = vec![y];
    for v in &vars {
        out.push(grads.get(v.as_tensor()).cloned().unwrap_or(v.as_tensor().zeros_like()?));
    }
    Ok(out)
}

/// Split across tasks, a kernel computes the same values; only where a task's block goes to the
/// BLAS on its own may the sums round differently (OpenBLAS's Haswell kernels sum a narrower
/// block in another order: 3.4e-5 where the largest output is 71), so the bound scales with the
/// largest value: a task that computed the wrong elements would miss by as much as the values.
fn assert_same_on_any_thread_count(what: &str, inputs: &[Tensor], op: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let one = with_threads(1, || output_and_grads(inputs, op)).expect(what);
    let many = with_threads(4, || output_and_grads(inputs, op)).expect(what);
    let max_abs = |t: &Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
    for (i, (a, b)) in one.iter().zip(&many).enumerate() {
        let d = (a - b).and_then(|d| max_abs(&d)).expect(what);
        let scale = max_abs(a).expect(what).max(1.0);
        assert!(
            d <= 2e-6 * scale,
            "{what}: output {i} differs by {d} (largest value {scale}) between 1 and 4 threads"
        );
    }
}

#[test]
fn every_kernel_gives_the_same_results_on_one_thread_and_on_several() -> Result<()> {
    let dev = Device::Cpu;
    // 2 x 48 tokens, 8 heads (2 KV heads) of 32: every kernel splits these into several tasks.
    let (b, t, h, kv, d) = (2, 48, 8, 2, 32);
    let x = randn(&[b, t, h * d], 1, &dev)?;
    let w = randn(&[h * d], 2, &dev)?.affine(0.1, 1.0)?;
    let bias = randn(&[h * d], 3, &dev)?;
    assert_same_on_any_thread_count("rms norm", &[x.clone(), w.clone()], &|v| {
        rms_norm(&v[0], &v[1], 1e-6, 0.0)
    });
    assert_same_on_any_thread_count("layer norm", &[x.clone(), w.clone(), bias.clone()], &|v| {
        layer_norm(&v[0], Some(&v[1]), Some(&v[2]), 1e-5)
    });
    let big = randn(&[b, t, 400], 4, &dev)?; // 38 400 elements: three tasks
    let up = randn(&[b, t, 400], 5, &dev)?;
    for act in [GateAct::Silu, GateAct::GeluTanh] {
        assert_same_on_any_thread_count("gated", &[big.clone(), up.clone()], &|v| gated(&v[0], &v[1], act));
    }
    let inv: Vec<f64> = (0..d / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / d as f64)).collect();
    let tables = RopeTables::new(&inv, 256, 1.0, RopeLayout::HalfSplit, &dev)?;
    let q = randn(&[b, t, h * 8, d], 6, &dev)?; // 8 192 rows of 32: several tasks
    assert_same_on_any_thread_count("rope", &[q], &|v| rope(&v[0], &tables, 3));
    let (q, k, vv) =
        (randn(&[b, t, h, d], 7, &dev)?, randn(&[b, t, kv, d], 8, &dev)?, randn(&[b, t, kv, d], 9, &dev)?);
    let mask = AttentionMask::causal(1.0 / (d as f64).sqrt());
    assert_same_on_any_thread_count("attention", &[q, k, vv], &|v| attention(&v[0], &v[1], &v[2], &mask));
    let logits = randn(&[b * t, 300], 10, &dev)?;
    let targets: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 37) % 300).collect();
    assert_same_on_any_thread_count("cross entropy", &[logits], &|v| cross_entropy_sum(&v[0], &targets));
    let hidden = randn(&[b * t, 64], 11, &dev)?;
    let head = randn(&[300, 64], 12, &dev)?;
    assert_same_on_any_thread_count("linear cross entropy", &[hidden, head], &|v| {
        linear_cross_entropy_sum(&v[0], &v[1], &targets, None)
    });
    let xs = randn(&[b, t, 256], 13, &dev)?;
    let wt = randn(&[320, 256], 14, &dev)?;
    assert_same_on_any_thread_count("linear matmul", &[xs.clone(), wt.clone()], &|v| {
        linear_matmul(&v[0], &v[1])
    });
    assert_same_on_any_thread_count("frozen matmul", std::slice::from_ref(&xs), &|v| {
        frozen_matmul(&v[0], &wt)
    });
    // Quantized and 16-bit bases dequantize each chunk of rows across the pool.
    use crate::quant::{QuantSpec, QuantWeight, quant_matmul};
    use std::sync::Arc;
    let nf4 =
        Arc::new(QuantWeight::quantize_tensor(&wt, &QuantSpec::nf4()).map_err(candle_core::Error::wrap)?);
    assert_same_on_any_thread_count("nf4 matmul", std::slice::from_ref(&xs), &|v| quant_matmul(&v[0], &nf4));
    let stored = QuantWeight::from_half_tensor(&wt.to_dtype(candle_core::DType::BF16)?)
        .map_err(candle_core::Error::wrap)?
        .expect("a bf16 tensor is a 16-bit store");
    let stored = Arc::new(stored);
    assert_same_on_any_thread_count("bf16 stored matmul", &[xs], &|v| quant_matmul(&v[0], &stored));
    Ok(())
}
