//! The AVX2 kernel of [`super`], for the many CPUs without AVX-512 (AMD before Zen 4, Intel
//! desktops): a 6 × 16 register tile (two 8-lane vectors per row, twelve accumulators of the
//! sixteen registers), W widened 16 values at a time, and 8 × 8 blocks transposed in registers
//! for the forward. f16 widens with F16C, which every CPU with AVX2 and FMA has.

use super::Kernel;
use candle_core::DType;
use std::arch::x86_64::*;

/// Rows of the result per register tile.
const MR: usize = 6;
/// Columns of the result per register tile: two 8-lane vectors.
const NR: usize = 16;

/// 8 values of bf16 (or f16) bits widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen8(dtype: DType, v: __m128i) -> __m256 {
    match dtype {
        DType::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v))),
        _ => _mm256_cvtph_ps(v),
    }
}

/// An 8 × 8 block transposed in registers: column `c` of the rows `r` as `out[c]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // Pairs of rows interleaved, then quadruples: s[4h + c] holds rows 4h..4h+4 at column c in
    // its low 128-bit lane and at column 4 + c in its high one.
    let mut s = [_mm256_setzero_ps(); 8];
    for h in 0..2 {
        let (a, b, c, d) = (r[4 * h], r[4 * h + 1], r[4 * h + 2], r[4 * h + 3]);
        let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
        s[4 * h] = _mm256_shuffle_ps::<0x44>(t0, t2);
        s[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(t0, t2);
        s[4 * h + 2] = _mm256_shuffle_ps::<0x44>(t1, t3);
        s[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(t1, t3);
    }
    // Then the lanes: rows 0..4 and 4..8 of column c side by side.
    std::array::from_fn(|c| {
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(s[c], s[4 + c])
        } else {
            _mm256_permute2f128_ps::<0x31>(s[c - 4], s[c])
        }
    })
}

/// 8 rows of 8 16-bit values (`src_ld` apart) widened and transposed: value `[r][c]` to
/// `dst[c · dst_ld + r]`.
///
/// # Safety
/// Both blocks must be inside their matrices.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_transpose8(dtype: DType, src: *const u16, src_ld: usize, dst: *mut f32, dst_ld: usize) {
    // SAFETY: the caller vouches for the 8 rows of 8 values on both sides.
    unsafe {
        let r =
            std::array::from_fn(|i| widen8(dtype, _mm_loadu_si128(src.add(i * src_ld) as *const __m128i)));
        for (c, col) in transpose8(r).into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(c * dst_ld), col);
        }
    }
}

/// `src` (a whole number of `NR`-value runs, 16-bit) widened: run `j` to `dst + j · stride`.
///
/// # Safety
/// `dst` must hold `src.len() / NR` runs of `NR` values, `stride` apart.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_into_panels(dtype: DType, src: &[u16], dst: *mut f32, stride: usize) {
    for (j, run) in src.chunks_exact(NR).enumerate() {
        // SAFETY: a run is NR = 16 values (two 128-bit loads); the destination per the caller.
        unsafe {
            let lo = widen8(dtype, _mm_loadu_si128(run.as_ptr() as *const __m128i));
            let hi = widen8(dtype, _mm_loadu_si128(run.as_ptr().add(8) as *const __m128i));
            let d = dst.add(j * stride);
            _mm256_storeu_ps(d, lo);
            _mm256_storeu_ps(d.add(8), hi);
        }
    }
}

/// One register tile: `c[rows, cols] (+)= ap · bp` over depth `kc` (`ap` a packed row tile,
/// `bp` a packed panel).
///
/// # Safety
/// `c` must hold `rows` rows of `cols` values, `ldc` apart; the CPU must run AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile(
    kc: usize,
    ap: &[f32],
    bp: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    overwrite: bool,
) {
    let (ap, bp) = (&ap[..kc * MR], &bp[..kc * NR]);
    for i in 0..rows {
        // SAFETY: a prefetch only hints; the address is inside c's row i anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8) };
    }
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    let step = |p: usize, lo: &mut [__m256; MR], hi: &mut [__m256; MR]| {
        // SAFETY: p < kc, and both panels hold kc rows (sliced above).
        unsafe {
            let b0 = _mm256_loadu_ps(bp.as_ptr().add(p * NR));
            let b1 = _mm256_loadu_ps(bp.as_ptr().add(p * NR + 8));
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*ap.as_ptr().add(p * MR + i));
                lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
            }
        }
    };
    super::each_depth(kc, |p| step(p, &mut lo, &mut hi));
    for i in 0..rows {
        // SAFETY: row i < rows of c; only its first `cols` values are read or written.
        unsafe {
            let row = c.add(i * ldc);
            if cols == NR {
                let (mut v0, mut v1) = (lo[i], hi[i]);
                if !overwrite {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row.add(8)));
                }
                _mm256_storeu_ps(row, v0);
                _mm256_storeu_ps(row.add(8), v1);
            } else {
                // A partial panel (the last columns of c): through a buffer.
                let mut sums = [0f32; NR];
                _mm256_storeu_ps(sums.as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(sums.as_mut_ptr().add(8), hi[i]);
                let dst = std::slice::from_raw_parts_mut(row, cols);
                for (d, s) in dst.iter_mut().zip(sums) {
                    *d = if overwrite { s } else { *d + s };
                }
            }
        }
    }
}

/// The kernel for CPUs with AVX2, FMA and F16C.
pub(super) struct Avx2;

impl Kernel for Avx2 {
    const MR: usize = MR;
    const LANES: usize = 8;

    unsafe fn tile(
        kc: usize,
        ap: &[f32],
        bp: &[f32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        overwrite: bool,
    ) {
        // SAFETY: the caller's contract is the tile's; the driver runs this kernel only where
        // the CPU has AVX2, FMA and F16C.
        unsafe { tile(kc, ap, bp, c, ldc, rows, cols, overwrite) }
    }

    unsafe fn widen_into_panels(dtype: DType, src: &[u16], dst: *mut f32, stride: usize) {
        // SAFETY: as for `tile`.
        unsafe { widen_into_panels(dtype, src, dst, stride) }
    }

    unsafe fn widen_transpose(dtype: DType, src: *const u16, src_ld: usize, dst: *mut f32, dst_ld: usize) {
        // SAFETY: as for `tile`.
        unsafe { widen_transpose8(dtype, src, src_ld, dst, dst_ld) }
    }
}
