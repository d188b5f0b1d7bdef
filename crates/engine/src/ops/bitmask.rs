//! A dropout mask kept as bits (one per element, bit `i % 64` of word `i / 64`) applied to a
//! buffer: in AVX-512, each 16 bits of a word are the lane mask of one masked multiply; elsewhere
//! a scalar loop. Testing each element's bit one at a time was a sixth of a LoRA step with the
//! default dropout.

use super::vexp::avx512;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[inline]
fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] >> (i % 64) & 1 == 1
}

/// `out[j] = x[j] · scale` where element `first + j` is kept, else 0 (`first` a multiple of 64).
pub(crate) fn scaled(bits: &[u64], first: usize, x: &[f32], scale: f32, out: &mut [f32]) {
    debug_assert!(first.is_multiple_of(64) && x.len() >= out.len());
    let done = if avx512() {
        // SAFETY: the CPU has AVX-512F (checked above).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            scaled_avx512(bits, first, x, scale, out)
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    } else {
        0
    };
    for j in done..out.len() {
        out[j] = if bit(bits, first + j) { x[j] * scale } else { 0.0 };
    }
}

/// `acc[j] += t[j] · scale` where element `first + j` is kept (`first` a multiple of 64).
pub(crate) fn add_scaled(bits: &[u64], first: usize, t: &[f32], scale: f32, acc: &mut [f32]) {
    debug_assert!(first.is_multiple_of(64) && t.len() >= acc.len());
    let done = if avx512() {
        // SAFETY: the CPU has AVX-512F (checked above).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            add_scaled_avx512(bits, first, t, scale, acc)
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    } else {
        0
    };
    for j in done..acc.len() {
        if bit(bits, first + j) {
            acc[j] += t[j] * scale;
        }
    }
}

/// The whole 64-element words of [`scaled`]; returns how many elements it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scaled_avx512(bits: &[u64], first: usize, x: &[f32], scale: f32, out: &mut [f32]) -> usize {
    let words = out.len() / 64;
    let s = _mm512_set1_ps(scale);
    for w in 0..words {
        let word = bits[first / 64 + w];
        for q in 0..4 {
            let at = 64 * w + 16 * q;
            let k = (word >> (16 * q)) as __mmask16;
            // SAFETY: `at + 16 ≤ 64 · words ≤ out.len() ≤ x.len()`.
            unsafe {
                let v = _mm512_maskz_mul_ps(k, _mm512_loadu_ps(x.as_ptr().add(at)), s);
                _mm512_storeu_ps(out.as_mut_ptr().add(at), v);
            }
        }
    }
    64 * words
}

/// The whole 64-element words of [`add_scaled`]; returns how many elements it covered.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_scaled_avx512(bits: &[u64], first: usize, t: &[f32], scale: f32, acc: &mut [f32]) -> usize {
    let words = acc.len() / 64;
    let s = _mm512_set1_ps(scale);
    for w in 0..words {
        let word = bits[first / 64 + w];
        for q in 0..4 {
            let at = 64 * w + 16 * q;
            let k = (word >> (16 * q)) as __mmask16;
            // SAFETY: `at + 16 ≤ 64 · words ≤ acc.len() ≤ t.len()`.
            unsafe {
                let a = _mm512_loadu_ps(acc.as_ptr().add(at));
                let v = _mm512_mask3_fmadd_ps(_mm512_loadu_ps(t.as_ptr().add(at)), s, a, k);
                _mm512_storeu_ps(acc.as_mut_ptr().add(at), v);
            }
        }
    }
    64 * words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_products_follow_the_bits_on_every_path() {
        let bits: Vec<u64> = (0..5u64).map(|i| 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1)).collect();
        let n = 64 * 4 + 37; // whole words and a tail
        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
        let t: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
        for first in [0, 64] {
            let len = n - first;
            let mut out = vec![f32::NAN; len];
            scaled(&bits, first, &x[..len], 2.0, &mut out);
            let mut acc = vec![1f32; len];
            add_scaled(&bits, first, &t[..len], 2.0, &mut acc);
            for j in 0..len {
                let kept = bit(&bits, first + j);
                assert_eq!(out[j], if kept { x[j] * 2.0 } else { 0.0 }, "scaled {first}+{j}");
                assert_eq!(acc[j], if kept { 1.0 + t[j] * 2.0 } else { 1.0 }, "add_scaled {first}+{j}");
            }
        }
    }
}
