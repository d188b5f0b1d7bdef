//! Row-wise absmax int8 quantization, stored exactly as bitsandbytes' `Linear8bitLt` stores its
//! weights (`int8_vectorwise_quant` of the fp16-cast weight: `round(w * (127 / absmax))`, ties to
//! even) and dequantized as its CPU training path does (`q * (absmax * (1/127))`).

use half::f16;

/// An int8 matrix `[rows, cols]` with one f32 scale (the row's absmax) per row.
#[derive(Debug, Clone)]
pub struct Int8Rows {
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<i8>,
    /// bitsandbytes' `SCB`: the absolute maximum of each row.
    pub scale: Vec<f32>,
}

/// Rounds half to even, like `torch.round`.
fn round_even(x: f32) -> f32 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 { 2.0 * (x / 2.0).round() } else { r }
}

impl Int8Rows {
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        let mut codes = Vec::with_capacity(rows * cols);
        let mut scale = Vec::with_capacity(rows);
        for row in w.chunks(cols.max(1)).take(rows) {
            let h: Vec<f32> = row.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            let absmax = h.iter().fold(0f32, |m, v| m.max(v.abs()));
            // `127.0 / t` in torch is `t.reciprocal() * 127.0`: two f32 roundings.
            let s = (1.0f32 / absmax) * 127.0f32;
            for v in h {
                let q = round_even(v * s);
                codes.push(if q.is_nan() { 0 } else { q.clamp(-128.0, 127.0) as i8 });
            }
            scale.push(absmax);
        }
        Self { rows, cols, codes, scale }
    }

    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scale.len() * 4
    }

    /// Dequantizes rows `[r0, r0 + out.len() / cols)` into `out`.
    pub fn dequantize_rows_into(&self, r0: usize, out: &mut [f32]) {
        let per = 1.0f32 / 127.0;
        for (i, row) in out.chunks_mut(self.cols).enumerate() {
            let r = r0 + i;
            let s = self.scale[r] * per;
            let codes = &self.codes[r * self.cols..(r + 1) * self.cols];
            for (o, &q) in row.iter_mut().zip(codes) {
                *o = q as f32 * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_keeps_the_row_max_at_127() {
        assert_eq!(round_even(2.5), 2.0);
        assert_eq!(round_even(-3.5), -4.0);
        assert_eq!(round_even(1.4), 1.0);
        let q = Int8Rows::quantize(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0], 2, 3);
        assert_eq!(&q.codes[..3], &[64, -127, 32]);
        assert_eq!(&q.codes[3..], &[0, 0, 0], "an all-zero row stays zero");
        assert_eq!(q.scale[0], 1.0);
    }
}
