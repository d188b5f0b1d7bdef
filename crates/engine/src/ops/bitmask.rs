//! A dropout mask kept as bits (one per element, bit `i % 64` of word `i / 64`) applied to a
//! buffer: in AVX-512, each 16 bits of a word are the lane mask of one masked multiply; in AVX2
//! each 8 bits are spread over a vector's lanes and select; elsewhere a scalar loop. Testing each
//! element's bit one at a time was a sixth of a LoRA step with the default dropout.

use super::cpu::avx2_fma as avx2;
use super::vexp::avx512;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The vector loops this CPU runs.
enum Vector {
    Avx512,
    Avx2,
}

fn vector() -> Option<Vector> {
    if avx512() {
        Some(Vector::Avx512)
    } else if avx2() {
        Some(Vector::Avx2)
    } else {
        None
    }
}

#[inline]
fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] >> (i % 64) & 1 == 1
}

/// `out[j] = x[j] · scale` where element `first + j` is kept, else 0 (`first` a multiple of 64).
pub(crate) fn scaled(bits: &[u64], first: usize, x: &[f32], scale: f32, out: &mut [f32]) {
    debug_assert!(first.is_multiple_of(64) && x.len() >= out.len());
    let done = match vector() {
        // SAFETY: the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Some(Vector::Avx512) => unsafe { scaled_avx512(bits, first, x, scale, out) },
        // SAFETY: the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Some(Vector::Avx2) => unsafe { scaled_avx2(bits, first, x, scale, out) },
        _ => 0,
    };
    for j in done..out.len() {
        out[j] = if bit(bits, first + j) { x[j] * scale } else { 0.0 };
    }
}

/// `acc[j] += t[j] · scale` where element `first + j` is kept (`first` a multiple of 64).
pub(crate) fn add_scaled(bits: &[u64], first: usize, t: &[f32], scale: f32, acc: &mut [f32]) {
    debug_assert!(first.is_multiple_of(64) && t.len() >= acc.len());
    let done = match vector() {
        // SAFETY: the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Some(Vector::Avx512) => unsafe { add_scaled_avx512(bits, first, t, scale, acc) },
        // SAFETY: the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Some(Vector::Avx2) => unsafe { add_scaled_avx2(bits, first, t, scale, acc) },
        _ => 0,
    };
    for j in done..acc.len() {
        if bit(bits, first + j) {
            acc[j] += t[j] * scale;
        }
    }
}

/// Calls `group(at, bits)` for every `lanes`-element group of the first `words` words from element
/// `first` on: `at` the group's first element (from `first`), `bits` the word shifted to put the
/// group's bits lowest.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn each_group(bits: &[u64], first: usize, words: usize, lanes: usize, mut group: impl FnMut(usize, u64)) {
    for w in 0..words {
        let word = bits[first / 64 + w];
        for q in 0..64 / lanes {
            group(64 * w + lanes * q, word >> (lanes * q));
        }
    }
}

/// The whole 64-element words of [`scaled`]; returns how many elements it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scaled_avx512(bits: &[u64], first: usize, x: &[f32], scale: f32, out: &mut [f32]) -> usize {
    let words = out.len() / 64;
    let s = _mm512_set1_ps(scale);
    each_group(bits, first, words, 16, |at, group| {
        // SAFETY: `at + 16 ≤ 64 · words ≤ out.len() ≤ x.len()`.
        unsafe {
            let v = _mm512_maskz_mul_ps(group as __mmask16, _mm512_loadu_ps(x.as_ptr().add(at)), s);
            _mm512_storeu_ps(out.as_mut_ptr().add(at), v);
        }
    });
    64 * words
}

/// The whole 64-element words of [`add_scaled`]; returns how many elements it covered.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_scaled_avx512(bits: &[u64], first: usize, t: &[f32], scale: f32, acc: &mut [f32]) -> usize {
    let words = acc.len() / 64;
    let s = _mm512_set1_ps(scale);
    each_group(bits, first, words, 16, |at, group| {
        // SAFETY: `at + 16 ≤ 64 · words ≤ acc.len() ≤ t.len()`.
        unsafe {
            let a = _mm512_loadu_ps(acc.as_ptr().add(at));
            let v = _mm512_mask3_fmadd_ps(_mm512_loadu_ps(t.as_ptr().add(at)), s, a, group as __mmask16);
            _mm512_storeu_ps(acc.as_mut_ptr().add(at), v);
        }
    });
    64 * words
}

/// The lanes of `bits`' low 8 bits as an AVX2 select mask (all ones where the bit is set).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lanes8(bits: u64) -> __m256 {
    let sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let spread = _mm256_and_si256(_mm256_set1_epi32((bits & 0xff) as i32), sel);
    _mm256_castsi256_ps(_mm256_cmpeq_epi32(spread, sel))
}

/// [`scaled_avx512`] in AVX2: eight lanes per 8 bits of a word.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scaled_avx2(bits: &[u64], first: usize, x: &[f32], scale: f32, out: &mut [f32]) -> usize {
    let words = out.len() / 64;
    let s = _mm256_set1_ps(scale);
    each_group(bits, first, words, 8, |at, group| {
        // SAFETY: `at + 8 ≤ 64 · words ≤ out.len() ≤ x.len()`.
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(at)), s);
            _mm256_storeu_ps(out.as_mut_ptr().add(at), _mm256_and_ps(v, lanes8(group)));
        }
    });
    64 * words
}

/// [`add_scaled_avx512`] in AVX2: eight lanes per 8 bits of a word.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_scaled_avx2(bits: &[u64], first: usize, t: &[f32], scale: f32, acc: &mut [f32]) -> usize {
    let words = acc.len() / 64;
    let s = _mm256_set1_ps(scale);
    each_group(bits, first, words, 8, |at, group| {
        // SAFETY: `at + 8 ≤ 64 · words ≤ acc.len() ≤ t.len()`.
        unsafe {
            let a = _mm256_loadu_ps(acc.as_ptr().add(at));
            let v = _mm256_fmadd_ps(_mm256_loadu_ps(t.as_ptr().add(at)), s, a);
            _mm256_storeu_ps(acc.as_mut_ptr().add(at), _mm256_blendv_ps(a, v, lanes8(group)));
        }
    });
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

    /// The AVX2 words on their own, also where the CPU would take the AVX-512 ones.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_words_follow_the_bits() {
        if !avx2() {
            eprintln!("skipped: the CPU lacks AVX2");
            return;
        }
        let bits: Vec<u64> = (0..5u64).map(|i| 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 3)).collect();
        let n = 64 * 3 + 5;
        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 7.0).collect();
        for first in [0, 128] {
            let (mut out, mut acc) = (vec![f32::NAN; n], vec![1f32; n]);
            // SAFETY: the CPU runs AVX2 and FMA (checked above).
            let done = unsafe { scaled_avx2(&bits, first, &x, 3.0, &mut out) };
            let added = unsafe { add_scaled_avx2(&bits, first, &x, 3.0, &mut acc) };
            assert_eq!((done, added), (192, 192), "whole words only");
            for j in 0..done {
                let kept = bit(&bits, first + j);
                assert_eq!(out[j], if kept { x[j] * 3.0 } else { 0.0 }, "scaled {first}+{j}");
                assert_eq!(acc[j], if kept { 1.0 + x[j] * 3.0 } else { 1.0 }, "add_scaled {first}+{j}");
            }
            assert!(out[done..].iter().all(|v| v.is_nan()), "past the words");
        }
    }
}
