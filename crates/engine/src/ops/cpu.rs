//! Small helpers for the CPU kernels: contiguous f32 views of storages and a row-major sgemm
//! (through a tuned BLAS when the machine has one, see [`super::blas`], else the `gemm` crate).

use super::blas::{Blas, Operand};
use candle_core::{CpuStorage, Layout, Result, Shape, Storage, Tensor, bail};

/// The contiguous f32 slice behind a storage and layout.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("kernel expects a contiguous tensor, got strides {:?}", l.stride()),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copying only if it is strided).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => bail!("kernel expects a CPU tensor"),
    }
}

/// A value a CPU kernel computes with in f32: f32 itself, or bf16 — widened exactly and rounded
/// back to nearest even (as `to_dtype` rounds). Both are branch-free, so loops over them
/// vectorise.
pub(crate) trait Value: Copy + Send + Sync {
    fn widen(self) -> f32;
    fn narrow(v: f32) -> Self;
}

impl Value for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        v
    }
}

impl Value for half::bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        half::bf16::from_bits(super::amx::bf16_bits(v))
    }
}

/// Whether the CPU runs AVX-512 F, BW and VL. The crate is built for baseline x86-64, where
/// loops over f32/bf16 stay narrow, so hot loops are compiled a second time with
/// `#[target_feature]` and picked with this: the same IEEE operations (none are fused), the
/// same bits.
pub(crate) fn avx512_wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WIDE.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU runs AVX2, FMA and F16C (every CPU with the first two has the third): the
/// vector loops for CPUs without AVX-512.
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn add_chunk<V: Value>(acc: &mut [V], src: &[V]) {
    let src = &src[..acc.len()];
    for i in 0..acc.len() {
        acc[i] = V::narrow(acc[i].widen() + src[i].widen());
    }
}

super::simd::widest_simd!(fn add<V: Value>(acc: &mut [V], src: &[V]) => add_chunk);

/// `acc[i] += src[i]` (rounded back for bf16), across the pool for long slices.
pub(crate) fn add_assign<V: Value>(acc: &mut [V], src: &[V]) {
    if threads() > 1 && acc.len() > ELEMENTS_PER_TASK {
        use rayon::prelude::*;
        acc.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(src.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(a, b)| add(a, b));
    } else {
        add(acc, src);
    }
}

/// `x · wᵀ` for `x` `[.., k]` and `w` `[n, k]` (a projection's forward): the `[.., n]` values.
pub(crate) fn xwt(x: &[f32], w: &[f32], n: usize) -> Vec<f32> {
    let k = w.len() / n.max(1);
    let m = x.len() / k.max(1);
    let mut out = zeroed(m * n);
    sgemm_par(m, n, k, Mat::rows(x, k), Mat::rows_t(w, k), &mut out, false, 1.0);
    out
}

/// `g · w` for `g` `[.., n]` and `w` `[n, k]` (the input gradient of [`xwt`]).
pub(crate) fn gw(g: &[f32], w: &[f32], n: usize) -> Vec<f32> {
    let k = w.len() / n.max(1);
    let m = g.len() / n.max(1);
    let mut dx = zeroed(m * k);
    sgemm_par(m, k, n, Mat::rows(g, n), Mat::rows(w, k), &mut dx, false, 1.0);
    dx
}

/// `dims` with the last dimension replaced by `n` (a projection's output shape).
pub(crate) fn with_last_dim(dims: &[usize], n: usize) -> Shape {
    let mut out = dims.to_vec();
    if let Some(last) = out.last_mut() {
        *last = n;
    }
    Shape::from(out)
}

/// Number of worker threads for kernels that parallelise over rows or heads.
pub(crate) fn threads() -> usize {
    #[cfg(test)]
    if let Some(n) = THREADS_OVERRIDE.with(|c| c.get()) {
        return n;
    }
    candle_core::utils::get_num_threads().max(1)
}

#[cfg(test)]
thread_local! {
    /// Lets a test run the kernels' parallel paths whatever `RAYON_NUM_THREADS` says (CI runs
    /// with one thread, where they would otherwise never run).
    pub(crate) static THREADS_OVERRIDE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Elements per task when an elementwise kernel splits its output across the pool.
pub(crate) const ELEMENTS_PER_TASK: usize = 1 << 14;

/// Runs `f(first_index, chunk)` over `out` in chunks of `chunk` elements (a multiple of a row
/// for row-wise kernels), on the kernel pool when there are several threads.
pub(crate) fn par_chunks(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let chunk = chunk.max(1);
    if threads() > 1 && out.len() > chunk {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i * chunk, c));
    } else {
        f(0, out);
    }
}

/// A zeroed buffer of `n` floats. Large ones are zeroed across the pool: on several threads a
/// serial `memset` (and the page faults of fresh memory) of every activation-sized output was a
/// tenth of a step.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    if threads() == 1 || n < 4 * ELEMENTS_PER_TASK {
        return vec![0.0; n];
    }
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .for_each(|c| c.iter_mut().for_each(|x| *x = std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the first n elements were all written above.
    unsafe { v.set_len(n) };
    v
}

/// A copy of `src`, made across the pool when it is large (see [`zeroed`]).
pub(crate) fn copied(src: &[f32]) -> Vec<f32> {
    if threads() == 1 || src.len() < 4 * ELEMENTS_PER_TASK {
        return src.to_vec();
    }
    let mut v = zeroed(src.len());
    par_chunks(&mut v, ELEMENTS_PER_TASK, |i0, c| c.copy_from_slice(&src[i0..i0 + c.len()]));
    v
}

/// A scratch buffer of f32 kept per thread between calls (`key`'s), returned to it when dropped:
/// a kernel that needs megabytes of scratch per call neither allocates nor zeroes them each time.
/// Its values are whatever the last user left: write before reading.
pub(crate) struct Reused {
    key: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>,
    pub(crate) values: Vec<f32>,
}

impl Reused {
    /// The thread's buffer with at least `len` values (a call running inside another on this
    /// thread finds it taken and gets a fresh one).
    pub(crate) fn take(key: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>, len: usize) -> Self {
        let mut values = key.with(|c| c.take());
        if values.len() < len {
            values = vec![0f32; len];
        }
        Self { key, values }
    }
}

impl Drop for Reused {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        self.key.with(|c| c.set(values));
    }
}

/// [`par_chunks`] over two outputs of the same length, chunked alike.
pub(crate) fn par_chunks2(
    a: &mut [f32],
    b: &mut [f32],
    chunk: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    let chunk = chunk.max(1);
    if threads() > 1 && a.len() > chunk {
        use rayon::prelude::*;
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(i, (a, b))| f(i * chunk, a, b));
    } else {
        f(0, a, b);
    }
}

/// A strided matrix view for [`sgemm`]: element (i, j) lives at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }
}

/// `c[m, n] (+)= alpha * a[m, k] · b[k, n]`, with `c` row-major and single-threaded (callers
/// that split work across threads themselves use this).
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    accumulate: bool,
    alpha: f32,
) {
    // The BLAS runs single-threaded, so pool workers may call it side by side.
    let blas = pick_blas(m, n, &b);
    sgemm_with(m, n, k, a, b, (c, n), accumulate, alpha, gemm::Parallelism::None, blas)
}

/// [`sgemm`] using the kernel thread pool, for one large product.
pub(crate) fn sgemm_par(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    accumulate: bool,
    alpha: f32,
) {
    sgemm_par_ld(m, n, k, a, b, (c, n), accumulate, alpha)
}

/// [`sgemm_par`] into a destination with row stride `ldc ≥ n` (a column block of a wider matrix).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_par_ld(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: (&mut [f32], usize),
    accumulate: bool,
    alpha: f32,
) {
    let par = if threads() > 1 { gemm::Parallelism::Rayon(threads()) } else { gemm::Parallelism::None };
    sgemm_with(m, n, k, a, b, c, accumulate, alpha, par, pick_blas(m, n, &b))
}

/// The BLAS, for the products where it beats the `gemm` crate. Measured on an AVX-512 core
/// (`examples/matmul_bench.rs`): the gemm crate reads a transposed right operand (`x · Wᵀ` with
/// W in the `[out, in]` layout, every forward projection) at 34 GFLOP/s for 16 rows and 130 for
/// 128 where OpenBLAS runs 71 and 170; with a row-major right operand (`g · W`, the input
/// gradient) the gemm crate is as fast or faster, and below 4 rows (generation's one token) the
/// BLAS's packing makes it 3× slower than the gemm crate.
fn pick_blas(m: usize, n: usize, b: &Mat) -> Option<&'static Blas> {
    let transposed_rhs = b.rs == 1 && b.cs != 1;
    super::blas::get().filter(|_| transposed_rhs && m >= 4 && n >= 64)
}

/// The narrowest column block a task gets when a product is split across the pool.
const MIN_BLOCK_COLUMNS: usize = 64;

/// A destination pointer shared by tasks that write disjoint parts of it (column blocks here,
/// and in the AMX products).
pub(crate) struct Shared<T = f32>(pub(crate) *mut T);
// SAFETY: every user has each task write only its own part of the destination (see
// `blas_in_column_blocks` and `amx`).
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}

impl<T> Shared<T> {
    /// The destination from element `offset` on (by value, so closures capture the `Sync`
    /// wrapper, not the field).
    pub(crate) fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

/// The BLAS product split into `tasks` column blocks run on the kernel pool; the library itself
/// runs single-threaded, so the process has one pool of threads instead of two competing ones.
///
/// # Safety
/// The views must reach only elements inside their slices, and `c` must hold `m` rows of `n`
/// values `ldc` apart.
#[allow(clippy::too_many_arguments)]
unsafe fn blas_in_column_blocks(
    blas: &Blas,
    (m, n, k): (usize, usize, usize),
    (a, oa): (&Mat, Operand),
    (b, ob): (&Mat, Operand),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
    alpha: f32,
    tasks: usize,
) -> bool {
    if !blas.fits((m, n, k), oa, ob, ldc) {
        return false;
    }
    let (a_ptr, b_ptr, c_ptr) = (a.data.as_ptr() as usize, b.data.as_ptr() as usize, Shared(c.as_mut_ptr()));
    in_column_blocks(n, tasks, |j0, j1| {
        // SAFETY: columns [j0, j1) of b start `j0` columns (j0 · cs elements) in, those of c `j0`
        // elements in; both stay inside the operands the caller vouched for, and no other task
        // writes these columns of c.
        unsafe {
            blas.sgemm(
                (m, j1 - j0, k),
                a_ptr as *const f32,
                oa,
                (b_ptr as *const f32).add(j0 * b.cs),
                ob,
                (c_ptr.at(j0), ldc),
                accumulate,
                alpha,
            )
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn sgemm_with(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
    alpha: f32,
    par: gemm::Parallelism,
    blas: Option<&Blas>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "sgemm: destination too small");
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let fits = |v: &Mat, r: usize, c: usize| v.data.len() > (r - 1) * v.rs + (c - 1) * v.cs;
    assert!(fits(&a, m, k) && fits(&b, k, n), "sgemm: operand too small");
    // Column blocks for the pool's threads, as many as the width allows.
    let tasks = match par {
        gemm::Parallelism::Rayon(t) => t.min(n / MIN_BLOCK_COLUMNS).max(1),
        _ => 1,
    };
    // A tuned BLAS when the caller has one and it can read both views.
    if let Some(blas) = blas
        && let (Some(oa), Some(ob)) = (Operand::of(m, k, a.rs, a.cs), Operand::of(k, n, b.rs, b.cs))
    {
        // SAFETY: the asserts above bound every element the views reach, and `c` holds m rows
        // of n values, ldc apart.
        let done = unsafe {
            blas_in_column_blocks(blas, (m, n, k), (&a, oa), (&b, ob), (c, ldc), accumulate, alpha, tasks)
        };
        if done {
            return;
        }
    }
    // The gemm crate's own threading packs the right operand on the calling thread while the
    // pool waits (3 % of a 2-thread LoRA step); column blocks pack their own columns in parallel.
    let par = if tasks > 1 { gemm::Parallelism::None } else { par };
    let (a_ptr, b_ptr, c_ptr) = (a.data.as_ptr() as usize, b.data.as_ptr() as usize, Shared(c.as_mut_ptr()));
    in_column_blocks(n, tasks, |j0, j1| {
        // SAFETY: the asserts above keep every access inside the slices (the destination's rows
        // start every `ldc` and hold `n` values; columns [j0, j1) of b start j0 · cs elements in,
        // those of c j0 elements in), no other task writes these columns of c, and the
        // destination is a unique borrow, so it cannot alias the sources.
        unsafe {
            gemm::gemm(
                m,
                j1 - j0,
                k,
                c_ptr.at(j0),
                1,
                ldc as isize,
                accumulate,
                a_ptr as *const f32,
                a.cs as isize,
                a.rs as isize,
                (b_ptr as *const f32).add(j0 * b.cs),
                b.cs as isize,
                b.rs as isize,
                1.0,
                alpha,
                false,
                false,
                false,
                par,
            )
        }
        true
    });
}

/// Runs `block(j0, j1)` for `tasks` column blocks of `0..n` (widths a multiple of 16) on the
/// kernel pool, or once for all columns; true when every block reports success.
fn in_column_blocks(n: usize, tasks: usize, block: impl Fn(usize, usize) -> bool + Sync) -> bool {
    if tasks <= 1 {
        return block(0, n);
    }
    let width = n.div_ceil(tasks).next_multiple_of(16);
    use rayon::prelude::*;
    (0..tasks)
        .into_par_iter()
        .map(|t| {
            let (j0, j1) = (t * width, ((t + 1) * width).min(n));
            j0 >= j1 || block(j0, j1)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .all(|done| done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// The BLAS takes the forward projections (transposed right operand, 4+ rows) and nothing
    /// else: not input gradients, not single-token generation, not LoRA's rank-wide outputs.
    #[test]
    fn the_blas_takes_only_the_products_it_is_faster_at() {
        if super::super::blas::get().is_none() {
            assert!(std::env::var_os("FINETUNE_REQUIRE_BLAS").is_none(), "no BLAS");
            return;
        }
        let w = vec![0f32; 64 * 128];
        assert!(pick_blas(16, 128, &Mat::rows_t(&w, 64)).is_some(), "x · Wᵀ, 16 rows");
        assert!(pick_blas(1, 128, &Mat::rows_t(&w, 64)).is_none(), "one token");
        assert!(pick_blas(16, 16, &Mat::rows_t(&w, 64)).is_none(), "rank-wide output");
        assert!(pick_blas(16, 64, &Mat::rows(&w, 64)).is_none(), "g · W");
    }

    /// Every layout the kernels use (row-major operands and transposed views, a padded leading
    /// dimension, accumulation, a scale) gives the same product through the BLAS as through the
    /// `gemm` crate. CI installs OpenBLAS and sets FINETUNE_REQUIRE_BLAS=1, so there this test
    /// cannot pass without comparing the two.
    #[test]
    fn the_blas_agrees_with_the_gemm_crate_on_every_layout() {
        let blas = match super::super::blas::status() {
            Ok(b) => b,
            Err(why) if std::env::var_os("FINETUNE_REQUIRE_BLAS").is_none() => {
                eprintln!("skipped: no BLAS: {why}");
                return;
            }
            Err(why) => panic!("FINETUNE_REQUIRE_BLAS is set but no BLAS is usable: {why}"),
        };
        let mut rng = Rng::new(7);
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (64, 48, 33), (130, 70, 257), (1, 300, 64), (200, 1, 9)] {
            for (ta, tb, pad, accumulate, alpha) in [
                (false, false, 0, false, 1.0f32),
                (false, true, 0, true, 0.5),
                (true, false, 3, false, -2.0),
                (true, true, 1, true, 1.0),
            ] {
                // a: m × k, stored row-major (or as the transpose of a row-major k × m), with padding.
                let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
                let lda = a_cols + pad;
                let a_data = random(a_rows * lda, &mut rng);
                let a = if ta {
                    Mat { data: &a_data, rs: 1, cs: lda }
                } else {
                    Mat { data: &a_data, rs: lda, cs: 1 }
                };
                let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
                let b_data = random(b_rows * b_cols, &mut rng);
                let b = if tb { Mat::rows_t(&b_data, k) } else { Mat::rows(&b_data, n) };
                // The destination is padded too (a column block of a wider matrix); the padding
                // must come through untouched.
                let ldc = n + pad;
                let start = random(m * ldc, &mut rng);
                let (mut with_blas, mut with_gemm) = (start.clone(), start.clone());
                let none = gemm::Parallelism::None;
                sgemm_with(m, n, k, a, b, (&mut with_blas, ldc), accumulate, alpha, none, Some(blas));
                sgemm_with(m, n, k, a, b, (&mut with_gemm, ldc), accumulate, alpha, none, None);
                for (i, ((x, y), s)) in with_blas.iter().zip(&with_gemm).zip(&start).enumerate() {
                    if i % ldc >= n {
                        assert!(x == s && y == s, "padding element {i} was written");
                    }
                }
                for (i, (x, y)) in with_blas.iter().zip(&with_gemm).enumerate() {
                    let tol = 1e-5 * (k as f32).sqrt() * (1.0 + y.abs());
                    assert!(
                        (x - y).abs() <= tol,
                        "{m}x{n}x{k} ta={ta} tb={tb} acc={accumulate}: element {i}: blas {x} vs gemm {y}"
                    );
                }
            }
        }
    }

    /// A product split for several tasks (column blocks when wide; a tall, narrow one like
    /// LoRA's rank-wide outputs left to the gemm crate's own threads) equals the product in one
    /// piece, through the BLAS and through the gemm crate, padding of the destination untouched.
    #[test]
    fn blocks_for_several_threads_give_the_one_piece_product() {
        let blas = super::super::blas::get();
        let mut rng = Rng::new(11);
        for &(m, n, k) in &[(40, 300, 33), (300, 16, 70), (20, 20, 5), (129, 130, 8)] {
            for (b_transposed, accumulate) in [(true, false), (false, true)] {
                let a_data = random(m * k, &mut rng);
                let b_data = random(k * n, &mut rng);
                let a = Mat::rows(&a_data, k);
                let b = if b_transposed { Mat::rows_t(&b_data, k) } else { Mat::rows(&b_data, n) };
                let ldc = n + 3;
                let start = random(m * ldc, &mut rng);
                for lib in [blas, None] {
                    let (mut split, mut whole) = (start.clone(), start.clone());
                    let par = gemm::Parallelism::Rayon(3);
                    sgemm_with(m, n, k, a, b, (&mut split, ldc), accumulate, 0.5, par, lib);
                    let none = gemm::Parallelism::None;
                    sgemm_with(m, n, k, a, b, (&mut whole, ldc), accumulate, 0.5, none, lib);
                    for (i, ((x, y), s)) in split.iter().zip(&whole).zip(&start).enumerate() {
                        let what = format!("{m}x{n}x{k} bt={b_transposed} blas={}: {i}", lib.is_some());
                        if i % ldc >= n {
                            assert_eq!(x, s, "{what}: padding written");
                        }
                        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}: {x} vs {y}");
                    }
                }
            }
        }
    }
}
