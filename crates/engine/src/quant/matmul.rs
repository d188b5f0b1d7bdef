//! `x · Wᵀ` for a quantized frozen W as a candle custom op. The forward dequantizes W a chunk of
//! rows at a time into a small buffer (in the compute dtype) and multiplies; the backward is a
//! second op computing `dL/dy · W` the same way. Nothing dense stays alive in the graph: the op
//! holds only the quantized weight. On the CPU a bf16/f16 compute dtype is emulated by rounding
//! the operands and the result (f32 accumulation, like a GPU GEMM), and a bf16 one runs on the
//! AMX tile unit where the CPU has one ([`crate::ops::amx`]); CUDA dequantizes in a kernel.

use super::{QuantFormat, QuantWeight, half_gemm};
use crate::ops::amx;
use crate::ops::cpu::{ELEMENTS_PER_TASK, Mat, Reused, sgemm_par_ld, threads, zeroed};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, MetalStorage, Result, Shape, Tensor, bail,
};
use half::{bf16, f16};
use std::sync::Arc;

/// Computes `x · wᵀ` for a quantized `w` (`[out, in]`); `x` may have any leading dimensions. The
/// result has `x`'s dtype. Only `x` receives a gradient.
pub fn quant_matmul(x: &Tensor, w: &Arc<QuantWeight>) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    if k != w.cols {
        bail!("quantized matmul: input has {k} features, weight expects {}", w.cols);
    }
    x.contiguous()?.apply_op1(QuantMatmul { w: w.clone(), transpose: false })
}

/// Computes `g · w` for a quantized `w` (`[out, in]`): the input gradient of [`quant_matmul`],
/// `g` `[.., out]` → `[.., in]`, with no graph recorded.
pub fn quant_matmul_t(g: &Tensor, w: &Arc<QuantWeight>) -> Result<Tensor> {
    let n = g.dim(candle_core::D::Minus1)?;
    if n != w.rows {
        bail!("quantized matmul: gradient has {n} features, weight has {} outputs", w.rows);
    }
    g.contiguous()?.apply_op1_no_bwd(&QuantMatmul { w: w.clone(), transpose: true })
}

/// `transpose: false`: `y = x · Wᵀ` (`[.., in] → [.., out]`); `true`: `dx = g · W` (`[.., out] → [.., in]`).
struct QuantMatmul {
    w: Arc<QuantWeight>,
    transpose: bool,
}

/// Rows of W dequantized per chunk: about 4 MiB of f32 (16 MiB for a 16-bit base, a 7 B model's
/// attention projections whole), at least 64 rows. Each chunk's product re-reads (and the BLAS
/// repacks) all of `x`, so chunks stay large even where widening is cheap: 1 MiB chunks of a
/// 16-bit base ran 12–26 % slower at batch 4 than 4 MiB ones, and 16 MiB ones 4 % faster on two
/// threads (the same on one).
fn chunk_rows(w: &QuantWeight) -> usize {
    let values = if matches!(w.format, QuantFormat::Half(_)) { 1usize << 22 } else { 1 << 20 };
    (values / w.cols.max(1)).max(64).min(w.rows.max(1))
}

/// Rounds values to `dtype` (bf16/f16) and back, in place.
pub(crate) fn round_to(dtype: DType, v: &mut [f32]) {
    match dtype {
        DType::BF16 => v.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32()),
        DType::F16 => v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32()),
        _ => {}
    }
}

/// The input as f32: an f32 input as it is (no copy), a 16-bit one widened.
fn to_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [f32]>> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("quantized matmul expects a contiguous input") };
    Ok(match s {
        CpuStorage::F32(v) => std::borrow::Cow::Borrowed(&v[a..b]),
        CpuStorage::BF16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::F16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        other => bail!("quantized matmul: unsupported input dtype {:?}", other.dtype()),
    })
}

fn from_f32(v: Vec<f32>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(f16::from_f32).collect()),
        _ => CpuStorage::F32(v),
    }
}

/// `y[m, out] = x[m, in] · W̃ᵀ` (or, with `transpose`, `dx[m, in] = g[m, out] · W̃`) on the CPU
/// in f32, W̃ dequantized a chunk of rows at a time; a bf16/f16 compute dtype rounds the operands
/// and the result. `y` is overwritten, or added to with `accumulate`.
pub(crate) fn quant_matmul_cpu(
    w: &QuantWeight,
    x: &[f32],
    m: usize,
    transpose: bool,
    y: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    let compute = w.compute;
    if compute == DType::BF16 && m >= AMX_MIN_ROWS && amx::fits(n, k) && amx::available() {
        return quant_matmul_amx(w, x, m, transpose, y, accumulate);
    }
    if compute == DType::F32
        && m < HALF_GEMM_MAX_ROWS
        && let QuantFormat::Half(h) = &w.format
        && h.prepared.is_none()
    {
        // W widened as the product packs it.
        let b = half_gemm::HalfMatrix { bits: &h.bits, dtype: h.dtype, rows: n, cols: k };
        let done = if transpose {
            half_gemm::input_gradient(m, x, b, y, accumulate)
        } else {
            half_gemm::forward(m, x, b, y, accumulate)
        };
        if done {
            return Ok(());
        }
    }
    let rounded;
    let x = if matches!(compute, DType::BF16 | DType::F16) {
        let mut c = x.to_vec();
        round_to(compute, &mut c);
        rounded = c;
        &rounded[..]
    } else {
        x
    };
    let out_dim = if transpose { k } else { n };
    // With rounding or accumulation the product goes through a scratch buffer first.
    let direct = !accumulate && !matches!(compute, DType::BF16 | DType::F16);
    let mut scratch = if direct { Vec::new() } else { vec![0f32; m * out_dim] };
    let dst: &mut [f32] = if direct { &mut y[..m * out_dim] } else { &mut scratch };
    let rows = chunk_rows(w);
    // Every value of the chunk buffer is written before it is read: a reused one, not zeroed.
    let mut buf = Reused::take(&WIDENED_ROWS, rows * k);
    let mut r0 = 0;
    while r0 < n {
        let r = rows.min(n - r0);
        let wb = &mut buf.values[..r * k];
        dequantize_rows_par(w, r0, wb)?;
        round_to(compute, wb);
        if transpose {
            // dx[m, k] (+)= g[:, r0..r0+r] · W[r0..r0+r, :]: the first chunk overwrites.
            let g = Mat { data: &x[r0..], rs: n, cs: 1 };
            sgemm_par_ld(m, k, r, g, Mat::rows(wb, k), (&mut *dst, k), r0 > 0, 1.0);
        } else {
            // y[:, r0..r0+r] = x[m, k] · W[r0..r0+r, :]ᵀ
            sgemm_par_ld(m, r, k, Mat::rows(x, k), Mat::rows_t(wb, k), (&mut dst[r0..], n), false, 1.0);
        }
        r0 += r;
    }
    if !direct {
        round_to(compute, &mut scratch);
        if accumulate {
            y.iter_mut().zip(&scratch).for_each(|(a, b)| *a += b);
        } else {
            y[..m * out_dim].copy_from_slice(&scratch);
        }
    }
    Ok(())
}

thread_local! {
    /// The buffer a product widens W's rows into, kept between products (allocating and zeroing
    /// 4 MiB per projection cost 3 % of a LoRA step on a 16-bit base).
    static WIDENED_ROWS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// From this many rows on, a 16-bit base is widened a chunk at a time for the BLAS instead of
/// going through [`half_gemm`]: the widening is then a small share of each product, and the
/// BLAS's f32 kernel is 5–10 % faster than that tile (LoRA at 4 × 128 tokens ran 5 % faster this
/// way; at 2 × 128, 4 % slower).
const HALF_GEMM_MAX_ROWS: usize = 384;

/// Below this many rows (generation's one token) most of each 32-row tile would be padding, and
/// the f32 path is faster.
const AMX_MIN_ROWS: usize = 8;

/// [`quant_matmul_cpu`] with a bf16 compute dtype on the AMX tile unit: the operands rounded the
/// same way, the products accumulated in f32 by the tile unit, and the result left in f32 (the
/// tile unit's accumulators; rounding them would only lose precision). W goes over in
/// chunks of rows as bf16 bits: a bf16 base as stored, any other format dequantized and rounded.
fn quant_matmul_amx(
    w: &QuantWeight,
    x: &[f32],
    m: usize,
    transpose: bool,
    y: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    // The input gradient accumulates chunk by chunk straight into y; the forward overwrites, so
    // adding it to y (never asked for today) goes through a scratch buffer.
    let through_scratch = accumulate && !transpose;
    let mut scratch = if through_scratch { zeroed(m * n) } else { Vec::new() };
    let dst: &mut [f32] = if through_scratch { &mut scratch } else { y };
    if let QuantFormat::Half(h) = &w.format
        && let Some(p) = &h.prepared
    {
        let packed = amx::pack_rows(x, m, if transpose { n } else { k });
        if transpose {
            amx::backward(&packed, n, m, amx::Weight::Prepared(p), n, k, dst, accumulate);
        } else {
            amx::forward_prepared(p, n, &packed, m, dst, n);
        }
        return add_scratch(through_scratch, y, &scratch);
    }
    let stored = match &w.format {
        QuantFormat::Half(h) if h.dtype == DType::BF16 => Some(&h.bits),
        _ => None,
    };
    // A base stored in bf16 goes in one piece; other formats are widened a chunk at a time.
    let rows = match stored {
        Some(_) => n,
        None => (chunk_rows(w) / 32 * 32).max(32),
    };
    let mut widened = if stored.is_none() { vec![0f32; rows * k] } else { Vec::new() };
    let mut bits = if stored.is_none() { vec![0u16; rows * k] } else { Vec::new() };
    let packed = if transpose { amx::pack_rows(x, m, n) } else { amx::pack_x(x, m, k) };
    let mut r0 = 0;
    while r0 < n {
        let r = rows.min(n - r0);
        let chunk: &[u16] = match stored {
            Some(b) => &b[r0 * k..(r0 + r) * k],
            None => {
                dequantize_rows_par(w, r0, &mut widened[..r * k])?;
                to_bf16_bits(&widened[..r * k], &mut bits[..r * k]);
                &bits[..r * k]
            }
        };
        if transpose {
            amx::backward(&packed[r0..], n, m, amx::Weight::Rows(chunk), r, k, dst, accumulate || r0 > 0);
        } else {
            amx::forward(chunk, r, k, &packed, m, &mut dst[r0..], n);
        }
        r0 += r;
    }
    add_scratch(through_scratch, y, &scratch)
}

/// `y += scratch` when the product went through a scratch buffer.
fn add_scratch(through_scratch: bool, y: &mut [f32], scratch: &[f32]) -> Result<()> {
    if through_scratch {
        let add = |(a, b): (&mut [f32], &[f32])| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        if threads() > 1 {
            use rayon::prelude::*;
            y.par_chunks_mut(ELEMENTS_PER_TASK).zip(scratch.par_chunks(ELEMENTS_PER_TASK)).for_each(add);
        } else {
            add((y, scratch));
        }
    }
    Ok(())
}

/// f32 values to bf16 bits across the kernel pool.
fn to_bf16_bits(src: &[f32], out: &mut [u16]) {
    let conv = |(o, s): (&mut [u16], &[f32])| amx::convert_into(s, o);
    if threads() > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(ELEMENTS_PER_TASK).zip(src.par_chunks(ELEMENTS_PER_TASK)).for_each(conv);
    } else {
        conv((out, src));
    }
}

/// `w`'s rows from `r0` into `out`, split across the kernel pool: on one thread the widening
/// or dequantizing of a chunk left the other cores waiting for it (a 16-bit base on 2 threads
/// ran 25–36 % slower than its f32 copy).
fn dequantize_rows_par(w: &QuantWeight, r0: usize, out: &mut [f32]) -> Result<()> {
    let err = |e: crate::error::EngineError| candle_core::Error::Msg(e.to_string());
    let k = w.cols.max(1);
    let rows = out.len() / k;
    if threads() == 1 || rows < 2 {
        return w.dequantize_rows_into(r0, out).map_err(err);
    }
    use rayon::prelude::*;
    let per_task = ELEMENTS_PER_TASK.div_ceil(k).max(rows.div_ceil(4 * threads()));
    out.par_chunks_mut(per_task * k)
        .enumerate()
        .try_for_each(|(i, part)| w.dequantize_rows_into(r0 + i * per_task, part).map_err(err))
}

impl QuantMatmul {
    /// The CPU kernel on f32 data: `x` is `[m, in]` (forward) or `[m, out]` (backward).
    fn run_cpu(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let out_dim = if self.transpose { self.w.cols } else { self.w.rows };
        let mut y = vec![0f32; m * out_dim];
        quant_matmul_cpu(&self.w, x, m, self.transpose, &mut y, false)?;
        Ok(y)
    }

    fn dims(&self, l: &Layout) -> Result<(usize, Shape)> {
        let (n, k) = (self.w.rows, self.w.cols);
        let (inner, outer) = if self.transpose { (n, k) } else { (k, n) };
        let dims = l.dims();
        if dims.last() != Some(&inner) {
            bail!("quantized matmul: last dimension {:?}, expected {inner}", dims.last());
        }
        let m = l.shape().elem_count() / inner.max(1);
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = outer;
        }
        Ok((m, Shape::from(out)))
    }

    /// Any device without a kernel of its own: dequantize on the host into a transient dense
    /// tensor, move it over and use the backend's matmul.
    fn dense_fallback<S: BackendStorage + FromStorage>(
        &self,
        s: &S,
        l: &Layout,
        device: &candle_core::Device,
    ) -> Result<(S, Shape)> {
        let (m, shape) = self.dims(l)?;
        let w = self.w.dequantize(s.dtype(), device).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let w = if self.transpose { w.t()?.contiguous()? } else { w };
        let (ws, wl) = w.storage_and_layout();
        let ws = S::from_storage(&ws)?;
        let (n, k) = (wl.dims()[0], wl.dims()[1]);
        let x2 = Layout::contiguous_with_offset((m, k), l.start_offset());
        let out = s.matmul(ws, (1, m, n, k), &x2, &wl.transpose(0, 1)?)?;
        Ok((out, shape))
    }
}

/// Borrowing the backend storage out of a `Storage`.
trait FromStorage: Sized {
    fn from_storage(s: &candle_core::Storage) -> Result<&Self>;
}

impl FromStorage for MetalStorage {
    fn from_storage(s: &candle_core::Storage) -> Result<&Self> {
        match s {
            candle_core::Storage::Metal(m) => Ok(m),
            _ => bail!("quantized matmul: expected a Metal tensor"),
        }
    }
}

impl FromStorage for CudaStorage {
    fn from_storage(s: &candle_core::Storage) -> Result<&Self> {
        match s {
            candle_core::Storage::Cuda(c) => Ok(c),
            _ => bail!("quantized matmul: expected a CUDA tensor"),
        }
    }
}

impl CustomOp1 for QuantMatmul {
    fn name(&self) -> &'static str {
        if self.transpose { "quant-matmul-t" } else { "quant-matmul" }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, shape) = self.dims(l)?;
        let x = to_f32(s, l)?;
        let y = self.run_cpu(&x, m)?;
        Ok((from_f32(y, s.dtype()), shape))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let (m, shape) = self.dims(l)?;
            let out = super::cuda::quant_matmul_cuda(&self.w, self.transpose, s, l, m)?;
            Ok((out, shape))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s, l);
            bail!("quantized matmul: built without the `cuda` feature")
        }
    }

    fn metal_fwd(&self, s: &MetalStorage, l: &Layout) -> Result<(MetalStorage, Shape)> {
        let device = candle_core::Device::Metal(s.device().clone());
        self.dense_fallback(s, l, &device)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if self.transpose {
            bail!("quantized matmul: second derivatives are not supported");
        }
        Ok(Some(quant_matmul_t(grad, &self.w)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantKind, QuantSpec};
    use candle_core::{Device, Var};

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect()
    }

    #[test]
    fn matches_dense_matmul_on_the_dequantized_weight_with_input_gradient_only() -> Result<()> {
        let dev = Device::Cpu;
        for (kind, dq, rows, cols) in
            [(QuantKind::Nf4, true, 70, 96), (QuantKind::Fp4, false, 9, 61), (QuantKind::Int8, false, 33, 40)]
        {
            let spec = QuantSpec { kind, double_quant: dq, block_size: 64, compute: DType::F32 };
            let w = Arc::new(
                QuantWeight::quantize(&rand(rows * cols, 1), rows, cols, &spec)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            );
            let dense = w.dequantize(DType::F32, &dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let x = Var::from_tensor(&Tensor::from_vec(rand(2 * 3 * cols, 2), (2, 3, cols), &dev)?)?;
            let y = quant_matmul(x.as_tensor(), &w)?;
            let reference = x.as_tensor().broadcast_matmul(&dense.t()?)?;
            let d = (&y - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{kind:?}: forward differs by {d}");
            let r = Tensor::from_vec(rand(2 * 3 * rows, 3), (2, 3, rows), &dev)?;
            let grads = (y * &r)?.sum_all()?.backward()?;
            let dx = grads.get(x.as_tensor()).expect("dx");
            let d = (dx - r.broadcast_matmul(&dense)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{kind:?}: dL/dx differs by {d}");
        }
        Ok(())
    }

    /// A stored bf16 base with f32 compute: few rows go through the kernels that widen W as
    /// they pack it (where the CPU has them), many through chunks widened for the BLAS — here
    /// two chunks, so the input gradient's second chunk adds onto the first. Both give the
    /// products of the widened weight (checked at sampled positions against f64 sums).
    #[test]
    fn a_stored_base_multiplies_as_its_widened_values_on_both_paths() -> Result<()> {
        let (n, k) = (300, 16384); // a chunk is 256 rows of 16384: two chunks.
        let half = Tensor::from_vec(rand(n * k, 31), (n, k), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let w = QuantWeight::from_half_tensor(&half)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .expect("bf16 is a 16-bit store");
        assert_eq!(w.compute, DType::F32);
        let wide = half.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut rng = crate::rng::Rng::new(32);
        for m in [8, HALF_GEMM_MAX_ROWS] {
            let (x, g) = (rand(m * k, 33), rand(m * n, 34));
            for accumulate in [false, true] {
                let mut y = vec![0.25f32; m * n];
                quant_matmul_cpu(&w, &x, m, false, &mut y, accumulate)?;
                let mut dx = vec![0.25f32; m * k];
                quant_matmul_cpu(&w, &g, m, true, &mut dx, accumulate)?;
                let base = if accumulate { 0.25 } else { 0.0 };
                for _ in 0..200 {
                    let (i, j) = (rng.below(m), rng.below(n));
                    let want =
                        base + (0..k).map(|c| x[i * k + c] as f64 * wide[j * k + c] as f64).sum::<f64>();
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-3,
                        "m {m} acc {accumulate}: y[{i}][{j}] = {got}, want {want}"
                    );
                    let c = rng.below(k);
                    let want =
                        base + (0..n).map(|r| g[i * n + r] as f64 * wide[r * k + c] as f64).sum::<f64>();
                    let got = dx[i * k + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "m {m} acc {accumulate}: dx[{i}][{c}] = {got}, want {want}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Where the CPU has AMX, a bf16 product of whole 32×32 blocks runs on the tile unit: the
    /// operands rounded to bf16 as elsewhere, the result left in f32. Checked for a bf16 base as
    /// stored and for NF4, forward, input gradient and accumulation, against f64 sums of the
    /// rounded operands (any machine: elsewhere the emulation also rounds the result).
    #[test]
    fn bf16_products_sum_the_rounded_operands() -> Result<()> {
        let round =
            |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| bf16::from_f32(x).to_f32() as f64).collect() };
        let (n, k, m) = (96, 64, 45);
        let dense = rand(n * k, 21);
        let half = Tensor::from_vec(dense.clone(), (n, k), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let mut stored = QuantWeight::from_half_tensor(&half)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .expect("bf16 is a 16-bit store");
        stored.compute = DType::BF16;
        let spec =
            QuantSpec { kind: QuantKind::Nf4, double_quant: true, block_size: 64, compute: DType::BF16 };
        let nf4 =
            QuantWeight::quantize(&dense, n, k, &spec).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut prepared = QuantWeight::from_half_tensor(&half)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .expect("bf16 is a 16-bit store");
        prepared.compute = DType::BF16;
        prepared.prepare_bf16_products();
        let tolerance = if amx::available() { 1e-5 } else { 1e-2 };
        for w in [&stored, &prepared, &nf4] {
            let mut wd = vec![0f32; n * k];
            w.dequantize_rows_into(0, &mut wd).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let wr = round(&wd);
            let (x, g) = (rand(m * k, 22), rand(m * n, 23));
            let (xr, gr) = (round(&x), round(&g));
            let mut y = vec![0f32; m * n];
            quant_matmul_cpu(w, &x, m, false, &mut y, false)?;
            let want: Vec<f64> =
                (0..m * n).map(|e| (0..k).map(|c| xr[e / n * k + c] * wr[e % n * k + c]).sum()).collect();
            let err = |got: &[f32], want: &[f64]| {
                let scale = want.iter().fold(0f64, |s, v| s.max(v.abs()));
                got.iter().zip(want).fold(0f64, |e, (&a, b)| e.max((a as f64 - b).abs())) / scale
            };
            assert!(err(&y, &want) < tolerance, "{}: forward off by {}", w.describe(), err(&y, &want));
            let mut dx = rand(m * k, 24);
            let want: Vec<f64> = (0..m * k)
                .map(|e| dx[e] as f64 + (0..n).map(|i| gr[e / k * n + i] * wr[i * k + e % k]).sum::<f64>())
                .collect();
            quant_matmul_cpu(w, &g, m, true, &mut dx, true)?;
            assert!(
                err(&dx, &want) < tolerance,
                "{}: input gradient off by {}",
                w.describe(),
                err(&dx, &want)
            );
            // Without accumulation what the destination held is overwritten.
            let before = rand(m * k, 24);
            let want: Vec<f64> = want.iter().zip(&before).map(|(w, b)| w - *b as f64).collect();
            let mut fresh = vec![f32::NAN; m * k];
            quant_matmul_cpu(w, &g, m, true, &mut fresh, false)?;
            assert!(
                err(&fresh, &want) < tolerance,
                "{}: overwriting off by {}",
                w.describe(),
                err(&fresh, &want)
            );
        }
        Ok(())
    }

    #[test]
    fn bf16_compute_rounds_operands_and_result() -> Result<()> {
        let dev = Device::Cpu;
        let spec =
            QuantSpec { kind: QuantKind::Nf4, double_quant: false, block_size: 64, compute: DType::BF16 };
        let w = Arc::new(
            QuantWeight::quantize(&rand(8 * 64, 4), 8, 64, &spec)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        );
        let x = Tensor::from_vec(rand(64, 5), (1, 64), &dev)?;
        let y = quant_matmul(&x, &w)?;
        let wd = w.dequantize(DType::BF16, &dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let reference =
            x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.matmul(&wd.to_dtype(DType::F32)?.t()?)?;
        let reference = reference.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
        let d = (&y - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-2, "bf16 emulation differs by {d}");
        let exact = x.matmul(
            &w.dequantize(DType::F32, &dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?.t()?,
        )?;
        assert!((&y - &exact)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.0, "bf16 rounding must show");
        Ok(())
    }
}
