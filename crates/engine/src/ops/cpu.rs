//! Small helpers for the CPU kernels: contiguous f32 views of storages and a row-major sgemm.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, bail};

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

/// Number of worker threads for kernels that parallelise over rows or heads.
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
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
    sgemm_with(m, n, k, a, b, c, accumulate, alpha, gemm::Parallelism::None)
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
    let par = if threads() > 1 { gemm::Parallelism::Rayon(threads()) } else { gemm::Parallelism::None };
    sgemm_with(m, n, k, a, b, c, accumulate, alpha, par)
}

#[allow(clippy::too_many_arguments)]
fn sgemm_with(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    accumulate: bool,
    alpha: f32,
    par: gemm::Parallelism,
) {
    assert!(c.len() >= m * n, "sgemm: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let fits = |v: &Mat, r: usize, c: usize| v.data.len() > (r - 1) * v.rs + (c - 1) * v.cs;
    assert!(fits(&a, m, k) && fits(&b, k, n), "sgemm: operand too small");
    // SAFETY: the asserts above keep every access inside the slices, and the destination is a
    // unique borrow, so it cannot alias the sources.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
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
}
