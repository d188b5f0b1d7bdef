//! GGUF/GGML block-quantized matrices (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K) kept in their
//! file encoding as a frozen base. Rows are independent (blocks run along a row), so a row range
//! is dequantized by handing its blocks to candle's GGML kernels, and rows can be reordered (to
//! undo llama.cpp's q/k permutation) without touching the codes.

use crate::error::{EngineError, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, Device};
use std::borrow::Cow;

/// A `[rows, cols]` matrix in a GGML block format.
pub struct GgmlRows {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    /// The raw blocks, held as u16 so that every block (2-byte aligned f16 scales) is aligned.
    data: Vec<u16>,
}

impl std::fmt::Debug for GgmlRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgmlRows[{}x{} {:?}]", self.rows, self.cols, self.dtype)
    }
}

/// Whether a GGML type is a block format this module keeps quantized.
pub fn is_block_quantized(dtype: GgmlDType) -> bool {
    use GgmlDType as G;
    matches!(
        dtype,
        G::Q4_0 | G::Q4_1 | G::Q5_0 | G::Q5_1 | G::Q8_0 | G::Q2K | G::Q3K | G::Q4K | G::Q5K | G::Q6K
    )
}

impl GgmlRows {
    /// Takes the raw bytes of a `[rows, cols]` tensor; `row_order[i]` is the stored row that
    /// becomes row i (identity when `None`).
    pub fn new(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        row_order: Option<&[usize]>,
    ) -> Result<Self> {
        if !is_block_quantized(dtype) {
            return Err(EngineError::Other(format!("{dtype:?} is not a GGML block format")));
        }
        let bs = dtype.block_size();
        if !cols.is_multiple_of(bs) {
            return Err(EngineError::Other(format!(
                "{cols} columns are not a multiple of the {dtype:?} block ({bs})"
            )));
        }
        let row_bytes = cols / bs * dtype.type_size();
        if bytes.len() != rows * row_bytes {
            return Err(EngineError::Other(format!(
                "{} bytes of data, a {rows}x{cols} {dtype:?} tensor needs {}",
                bytes.len(),
                rows * row_bytes
            )));
        }
        if !row_bytes.is_multiple_of(2) {
            return Err(EngineError::Other(format!(
                "{dtype:?} rows of {row_bytes} bytes are not 2-byte aligned"
            )));
        }
        let mut data = Vec::with_capacity(bytes.len() / 2);
        for r in 0..rows {
            let src = row_order.map_or(r, |o| o[r]);
            if src >= rows {
                return Err(EngineError::Other(format!("row order names row {src} of {rows}")));
            }
            let row = &bytes[src * row_bytes..(src + 1) * row_bytes];
            data.extend(row.chunks_exact(2).map(|p| u16::from_ne_bytes([p[0], p[1]])));
        }
        Ok(Self { dtype, rows, cols, row_bytes, data })
    }

    fn raw(&self) -> &[u8] {
        // SAFETY: any initialised u16 memory is valid u8 memory of twice the length, u8 has
        // alignment 1, and the slice borrows `self.data` for its lifetime.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), self.data.len() * 2) }
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }

    /// Dequantizes rows `[r0, r0 + out.len() / cols)` into `out`.
    pub fn dequantize_rows_into(&self, r0: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len();
        let rows = n / self.cols.max(1);
        if rows * self.cols != n || r0 + rows > self.rows {
            return Err(EngineError::Other(format!(
                "row range {r0}+{rows} outside a {}-row matrix",
                self.rows
            )));
        }
        let bytes = &self.raw()[r0 * self.row_bytes..(r0 + rows) * self.row_bytes];
        let blocks = self.dtype.from_data(Cow::Borrowed(bytes));
        match blocks.dequantize(n)? {
            CpuStorage::F32(v) => out.copy_from_slice(&v),
            _ => return Err(EngineError::Other("GGML dequantization did not give f32".into())),
        }
        Ok(())
    }

    /// The matrix as a candle `QTensor` on `device` (GPU dequantization kernels).
    pub fn to_qtensor(&self, device: &Device) -> Result<candle_core::quantized::QTensor> {
        use candle_core::quantized::{QStorage, QTensor};
        let storage = QStorage::from_data(Cow::Borrowed(self.raw()), device, self.dtype)?;
        Ok(QTensor::new(storage, (self.rows, self.cols))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use candle_core::quantized::QTensor;

    #[test]
    fn row_ranges_and_reordering_match_candle_dequantization() {
        let dev = Device::Cpu;
        let (rows, cols) = (6, 512);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let t = Tensor::from_vec(w, (rows, cols), &dev).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let full = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
            let data = q.data().unwrap();
            let order = [5, 4, 3, 2, 1, 0];
            let g = GgmlRows::new(dtype, rows, cols, &data, Some(&order)).unwrap();
            let mut out = vec![0f32; 2 * cols];
            g.dequantize_rows_into(1, &mut out).unwrap();
            assert_eq!(&out[..cols], &full[4][..], "{dtype:?}");
            assert_eq!(&out[cols..], &full[3][..], "{dtype:?}");
            assert!(g.dequantize_rows_into(5, &mut out).is_err());
        }
        assert!(GgmlRows::new(GgmlDType::Q4K, 1, 96, &[0; 10], None).is_err());
    }
}
