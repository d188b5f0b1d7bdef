//! bf16 matrix products on the AMX tile unit of Intel CPUs (Sapphire Rapids and later): the
//! products of a frozen base when a run computes in bf16 on the CPU. The operands are bf16 (the
//! weight as stored, the activations rounded as any bf16 product rounds them) and every product
//! accumulates in f32 inside the tile unit: 2.5–4x the f32 BLAS per core on this VM.
//!
//! The tile unit computes `C (+)= A · B` with A's rows as they are and B in pairs along the
//! reduction, `(B[2p][c], B[2p+1][c])`. For a projection with weight `W` `[n, k]`:
//! * a weight that stays in memory is laid out once for both products ([`Prepared`]): forward
//!   `Y = X · Wᵀ` with B = 32 rows of W per task, input gradient `dX (+)= G · W` with B = 32
//!   columns of W per task, A = the rows of X or G rounded to bf16 ([`pack_rows`]);
//! * a weight dequantized chunk by chunk (QLoRA), or kept only as stored, goes as rows: the
//!   forward as `Yᵀ = W · Xᵀ` (W's rows are A as they are, X is paired, [`pack_x`]), the input
//!   gradient with each task pairing its 32 columns of W itself.
//!
//! Linux hands a process the tile state only after it asks (`arch_prctl`), once: [`available`].

mod layout;
mod tiles;

pub use layout::{Prepared, bf16_bits, convert, convert_into, pack_rows, pack_x};

use super::cpu::{Shared, threads};
use layout::interleave_columns;
use tiles as imp;

/// Rows and columns of every tile here: 16 rows of 64 bytes (32 bf16 or 16 f32).
const T: usize = 16;

/// Whether AMX bf16 products run here: the CPU has them, the kernel granted the tile state, and
/// `FINETUNE_AMX=off` does not switch them off.
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| std::env::var("FINETUNE_AMX").map(|v| v != "off").unwrap_or(true) && imp::request())
}

/// Whether a `[n, k]` weight fits these kernels (whole 32×32 blocks).
pub fn fits(n: usize, k: usize) -> bool {
    n > 0 && k > 0 && n.is_multiple_of(2 * T) && k.is_multiple_of(2 * T)
}

/// Runs `task(i)` for `i` in `0..n`, across the kernel pool when there are several threads.
fn tasks(n: usize, task: impl Fn(usize) + Sync + Send) {
    if threads() > 1 && n > 1 {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(task);
    } else {
        (0..n).for_each(task);
    }
}

/// The reduction is split into slices of this many values so that a task's 32 rows of one
/// operand (32 KiB of bf16) stay in the core's L1 cache while it runs through every block of the
/// other: without it every tile came from L2 and the tile unit waited on its loads.
const KC: usize = 512;

/// `y[j][c0 + i] = Σ_k W[i][k] · X[j][k]` for W rows `c0..c0+n` (`w`: `n` × `k` bf16 bits,
/// `n` and `k` multiples of 32), `xp` from [`pack_x`] of `m` rows, into `y` with row stride `ld`
/// (overwritten).
pub fn forward(w: &[u16], n: usize, k: usize, xp: &[u16], m: usize, y: &mut [f32], ld: usize) {
    assert!(fits(n, k) && w.len() >= n * k && xp.len() >= m.div_ceil(2 * T) * 2 * T * k);
    assert!(m == 0 || y.len() >= (m - 1) * ld + n);
    let out = Shared(y.as_mut_ptr());
    let blocks = m.div_ceil(2 * T);
    // Copying W's tiles pays off once they are used by a few blocks of X.
    let copy_w = blocks >= 4;
    tasks(n / (2 * T), |b| {
        // Yᵀ for this task's 32 rows of W, one 32×32 block per 32 rows of X.
        let mut acc = vec![0f32; blocks * 4 * T * T];
        let mut a = vec![0u16; if copy_w { 2 * T * KC } else { 0 }];
        let _tiles = imp::Tiles::configure();
        for k0 in (0..k).step_by(KC) {
            let kbs = KC.min(k - k0) / (2 * T);
            let rows = &w[2 * T * b * k..];
            // This slice of the task's 32 rows of W, tile by tile (each 1 KiB in one piece: rows
            // `2k` bytes apart fell into a few L1 sets and evicted each other between uses).
            let wt = if copy_w {
                for (i, row) in rows.chunks_exact(k).take(2 * T).enumerate() {
                    for kb in 0..kbs {
                        let at = kb * 4 * T * T + (i / T) * 2 * T * T + (i % T) * 2 * T;
                        a[at..at + 2 * T].copy_from_slice(&row[k0 + 2 * T * kb..][..2 * T]);
                    }
                }
                imp::Operand { at: a.as_ptr(), stride: 2 * T, second: 2 * T * T, step: 4 * T * T }
            } else {
                imp::Operand { at: rows[k0..].as_ptr(), stride: k, second: T * k, step: 2 * T }
            };
            for jp in 0..blocks {
                // SAFETY: the A tiles read kbs tile pairs of the slice of W (as copied, or in
                // place); the B tiles pair rows k0/2.. of blocks 2jp, 2jp+1 of xp; C is block jp
                // of acc: all inside the slices checked above.
                unsafe {
                    imp::block_wx(
                        wt,
                        k,
                        xp.as_ptr().add(2 * jp * T * k + k0 * T),
                        kbs,
                        acc.as_mut_ptr().add(jp * 4 * T * T),
                        k0 > 0,
                    );
                }
            }
        }
        // Row by row of y: each X row's 32 values land side by side.
        for (jp, tile) in acc.chunks_exact(4 * T * T).enumerate() {
            for jj in 0..(m - 2 * jp * T).min(2 * T) {
                // SAFETY: row 32jp+jj < m, columns 32b..32b+32 are inside n ≤ ld; only this task
                // writes these columns.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out.at((2 * jp * T + jj) * ld + 2 * T * b), 2 * T)
                };
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = tile[i * 2 * T + jj];
                }
            }
        }
    });
}

/// `y[j][i] = Σ_c X[j][c] · W[i][c]` for a [`Prepared`] W of `n` rows and `xr` from
/// [`pack_rows`] of X's `m` rows (`k` values each), into `y` with row stride `ld` (overwritten).
pub fn forward_prepared(w: &Prepared, n: usize, xr: &[u16], m: usize, y: &mut [f32], ld: usize) {
    let k = w.k;
    assert!(fits(n, k) && w.forward.len() >= n * k && xr.len() >= m.div_ceil(2 * T) * 2 * T * k);
    assert!(m == 0 || y.len() >= (m - 1) * ld + n);
    let out = Shared(y.as_mut_ptr());
    tasks(n / (2 * T), |b| {
        let panel = &w.forward[2 * T * k * b..2 * T * k * (b + 1)];
        run_task(xr, k, m, panel, k, out, ld, 2 * T * b, false);
    });
}

/// The weight of an input gradient: `n` rows of W as stored, or [`Prepared`].
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    Rows(&'a [u16]),
    Prepared(&'a Prepared),
}

/// `dx[m, k] (+)= g[:, n-range] · W` for `gp` from [`pack_rows`] (row stride `ldg`, starting at
/// the first column of W's range) and `n` rows of W (`k` values each); without `accumulate`
/// dx is overwritten. Given W's rows, each task rearranges its 32 columns once, into a buffer
/// that stays in its core's cache while every row block of `g` goes past.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gp: &[u16],
    ldg: usize,
    m: usize,
    w: Weight,
    n: usize,
    k: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    let held = match w {
        Weight::Rows(rows) => rows.len(),
        Weight::Prepared(p) => p.input_grad.len(),
    };
    assert!(fits(n, k) && held >= n * k && dx.len() >= m * k);
    assert!(m == 0 || gp.len() >= (m.div_ceil(2 * T) * 2 * T - 1) * ldg + n);
    let out = Shared(dx.as_mut_ptr());
    tasks(k / (2 * T), |cb| {
        let own;
        let panel: &[u16] = match w {
            Weight::Prepared(p) => &p.input_grad[2 * T * n * cb..2 * T * n * (cb + 1)],
            Weight::Rows(rows) => {
                let mut p = vec![0u16; n * 2 * T];
                interleave_columns(&rows[..n * k], k, 2 * T * cb, &mut p);
                own = p;
                &own
            }
        };
        run_task(gp, ldg, m, panel, n, out, k, 2 * T * cb, accumulate);
    });
}

/// A weight gradient `dW[n, k] = Gᵀ · X` rounded to bf16 (its bits, row-major), for `gt` = Gᵀ's
/// `n` rows of `m` values from [`pack_rows`] (`m` a multiple of 32: the rows of X, padded) and
/// `xb` = X's `m` rows of `k` values. Each task computes 32 columns of dW in f32 into a buffer
/// that stays in its core's cache and rounds them into place: no f32 copy of dW is ever whole.
pub fn weight_grad(gt: &[u16], m: usize, n: usize, xb: &[u16], k: usize) -> Vec<u16> {
    assert!(fits(m, k) && xb.len() >= m * k && gt.len() >= n.div_ceil(2 * T) * 2 * T * m);
    let mut out: Vec<u16> = Vec::with_capacity(n * k);
    let dst = Shared(out.spare_capacity_mut().as_mut_ptr());
    tasks(k / (2 * T), |cb| {
        let mut panel = vec![0u16; m * 2 * T];
        interleave_columns(&xb[..m * k], k, 2 * T * cb, &mut panel);
        let mut slab = vec![0f32; n * 2 * T];
        run_task(gt, m, n, &panel, m, Shared(slab.as_mut_ptr()), 2 * T, 0, false);
        for (i, row) in slab.chunks_exact(2 * T).enumerate() {
            // SAFETY: columns 32cb..32cb+32 of row i < n lie inside the n·k reserved values, and
            // only this task writes them.
            let to = unsafe { std::slice::from_raw_parts_mut(dst.at(i * k + 2 * T * cb), 2 * T) };
            convert(row, to);
        }
    });
    // SAFETY: the tasks wrote every column block of every row (`convert` writes each value).
    unsafe { out.set_len(n * k) };
    out
}

/// One task: `out[:, c0..c0+32] (+)= A · panel` for `a` from [`pack_rows`] (rows `lda` apart,
/// starting at the reduction's first column) of `m` rows, `panel` 32 columns of B laid out by
/// `pair_rows` or `interleave_columns`, `reduce` values deep; without `accumulate` those
/// columns of `out` are overwritten.
#[allow(clippy::too_many_arguments)]
fn run_task(
    a: &[u16],
    lda: usize,
    m: usize,
    panel: &[u16],
    reduce: usize,
    out: Shared,
    ldc: usize,
    c0: usize,
    accumulate: bool,
) {
    let _tiles = imp::Tiles::configure();
    let mut tile = [0f32; 4 * T * T];
    for r0 in (0..reduce).step_by(KC) {
        let rc = KC.min(reduce - r0);
        let add = accumulate || r0 > 0;
        for jp in 0..m.div_ceil(2 * T) {
            let rows = (m - 2 * jp * T).min(2 * T);
            let first = 2 * jp * T * ldc + c0;
            // SAFETY (here and below): the A tiles read rows 32jp..32jp+32, columns r0..r0+rc of
            // a (padded to whole blocks), the B tiles pair rows r0/2..(r0+rc)/2 of both halves of
            // the panel (`T · reduce` values apart), the C tiles rows 32jp..32jp+32 (all < m when
            // the block is full), columns c0..c0+32 of out: inside the slices the callers
            // checked; only this task touches these columns of out.
            let (pa, pb) = unsafe { (a.as_ptr().add(2 * jp * T * lda + r0), panel.as_ptr().add(T * r0)) };
            if rows == 2 * T {
                unsafe { imp::block_panel(pa, lda, pb, T * reduce, rc, out.at(first), ldc, add) };
                continue;
            }
            // A last, partial block of rows goes through `tile`.
            tile.fill(0.0);
            for r in (0..rows).filter(|_| add) {
                let src = unsafe { std::slice::from_raw_parts(out.at(first + r * ldc), 2 * T) };
                tile[r * 2 * T..(r + 1) * 2 * T].copy_from_slice(src);
            }
            unsafe { imp::block_panel(pa, lda, pb, T * reduce, rc, tile.as_mut_ptr(), 2 * T, true) };
            for r in 0..rows {
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(first + r * ldc), 2 * T) };
                dst.copy_from_slice(&tile[r * 2 * T..(r + 1) * 2 * T]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_u64() as u32 as f32 / u32::MAX as f32 - 0.5).collect()
    }

    fn round(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f32::from_bits((bf16_bits(x) as u32) << 16) as f64).collect()
    }

    /// Largest |a - b| over the largest |b|.
    fn rel(a: &[f32], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0f64, |s, v| s.max(v.abs()));
        a.iter().zip(b).fold(0f64, |e, (&a, b)| e.max((a as f64 - b).abs())) / scale
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
    }

    #[test]
    fn vector_conversion_rounds_like_the_scalar_one() {
        let mut v = values(1000, 9);
        v[3] = f32::NAN;
        v[4] = 1.0 + 1.0 / 256.0; // a tie
        v[5] = -3.0e38;
        let mut fast = vec![0u16; v.len()];
        convert_into(&v, &mut fast);
        for (i, (&x, &f)) in v.iter().zip(&fast).enumerate() {
            let slow = bf16_bits(x);
            assert!(
                f == slow || (x.is_nan() && f32::from_bits((f as u32) << 16).is_nan()),
                "{i}: {x} {f:#x} {slow:#x}"
            );
        }
    }

    #[test]
    fn products_match_the_rounded_operands_in_f64() {
        if !available() {
            eprintln!("skipped: no AMX on this CPU");
            return;
        }
        // The last shape spans several slices of the reduction (KC) both ways.
        for &(m, n, k) in &[(1, 32, 32), (45, 64, 96), (128, 96, 64), (7, 32, 320), (33, 608, 576)] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let wb: Vec<u16> = w.iter().map(|&v| bf16_bits(v)).collect();
            let (xr, wr) = (round(&x), round(&w));
            // forward into a wider destination (a column block of it)
            let ld = n + 5;
            let mut y = vec![7f32; m * ld];
            forward(&wb, n, k, &pack_x(&x, m, k), m, &mut y, ld);
            let mut got = Vec::new();
            let mut want = Vec::new();
            for j in 0..m {
                for i in 0..n {
                    got.push(y[j * ld + i]);
                    want.push((0..k).map(|c| xr[j * k + c] * wr[i * k + c]).sum::<f64>());
                }
                assert!(y[j * ld + n..(j + 1) * ld].iter().all(|&v| v == 7.0), "wrote outside its columns");
            }
            assert!(rel(&got, &want) < 1e-5, "forward {m}x{n}x{k}: {}", rel(&got, &want));
            // input gradient, accumulated onto what dx holds, over two chunks of W's rows
            let g = values(m * n, 3);
            let gr = round(&g);
            let gp = pack_rows(&g, m, n);
            let mut dx = values(m * k, 4);
            let want: Vec<f64> = (0..m * k)
                .map(|e| {
                    let (j, c) = (e / k, e % k);
                    dx[e] as f64 + (0..n).map(|i| gr[j * n + i] * wr[i * k + c]).sum::<f64>()
                })
                .collect();
            let half = if n >= 64 { 32 } else { n };
            for (r0, rows) in [(0, half), (half, n - half)] {
                if rows == 0 {
                    continue;
                }
                backward(&gp[r0..], n, m, Weight::Rows(&wb[r0 * k..(r0 + rows) * k]), rows, k, &mut dx, true);
            }
            assert!(rel(&dx, &want) < 1e-5, "backward {m}x{n}x{k}: {}", rel(&dx, &want));
            // Overwriting: whatever dx held before is gone.
            let mut fresh = vec![f32::NAN; m * k];
            backward(&gp, n, m, Weight::Rows(&wb), n, k, &mut fresh, false);
            let before = values(m * k, 4);
            let want: Vec<f64> = want.iter().zip(&before).map(|(w, b)| w - *b as f64).collect();
            assert!(rel(&fresh, &want) < 1e-5, "overwriting backward {m}x{n}x{k}: {}", rel(&fresh, &want));
            // The layouts prepared once give the same numbers, and the rows back.
            let prepared = Prepared::new(&wb, n, k);
            let mut again = vec![f32::NAN; m * k];
            backward(&gp, n, m, Weight::Prepared(&prepared), n, k, &mut again, false);
            assert_eq!(again, fresh, "prepared input gradient {m}x{n}x{k}");
            let mut y2 = vec![7f32; m * ld];
            forward_prepared(&prepared, n, &pack_rows(&x, m, k), m, &mut y2, ld);
            assert_eq!(y2, y, "prepared forward {m}x{n}x{k}");
            let mut rows = vec![0u16; 3 * k];
            prepared.rows_into(n - 3, &mut rows);
            assert_eq!(rows, wb[(n - 3) * k..], "rows from the prepared layout");
        }
    }

    #[test]
    fn products_run_on_the_pool_too() {
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(3)));
        products_match_the_rounded_operands_in_f64();
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
    }
}
