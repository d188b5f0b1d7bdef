//! f32 products with a frozen 16-bit (bf16/f16) weight, widened to f32 as the product packs it.
//!
//! A frozen base kept as its checkpoint stores it ([`super::HalfRows`]) used to be widened a
//! chunk of rows at a time into an f32 buffer that the BLAS then read and packed again: three
//! passes over every weight per product, each bound by memory bandwidth, which made such a base
//! 8–17 % slower than an f32 copy. Here the packing step that a blocked product makes anyway
//! reads the 16-bit values and widens them (exactly): for the input gradient `g · W` W's rows
//! are the right operand as they are; for the forward `x · Wᵀ` square blocks of W are widened
//! and transposed in registers. W crosses memory once per product, at half the bytes of an f32
//! copy, and a LoRA step over a stored bf16 base runs about as fast as over the copy
//! (docs/benchmarks.md).
//!
//! The kernel is a register tile (`MR` rows × two vectors of columns, f32 FMA accumulation, the
//! sums in another order than the BLAS's: the same products to rounding) for AVX-512
//! ([`avx512`], 8 × 32) or AVX2 with FMA ([`avx2`], 6 × 16); [`available`] says whether the CPU
//! runs one, and callers fall back to widen-then-BLAS.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use super::half::widen_into;
use crate::ops::cpu::{Reused, Shared, threads};
use crate::ops::simd::{self, Simd};
use candle_core::DType;

/// Depth of one packed block: a `KC × NR` panel of W (32 KiB for AVX-512) stays in L1 while
/// every row tile of the left operand passes over it.
const KC: usize = 256;
/// Columns of one packed block of W (`KC × NC` f32, 512 KiB, in L2).
const NC: usize = 512;

/// One instruction set's register tile and W's widening into its panels.
trait Kernel {
    /// Rows of the result per register tile.
    const MR: usize;
    /// f32 lanes per vector; a tile is two vectors wide (`NR` = 2 · LANES columns).
    const LANES: usize;
    const NR: usize = 2 * Self::LANES;

    /// One register tile: `c[rows, cols] (+)= ap · bp` over depth `kc` (`ap` a packed row tile
    /// of `MR` rows, `bp` a packed panel of `NR` columns).
    ///
    /// # Safety
    /// `c` must hold `rows` ≤ `MR` rows of `cols` ≤ `NR` values, `ldc` apart; the CPU must run
    /// the kernel's instructions.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        ap: &[f32],
        bp: &[f32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        overwrite: bool,
    );

    /// `src` (a whole number of `NR`-value runs, 16-bit) widened: run `j` to `dst + j · stride`.
    ///
    /// # Safety
    /// `dst` must hold `src.len() / NR` runs of `NR` values, `stride` apart; the CPU must run
    /// the kernel's instructions.
    unsafe fn widen_into_panels(dtype: DType, src: &[u16], dst: *mut f32, stride: usize);

    /// `LANES` rows of `LANES` 16-bit values (`src_ld` apart) widened and transposed: value
    /// `[r][c]` to `dst[c · dst_ld + r]`.
    ///
    /// # Safety
    /// Both blocks must be inside their matrices; the CPU must run the kernel's instructions.
    unsafe fn widen_transpose(dtype: DType, src: *const u16, src_ld: usize, dst: *mut f32, dst_ld: usize);
}

/// Calls `step(p)` for every depth `p < kc`, four to a loop iteration so that a tile's FMA
/// chains of consecutive depths overlap.
#[inline(always)]
fn each_depth(kc: usize, mut step: impl FnMut(usize)) {
    let mut p = 0;
    while p + 4 <= kc {
        step(p);
        step(p + 1);
        step(p + 2);
        step(p + 3);
        p += 4;
    }
    while p < kc {
        step(p);
        p += 1;
    }
}

/// Whether the CPU runs one of these kernels (AVX-512 F, BW and VL; or AVX2, FMA and F16C).
pub(crate) fn available() -> bool {
    simd::widest() > Simd::Baseline
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
fn product(m: usize, a: &[f32], b: (HalfMatrix, Side), c: &mut [f32], accumulate: bool) -> bool {
    match simd::widest() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => product_with::<avx512::Avx512>(m, a, b, c, accumulate),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => product_with::<avx2::Avx2>(m, a, b, c, accumulate),
        _ => return false,
    }
    true
}

/// [`product`] with kernel `K`, which the CPU runs.
fn product_with<K: Kernel>(
    m: usize,
    a: &[f32],
    (w, side): (HalfMatrix, Side),
    c: &mut [f32],
    accumulate: bool,
) {
    let (k, n) = if side == Side::Rows { (w.rows, w.cols) } else { (w.cols, w.rows) };
    assert!(w.bits.len() >= w.rows * w.cols, "half gemm: weight smaller than {}×{}", w.rows, w.cols);
    assert!(a.len() >= m * k && c.len() >= m * n, "half gemm: operands smaller than {m}×{k}, {m}×{n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let tasks = threads().min(n.div_ceil(K::NR * 4)).max(1);
    let per_task = n.div_ceil(tasks).div_ceil(K::NR) * K::NR;
    let dst = Shared(c.as_mut_ptr());
    let run = |t: usize| {
        let (j0, j1) = (t * per_task, ((t + 1) * per_task).min(n));
        if j0 < j1 {
            // SAFETY: the asserts above bound every element read and written; each task writes
            // only columns [j0, j1) of c; the caller checked that the CPU runs K.
            unsafe { columns::<K>(m, k, n, a, (w, side), dst, j0..j1, accumulate) }
        }
    };
    if tasks > 1 {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(run);
    } else {
        run(0);
    }
}

/// Columns `js` of `c` (`m` rows of `n` values), on the calling thread: for each depth block, a's
/// block packed in row tiles, then per column block of B its widened panels, each swept by every
/// row tile of a.
///
/// # Safety
/// `c` must hold `m` rows of `n` values; no other thread may write columns `js` meanwhile; the
/// CPU must run `K`.
#[allow(clippy::too_many_arguments)]
unsafe fn columns<K: Kernel>(
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
    let (mr, nr) = (K::MR, K::NR);
    let tiles = m.div_ceil(mr);
    let mut a_block = vec![0f32; tiles * mr * KC];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        pack_a(&a[pc..], k, m, kc, mr, &mut a_block);
        let overwrite = pc == 0 && !accumulate;
        for jc in js.clone().step_by(NC) {
            let nc = NC.min(js.end - jc);
            pack_b::<K>(b, pc..pc + kc, jc..jc + nc, &mut packed_b.values);
            for jr in 0..nc.div_ceil(nr) {
                let cols = nr.min(nc - jr * nr);
                let bp = &packed_b.values[jr * KC * nr..][..kc * nr];
                for s in 0..tiles {
                    let rows = mr.min(m - s * mr);
                    let ap = &a_block[s * mr * KC..][..kc * mr];
                    // SAFETY: rows [s·MR, s·MR + rows) and columns [jc + jr·NR, + cols) of c are
                    // inside its m × n values and this task's columns; the CPU runs K (caller).
                    unsafe { K::tile(kc, ap, bp, c.at(s * mr * n + jc + jr * nr), n, rows, cols, overwrite) };
                }
            }
        }
    }
}

/// Depths `[0, kc)` of a's `m` rows (`lda` apart) in row tiles of `mr`: tile `s` holds, for each
/// depth, its `mr` values side by side (rows past `m` zero), one stream for the kernel to read.
fn pack_a(a: &[f32], lda: usize, m: usize, kc: usize, mr: usize, out: &mut [f32]) {
    for (s, tile) in out.chunks_exact_mut(mr * KC).take(m.div_ceil(mr)).enumerate() {
        for i in 0..mr {
            let r = s * mr + i;
            if r < m {
                let row = &a[r * lda..][..kc];
                for (p, &v) in row.iter().enumerate() {
                    tile[p * mr + i] = v;
                }
            } else {
                (0..kc).for_each(|p| tile[p * mr + i] = 0.0);
            }
        }
    }
}

/// B's block (depths `ps`, columns `js`) widened into panels of `NR` columns: panel `j` holds
/// `ps.len()` rows of `NR` values from `j · KC · NR` on (columns past the block zero).
fn pack_b<K: Kernel>(
    (w, side): (HalfMatrix, Side),
    ps: std::ops::Range<usize>,
    js: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (nr, l) = (K::NR, K::LANES);
    let (kc, nc) = (ps.len(), js.len());
    let out = &mut out[..nc.div_ceil(nr) * KC * nr];
    match side {
        Side::Rows => {
            // Row by row: each row of the block is one run of memory, which the hardware
            // prefetches (panel by panel, every read was a lone cache line a row apart).
            let full = nc / nr;
            for p in 0..kc {
                let row = &w.bits[(ps.start + p) * w.cols + js.start..][..nc];
                // SAFETY: `full` whole panels fit in `out` (sliced above); the CPU runs K (the
                // caller's condition).
                unsafe {
                    K::widen_into_panels(w.dtype, &row[..full * nr], out[p * nr..].as_mut_ptr(), KC * nr)
                };
                let rest = &row[full * nr..];
                if !rest.is_empty() {
                    let dst = &mut out[full * KC * nr + p * nr..][..nr];
                    widen_into(w.dtype, rest, &mut dst[..rest.len()]);
                    dst[rest.len()..].fill(0.0);
                }
            }
        }
        Side::Transposed => {
            // Column j of B is row j of W: LANES × LANES blocks are widened and transposed in
            // registers, the edges one value at a time.
            for j0 in (0..nc).step_by(l) {
                let (panel, half) = (j0 / nr, j0 % nr);
                let dst = |p: usize| panel * KC * nr + p * nr + half;
                let rows = l.min(nc - j0);
                let mut p = 0;
                if rows == l {
                    while p + l <= kc {
                        let src = &w.bits[(js.start + j0) * w.cols + ps.start + p..];
                        assert!(src.len() >= (l - 1) * w.cols + l, "half gemm: weight block out of range");
                        // SAFETY: LANES rows of LANES values, w.cols apart, inside `src`
                        // (checked); LANES rows of LANES values NR apart inside `out`; the CPU
                        // runs K.
                        unsafe {
                            K::widen_transpose(w.dtype, src.as_ptr(), w.cols, out[dst(p)..].as_mut_ptr(), nr)
                        };
                        p += l;
                    }
                }
                for p in p..kc {
                    let o = &mut out[dst(p)..][..l];
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
            if nc % nr != 0 && nc % nr <= l {
                let panel = nc / nr;
                for p in 0..kc {
                    out[panel * KC * nr + p * nr + l..][..l].fill(0.0);
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

    /// Runs `check` with every kernel this CPU runs (with a name for messages).
    fn with_each_kernel(check: impl Fn(&str, &dyn Fn(Probe))) {
        let mut ran = false;
        simd::with_each_level(|level| match level {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                check("avx512", &|p| p.run::<avx512::Avx512>());
                ran = true;
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                check("avx2", &|p| p.run::<avx2::Avx2>());
                ran = true;
            }
            _ => {}
        });
        if !ran {
            eprintln!("skipped: the CPU runs neither kernel");
        }
    }

    /// One call into a kernel's code: packing a block of B, or a whole product.
    enum Probe<'a> {
        Pack(
            HalfMatrix<'a>,
            Side,
            std::ops::Range<usize>,
            std::ops::Range<usize>,
            &'a mut [f32],
            &'a mut usize,
        ),
        Product(usize, &'a [f32], HalfMatrix<'a>, Side, &'a mut [f32], bool),
    }

    impl Probe<'_> {
        fn run<K: Kernel>(self) {
            match self {
                Probe::Pack(hm, side, ps, js, out, nr) => {
                    pack_b::<K>((hm, side), ps, js, out);
                    *nr = K::NR;
                }
                Probe::Product(m, a, hm, side, c, accumulate) => {
                    product_with::<K>(m, a, (hm, side), c, accumulate)
                }
            }
        }
    }

    #[test]
    fn packed_panels_hold_the_widened_weight_read_either_way() {
        with_each_kernel(|name, run| packing(name, run));
    }

    fn packing(name: &str, run: &dyn Fn(Probe)) {
        let mut rng = Rng::new(14);
        let (rows, cols) = (70, 90);
        let w = random(rows * cols, &mut rng);
        for dtype in [DType::BF16, DType::F16] {
            let bits = stored(&w, dtype);
            let hm = HalfMatrix { bits: &bits, dtype, rows, cols };
            // Blocks with whole and partial 16 × 16 (or 8 × 8) pieces, and partial last panels.
            for (side, ps, js) in [
                (Side::Rows, 3..40, 5..74),
                (Side::Rows, 0..70, 0..64),
                (Side::Transposed, 7..90, 2..70),
                (Side::Transposed, 0..32, 0..48),
                (Side::Transposed, 16..33, 1..18),
            ] {
                let mut out = vec![f32::NAN; KC * NC];
                let mut nr = 0;
                run(Probe::Pack(hm, side, ps.clone(), js.clone(), &mut out, &mut nr));
                for (jj, j) in (0..js.len().div_ceil(nr) * nr).map(|jj| (jj, js.start + jj)) {
                    for (pp, p) in ps.clone().enumerate() {
                        let got = out[(jj / nr) * KC * nr + pp * nr + jj % nr];
                        let want = match (side, j < js.end) {
                            (_, false) => 0.0,
                            (Side::Rows, true) => widen_one(dtype, bits[p * cols + j]),
                            (Side::Transposed, true) => widen_one(dtype, bits[j * cols + p]),
                        };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{name} {dtype:?} {side:?} depth {p} column {j}"
                        );
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
        with_each_kernel(|name, run| products(name, run));
    }

    #[test]
    fn the_entry_points_run_where_a_kernel_does() {
        let (bits, mut c) = (vec![0x3f80u16; 4], vec![0f32; 2]);
        let hm = HalfMatrix { bits: &bits, dtype: DType::BF16, rows: 2, cols: 2 };
        assert_eq!(forward(1, &[1.0, 2.0], hm, &mut c, false), available());
        if available() {
            assert_eq!(c, [3.0, 3.0]);
        }
    }

    fn products(name: &str, run: &dyn Fn(Probe)) {
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
                        run(Probe::Product(m, &a, hm, side, &mut c, accumulate));
                        assert_eq!(&c[m * n..], &[0.5; 3], "values past the product were written");
                        for (i, (&got, &want)) in c.iter().zip(&expected).enumerate() {
                            let want = want + if accumulate { 0.5 } else { 0.0 };
                            let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                            assert!(
                                (got as f64 - want).abs() <= tol,
                                "{name} {dtype:?} {side:?} m{m} k{k} n{n} acc {accumulate}: [{}][{}] = {got}, want {want}",
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
