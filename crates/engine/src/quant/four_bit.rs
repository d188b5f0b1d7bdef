//! NF4 and FP4 blockwise 4-bit quantization, bit-identical to bitsandbytes 0.50 on the CPU:
//! per block of `block_size` values (the last block may be shorter) the absolute maximum is the
//! scale, each value is scaled into [-1, 1] and mapped to the nearest of 16 code values by
//! bucketizing against the midpoints, and two codes share a byte — element 2k in the high
//! nibble, 2k+1 in the low one. Dequantization is `CODE[nibble] * absmax[block]` in f32.

use super::double::DoubleQuant;
use crate::error::{EngineError, Result};

/// Which 16-value code book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FourBitKind {
    Nf4,
    Fp4,
}

impl FourBitKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::Fp4 => "fp4",
        }
    }

    /// The value of each nibble (bitsandbytes' `get_4bit_type`, as f32 bit patterns).
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            Self::Nf4 => &NF4,
            Self::Fp4 => &FP4,
        }
    }

    /// The nibble of a value already scaled into [-1, 1]: `torch.bucketize` against the sorted
    /// midpoints, then (FP4) the code's sort order.
    #[inline]
    pub fn nibble(self, scaled: f32) -> u8 {
        let (bounds, order) = match self {
            Self::Nf4 => (&NF4_BOUNDS, &NF4_ORDER),
            Self::Fp4 => (&FP4_BOUNDS, &FP4_ORDER),
        };
        // bucketize(right=False): the number of bounds strictly below the value.
        let bucket = bounds.partition_point(|&b| b < scaled);
        order[bucket]
    }
}

const fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// NF4: quantiles of N(0, 1) normalised to [-1, 1].
pub const NF4: [f32; 16] = [
    f(0xbf800000),
    f(0xbf3239b1),
    f(0xbf066b30),
    f(0xbeca32a0),
    f(0xbe91a24d),
    f(0xbe3d353f),
    f(0xbdba7871),
    f(0x00000000),
    f(0x3da2faff),
    f(0x3e24cae3),
    f(0x3e7c04dd),
    f(0x3ead033a),
    f(0x3ee1a4b8),
    f(0x3f1007ab),
    f(0x3f3913b3),
    f(0x3f800000),
];

/// FP4 (1 sign, 2 exponent, 1 mantissa bit), in bit-pattern order, divided by 12.
pub const FP4: [f32; 16] = [
    f(0x00000000),
    f(0x3baaaaab),
    f(0x3f2aaaab),
    f(0x3f800000),
    f(0x3eaaaaab),
    f(0x3f000000),
    f(0x3e2aaaab),
    f(0x3e800000),
    f(0x00000000),
    f(0xbbaaaaab),
    f(0xbf2aaaab),
    f(0xbf800000),
    f(0xbeaaaaab),
    f(0xbf000000),
    f(0xbe2aaaab),
    f(0xbe800000),
];

/// `(code[order[i]] + code[order[i + 1]]) / 2` in f32, as bitsandbytes computes the bounds.
const NF4_BOUNDS: [f32; 15] = [
    f(0xbf591cd8),
    f(0xbf1c5270),
    f(0xbeeb8480),
    f(0xbeadea76),
    f(0xbe703cec),
    f(0xbe0d38bc),
    f(0xbd3a7871),
    f(0x3d22faff),
    f(0x3df64862),
    f(0x3e5067e0),
    f(0x3e9582d4),
    f(0x3ec753f9),
    f(0x3f006d04),
    f(0x3f248daf),
    f(0x3f5c89da),
];
const NF4_ORDER: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

const FP4_BOUNDS: [f32; 15] = [
    f(0xbf555556),
    f(0xbf155556),
    f(0xbed55556),
    f(0xbe955556),
    f(0xbe555556),
    f(0xbdb00000),
    f(0xbb2aaaab),
    f(0x00000000),
    f(0x3b2aaaab),
    f(0x3db00000),
    f(0x3e555556),
    f(0x3e955556),
    f(0x3ed55556),
    f(0x3f155556),
    f(0x3f555556),
];
/// `torch.argsort` of the FP4 code (the two zeros: index 0 sorts before index 8).
const FP4_ORDER: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];

/// Block scales: plain f32, or double-quantized to 8 bits.
#[derive(Debug, Clone)]
pub enum Absmax {
    F32(Vec<f32>),
    Double(DoubleQuant),
}

impl Absmax {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Double(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The scale of block `b`.
    #[inline]
    pub fn get(&self, b: usize) -> f32 {
        match self {
            Self::F32(v) => v[b],
            Self::Double(d) => d.value(b),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::Double(d) => d.bytes(),
        }
    }
}

/// A 4-bit quantized tensor of `numel` elements (row-major), bitsandbytes' storage layout.
#[derive(Debug, Clone)]
pub struct FourBit {
    pub kind: FourBitKind,
    pub block_size: usize,
    pub numel: usize,
    /// `ceil(numel / 2)` bytes; byte k holds element 2k (high nibble) and 2k + 1 (low nibble).
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

/// Per-block absolute maxima and packed codes of `x`, exactly as bitsandbytes' CPU
/// `quantize_4bit` computes them (full blocks scale by the f32 reciprocal of the clamped absmax,
/// the ragged last block divides by it; the stored absmax of the last block is the clamped one).
pub fn quantize_4bit(x: &[f32], kind: FourBitKind, block_size: usize) -> Result<FourBit> {
    if block_size == 0 || !block_size.is_multiple_of(2) {
        return Err(EngineError::config(
            "quant.block_size",
            format!("must be an even number, got {block_size}"),
        ));
    }
    let n = x.len();
    let blocks = n.div_ceil(block_size);
    let mut absmax = Vec::with_capacity(blocks);
    let mut packed = vec![0u8; n.div_ceil(2)];
    let full = n - n % block_size;
    let mut put = |i: usize, q: u8| {
        let byte = &mut packed[i / 2];
        if i.is_multiple_of(2) {
            *byte |= q << 4;
        } else {
            *byte |= q;
        }
    };
    for (b, block) in x.chunks(block_size).enumerate() {
        let start = b * block_size;
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let clamped = max.max(1e-38);
        if start < full {
            let recip = 1.0f32 / clamped;
            absmax.push(max);
            for (j, &v) in block.iter().enumerate() {
                put(start + j, kind.nibble((v * recip).clamp(-1.0, 1.0)));
            }
        } else {
            absmax.push(clamped);
            for (j, &v) in block.iter().enumerate() {
                put(start + j, kind.nibble((v / clamped).clamp(-1.0, 1.0)));
            }
        }
    }
    if n % 2 == 1 {
        // bitsandbytes pads the scaled values with one 0.0 before packing.
        put(n, kind.nibble(0.0));
    }
    Ok(FourBit { kind, block_size, numel: n, packed, absmax: Absmax::F32(absmax) })
}

impl FourBit {
    /// Bytes held by the codes and the scales.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax.bytes()
    }

    /// Replaces f32 block scales with their 8-bit double quantization (bitsandbytes'
    /// `compress_statistics=True`).
    pub fn double_quantize(&mut self) {
        if let Absmax::F32(v) = &self.absmax {
            self.absmax = Absmax::Double(DoubleQuant::quantize(v));
        }
    }

    /// Dequantizes elements `[start, start + out.len())` into `out` (f32).
    pub fn dequantize_into(&self, start: usize, out: &mut [f32]) {
        let code = self.kind.code();
        let bs = self.block_size;
        let end = start + out.len();
        let (mut i, mut o) = (start, 0);
        while i < end {
            let b = i / bs;
            let scale = self.absmax.get(b);
            let block_end = ((b + 1) * bs).min(end);
            if i % 2 == 1 {
                out[o] = code[(self.packed[i / 2] & 0x0f) as usize] * scale;
                i += 1;
                o += 1;
            }
            // Whole bytes: element 2k in the high nibble, 2k + 1 in the low one.
            let pairs = (block_end - i) / 2;
            let bytes = &self.packed[i / 2..i / 2 + pairs];
            for (dst, &byte) in out[o..o + 2 * pairs].chunks_exact_mut(2).zip(bytes) {
                dst[0] = code[(byte >> 4) as usize] * scale;
                dst[1] = code[(byte & 0x0f) as usize] * scale;
            }
            i += 2 * pairs;
            o += 2 * pairs;
            if i < block_end {
                out[o] = code[(self.packed[i / 2] >> 4) as usize] * scale;
                i += 1;
                o += 1;
            }
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel];
        self.dequantize_into(0, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_midpoints_of_the_sorted_code() {
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let code = kind.code();
            let mut order: Vec<usize> = (0..16).collect();
            order.sort_by(|&a, &b| code[a].total_cmp(&code[b]).then(a.cmp(&b)));
            let bounds = if kind == FourBitKind::Nf4 { &NF4_BOUNDS } else { &FP4_BOUNDS };
            let table = if kind == FourBitKind::Nf4 { &NF4_ORDER } else { &FP4_ORDER };
            for i in 0..15 {
                assert_eq!(bounds[i], (code[order[i]] + code[order[i + 1]]) / 2.0, "{kind:?} bound {i}");
            }
            assert_eq!(order.iter().map(|&o| o as u8).collect::<Vec<_>>(), table.to_vec());
            // Every code value maps back to a nibble with that value.
            for &c in code {
                assert_eq!(code[kind.nibble(c) as usize], c);
            }
        }
    }

    #[test]
    fn packs_high_nibble_first_and_round_trips_the_codes() {
        let x = [-1.0f32, 1.0, 0.0, 0.5, 0.25];
        let q = quantize_4bit(&x, FourBitKind::Nf4, 64).unwrap();
        assert_eq!(q.packed, vec![0x0f, 0x7c, 0xa7], "pad nibble is the code of 0.0");
        let d = q.dequantize();
        assert_eq!(d[0], -1.0);
        assert_eq!(d[1], 1.0);
        assert_eq!(d[2], 0.0);
    }

    #[test]
    fn any_range_dequantizes_like_the_whole_tensor() {
        let x: Vec<f32> = (0..301).map(|i| ((i * 7919 % 613) as f32 - 300.0) / 97.0).collect();
        for bs in [64, 128] {
            let mut q = quantize_4bit(&x, FourBitKind::Fp4, bs).unwrap();
            for dq in [false, true] {
                if dq {
                    q.double_quantize();
                }
                let full = q.dequantize();
                for start in [0, 1, 2, 63, 64, 65, 127, 200] {
                    for len in [1, 2, 3, 64, 101] {
                        let len = len.min(x.len() - start);
                        let mut out = vec![0f32; len];
                        q.dequantize_into(start, &mut out);
                        assert_eq!(out, full[start..start + len], "bs {bs} dq {dq} start {start} len {len}");
                    }
                }
            }
        }
    }
}
