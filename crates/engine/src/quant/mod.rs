//! Quantized frozen weights for QLoRA: NF4/FP4 blockwise 4-bit with optional double
//! quantization and int8 row-wise, all in bitsandbytes 0.50's storage format, plus GGUF/GGML
//! block formats read from llama.cpp files. A [`QuantWeight`] is never turned back into a dense
//! tensor that outlives one matmul: [`quant_matmul`] dequantizes it chunk by chunk inside a
//! custom op whose backward returns dL/dx only.

mod double;
mod four_bit;
mod ggml;
mod half;
mod half_gemm;
mod int8;
mod matmul;

#[cfg(feature = "cuda")]
mod cuda;

pub use double::{
    BLOCK as DOUBLE_QUANT_BLOCK, DYNAMIC_MAP, DoubleQuant, quantize_blockwise_dynamic, torch_mean, torch_sum,
};
pub use four_bit::{Absmax, FP4, FourBit, FourBitKind, NF4, quantize_4bit};
pub use ggml::{GgmlRows, is_block_quantized};
pub use half::HalfRows;
pub use int8::Int8Rows;
pub(crate) use matmul::quant_matmul_cpu;
pub use matmul::{quant_matmul, quant_matmul_t};

/// Whether this CPU multiplies f32 inputs by a 16-bit frozen weight without an f32 copy of it
/// (AVX-512 or AVX2 kernels that widen W as they pack it): where true, `model.frozen_dtype = "auto"`
/// keeps a bf16/f16 base as stored.
pub fn fused_half_products() -> bool {
    half_gemm::available()
}

use crate::config::QuantSection;
use crate::error::{EngineError, Result};
use candle_core::{DType, Device, Tensor};

/// Which quantization QLoRA applies to the frozen base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    Nf4,
    Fp4,
    Int8,
}

/// How to quantize linear weights on load (the `[quant]` config section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantSpec {
    pub kind: QuantKind,
    /// Quantize the 4-bit block scales again to 8 bits (ignored for int8).
    pub double_quant: bool,
    pub block_size: usize,
    /// The dtype the weight is dequantized into and the matmul runs in.
    pub compute: DType,
}

impl QuantSpec {
    pub fn nf4() -> Self {
        Self { kind: QuantKind::Nf4, double_quant: true, block_size: 64, compute: DType::F32 }
    }

    pub fn from_config(q: &QuantSection) -> Result<Self> {
        let kind = match q.kind.as_str() {
            "nf4" => QuantKind::Nf4,
            "fp4" => QuantKind::Fp4,
            "int8" => QuantKind::Int8,
            other => {
                return Err(EngineError::config(
                    "quant.kind",
                    format!("must be nf4, fp4 or int8, got `{other}`"),
                ));
            }
        };
        let compute = match q.compute_dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => {
                return Err(EngineError::config(
                    "quant.compute_dtype",
                    format!("must be bf16, f16 or f32, got `{other}`"),
                ));
            }
        };
        if q.block_size < 2 || !q.block_size.is_multiple_of(2) {
            return Err(EngineError::config(
                "quant.block_size",
                format!("must be an even number, got {}", q.block_size),
            ));
        }
        Ok(Self { kind, double_quant: q.double_quant, block_size: q.block_size, compute })
    }

    /// A short label (`nf4+dq/64`, `int8`) for logs and benchmarks.
    pub fn label(&self) -> String {
        match self.kind {
            QuantKind::Int8 => "int8".into(),
            k => format!(
                "{}{}/{}",
                if k == QuantKind::Nf4 { "nf4" } else { "fp4" },
                if self.double_quant { "+dq" } else { "" },
                self.block_size
            ),
        }
    }
}

/// The stored codes of a quantized matrix.
#[derive(Debug)]
pub enum QuantFormat {
    FourBit(FourBit),
    Int8(Int8Rows),
    Ggml(GgmlRows),
    /// Not quantized: a bf16/f16 checkpoint's values as stored, widened exactly for f32 compute.
    Half(HalfRows),
}

/// A frozen `[rows, cols]` (`[out, in]`) weight in a quantized format.
#[derive(Debug)]
pub struct QuantWeight {
    pub rows: usize,
    pub cols: usize,
    pub format: QuantFormat,
    /// The dtype the weight is dequantized into for each matmul.
    pub compute: DType,
    #[cfg(feature = "cuda")]
    pub(crate) gpu: std::sync::OnceLock<cuda::GpuCopy>,
}

impl QuantWeight {
    fn with_format(rows: usize, cols: usize, format: QuantFormat, compute: DType) -> Self {
        Self {
            rows,
            cols,
            format,
            compute,
            #[cfg(feature = "cuda")]
            gpu: std::sync::OnceLock::new(),
        }
    }

    /// Quantizes a dense row-major `[rows, cols]` f32 matrix.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, spec: &QuantSpec) -> Result<Self> {
        if w.len() != rows * cols {
            return Err(EngineError::Other(format!("{} values for a {rows}x{cols} matrix", w.len())));
        }
        let format = match spec.kind {
            QuantKind::Int8 => QuantFormat::Int8(Int8Rows::quantize(w, rows, cols)),
            k => {
                let kind = if k == QuantKind::Nf4 { FourBitKind::Nf4 } else { FourBitKind::Fp4 };
                let mut q = quantize_4bit(w, kind, spec.block_size)?;
                if spec.double_quant {
                    q.double_quantize();
                }
                QuantFormat::FourBit(q)
            }
        };
        Ok(Self::with_format(rows, cols, format, spec.compute))
    }

    /// Quantizes a dense 2-D tensor (any float dtype, any device; read through the host). A
    /// contiguous f32 CPU tensor is read in place, without a copy.
    pub fn quantize_tensor(w: &Tensor, spec: &QuantSpec) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        if w.device().is_cpu() && w.dtype() == DType::F32 {
            let (storage, layout) = w.storage_and_layout();
            if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
                (&*storage, layout.contiguous_offsets())
            {
                return Self::quantize(&v[a..b], rows, cols, spec);
            }
        }
        let data = w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        Self::quantize(&data, rows, cols, spec)
    }

    /// A GGML block-quantized matrix kept as it is.
    pub fn from_ggml(rows: GgmlRows, compute: DType) -> Self {
        let (r, c) = (rows.rows, rows.cols);
        Self::with_format(r, c, QuantFormat::Ggml(rows), compute)
    }

    /// A 16-bit (bf16/f16) `[rows, cols]` tensor kept as stored, for f32 compute on the CPU;
    /// `None` for any other dtype.
    pub fn from_half_tensor(w: &Tensor) -> Result<Option<Self>> {
        let (rows, cols) = w.dims2()?;
        Ok(HalfRows::from_tensor(w)?.map(|h| Self::with_format(rows, cols, QuantFormat::Half(h), DType::F32)))
    }

    /// Prepares a bf16 weight kept as stored for bf16 products on the AMX tile unit (where the
    /// CPU has one): laid out once for the forward and once for the input gradient, at twice
    /// the memory of the weight alone (as much as an f32 copy) for products 1.3–2x as fast.
    pub fn prepare_bf16_products(&mut self) {
        let (rows, cols) = (self.rows, self.cols);
        if let QuantFormat::Half(h) = &mut self.format
            && h.dtype == DType::BF16
            && h.prepared.is_none()
            && self.compute == DType::BF16
            && crate::ops::amx::fits(rows, cols)
            && crate::ops::amx::available()
        {
            h.prepared = Some(crate::ops::amx::Prepared::new(&h.bits, rows, cols));
            h.bits = Vec::new();
        }
    }

    /// Bytes held by codes and scales.
    pub fn bytes(&self) -> usize {
        match &self.format {
            QuantFormat::FourBit(q) => q.bytes(),
            QuantFormat::Int8(q) => q.bytes(),
            QuantFormat::Ggml(q) => q.bytes(),
            QuantFormat::Half(h) => h.bytes(),
        }
    }

    /// A short description of the format (`nf4+dq/64`, `int8`, `Q4_1`).
    pub fn describe(&self) -> String {
        match &self.format {
            QuantFormat::FourBit(q) => format!(
                "{}{}/{}",
                q.kind.name(),
                if matches!(q.absmax, Absmax::Double(_)) { "+dq" } else { "" },
                q.block_size
            ),
            QuantFormat::Int8(_) => "int8".into(),
            QuantFormat::Ggml(q) => format!("{:?}", q.dtype),
            QuantFormat::Half(h) => format!("{:?} as stored", h.dtype).to_lowercase(),
        }
    }

    /// Dequantizes rows `[r0, r0 + out.len() / cols)` into `out` as f32.
    pub fn dequantize_rows_into(&self, r0: usize, out: &mut [f32]) -> Result<()> {
        let rows = out.len() / self.cols.max(1);
        if rows * self.cols != out.len() || r0 + rows > self.rows {
            return Err(EngineError::Other(format!(
                "row range {r0}+{rows} outside a {}-row matrix",
                self.rows
            )));
        }
        match &self.format {
            QuantFormat::FourBit(q) => q.dequantize_into(r0 * self.cols, out),
            QuantFormat::Int8(q) => q.dequantize_rows_into(r0, out),
            QuantFormat::Ggml(q) => q.dequantize_rows_into(r0, out)?,
            QuantFormat::Half(h) => h.dequantize_rows_into(r0, out),
        }
        Ok(())
    }

    /// The whole matrix as a dense tensor (merging, export, evaluation heads): a transient copy.
    pub fn dequantize(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows_into(0, &mut out)?;
        Ok(Tensor::from_vec(out, (self.rows, self.cols), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
    }
}
