//! Throughput of the engine's CPU matrix products for the shapes of a training step: the frozen
//! projection forward (`x · Wᵀ`) and its input gradient (`g · W`), with the weight in the Hugging
//! Face `[out, in]` layout. Run it twice, with and without `FINETUNE_BLAS=off`, to compare the
//! BLAS found at run time with the `gemm` crate on one machine:
//!
//! RAYON_NUM_THREADS=1 cargo run --release -p finetune-engine --example matmul_bench
//! FINETUNE_BLAS=off RAYON_NUM_THREADS=1 cargo run --release -p finetune-engine --example matmul_bench
//!
//! The bf16 columns are the products of `model.dtype = "bf16"` on the CPU: a bf16 weight as
//! stored, the input rounded to bf16, f32 accumulation (on the AMX tile unit where the CPU has one;
//! `FINETUNE_AMX=off` shows the emulation instead). The "stored" columns are an f32 run's products
//! with that bf16 weight kept as stored (`model.frozen_dtype`): widened as it is packed (below
//! 384 rows, on CPUs with AVX-512 or AVX2) or chunk by chunk for the BLAS.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use finetune_engine::quant::{QuantWeight, quant_matmul, quant_matmul_t};
use finetune_engine::{device, ops};
use std::sync::Arc;
use std::time::Instant;

fn best_of(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> Result<()> {
    device::init_cpu_threads();
    let dev = Device::Cpu;
    println!("device: {}", device::describe(&dev));
    for (m, k, n) in [
        (1, 1024, 2816),
        (4, 1024, 2816),
        (16, 1024, 2816),
        (512, 1024, 16),
        (16, 512, 1024),
        (128, 1024, 2816),
        (512, 1024, 2816),
        (512, 2816, 1024),
        (512, 1024, 1024),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev)?)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let flops = 2.0 * (m * k * n) as f64;
        let fwd = best_of(5, || {
            ops::frozen_matmul(x.as_tensor(), &w)?;
            Ok(())
        })?;
        // A backward pass through the product (dL/dx = g · W), less its forward.
        let bwd = best_of(5, || {
            ops::frozen_matmul(x.as_tensor(), &w)?.sum_all()?.backward()?;
            Ok(())
        })? - fwd;
        // For the smallest products the backward is below the timer's noise: say so.
        let backward =
            if bwd > 0.0 { format!("{:6.1} GFLOP/s", flops / bwd / 1e9) } else { "(below noise)".into() };
        let g = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
        let mut bf16 = QuantWeight::from_half_tensor(&w.to_dtype(DType::BF16)?)?
            .ok_or_else(|| anyhow::anyhow!("a bf16 tensor is a 16-bit store"))?;
        bf16.compute = DType::BF16;
        bf16.prepare_bf16_products();
        let bf16 = Arc::new(bf16);
        let stored = Arc::new(
            QuantWeight::from_half_tensor(&w.to_dtype(DType::BF16)?)?
                .ok_or_else(|| anyhow::anyhow!("a bf16 tensor is a 16-bit store"))?,
        );
        let fwd_stored = best_of(5, || {
            quant_matmul(x.as_tensor(), &stored)?;
            Ok(())
        })?;
        let bwd_stored = best_of(5, || {
            quant_matmul_t(&g, &stored)?;
            Ok(())
        })?;
        let fwd16 = best_of(5, || {
            quant_matmul(x.as_tensor(), &bf16)?;
            Ok(())
        })?;
        let bwd16 = best_of(5, || {
            quant_matmul_t(&g, &bf16)?;
            Ok(())
        })?;
        println!(
            "m {m:4} k {k:4} n {n:4}: x·Wᵀ {:6.1} GFLOP/s, g·W {backward}; bf16: x·Wᵀ {:6.1}, g·W {:6.1}; \
             stored: x·Wᵀ {:6.1}, g·W {:6.1}",
            flops / fwd / 1e9,
            flops / fwd16 / 1e9,
            flops / bwd16 / 1e9,
            flops / fwd_stored / 1e9,
            flops / bwd_stored / 1e9
        );
    }
    Ok(())
}
