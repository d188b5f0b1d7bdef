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
use std::mem::MaybeUninit;

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

/// A buffer of `len` values written chunk by chunk (`chunk` values each, across the kernel pool)
/// by `fill(chunk_index, chunk)`, which must write every element: packing buffers are never
/// zeroed first (that pass cost as much as the packing).
fn written(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<u16>]) + Sync + Send,
) -> Vec<u16> {
    let mut v = Vec::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if threads() > 1 {
        use rayon::prelude::*;
        spare.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    } else {
        spare.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: every caller's `fill` writes each element of its chunk (see each one).
    unsafe { v.set_len(len) };
    v
}

/// f32 values to bf16 bits, rounding to nearest even: 32 at a time with AVX512-BF16 where the
/// CPU has it (every CPU with AMX does), else [`bf16_bits`] one by one. The vector instruction
/// also reads subnormal inputs as zero.
pub fn convert(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
    let n = src.len().min(dst.len());
    let done = imp::convert_vector(&src[..n], &mut dst[..n]);
    for (o, &x) in dst[done..n].iter_mut().zip(&src[done..n]) {
        o.write(bf16_bits(x));
    }
}

/// [`convert`] into initialised memory.
pub fn convert_into(src: &[f32], dst: &mut [u16]) {
    // SAFETY: `MaybeUninit<u16>` has u16's layout, and `convert` writes only valid values.
    convert(src, unsafe { &mut *(dst as *mut [u16] as *mut [MaybeUninit<u16>]) });
}

/// `X` `[m, k]` as the right operand of `W · Xᵀ`: blocks of 16 rows (to a multiple of 32 rows,
/// padded with zeros), each as `k/2` rows of 16 pairs `(X[j][2p], X[j][2p+1])`.
pub fn pack_x(x: &[f32], m: usize, k: usize) -> Vec<u16> {
    let blocks = m.div_ceil(2 * T) * 2;
    written(blocks * T * k, T * k, |b, dst| {
        // Every (pair row p, row jj, half e) slot of the block is written: a value or padding.
        let mut row = vec![MaybeUninit::new(0u16); k];
        for jj in 0..T {
            let j = b * T + jj;
            match x.get(j * k..(j + 1) * k) {
                Some(src) => convert(src, &mut row),
                None => row.iter_mut().for_each(|v| {
                    v.write(0);
                }),
            }
            for (p, pair) in row.chunks_exact(2).enumerate() {
                dst[p * 2 * T + 2 * jj] = pair[0];
                dst[p * 2 * T + 2 * jj + 1] = pair[1];
            }
        }
    })
}

/// `G` `[m, n]` as the left operand of `G · W`: row-major bf16, rows padded with zeros to a
/// multiple of 32.
pub fn pack_rows(g: &[f32], m: usize, n: usize) -> Vec<u16> {
    written(m.div_ceil(2 * T) * 2 * T * n, n, |j, dst| {
        // Every element of row j is written: its value, or zero past the last row.
        match g.get(j * n..(j + 1) * n) {
            Some(row) => convert(row, dst),
            None => dst.iter_mut().for_each(|o| {
                o.write(0);
            }),
        }
    })
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

/// Columns `c0..c0+32` of `W` (`rows` × `k` bf16 bits, `rows` even) as the right operand of
/// `G · W`: each row pair interleaved, `(W[2q][c], W[2q+1][c])`, for the first 16 columns then
/// the second, so that every tile is 1 KiB in one piece. (Pair rows of the whole width put a
/// tile's 16 rows `4k` bytes apart, all in one L1 set for k = 1024, evicting each other.)
fn interleave_columns(w: &[u16], k: usize, c0: usize, out: &mut [u16]) {
    let pairs = w.len() / (2 * k);
    for (q, (r0, r1)) in w.chunks_exact(k).step_by(2).zip(w.chunks_exact(k).skip(1).step_by(2)).enumerate() {
        for half in 0..2 {
            let dst = &mut out[(half * pairs + q) * 2 * T..][..2 * T];
            let (a, b) = (&r0[c0 + half * T..][..T], &r1[c0 + half * T..][..T]);
            for c in 0..T {
                dst[2 * c] = a[c];
                dst[2 * c + 1] = b[c];
            }
        }
    }
}

/// A weight held for bf16 products on the tile unit, laid out once (at load) for both products:
/// rearranging it on every call cost a quarter to a half of each product. It replaces the
/// row-major values, which [`Prepared::rows_into`] gives back.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Every 32-row block of W laid out by `pair_rows`: the forward's right operand.
    forward: Vec<u16>,
    /// Every 32-column block of W laid out by `interleave_columns`: the input gradient's.
    input_grad: Vec<u16>,
    k: usize,
}

impl Prepared {
    /// Lays out `w` (`n` × `k` bf16 bits, both multiples of 32) for both products.
    pub fn new(w: &[u16], n: usize, k: usize) -> Self {
        assert!(fits(n, k) && w.len() >= n * k);
        let w = &w[..n * k];
        let mut forward = vec![0u16; n * k];
        let mut input_grad = vec![0u16; n * k];
        let rows = |(b, dst): (usize, &mut [u16])| pair_rows(&w[2 * T * b * k..2 * T * (b + 1) * k], k, dst);
        let columns = |(cb, dst): (usize, &mut [u16])| interleave_columns(w, k, 2 * T * cb, dst);
        if threads() > 1 {
            use rayon::prelude::*;
            forward.par_chunks_mut(2 * T * k).enumerate().for_each(rows);
            input_grad.par_chunks_mut(2 * T * n).enumerate().for_each(columns);
        } else {
            forward.chunks_mut(2 * T * k).enumerate().for_each(rows);
            input_grad.chunks_mut(2 * T * n).enumerate().for_each(columns);
        }
        Self { forward, input_grad, k }
    }

    /// Bytes held (both layouts).
    pub fn bytes(&self) -> usize {
        2 * (self.forward.len() + self.input_grad.len())
    }

    /// The bf16 bits of rows `r0..r0 + out.len() / k` in row-major order.
    pub fn rows_into(&self, r0: usize, out: &mut [u16]) {
        let k = self.k;
        for (i, row) in out.chunks_exact_mut(k).enumerate() {
            let r = r0 + i;
            let half = &self.forward[(r / (2 * T)) * 2 * T * k + ((r / T) % 2) * T * k..][..T * k];
            for (c, v) in row.iter_mut().enumerate() {
                *v = half[(c / 2) * 2 * T + 2 * (r % T) + c % 2];
            }
        }
    }
}

/// 32 rows of W (`k` bf16 bits each) as the forward's right operand: for rows 0–15 then 16–31,
/// `k/2` rows of 16 pairs `(W[r][2p], W[r][2p+1])`.
fn pair_rows(w: &[u16], k: usize, out: &mut [u16]) {
    for (i, row) in w.chunks_exact(k).take(2 * T).enumerate() {
        let half = &mut out[(i / T) * T * k..][..T * k];
        for (p, pair) in row.chunks_exact(2).enumerate() {
            half[p * 2 * T + 2 * (i % T)] = pair[0];
            half[p * 2 * T + 2 * (i % T) + 1] = pair[1];
        }
    }
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
                unsafe { imp::block_gw(pa, lda, pb, T * reduce, rc, out.at(first), ldc, add) };
                continue;
            }
            // A last, partial block of rows goes through `tile`.
            tile.fill(0.0);
            for r in (0..rows).filter(|_| add) {
                let src = unsafe { std::slice::from_raw_parts(out.at(first + r * ldc), 2 * T) };
                tile[r * 2 * T..(r + 1) * 2 * T].copy_from_slice(src);
            }
            unsafe { imp::block_gw(pa, lda, pb, T * reduce, rc, tile.as_mut_ptr(), 2 * T, true) };
            for r in 0..rows {
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(first + r * ldc), 2 * T) };
                dst.copy_from_slice(&tile[r * 2 * T..(r + 1) * 2 * T]);
            }
        }
    }
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

    /// Converts the longest prefix of whole 32-value groups with AVX512-BF16 (when the CPU has
    /// it) and returns its length.
    pub fn convert_vector(src: &[f32], dst: &mut [std::mem::MaybeUninit<u16>]) -> usize {
        if !std::arch::is_x86_feature_detected!("avx512bf16") {
            return 0;
        }
        // SAFETY: the CPU has AVX512-BF16 (checked above), and both slices hold `src.len()`
        // values.
        unsafe { convert_avx512(src, dst) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn convert_avx512(src: &[f32], dst: &mut [std::mem::MaybeUninit<u16>]) -> usize {
        use std::arch::x86_64::*;
        let groups = src.len().min(dst.len()) / 32;
        for g in 0..groups {
            // SAFETY: group g covers values 32g..32g+32 of both slices.
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(32 * g));
                let hi = _mm512_loadu_ps(src.as_ptr().add(32 * g + 16));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(32 * g) as *mut __m512i, packed);
            }
        }
        32 * groups
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

    /// Where a task's 32 rows of W are: tile rows `stride` values apart, rows 16–31 `second`
    /// values after rows 0–15, the next 32 values of k `step` values further.
    #[derive(Clone, Copy)]
    pub struct Operand {
        pub at: *const u16,
        pub stride: usize,
        pub second: usize,
        pub step: usize,
    }

    /// One 32×32 block of `W · Xᵀ` over `32 · kbs` values of k into `c` (32×32 row-major; rows:
    /// W rows, columns: X rows), added to what `c` holds when `accumulate`.
    ///
    /// # Safety
    /// `a` must reach `kbs` steps of its 32 rows, `xp` two packed blocks (`k/2 · 32` values
    /// apart) of `16 · kbs` pair rows, `c` 1024 values, and a [`Tiles`] must be alive on this
    /// thread.
    pub unsafe fn block_wx(a: Operand, k: usize, xp: *const u16, kbs: usize, c: *mut f32, accumulate: bool) {
        unsafe {
            if accumulate {
                load(c, 2 * T);
            } else {
                zero();
            }
            let (sa, sb) = (2 * a.stride, 4 * T);
            for kb in 0..kbs {
                let a0 = a.at.add(kb * a.step);
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
                    a1 = in(reg) a0.add(a.second),
                    b0 = in(reg) xp.add(kb * T * 2 * T),
                    b1 = in(reg) xp.add(T * k + kb * T * 2 * T),
                    sa = in(reg) sa,
                    sb = in(reg) sb,
                    options(nostack, readonly),
                );
            }
            store(c, 2 * T);
        }
    }

    /// `C (+)= G-rows · W` for one 32×32 block of C (f32, rows `ldc` values apart; overwritten
    /// unless `accumulate`) over `n` values of the reduction: `gp` 32 rows (stride `ldg`),
    /// `pairs` the first of the block's two 16-column halves from `interleave_columns` at its
    /// first pair row, the second `next` values further.
    ///
    /// # Safety
    /// `gp` must reach 32 rows of `n` values `ldg` apart, both column blocks `n/2` pair rows of
    /// 16 pairs, `c` 32 rows of 32 values `ldc` apart, and a [`Tiles`] must be alive on this
    /// thread.
    pub unsafe fn block_gw(
        gp: *const u16,
        ldg: usize,
        pairs: *const u16,
        next: usize,
        n: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        unsafe {
            if accumulate {
                load(c, ldc);
            } else {
                zero();
            }
            let (sa, sb) = (2 * ldg, 4 * T);
            for nb in 0..n / (2 * T) {
                let a0 = gp.add(nb * 2 * T);
                let b0 = pairs.add(nb * T * 2 * T);
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
                    b1 = in(reg) b0.add(next),
                    sa = in(reg) sa,
                    sb = in(reg) sb,
                    options(nostack, readonly),
                );
            }
            store(c, ldc);
        }
    }

    /// Zeroes tiles 0–3.
    unsafe fn zero() {
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem))
        };
    }

    /// Loads tiles 0–3 from the four 16×16 quarters of a 32×32 f32 block (rows `ldc` apart).
    unsafe fn load(c: *const f32, ldc: usize) {
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

    pub fn convert_vector(_: &[f32], _: &mut [std::mem::MaybeUninit<u16>]) -> usize {
        0
    }

    pub struct Tiles(());

    impl Tiles {
        pub fn configure() -> Self {
            Self(())
        }
    }

    /// Never called: [`super::available`] is false off x86-64.
    #[derive(Clone, Copy)]
    pub struct Operand {
        pub at: *const u16,
        pub stride: usize,
        pub second: usize,
        pub step: usize,
    }

    pub unsafe fn block_wx(_: Operand, _: usize, _: *const u16, _: usize, _: *mut f32, _: bool) {}

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
