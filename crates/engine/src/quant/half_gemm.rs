//! f32 products with a frozen 16-bit (bf16/f16) weight, widened to f32 as the product packs it.
//!
//! A frozen base kept as its checkpoint stores it ([`super::HalfRows`]) used to be widened a
//! chunk of rows at a time into an f32 buffer that the BLAS then read and packed again: three
//! passes over every weight per product, each bound by memory bandwidth, which made such a base
//! 8–17 % slower than an f32 copy. Here the packing step that a blocked product makes anyway
//! reads the 16-bit values and widens them (exactly): for the input gradient `g · W` W's rows
//! are the right operand as they are; for the forward `x · Wᵀ` 16 × 16 blocks of W are widened
//! and transposed in registers. W crosses memory once per product, at half the bytes of an f32
//! copy, and a LoRA step over a stored bf16 base runs about as fast as over the copy
//! (docs/benchmarks.md).
//!
//! The kernel is an AVX-512 register tile (`MR` rows × 32 columns, f32 FMA accumulation, the
//! sums in another order than the BLAS's: the same products to rounding); [`available`] says
//! whether the CPU runs it, and callers fall back to widen-then-BLAS.

use super::half::widen_into;
use crate::ops::cpu::{Reused, Shared, threads};
use candle_core::DType;

/// Rows of the result per register tile.
const MR: usize = 8;
/// Columns of the result per register tile: two 16-lane vectors.
const NR: usize = 32;
/// Depth of one packed block: a `KC × NR` panel of W (32 KiB) stays in L1 while every row tile of
/// the left operand passes over it.
const KC: usize = 256;
/// Columns of one packed block of W (`KC × NC` f32, 512 KiB, in L2).
const NC: usize = 512;

/// Whether the CPU runs these kernels (AVX-512 F, BW and VL).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::ops::cpu::avx512_wide()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A frozen weight W `[rows, cols]` of bf16 or f16 bits, row-major.
#[derive(Clone, Copy)]
pub(crate) struct HalfMatrix<'a> {
    pub bits: &'a [u16],
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
}

/// How a product reads W as its `[k, n]` right operand.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Side {
    /// W itself (`k = rows`): the input gradient `g · W`.
    Rows,
    /// Wᵀ (`k = cols`): the forward `x · Wᵀ`.
    Transposed,
}

/// `y[m, rows] (+)= x[m, cols] · Wᵀ`, `x` and `y` row-major: a projection's forward. False (and
/// nothing touched) when the CPU lacks the kernels.
pub(crate) fn forward(m: usize, x: &[f32], w: HalfMatrix, y: &mut [f32], accumulate: bool) -> bool {
    product(m, x, (w, Side::Transposed), y, accumulate)
}

/// `dx[m, cols] (+)= g[m, rows] · W`, row-major: a projection's input gradient. False (and
/// nothing touched) when the CPU lacks the kernels.
pub(crate) fn input_gradient(m: usize, g: &[f32], w: HalfMatrix, dx: &mut [f32], accumulate: bool) -> bool {
    product(m, g, (w, Side::Rows), dx, accumulate)
}

/// `c[m, n] (+)= a[m, k] · B` for B = W or Wᵀ (`[k, n]`), all row-major. The columns of c are
/// split across the kernel pool; each task packs its own blocks of B.
fn product(m: usize, a: &[f32], (w, side): (HalfMatrix, Side), c: &mut [f32], accumulate: bool) -> bool {
    if !available() {
        return false;
    }
    let (k, n) = if side == Side::Rows { (w.rows, w.cols) } else { (w.cols, w.rows) };
    assert!(w.bits.len() >= w.rows * w.cols, "half gemm: weight smaller than {}×{}", w.rows, w.cols);
    assert!(a.len() >= m * k && c.len() >= m * n, "half gemm: operands smaller than {m}×{k}, {m}×{n}");
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return true;
    }
    let tasks = threads().min(n.div_ceil(NR * 4)).max(1);
    let per_task = n.div_ceil(tasks).div_ceil(NR) * NR;
    let dst = Shared(c.as_mut_ptr());
    let run = |t: usize| {
        let (j0, j1) = (t * per_task, ((t + 1) * per_task).min(n));
        if j0 < j1 {
            // SAFETY: the asserts above bound every element read and written; each task writes
            // only columns [j0, j1) of c.
            unsafe { columns(m, k, n, a, (w, side), dst, j0..j1, accumulate) }
        }
    };
    if tasks > 1 {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(run);
    } else {
        run(0);
    }
    true
}

/// Columns `js` of `c` (`m` rows of `n` values), on the calling thread: for each depth block, a's
/// block packed in row tiles, then per column block of B its widened panels, each swept by every
/// row tile of a.
///
/// # Safety
/// `c` must hold `m` rows of `n` values; no other thread may write columns `js` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: (HalfMatrix, Side),
    c: Shared,
    js: std::ops::Range<usize>,
    accumulate: bool,
) {
    let mut packed_b = Reused::take(&PACKED_B, KC * NC);
    // a's rows are usually a power of two of floats apart, which puts a tile's rows in one L1
    // set (a third slower): its depth block is packed into one stream per row tile first.
    let tiles = m.div_ceil(MR);
    let mut a_block = vec![0f32; tiles * MR * KC];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        pack_a(&a[pc..], k, m, kc, &mut a_block);
        let overwrite = pc == 0 && !accumulate;
        for jc in js.clone().step_by(NC) {
            let nc = NC.min(js.end - jc);
            pack_b(b, pc..pc + kc, jc..jc + nc, &mut packed_b.values);
            for jr in 0..nc.div_ceil(NR) {
                let cols = NR.min(nc - jr * NR);
                let bp = &packed_b.values[jr * KC * NR..][..kc * NR];
                for s in 0..tiles {
                    let rows = MR.min(m - s * MR);
                    let ap = &a_block[s * MR * KC..][..kc * MR];
                    // SAFETY: rows [s·MR, s·MR + rows) and columns [jc + jr·NR, + cols) of c are
                    // inside its m × n values and this task's columns; AVX-512 (`product` runs
                    // only where `available()`, false off x86-64).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        avx512::tile(kc, ap, bp, c.at(s * MR * n + jc + jr * NR), n, rows, cols, overwrite)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (ap, bp, rows, cols, overwrite, c);
                }
            }
        }
    }
}

/// Depths `[0, kc)` of a's `m` rows (`lda` apart) in row tiles of `MR`: tile `s` holds, for each
/// depth, its `MR` values side by side (rows past `m` zero), one stream for the kernel to read.
fn pack_a(a: &[f32], lda: usize, m: usize, kc: usize, out: &mut [f32]) {
    for (s, tile) in out.chunks_exact_mut(MR * KC).take(m.div_ceil(MR)).enumerate() {
        for i in 0..MR {
            let r = s * MR + i;
            if r < m {
                let row = &a[r * lda..][..kc];
                for (p, &v) in row.iter().enumerate() {
                    tile[p * MR + i] = v;
                }
            } else {
                (0..kc).for_each(|p| tile[p * MR + i] = 0.0);
            }
        }
    }
}

/// B's block (depths `ps`, columns `js`) widened into panels of `NR` columns: panel `j` holds
/// `ps.len()` rows of `NR` values from `j · KC · NR` on (columns past the block zero).
fn pack_b(
    (w, side): (HalfMatrix, Side),
    ps: std::ops::Range<usize>,
    js: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (kc, nc) = (ps.len(), js.len());
    let out = &mut out[..nc.div_ceil(NR) * KC * NR];
    match side {
        Side::Rows => {
            // Row by row: each row of the block is one run of memory, which the hardware
            // prefetches (panel by panel, every read was a lone cache line a row apart).
            let full = nc / NR;
            for p in 0..kc {
                let row = &w.bits[(ps.start + p) * w.cols + js.start..][..nc];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `full` whole panels fit in `out` (sliced above); AVX-512 (the kernels'
                // condition).
                unsafe {
                    avx512::widen_into_panels(w.dtype, &row[..full * NR], out[p * NR..].as_mut_ptr(), KC * NR)
                };
                let rest = &row[full * NR..];
                if !rest.is_empty() {
                    let dst = &mut out[full * KC * NR + p * NR..][..NR];
                    widen_into(w.dtype, rest, &mut dst[..rest.len()]);
                    dst[rest.len()..].fill(0.0);
                }
            }
        }
        Side::Transposed => {
            // Column j of B is row j of W: 16 × 16 blocks are widened and transposed in
            // registers, the edges one value at a time.
            for j0 in (0..nc).step_by(16) {
                let (panel, half) = (j0 / NR, j0 % NR);
                let dst = |p: usize| panel * KC * NR + p * NR + half;
                let rows = 16.min(nc - j0);
                let mut p = 0;
                #[cfg(target_arch = "x86_64")]
                if rows == 16 {
                    while p + 16 <= kc {
                        let src = &w.bits[(js.start + j0) * w.cols + ps.start + p..];
                        assert!(src.len() >= 15 * w.cols + 16, "half gemm: weight block out of range");
                        // SAFETY: 16 rows of 16 values, w.cols apart, inside `src` (checked);
                        // 16 rows of 16 values NR apart inside `out`.
                        unsafe {
                            avx512::widen_transpose16(
                                w.dtype,
                                src.as_ptr(),
                                w.cols,
                                out[dst(p)..].as_mut_ptr(),
                                NR,
                            )
                        };
                        p += 16;
                    }
                }
                for p in p..kc {
                    let o = &mut out[dst(p)..][..16];
                    for (r, v) in o.iter_mut().enumerate() {
                        *v = if r < rows {
                            widen_one(w.dtype, w.bits[(js.start + j0 + r) * w.cols + ps.start + p])
                        } else {
                            0.0
                        };
                    }
                }
            }
            // A last half-panel with no rows of W left.
            if nc % NR != 0 && nc % NR <= 16 {
                let panel = nc / NR;
                for p in 0..kc {
                    out[panel * KC * NR + p * NR + 16..][..16].fill(0.0);
                }
            }
        }
    }
}

fn widen_one(dtype: DType, bits: u16) -> f32 {
    let mut v = [0f32];
    widen_into(dtype, &[bits], &mut v);
    v[0]
}

thread_local! {
    /// The packed block of W, kept between products.
    static PACKED_B: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
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
    pub(super) unsafe fn widen_transpose16(
        dtype: DType,
        src: *const u16,
        src_ld: usize,
        dst: *mut f32,
        dst_ld: usize,
    ) {
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
    pub(super) unsafe fn widen_into_panels(dtype: DType, src: &[u16], dst: *mut f32, stride: usize) {
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
    pub(super) unsafe fn tile(
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
        let mut p = 0;
        while p + 4 <= kc {
            step(p, &mut lo, &mut hi);
            step(p + 1, &mut lo, &mut hi);
            step(p + 2, &mut lo, &mut hi);
            step(p + 3, &mut lo, &mut hi);
            p += 4;
        }
        while p < kc {
            step(p, &mut lo, &mut hi);
            p += 1;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect()
    }

    fn stored(w: &[f32], dtype: DType) -> Vec<u16> {
        match dtype {
            DType::BF16 => w.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect(),
            _ => w.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect(),
        }
    }

    #[test]
    fn packed_panels_hold_the_widened_weight_read_either_way() {
        if !available() {
            eprintln!("skipped: the CPU lacks AVX-512");
            return;
        }
        let mut rng = Rng::new(14);
        let (rows, cols) = (70, 90);
        let w = random(rows * cols, &mut rng);
        for dtype in [DType::BF16, DType::F16] {
            let bits = stored(&w, dtype);
            let hm = HalfMatrix { bits: &bits, dtype, rows, cols };
            // Blocks with whole and partial 16 × 16 pieces, and partial last panels.
            for (side, ps, js) in [
                (Side::Rows, 3..40, 5..74),
                (Side::Rows, 0..70, 0..64),
                (Side::Transposed, 7..90, 2..70),
                (Side::Transposed, 0..32, 0..48),
                (Side::Transposed, 16..33, 1..18),
            ] {
                let mut out = vec![f32::NAN; KC * NC];
                pack_b((hm, side), ps.clone(), js.clone(), &mut out);
                for (jj, j) in (0..js.len().div_ceil(NR) * NR).map(|jj| (jj, js.start + jj)) {
                    for (pp, p) in ps.clone().enumerate() {
                        let got = out[(jj / NR) * KC * NR + pp * NR + jj % NR];
                        let want = match (side, j < js.end) {
                            (_, false) => 0.0,
                            (Side::Rows, true) => widen_one(dtype, bits[p * cols + j]),
                            (Side::Transposed, true) => widen_one(dtype, bits[j * cols + p]),
                        };
                        assert_eq!(got.to_bits(), want.to_bits(), "{dtype:?} {side:?} depth {p} column {j}");
                    }
                }
            }
        }
    }

    /// `a[m, k] · B` in f64, with B[p][j] = `b(p, j)`.
    fn reference(m: usize, n: usize, k: usize, a: &[f32], b: impl Fn(usize, usize) -> f32) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                let av = a[i * k + p] as f64;
                for j in 0..n {
                    out[i * n + j] += av * b(p, j) as f64;
                }
            }
        }
        out
    }

    #[test]
    fn products_match_f64_sums_of_the_widened_weight() {
        if !available() {
            eprintln!("skipped: the CPU lacks AVX-512");
            return;
        }
        let mut rng = Rng::new(15);
        // Odd sizes cross every edge: partial row tiles and column panels, several depth and
        // column blocks, widths a task split leaves uneven.
        for &(m, rows, cols) in &[(1, 1, 1), (9, 33, 257), (20, 600, 300), (8, 64, 512), (33, 17, 16)] {
            let w = random(rows * cols, &mut rng);
            for dtype in [DType::BF16, DType::F16] {
                let bits = stored(&w, dtype);
                let hm = HalfMatrix { bits: &bits, dtype, rows, cols };
                let wide = |r: usize, c: usize| widen_one(dtype, bits[r * cols + c]);
                for side in [Side::Rows, Side::Transposed] {
                    let (k, n) = if side == Side::Rows { (rows, cols) } else { (cols, rows) };
                    let a = random(m * k, &mut rng);
                    let expected = match side {
                        Side::Rows => reference(m, n, k, &a, wide),
                        Side::Transposed => reference(m, n, k, &a, |p, j| wide(j, p)),
                    };
                    for accumulate in [false, true] {
                        let mut c = vec![0.5f32; m * n + 3];
                        let done = match side {
                            Side::Rows => input_gradient(m, &a, hm, &mut c, accumulate),
                            Side::Transposed => forward(m, &a, hm, &mut c, accumulate),
                        };
                        assert!(done);
                        assert_eq!(&c[m * n..], &[0.5; 3], "values past the product were written");
                        for (i, (&got, &want)) in c.iter().zip(&expected).enumerate() {
                            let want = want + if accumulate { 0.5 } else { 0.0 };
                            let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                            assert!(
                                (got as f64 - want).abs() <= tol,
                                "{dtype:?} {side:?} m{m} k{k} n{n} acc {accumulate}: [{}][{}] = {got}, want {want}",
                                i / n,
                                i % n
                            );
                        }
                    }
                }
            }
        }
    }
}
