//! The AVX-512 kernel of [`super`]: an 8 × 32 register tile (two 16-lane vectors per row), W
//! widened 32 values at a time, and 16 × 16 blocks transposed in registers for the forward.

use super::Kernel;
use candle_core::DType;
use std::arch::x86_64::*;

/// 16 values of bf16 (or f16) bits widened to f32.
#[inline]
#[target_feature(enable = "avx512f")]
fn widen16(dtype: DType, v: __m256i) -> __m512 {
    match dtype {
        DType::BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v))),
        _ => _mm512_cvtph_ps(v),
    }
}

/// A 16 × 16 block transposed in registers: column `c` of the rows `r` as `out[c]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved, then quadruples: u[4q + s] holds, in each 128-bit lane L,
    // rows 4q..4q+4 at column 4L + s.
    let mut u = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let (a, b, c, d) = (r[4 * q], r[4 * q + 1], r[4 * q + 2], r[4 * q + 3]);
        let (t0, t1) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let (t2, t3) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        u[4 * q] = _mm512_shuffle_ps::<0x44>(t0, t2);
        u[4 * q + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
        u[4 * q + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
        u[4 * q + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
    }
    // Then the 128-bit lanes: v[s] = lanes 0, 2 and v[4 + s] = lanes 1, 3 of u[s] and
    // u[4 + s] (rows 0..8), likewise v[8..16] for rows 8..16.
    let mut v = [_mm512_setzero_ps(); 16];
    for h in 0..2 {
        for s in 0..4 {
            let (a, b) = (u[8 * h + s], u[8 * h + 4 + s]);
            v[8 * h + s] = _mm512_shuffle_f32x4::<0x88>(a, b);
            v[8 * h + 4 + s] = _mm512_shuffle_f32x4::<0xDD>(a, b);
        }
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for s in 0..4 {
        out[s] = _mm512_shuffle_f32x4::<0x88>(v[s], v[8 + s]);
        out[4 + s] = _mm512_shuffle_f32x4::<0x88>(v[4 + s], v[12 + s]);
        out[8 + s] = _mm512_shuffle_f32x4::<0xDD>(v[s], v[8 + s]);
        out[12 + s] = _mm512_shuffle_f32x4::<0xDD>(v[4 + s], v[12 + s]);
    }
    out
}

/// 16 rows of 16 16-bit values (`src_ld` apart) widened and transposed: value `[r][c]` to
/// `dst[c · dst_ld + r]`.
///
/// # Safety
/// Both blocks must be inside their matrices.
#[target_feature(enable = "avx512f")]
unsafe fn widen_transpose16(dtype: DType, src: *const u16, src_ld: usize, dst: *mut f32, dst_ld: usize) {
    // SAFETY: the caller vouches for the 16 rows of 16 values on both sides.
    unsafe {
        let r = std::array::from_fn(|i| {
            widen16(dtype, _mm256_loadu_si256(src.add(i * src_ld) as *const __m256i))
        });
        for (c, col) in transpose16(r).into_iter().enumerate() {
            _mm512_storeu_ps(dst.add(c * dst_ld), col);
        }
    }
}

/// `src` (a whole number of `NR`-value runs, 16-bit) widened: run `j` to `dst + j · stride`.
///
/// # Safety
/// `dst` must hold `src.len() / NR` runs of `NR` values, `stride` apart.
#[target_feature(enable = "avx512f")]
unsafe fn widen_into_panels(dtype: DType, src: &[u16], dst: *mut f32, stride: usize) {
    for (j, run) in src.chunks_exact(NR).enumerate() {
        // SAFETY: a run is NR = 32 values (two 256-bit loads); the destination per the caller.
        unsafe {
            let lo = widen16(dtype, _mm256_loadu_si256(run.as_ptr() as *const __m256i));
            let hi = widen16(dtype, _mm256_loadu_si256(run.as_ptr().add(16) as *const __m256i));
            let d = dst.add(j * stride);
            _mm512_storeu_ps(d, lo);
            _mm512_storeu_ps(d.add(16), hi);
        }
    }
}

/// One register tile: `c[rows, cols] (+)= ap · bp` over depth `kc` (`ap` a packed row tile,
/// `bp` a packed panel).
///
/// # Safety
/// `c` must hold `rows` rows of `cols` values, `ldc` apart; the CPU must run AVX-512 F.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
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
    {
        // The tile's rows of c are written (and read back) at the end: fetch them while the
        // products run.
        for i in 0..rows {
            // SAFETY: a prefetch only hints; the address is inside c's row i anyway.
            unsafe {
                let row = c.add(i * ldc) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.add(64));
                _mm_prefetch::<_MM_HINT_T0>(row.add(124));
            }
        }
    }
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let step = |p: usize, lo: &mut [__m512; MR], hi: &mut [__m512; MR]| {
        // SAFETY: p < kc, and both panels hold kc rows (sliced above).
        unsafe {
            let b0 = _mm512_loadu_ps(bp.as_ptr().add(p * NR));
            let b1 = _mm512_loadu_ps(bp.as_ptr().add(p * NR + 16));
            for i in 0..MR {
                let ai = _mm512_set1_ps(*ap.as_ptr().add(p * MR + i));
                lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
            }
        }
    };
    super::each_depth(kc, |p| step(p, &mut lo, &mut hi));
    let mask = |from: usize| -> __mmask16 {
        let n = cols.saturating_sub(from).min(16);
        if n == 16 { 0xffff } else { ((1u32 << n) - 1) as __mmask16 }
    };
    let (m0, m1) = (mask(0), mask(16));
    for i in 0..rows {
        // SAFETY: row i < rows of c, its first `cols` values (the masks) are in bounds.
        unsafe {
            let row = c.add(i * ldc);
            let (mut v0, mut v1) = (lo[i], hi[i]);
            if !overwrite {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}

/// Rows of the result per register tile.
const MR: usize = 8;
/// Columns of the result per register tile: two 16-lane vectors.
const NR: usize = 32;

/// The kernel for CPUs with AVX-512 F, BW and VL.
pub(super) struct Avx512;

impl Kernel for Avx512 {
    const MR: usize = MR;
    const LANES: usize = 16;

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
        // the CPU has AVX-512.
        unsafe { tile(kc, ap, bp, c, ldc, rows, cols, overwrite) }
    }

    unsafe fn widen_into_panels(dtype: DType, src: &[u16], dst: *mut f32, stride: usize) {
        // SAFETY: as for `tile`.
        unsafe { widen_into_panels(dtype, src, dst, stride) }
    }

    unsafe fn widen_transpose(dtype: DType, src: *const u16, src_ld: usize, dst: *mut f32, dst_ld: usize) {
        // SAFETY: as for `tile`.
        unsafe { widen_transpose16(dtype, src, src_ld, dst, dst_ld) }
    }
}
