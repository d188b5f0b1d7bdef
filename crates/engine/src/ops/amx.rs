//! bf16 matrix products on the AMX tile unit of Intel CPUs (Sapphire Rapids and later): the
//! products of a frozen base when a run computes in bf16 on the CPU. The operands are bf16 (the
//! weight as stored, the activations rounded as any bf16 product rounds them) and every product
//! accumulates in f32 inside the tile unit, at about 2.5x the f32 BLAS on one core of this VM.
//!
//! Both products take the weight `W` `[n, k]` as stored, row-major bf16:
//! * forward, `Y[m, n] = X[m, k] · Wᵀ`, is computed as `Yᵀ = W · Xᵀ`: W's rows are the tile
//!   unit's left operand as they are, and only X is repacked (into pairs along k);
//! * input gradient, `dX[m, k] += G[m, n] · W`: G's rows are the left operand, and W's rows are
//!   interleaved in pairs (the right operand's layout) by the caller, chunk by chunk.
//!
//! Linux hands a process the tile state only after it asks (`arch_prctl`), once.

use super::cpu::threads;

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

/// f32 to bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `X` `[m, k]` as the right operand of `W · Xᵀ`: blocks of 16 rows (the last padded with
/// zeros), each as `k/2` rows of 16 pairs `(X[j][2p], X[j][2p+1])`.
pub fn pack_x(x: &[f32], m: usize, k: usize) -> Vec<u16> {
    let blocks = m.div_ceil(2 * T) * 2;
    let mut out = vec![0u16; blocks * T * k];
    let per_block = T * k;
    let fill = |b: usize, dst: &mut [u16]| {
        for jj in 0..T.min(m.saturating_sub(b * T)) {
            let row = &x[(b * T + jj) * k..(b * T + jj + 1) * k];
            for (p, pair) in row.chunks_exact(2).enumerate() {
                dst[p * 2 * T + 2 * jj] = bf16_bits(pair[0]);
                dst[p * 2 * T + 2 * jj + 1] = bf16_bits(pair[1]);
            }
        }
    };
    if threads() > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(per_block).enumerate().for_each(|(b, dst)| fill(b, dst));
    } else {
        out.chunks_mut(per_block).enumerate().for_each(|(b, dst)| fill(b, dst));
    }
    out
}

/// `G` `[m, n]` as the left operand of `G · W`: row-major bf16, rows padded with zeros to a
/// multiple of 32.
pub fn pack_rows(g: &[f32], m: usize, n: usize) -> Vec<u16> {
    let mut out = vec![0u16; m.div_ceil(2 * T) * 2 * T * n];
    let conv = |(o, x): (&mut [u16], &[f32])| o.iter_mut().zip(x).for_each(|(o, &x)| *o = bf16_bits(x));
    if threads() > 1 {
        use rayon::prelude::*;
        out[..m * n].par_chunks_mut(n).zip(g.par_chunks(n)).for_each(conv);
    } else {
        out[..m * n].chunks_mut(n).zip(g.chunks(n)).for_each(conv);
    }
    out
}

/// Rows of `W` (`rows` × `k` bf16 bits, `rows` even) interleaved in pairs: `P[q][c] =
/// (W[2q][c], W[2q+1][c])`, the right operand of `G · W`.
pub fn interleave_pairs(w: &[u16], k: usize, out: &mut [u16]) {
    let body = |(q, dst): (usize, &mut [u16])| {
        let (r0, r1) = (&w[2 * q * k..(2 * q + 1) * k], &w[(2 * q + 1) * k..(2 * q + 2) * k]);
        for c in 0..k {
            dst[2 * c] = r0[c];
            dst[2 * c + 1] = r1[c];
        }
    };
    if threads() > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(2 * k).enumerate().for_each(body);
    } else {
        out.chunks_mut(2 * k).enumerate().for_each(body);
    }
}

/// A destination shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own block of columns (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer, taken by value so closures capture the `Sync` wrapper, not the field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
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

/// `y[j][c0 + i] = Σ_k W[i][k] · X[j][k]` for W rows `c0..c0+n` (`w`: `n` × `k` bf16 bits,
/// `n` and `k` multiples of 32), `xp` from [`pack_x`] of `m` rows, into `y` with row stride `ld`
/// (overwritten).
pub fn forward(w: &[u16], n: usize, k: usize, xp: &[u16], m: usize, y: &mut [f32], ld: usize) {
    assert!(fits(n, k) && w.len() >= n * k && xp.len() >= m.div_ceil(2 * T) * 2 * T * k);
    assert!(m == 0 || y.len() >= (m - 1) * ld + n);
    let out = Shared(y.as_mut_ptr());
    tasks(n / (2 * T), |b| {
        let mut tile = [0f32; 4 * T * T];
        let _tiles = imp::Tiles::configure();
        for jp in 0..m.div_ceil(2 * T) {
            // SAFETY: the A tiles read rows 32b..32b+32 of w (k values each), the B tiles blocks
            // 2jp, 2jp+1 of xp: all inside the slices checked above.
            unsafe {
                imp::block_wx(w.as_ptr().add(2 * T * b * k), k, xp.as_ptr().add(2 * jp * T * k), &mut tile);
            }
            // Row by row of y: each X row's 32 values land side by side.
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

/// `dx[m, k] += g[:, n-range] · W` for `gp` from [`pack_rows`] (row stride `ldg`, starting at
/// the chunk's first column) and `pairs` from [`interleave_pairs`] of the chunk's `n` rows.
#[allow(clippy::too_many_arguments)]
pub fn backward(gp: &[u16], ldg: usize, m: usize, pairs: &[u16], n: usize, k: usize, dx: &mut [f32]) {
    assert!(fits(n, k) && pairs.len() >= n * k && dx.len() >= m * k);
    assert!(m == 0 || gp.len() >= (m.div_ceil(2 * T) * 2 * T - 1) * ldg + n);
    let out = Shared(dx.as_mut_ptr());
    tasks(k / (2 * T), |cb| {
        let mut tile = [0f32; 4 * T * T];
        let _tiles = imp::Tiles::configure();
        for jp in 0..m.div_ceil(2 * T) {
            let rows = (m - 2 * jp * T).min(2 * T);
            let first = (2 * jp * T) * k + 2 * T * cb;
            // SAFETY (here and the calls below): the A tiles read rows 32jp..32jp+32 of gp (n
            // values from its start), the B tiles pair rows 0..n/2, columns 32cb..32cb+32 of
            // pairs, the C tiles rows 32jp..32jp+32 (all < m when the block is full), columns
            // 32cb..32cb+32 of dx: inside the checked slices; only this task touches these
            // columns of dx.
            let (a, b) = unsafe { (gp.as_ptr().add(2 * jp * T * ldg), pairs.as_ptr().add(2 * 2 * T * cb)) };
            if rows == 2 * T {
                unsafe { imp::block_gw(a, ldg, b, n, k, out.at(first), k) };
                continue;
            }
            // A last, partial block of rows goes through `tile`.
            for r in 0..rows {
                let src = unsafe { std::slice::from_raw_parts(out.at(first + r * k), 2 * T) };
                tile[r * 2 * T..(r + 1) * 2 * T].copy_from_slice(src);
            }
            tile[rows * 2 * T..].fill(0.0);
            unsafe { imp::block_gw(a, ldg, b, n, k, tile.as_mut_ptr(), 2 * T) };
            for r in 0..rows {
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(first + r * k), 2 * T) };
                dst.copy_from_slice(&tile[r * 2 * T..(r + 1) * 2 * T]);
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::T;
    use std::arch::asm;

    /// Asks Linux for the tile state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`) when the CPU
    /// has AMX-TILE and AMX-BF16.
    pub fn request() -> bool {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let has = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments.
        has && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
    }

    /// Palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = T as u8;
            t += 1;
        }
        Config(c)
    };

    /// The tile configuration loaded on this thread while it lives; dropping it gives the tile
    /// state back (a thread holding it makes every context switch save 8 KiB more).
    pub struct Tiles(());

    impl Tiles {
        pub fn configure() -> Self {
            // SAFETY: CONFIG is a valid 64-byte palette-1 configuration, and callers reach here
            // only after `request` granted the tile state.
            unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
            Self(())
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releasing the tile state is always allowed.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// One 32×32 block of `W · Xᵀ` over all of k into `tile` (rows: W rows, columns: X rows).
    ///
    /// # Safety
    /// `w` must reach 32 rows of `k` bf16 values, `xp` two packed blocks of `k/2 · 32` values,
    /// and a [`Tiles`] must be alive on this thread.
    pub unsafe fn block_wx(w: *const u16, k: usize, xp: *const u16, tile: &mut [f32; 4 * T * T]) {
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            let (sa, sb) = (2 * k, 4 * T);
            for kb in 0..k / (2 * T) {
                let a0 = w.add(kb * 2 * T);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa} * 1]",
                    "tileloadd tmm5, [{a1} + {sa} * 1]",
                    "tileloadd tmm6, [{b0} + {sb} * 1]",
                    "tileloadd tmm7, [{b1} + {sb} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.add(T * k),
                    b0 = in(reg) xp.add(kb * T * 2 * T),
                    b1 = in(reg) xp.add(T * k + kb * T * 2 * T),
                    sa = in(reg) sa,
                    sb = in(reg) sb,
                    options(nostack, readonly),
                );
            }
            store(tile.as_mut_ptr(), 2 * T);
        }
    }

    /// `C += G-rows · W` for one 32×32 block of C (f32, rows `ldc` values apart): `gp` 32 rows
    /// (stride `ldg`) of the chunk's `n` columns, `pairs` from the block's first column (pair
    /// rows `k` pairs apart).
    ///
    /// # Safety
    /// `gp` must reach 32 rows of `n` values `ldg` apart, `pairs` `n/2` pair rows of 32 pairs,
    /// `c` 32 rows of 32 values `ldc` apart, and a [`Tiles`] must be alive on this thread.
    pub unsafe fn block_gw(
        gp: *const u16,
        ldg: usize,
        pairs: *const u16,
        n: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        unsafe {
            asm!(
                "tileloadd tmm0, [{c0} + {sc} * 1]",
                "tileloadd tmm1, [{c1} + {sc} * 1]",
                "tileloadd tmm2, [{c2} + {sc} * 1]",
                "tileloadd tmm3, [{c3} + {sc} * 1]",
                c0 = in(reg) c,
                c1 = in(reg) c.add(T),
                c2 = in(reg) c.add(T * ldc),
                c3 = in(reg) c.add(T * ldc + T),
                sc = in(reg) 4 * ldc,
                options(nostack, readonly),
            );
            let (sa, sb) = (2 * ldg, 4 * k);
            for nb in 0..n / (2 * T) {
                let a0 = gp.add(nb * 2 * T);
                let b0 = pairs.add(nb * T * 2 * k);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa} * 1]",
                    "tileloadd tmm5, [{a1} + {sa} * 1]",
                    "tileloadd tmm6, [{b0} + {sb} * 1]",
                    "tileloadd tmm7, [{b1} + {sb} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.add(T * ldg),
                    b0 = in(reg) b0,
                    b1 = in(reg) b0.add(2 * T),
                    sa = in(reg) sa,
                    sb = in(reg) sb,
                    options(nostack, readonly),
                );
            }
            store(c, ldc);
        }
    }

    /// Stores tiles 0–3 as the four 16×16 quarters of a 32×32 block (rows `ldc` values apart).
    unsafe fn store(c: *mut f32, ldc: usize) {
        unsafe {
            asm!(
                "tilestored [{c0} + {sc} * 1], tmm0",
                "tilestored [{c1} + {sc} * 1], tmm1",
                "tilestored [{c2} + {sc} * 1], tmm2",
                "tilestored [{c3} + {sc} * 1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(T),
                c2 = in(reg) c.add(T * ldc),
                c3 = in(reg) c.add(T * ldc + T),
                sc = in(reg) 4 * ldc,
                options(nostack),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::T;

    pub fn request() -> bool {
        false
    }

    pub struct Tiles(());

    impl Tiles {
        pub fn configure() -> Self {
            Self(())
        }
    }

    /// Never called: [`super::available`] is false off x86-64.
    pub unsafe fn block_wx(_: *const u16, _: usize, _: *const u16, _: &mut [f32; 4 * T * T]) {}

    /// Never called: [`super::available`] is false off x86-64.
    pub unsafe fn block_gw(
        _: *const u16,
        _: usize,
        _: *const u16,
        _: usize,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
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
    fn products_match_the_rounded_operands_in_f64() {
        if !available() {
            eprintln!("skipped: no AMX on this CPU");
            return;
        }
        for &(m, n, k) in &[(1, 32, 32), (45, 64, 96), (128, 96, 64), (7, 32, 320)] {
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
                let mut pairs = vec![0u16; rows * k];
                interleave_pairs(&wb[r0 * k..(r0 + rows) * k], k, &mut pairs);
                backward(&gp[r0..], n, m, &pairs, rows, k, &mut dx);
            }
            assert!(rel(&dx, &want) < 1e-5, "backward {m}x{n}x{k}: {}", rel(&dx, &want));
        }
    }

    #[test]
    fn products_run_on_the_pool_too() {
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(3)));
        products_match_the_rounded_operands_in_f64();
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
    }
}
