//! A frozen base kept in the 16-bit format its checkpoint stores (bf16 or f16) while training
//! computes in f32 on the CPU. Widening bf16/f16 to f32 is exact, so the products are the ones an
//! f32 copy of the weight would give — PEFT's `dtype=torch.float32` loads that copy, at twice the
//! memory. Here the weight is widened a chunk of rows at a time inside the op
//! ([`super::quant_matmul`]), and a LoRA run holds its base in half the memory.

use candle_core::{DType, Tensor};
use half::{bf16, f16};

/// A `[rows, cols]` matrix of bf16 or f16 values (their bits), row-major.
#[derive(Debug, Clone)]
pub struct HalfRows {
    pub dtype: DType,
    pub cols: usize,
    /// Row-major; empty once the values are held `prepared` instead.
    pub bits: Vec<u16>,
    /// The same bf16 values laid out for bf16 products on the AMX tile unit.
    pub prepared: Option<crate::ops::amx::Prepared>,
}

impl HalfRows {
    /// The values of a 2-D bf16/f16 tensor as stored; `None` for any other dtype.
    pub fn from_tensor(t: &Tensor) -> candle_core::Result<Option<Self>> {
        let (_, cols) = t.dims2()?;
        let flat = t.flatten_all()?;
        let bits = match t.dtype() {
            DType::BF16 => flat.to_vec1::<bf16>()?.into_iter().map(bf16::to_bits).collect(),
            DType::F16 => flat.to_vec1::<f16>()?.into_iter().map(f16::to_bits).collect(),
            _ => return Ok(None),
        };
        Ok(Some(Self { dtype: t.dtype(), cols, bits, prepared: None }))
    }

    pub fn bytes(&self) -> usize {
        self.bits.len() * 2 + self.prepared.as_ref().map_or(0, |p| p.bytes())
    }

    /// Widens rows `[r0, r0 + out.len() / cols)` to f32 (exact).
    pub fn dequantize_rows_into(&self, r0: usize, out: &mut [f32]) {
        if let Some(p) = &self.prepared {
            let mut bits = vec![0u16; out.len()];
            p.rows_into(r0, &mut bits);
            out.iter_mut().zip(&bits).for_each(|(o, &b)| *o = f32::from_bits((b as u32) << 16));
            return;
        }
        widen_into(self.dtype, &self.bits[r0 * self.cols..r0 * self.cols + out.len()], out);
    }
}

/// 16-bit values (`dtype` bf16, else f16) to f32, exactly.
pub(crate) fn widen_into(dtype: DType, src: &[u16], out: &mut [f32]) {
    match dtype {
        DType::BF16 => widen_bf16(src, out),
        _ => out.iter_mut().zip(src).for_each(|(o, &b)| *o = f16::from_bits(b).to_f32()),
    }
}

#[inline(always)]
fn widen_bf16_chunk(src: &[u16], out: &mut [f32]) {
    out.iter_mut().zip(src).for_each(|(o, &b)| *o = f32::from_bits((b as u32) << 16))
}

crate::ops::simd::widest_simd!(
    /// bf16 bits to f32: the top half of an f32, a shift. The loop is memory-bound; on AVX-512 it
    /// moves a whole cache line of bf16 per step (the baseline build's SSE2 moves 8 bytes).
    pub(crate) fn widen_bf16(src: &[u16], out: &mut [f32]) => widen_bf16_chunk
);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every bf16 bit pattern widens to the f32 with those top bits, at every vector width.
    #[test]
    fn bf16_widening_is_a_shift_at_every_width() {
        // All 65536 patterns, and one more so that no width divides the length.
        let bits: Vec<u16> = (0..=u16::MAX).chain([0x3f80]).collect();
        crate::ops::simd::with_each_level(|level| {
            let mut out = vec![f32::NAN; bits.len()];
            widen_bf16(&bits, &mut out);
            for (&b, o) in bits.iter().zip(&out) {
                assert_eq!(o.to_bits(), (b as u32) << 16, "{level:?}: {b:#06x}");
            }
        });
    }

    #[test]
    fn widening_is_exact_for_both_formats() -> candle_core::Result<()> {
        let values: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.37).collect();
        let w = Tensor::from_vec(values, (4, 6), &Device::Cpu)?;
        for dtype in [DType::BF16, DType::F16] {
            let stored = w.to_dtype(dtype)?;
            let h = HalfRows::from_tensor(&stored)?.expect("16-bit");
            assert_eq!(h.bytes(), 48);
            let mut rows = vec![0f32; 12];
            h.dequantize_rows_into(2, &mut rows);
            let expected = stored.to_dtype(DType::F32)?.narrow(0, 2, 2)?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(rows, expected, "{dtype:?}");
        }
        assert!(HalfRows::from_tensor(&w)?.is_none(), "f32 is not a 16-bit store");
        Ok(())
    }
}
